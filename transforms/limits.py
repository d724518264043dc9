"""What one row may cost: image bytes and pixels, caption length, and fetching images by URL.

Curation data is scraped from the web, so a dataset holds every kind of broken or hostile cell:
a 300-byte PNG that claims 30000 x 30000 pixels, a URL that streams forever, a caption that is a
whole web page, a path that names ``/dev/zero``. Each limit here turns such a row into an error
row whose message names the limit and the option that raises it, instead of letting one row
exhaust a worker's memory or time.

:class:`Limits` holds the limits (the job options ``--max-image-pixels``, ``--max-image-bytes``,
``--max-text-chars``, ``--http-timeout`` and ``--allowed-url-schemes``); :func:`read_limited`
reads one image file or URL within them and :func:`check_caption` vets one caption cell.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.client
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from clipbeam.transforms.errors import RowError
from clipbeam.transforms.fetch_deadline import FetchDeadline
from clipbeam.transforms.redact import redact_url

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_TEXT_CHARS",
    "DEFAULT_URL_SCHEMES",
    "LOCAL_SCHEME",
    "Limits",
    "check_caption",
    "limit_problems",
    "pillow_pixel_ceiling",
    "read_limited",
    "url_scheme",
]

# Pillow's own decompression-bomb threshold (about 9459 x 9459): a 48-megapixel phone photo
# passes, a crafted header claiming billions of pixels does not.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# Far above any real photo on the web (a 100-megapixel JPEG is about 30 MB), small enough that a
# handful of concurrent downloads cannot exhaust a worker.
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Captions are truncated to the model's 52 or 77 tokens anyway; a "caption" this long is page
# text scraped by mistake, and tokenizing megabytes of it would only cost time.
DEFAULT_MAX_TEXT_CHARS = 10_000
DEFAULT_FETCH_TIMEOUT = 30.0
# The ranges each limit may take. Beyond them a value cannot work: a socket timeout past about
# 3e9 s overflows the platform's time_t (a traceback on the first URL), and limits past these
# would never bind a real image or caption anyway.
MAX_FETCH_TIMEOUT = 86_400.0  # a day
MAX_IMAGE_BYTES_CEILING = 1 << 40  # 1 TiB
MAX_TEXT_CHARS_CEILING = (1 << 31) - 1
# "file" stands for local paths (with or without file://); other schemes are read through
# fsspec (gs://) or HTTP.
LOCAL_SCHEME = "file"
DEFAULT_URL_SCHEMES = (LOCAL_SCHEME, "gs", "http", "https")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SCHEME_NAME = re.compile(r"^[a-z][a-z0-9+.\-]*$")
_CHUNK_BYTES = 1024 * 1024
_HTTP_CHUNK_BYTES = 64 * 1024
_USER_AGENT = "clipbeam (image-text dataset curation)"


def pillow_pixel_ceiling() -> int | None:
    """The most pixels Pillow opens at all: it refuses images above twice its
    ``Image.MAX_IMAGE_PIXELS`` whatever the caller's limit (``None`` if that check is off)."""
    from PIL import Image

    threshold = Image.MAX_IMAGE_PIXELS
    return None if threshold is None else 2 * int(threshold)


@dataclass(frozen=True)
class Limits:
    """How much one row may cost.

    Attributes:
        max_image_pixels: largest ``width * height`` decoded; checked from the image header
            before any pixel is decoded, so a decompression bomb costs nothing.
        max_image_bytes: largest encoded image accepted, from a cell, a file or a URL; a read
            stops after this many bytes, so a URL that streams forever costs at most this much.
        max_text_chars: longest caption accepted, in characters.
        fetch_timeout: seconds one image read by URL may take in all (connecting, waiting and
            downloading); a server that trickles bytes is cut off too.
        allowed_url_schemes: schemes image locations may use; ``"file"`` allows local paths.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    allowed_url_schemes: tuple[str, ...] = DEFAULT_URL_SCHEMES

    def __post_init__(self) -> None:
        schemes = tuple(s.strip().lower() for s in self.allowed_url_schemes)
        object.__setattr__(self, "allowed_url_schemes", schemes)
        problems = limit_problems(**dataclasses.asdict(self))
        if problems:
            raise ValueError("invalid limits:\n" + "\n".join(f"  - {p}" for p in problems))


def limit_problems(
    *,
    max_image_pixels: int,
    max_image_bytes: int,
    max_text_chars: int,
    fetch_timeout: float,
    allowed_url_schemes: Sequence[str],
) -> list[str]:
    """Everything wrong with these limits (the fields of :class:`Limits`), one message per
    problem; empty when they are valid. Names in messages are the job options' names."""
    problems: list[str] = []
    ceiling = pillow_pixel_ceiling()
    if max_image_pixels < 1:
        problems.append(f"max_image_pixels must be at least 1 (got {max_image_pixels})")
    elif ceiling is not None and max_image_pixels > ceiling:
        problems.append(
            f"max_image_pixels {max_image_pixels} is above {ceiling}, the most pixels Pillow "
            "opens at all (twice PIL.Image.MAX_IMAGE_PIXELS)"
        )
    for name, value, ceiling in (
        ("max_image_bytes", max_image_bytes, MAX_IMAGE_BYTES_CEILING),
        ("max_text_chars", max_text_chars, MAX_TEXT_CHARS_CEILING),
    ):
        if value < 1:
            problems.append(f"{name} must be at least 1 (got {value})")
        elif value > ceiling:
            problems.append(f"{name} must be at most {ceiling} (got {value})")
    if not 0 < fetch_timeout <= MAX_FETCH_TIMEOUT:  # NaN fails too
        problems.append(
            f"http_timeout must be in (0, {MAX_FETCH_TIMEOUT:g}] seconds (got {fetch_timeout})"
        )
    if not allowed_url_schemes:
        problems.append(
            "allowed_url_schemes is empty: no image could be read; allow at least one of "
            f"{', '.join(DEFAULT_URL_SCHEMES)}"
        )
    bad = [s for s in allowed_url_schemes if not _SCHEME_NAME.match(s)]
    if bad:
        problems.append(
            f"allowed_url_schemes holds {bad}, which are not URL schemes (expected names such as "
            f"{', '.join(DEFAULT_URL_SCHEMES)}, without '://')"
        )
    return problems


DEFAULT_LIMITS = Limits()


def url_scheme(location: str) -> str:
    """The scheme of a path or URL, lower case; :data:`LOCAL_SCHEME` for a local path."""
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else LOCAL_SCHEME


# -- captions --------------------------------------------------------------------------------------


def check_caption(value: Any, limits: Limits = DEFAULT_LIMITS, *, column: str = "text") -> str:
    """Turns one caption cell into a string the tokenizer may take.

    Empty and blank captions are valid (a filter's ``--min-text-chars`` may reject them); NUL
    characters and right-to-left text are left to the tokenizer, which handles both.

    Args:
        value: the cell as Python: ``str``, or ``bytes`` from a binary column (UTF-8 expected).
        limits: the job's limits (``max_text_chars``).
        column: the caption column's name, for messages.

    Raises:
        RowError: ``null_text`` for a null cell, ``invalid_value`` for bytes that are not UTF-8
            or a value of another type, ``text_too_long`` above ``max_text_chars``.
    """
    if value is None:
        raise RowError("null_text", f"caption column {column!r} is null")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowError(
                "invalid_value",
                f"caption column {column!r} holds {len(value)} bytes that are not UTF-8 text "
                f"(byte 0x{value[exc.start]:02x} at offset {exc.start}); re-encode the captions "
                "as UTF-8",
            ) from None
    if not isinstance(value, str):
        raise RowError(
            "invalid_value", f"caption column {column!r} holds a {type(value).__name__}, not text"
        )
    if len(value) > limits.max_text_chars:
        raise RowError(
            "text_too_long",
            f"caption has {len(value)} characters, more than --max-text-chars "
            f"{limits.max_text_chars}: page text scraped instead of a caption? Raise "
            "--max-text-chars to embed such texts (only their first tokens count)",
        )
    return value


# -- reading images ------------------------------------------------------------------------------


def read_limited(location: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Reads one image file or URL within ``limits``.

    Local paths must name regular files (not folders, devices or pipes). ``http(s)`` URLs are
    fetched with one GET under a total deadline, following redirects only to allowed ``http(s)``
    locations; other schemes (``gs://``...) go through fsspec with the deadline checked between
    chunks. Every read stops one byte past ``max_image_bytes``.

    Args:
        location: a local path or URL (already joined with the dataset's folder if relative).
        limits: the job's limits.

    Returns:
        The file's bytes.

    Raises:
        RowError: ``url_not_allowed``, ``missing_image`` (nothing there: no file, HTTP 404 or
            410), ``image_too_large`` or ``unreadable_image`` (anything else that went wrong,
            timeouts included). Messages show the location with credentials redacted.
    """
    scheme = url_scheme(location)
    if scheme not in limits.allowed_url_schemes:
        allowed = ", ".join(limits.allowed_url_schemes)
        shown = "local paths" if scheme == LOCAL_SCHEME else f"{scheme}:// URLs"
        raise RowError(
            "url_not_allowed",
            f"{redact_url(location)}: {shown} are not allowed (--allowed-url-schemes {allowed}); "
            f"add {scheme} there if this dataset's images live at such locations",
        )
    if scheme == LOCAL_SCHEME:
        return _read_local(location, limits)
    if scheme in ("http", "https"):
        return _fetch_http(location, limits)
    return _read_fsspec(location, limits)


def _too_large(shown: str, limits: Limits, size: int | None = None) -> RowError:
    """``image_too_large`` for a file of known ``size``, or for a read cut off at the limit."""
    limit = limits.max_image_bytes
    if size is None:
        found = f"sent more than --max-image-bytes {limit} bytes; stopped reading there"
    else:
        found = f"holds {size} bytes, over --max-image-bytes {limit}"
    return RowError(
        "image_too_large", f"{shown} {found} (raise the limit if such files are real images)"
    )


def _timed_out(shown: str, limits: Limits) -> RowError:
    return RowError(
        "unreadable_image",
        f"reading {shown} took more than --http-timeout {limits.fetch_timeout:g} s; gave up",
    )


def _read_local(location: str, limits: Limits) -> bytes:
    path = location[len("file://") :] if location.lower().startswith("file://") else location
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # Reading /dev/zero or a pipe named by a row would never end.
            raise RowError(
                "unreadable_image",
                f"{location} is not a regular file (a folder, device or pipe); expected an "
                "image file",
            )
        if info.st_size > limits.max_image_bytes:
            raise _too_large(location, limits, info.st_size)
        with open(path, "rb") as f:
            # The file may have grown since stat(): never read more than the limit plus one,
            # in chunks (read(n) would allocate n bytes up front, whatever the file's size).
            data = _read_at_most(f, limits.max_image_bytes + 1)
    except FileNotFoundError:
        raise RowError("missing_image", f"no image at {location}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        raise RowError(
            "unreadable_image", f"reading {location} failed: {_describe_failure(exc)}"
        ) from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(location, limits)
    return data


def _read_at_most(f: Any, most: int) -> bytes:
    """Up to ``most`` bytes of ``f``, read in chunks: memory follows what the file holds."""
    chunks: list[bytes] = []
    received = 0
    while received < most and (chunk := f.read(min(_CHUNK_BYTES, most - received))):
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an ``http(s)`` location whose scheme is allowed."""

    def __init__(self, limits: Limits):
        self.limits = limits

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        # Checked before urllib's own check, which would refuse file:// with a vaguer message.
        location = headers.get("Location") or headers.get("URI")
        if location:
            target = urllib.parse.urljoin(req.full_url, location)
            scheme = url_scheme(target)
            if scheme not in ("http", "https") or scheme not in self.limits.allowed_url_schemes:
                raise RowError(
                    "url_not_allowed",
                    f"{redact_url(req.full_url)} redirects to {redact_url(target)}; redirects "
                    "are only followed to http(s) locations that --allowed-url-schemes allows "
                    f"({', '.join(self.limits.allowed_url_schemes)})",
                )
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _fetch_http(url: str, limits: Limits) -> bytes:
    shown = redact_url(url)
    # One deadline for the whole fetch, redirects included: its connections take their timeout
    # from the time left, and a watchdog cuts their sockets when it runs out, so a server that
    # trickles its status line or headers, or a chain of slow redirects, is cut off too.
    deadline = FetchDeadline(limits.fetch_timeout)
    # build_opener keeps urllib's defaults (proxies from the environment, HTTPS with certificate
    # checks) and replaces only the redirect and connection handlers. No Accept-Encoding is
    # sent, so the server sends the bytes as they are and nothing is decompressed on the way.
    opener = urllib.request.build_opener(_Redirects(limits), *deadline.handlers())
    try:
        request = _request(url)
        with deadline, opener.open(request, timeout=limits.fetch_timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limits.max_image_bytes:
                raise _too_large(shown, limits, int(declared))
            chunks: list[bytes] = []
            received = 0
            while chunk := response.read1(_HTTP_CHUNK_BYTES):
                received += len(chunk)
                if received > limits.max_image_bytes:
                    raise _too_large(shown, limits)
                if time.monotonic() > deadline.expires:
                    raise _timed_out(shown, limits)
                chunks.append(chunk)
            if deadline.expired:  # the watchdog ended the body early
                raise _timed_out(shown, limits)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise RowError("missing_image", f"no image at {shown} (HTTP {exc.code})") from None
        raise RowError(
            "unreadable_image", f"reading {shown} failed: {_http_status(exc.code, exc.headers)}"
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError) or deadline.expired:
            raise _timed_out(shown, limits) from None
        raise RowError(
            "unreadable_image", f"reading {shown} failed: {_describe_failure(exc.reason)}"
        ) from None
    except TimeoutError:
        raise _timed_out(shown, limits) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if deadline.expired:  # what a read cut by the watchdog raises (reset, short read...)
            raise _timed_out(shown, limits) from None
        # Connection resets, malformed URLs or responses, bodies cut short by the server...
        raise RowError(
            "unreadable_image", f"reading {shown} failed: {_describe_failure(exc)}"
        ) from None
    return b"".join(chunks)


# A media type as servers send it ("text/html"), without parameters.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}")


def _http_status(code: int, headers: Any = None) -> str:
    """An HTTP status as its number and standard phrase, with the reply's media type: never the
    server's own words (its reason phrase or body), which may be anything, a token included."""
    try:
        phrase = f" {http.HTTPStatus(code).phrase}"
    except ValueError:
        phrase = ""
    media = (headers.get("Content-Type") or "") if headers is not None else ""
    media = media.split(";", 1)[0].strip()
    typed = f", a {media} reply" if _MEDIA_TYPE.fullmatch(media) else ""
    return f"HTTP {code}{phrase}{typed}"


def _describe_failure(exc: BaseException | str) -> str:
    """What went wrong reading a URL, in clipbeam's words: the texts of malformed URL and
    malformed reply errors quote what they could not parse (a fragment of a password, or a
    status line the server sent), so only their kind is told."""
    if isinstance(exc, http.client.IncompleteRead):
        return (
            f"the reply ended after {len(exc.partial)} bytes of its body; {exc.expected} more "
            "were announced"
        )
    if isinstance(exc, http.client.HTTPException):
        return f"the server's reply is not valid HTTP ({type(exc).__name__})"
    if isinstance(exc, ValueError):
        return (
            f"the location is malformed ({type(exc).__name__}); in a URL, characters such as "
            "/ ? # @ or blanks in a user name or password must be percent-encoded"
        )
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return f"{type(exc).__name__}, {_http_status(status)}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"  # the system's words, not the server's
    if isinstance(exc, str):
        return " ".join(exc.split())[:200]
    return type(exc).__name__


def _request(url: str) -> urllib.request.Request:
    """A GET for ``url``; user info in the URL becomes a Basic ``Authorization`` header.

    urllib cannot take ``user:password@`` in a URL; like curl, clipbeam sends it as Basic
    authentication, and only to that host: the header is not repeated after a redirect.
    """
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if parts.username is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        request = urllib.request.Request(
            urllib.parse.urlunsplit(parts._replace(netloc=netloc)),
            headers={"User-Agent": _USER_AGENT},
        )
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _read_fsspec(location: str, limits: Limits) -> bytes:
    from clipbeam.transforms import storage

    shown = redact_url(location)
    try:
        size, data = storage.read_within(location, limits.max_image_bytes, limits.fetch_timeout)
    except FileNotFoundError:
        raise RowError("missing_image", f"no image at {shown}") from None
    except TimeoutError:
        raise _timed_out(shown, limits) from None
    except _remote_read_errors() as exc:
        raise RowError(
            "unreadable_image", f"reading {shown} failed: {_describe_failure(exc)}"
        ) from None
    if data is None:
        raise _too_large(shown, limits, size)
    if len(data) > limits.max_image_bytes:
        raise _too_large(shown, limits)
    return data


@functools.cache
def _remote_read_errors() -> tuple[type[Exception], ...]:
    """What a failed fsspec read raises besides OSError: timeouts, aiohttp's client errors (not
    OSErrors) and gcsfs's HTTP errors for statuses it does not map to an OSError."""
    errors: list[type[Exception]] = [OSError, TimeoutError, ValueError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:  # no HTTP filesystem installed: nothing aiohttp-specific can be raised
        pass
    try:
        from gcsfs.retry import HttpError

        errors.append(HttpError)
    except ImportError:  # no gcsfs: gs:// paths are refused earlier by the storage layer
        pass
    return tuple(errors)
