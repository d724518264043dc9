"""Where checkpoint files come from: a local directory, an fsspec URL, or the Hugging Face Hub.

Every ``from_pretrained`` in this package resolves its ``source`` through :func:`resolve_source`,
then asks the returned :class:`CheckpointSource` for the files it needs. Remote files (``gs://``,
``memory://``, ``https://`` ...) are copied once into a local cache, so safetensors can memory-map
them and a Beam worker fetches a model from cloud storage only once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSource",
    "read_json_object",
    "resolve_source",
]

# How deep a checkpoint's JSON files may nest: config.json and tokenizer.json nest 4 to 6 levels;
# a file nested hundreds deep is broken or hostile (Python's parser gives up near 1000).
MAX_JSON_DEPTH = 64

# Small checkpoints trained on generated scenes, shipped inside the package (model/pretrained/).
BUNDLED = ("demo-clip", "demo-chinese-clip")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be used (bad file, wrong shapes, unsafe format...)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint (or no required file of it) was found at any of the places tried."""


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint's JSON file that must hold an object (config, tokenizer, processor).

    Raises:
        CheckpointError: the file is not UTF-8 JSON, holds no object, or nests deeper than
            :data:`MAX_JSON_DEPTH`; the message names the file and, for nesting, the key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
        key = _too_deep(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); re-download the file") from None
    except RecursionError:  # nested past what Python parses: the key is found without recursion
        data, key = {}, _deep_key_in_text(text)
    if key is not None:
        raise CheckpointError(
            f"{path} nests deeper than {MAX_JSON_DEPTH} levels (at key {key}); a checkpoint's "
            "JSON files nest a few levels: re-download the file"
        )
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _too_deep(data: Any) -> str | None:
    """The key path where ``data`` nests deeper than :data:`MAX_JSON_DEPTH`, else ``None``."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, key = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return repr(key or "(top level)")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, f"{key}.{k}" if key else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{key}[{i}]") for i, v in enumerate(value))
    return None


def _deep_key_in_text(text: str) -> str:
    """The top-level key under which ``text`` (JSON too deep to parse) nests too deep."""
    depth, key, in_string, escaped, start = 0, "(top level)", False, False, 0
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
                if depth == 1:
                    key = text[start:i][:80]
        elif c == '"':
            in_string, start = True, i + 1
        elif c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return repr(key)
        elif c in "]}":
            depth -= 1
    return repr(key)


def cache_root() -> Path:
    """The directory remote checkpoint files are cached in (``$CLIPBEAM_CACHE`` overrides)."""
    env = os.environ.get("CLIPBEAM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipbeam"


@dataclass
class CheckpointSource:
    """A resolved checkpoint location.

    Attributes:
        source: what the user passed.
        kind: ``"local"``, ``"fsspec"`` or ``"hub"``.
        location: the local directory, the URL, or the hub repo id.
        revision: hub revision (``None`` for the default branch).
    """

    source: str
    kind: str
    location: str
    revision: str | None = None
    _cache: dict[str, Path | None] = field(default_factory=dict, repr=False)
    # Hub files that could not be looked for: the hub was unreachable (or offline mode was on)
    # and the local hub cache neither held them nor knew them to be absent. filename -> why.
    _unchecked: dict[str, str] = field(default_factory=dict, repr=False)

    def get(self, filename: str) -> Path | None:
        """Returns a local path to ``filename`` in this checkpoint, or ``None`` if it has none."""
        if filename not in self._cache:
            self._cache[filename] = getattr(self, f"_get_{self.kind}")(filename)
        return self._cache[filename]

    def require(self, filename: str, *, what: str = "") -> Path:
        """Like :meth:`get`, but a missing file raises :class:`CheckpointNotFoundError`."""
        path = self.get(filename)
        if path is None:
            need = f" ({what})" if what else ""
            raise self.missing(
                f"checkpoint {self.source!r} has no {filename}{need}; looked in {self.describe()}",
                filename,
            )
        return path

    def missing(self, message: str, *filenames: str) -> CheckpointNotFoundError:
        """The error to raise when :meth:`get` found none of ``filenames``.

        It carries ``message``, unless the files could not be looked for because the Hugging
        Face Hub was unreachable or offline mode was on: the checkpoint may well have them, so
        the error says that instead, where it looked, and how to get the files.
        """
        unchecked = [name for name in filenames if name in self._unchecked]
        if not unchecked:
            return CheckpointNotFoundError(message)
        from huggingface_hub import constants

        why = self._unchecked[unchecked[0]]
        offline = why == _OFFLINE
        cache = Path(constants.HF_HUB_CACHE) / ("models--" + self.location.replace("/", "--"))
        url = f"{constants.ENDPOINT.rstrip('/')}/{self.location}"
        rev = f" --revision {self.revision}" if self.revision else ""
        fix = (
            "unset HF_HUB_OFFLINE so the files can be downloaded"
            if offline
            else "check the network connection (and HF_ENDPOINT / proxy settings) and retry"
        )
        return CheckpointNotFoundError(
            f"cannot get {', '.join(unchecked)} of {self.describe()}: {why}, and the local hub "
            f"cache does not hold {'it' if len(unchecked) == 1 else 'them'}. Tried:\n"
            f"  - the local hub cache {cache}\n"
            f"  - {url} ({'not contacted: offline mode' if offline else 'unreachable'})\n"
            f"To fix: {fix}; or download the checkpoint where the hub is reachable "
            f"(`hf download {self.location}{rev}`) and copy the hub cache here or pass the "
            "downloaded folder instead of the repo id."
        )

    def describe(self) -> str:
        """Where this source reads from, for error messages."""
        if self.kind == "hub":
            rev = f"@{self.revision}" if self.revision else ""
            return f"Hugging Face Hub repo {self.location}{rev}"
        return self.location

    # -- per kind -----------------------------------------------------------------------------

    def _get_local(self, filename: str) -> Path | None:
        path = Path(self.location) / filename
        return path if path.is_file() else None

    def _get_fsspec(self, filename: str) -> Path | None:
        import fsspec

        url = self.location.rstrip("/") + "/" + filename
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.isfile(path):
            return None
        if fs.protocol in ("file", ("file", "local")) or "file" in _as_tuple(fs.protocol):
            return Path(path)
        info = fs.info(path)
        key = hashlib.sha256(self.location.rstrip("/").encode()).hexdigest()[:20]
        target = cache_root() / "checkpoints" / key / filename
        stamp = str(info.get("etag") or info.get("md5Hash") or info.get("mtime") or "")
        stamp_file = target.with_name(target.name + ".stamp")
        if (
            target.is_file()
            and target.stat().st_size == info.get("size", -1)
            and (not stamp or (stamp_file.is_file() and stamp_file.read_text() == stamp))
        ):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download to a private temp name, then rename: concurrent workers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            fs.get_file(path, tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        stamp_file.write_text(stamp)
        return target

    def _get_hub(self, filename: str) -> Path | None:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return Path(hf_hub_download(self.location, filename, revision=self.revision))
        except LocalEntryNotFoundError:
            # Offline or unreachable, and not in the cache; this subclasses EntryNotFoundError
            # in huggingface_hub 1.x and later, so it is caught first. The cache knows a file
            # is absent only if a past online look-up found it so.
            cached = try_to_load_from_cache(self.location, filename, revision=self.revision)
            if isinstance(cached, str):
                return Path(cached)
            if cached is None:  # neither held nor known to be absent (a sentinel object)
                self._unchecked[filename] = _unreachable_reason()
            return None
        except EntryNotFoundError:
            return None


_OFFLINE = "HF_HUB_OFFLINE is set (offline mode)"


def _unreachable_reason() -> str:
    """Why a hub download found nothing it could use: offline mode, else no connection."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return _OFFLINE
    return "the hub could not be reached"


def _as_tuple(protocol: str | tuple[str, ...]) -> tuple[str, ...]:
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def close_bundled_name(source: str | os.PathLike) -> str | None:
    """The bundled checkpoint a mistyped ``source`` most likely means, or ``None``.

    ``None`` for an exact bundled name, an existing path, a URL or an ``org/name`` hub id: only a
    bare name within a typo or two of ``demo-clip`` / ``demo-chinese-clip`` is taken as a typo,
    so it is answered at once instead of after the hub's network retries.
    """
    import difflib

    text = os.fspath(source)
    if text in BUNDLED or "/" in text or _URL.match(text) or Path(text).expanduser().exists():
        return None
    close = difflib.get_close_matches(text.lower(), BUNDLED, n=1, cutoff=0.8)
    return close[0] if close else None


def resolve_source(source: str | os.PathLike, *, revision: str | None = None) -> CheckpointSource:
    """Finds a checkpoint, trying a local directory, an fsspec URL, then the Hugging Face Hub.

    Args:
        source: a bundled checkpoint name (``demo-clip``, ``demo-chinese-clip``), a local
            directory, an fsspec URL (``gs://bucket/dir``, ``memory://x``,
            ``file:///abs/dir``) or a hub repo id (``openai/clip-vit-base-patch32``).
        revision: a hub branch, tag or commit.

    Returns:
        The resolved source. Files are fetched lazily by :meth:`CheckpointSource.get`.

    Raises:
        CheckpointNotFoundError: nothing was found; the message names every place tried.
    """
    text = os.fspath(source)
    tried: list[str] = []

    if text in BUNDLED:
        bundled = Path(__file__).parent / "pretrained" / text
        if not (bundled / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"the bundled checkpoint {text!r} is missing from this installation ({bundled}); "
                f"reinstall clipbeam, or rebuild it with `clipbeam train --recipe {text}`"
            )
        return CheckpointSource(text, "local", str(bundled))
    typo = close_bundled_name(text)
    if typo is not None:
        raise CheckpointNotFoundError(
            f"checkpoint {text!r} is neither a bundled model nor a local folder: did you mean "
            f"{typo}? (bundled: {', '.join(BUNDLED)})"
        )

    if _URL.match(text):
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(text)
        except (ImportError, ValueError) as exc:
            raise CheckpointNotFoundError(
                f"cannot open checkpoint URL {text!r}: {exc}. Install the fsspec backend for "
                "this protocol (gcsfs for gs://, s3fs for s3://) or pass a local directory."
            ) from exc
        if fs.isdir(path):
            return CheckpointSource(text, "fsspec", text.rstrip("/"))
        raise CheckpointNotFoundError(
            f"checkpoint URL {text!r} is not a directory that exists (checked through "
            f"fsspec {type(fs).__name__}). Point --model at the folder holding config.json."
        )

    local = Path(text).expanduser()
    if local.is_dir():
        return CheckpointSource(text, "local", str(local.resolve()))
    if local.exists():
        tried.append(f"local path {local.resolve()} exists but is a file, not a checkpoint folder")
    else:
        tried.append(f"local directory {local.resolve()} does not exist")

    if _HUB_ID.match(text) and text.count("/") <= 1:
        hub_error = _probe_hub(text, revision)
        if hub_error is None:
            return CheckpointSource(text, "hub", text, revision)
        tried.append(f"Hugging Face Hub repo {text!r}: {hub_error}")
    else:
        tried.append("not a Hugging Face Hub repo id (expected 'name' or 'org/name')")

    raise CheckpointNotFoundError(
        f"checkpoint {text!r} not found. Tried:\n"
        + "\n".join(f"  - {t}" for t in tried)
        + "\nPass a local folder with config.json, an fsspec URL such as gs://bucket/model, "
        "or a hub id with huggingface_hub installed and the network reachable."
    )


def _probe_hub(repo_id: str, revision: str | None) -> str | None:
    """Returns ``None`` if the repo's config.json can be fetched, else why not."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        return "huggingface_hub is not installed (pip install 'clipbeam[hub]')"
    try:
        hf_hub_download(repo_id, "config.json", revision=revision)
    except LocalEntryNotFoundError:
        return f"not in the local hub cache and {_unreachable_reason()}"
    except RepositoryNotFoundError:
        return "no such repository (or it is private and no token is set)"
    except RevisionNotFoundError:
        return f"no revision {revision!r}"
    except EntryNotFoundError:
        return "the repository has no config.json"
    except OSError as exc:  # network errors surface as OSError subclasses
        return f"download failed: {exc}"
    return None
