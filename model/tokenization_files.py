"""Loading a tokenizer from a checkpoint's files and saving it in the hub layout.

:class:`_TokenizerFiles` is the second layer of the tokenizer base
(:class:`~clipbeam.model.tokenization_utils._TokenizerBase`), on top of
:class:`~clipbeam.model.tokenization_vocab._TokenizerVocab`. ``from_pretrained`` reads
``tokenizer.json`` (else the family's vocabulary files), ``tokenizer_config.json`` and the legacy
``special_tokens_map.json`` the way transformers 5 does; ``save_pretrained`` writes a folder that
this class and transformers both load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tokenizers import AddedToken

from .hub import CheckpointError, read_json_object, resolve_source
from .tokenization_vocab import (
    SPECIAL_TOKENS_ATTRIBUTES,
    _added_token_from_dict,
    _as_added_token,
    _TokenizerVocab,
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

_T = TypeVar("_T", bound="_TokenizerFiles")


# -- files ----------------------------------------------------------------------------------------


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return read_json_object(path)


def _check_tokenizer_json(path: Path, data: dict[str, Any], *, bpe: bool) -> None:
    """Checks the types of the ``tokenizer.json`` keys clipbeam reads; names the first bad key."""

    def bad(key: str, expected: str, value: Any) -> CheckpointError:
        return CheckpointError(
            f"{path}: key {key} must be {expected} (got {type(value).__name__}); re-download the "
            "file, or save the tokenizer again with tokenizers or transformers"
        )

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    vocab = data["model"]["vocab"]
    if not isinstance(vocab, dict):
        raise bad("model.vocab", "an object of token -> integer id", vocab)
    for token, index in vocab.items():
        if not is_int(index):
            raise bad(f"model.vocab[{token[:40]!r}]", "an integer id", index)
    if bpe:
        merges = data["model"].get("merges")
        if not isinstance(merges, list):
            raise bad("model.merges", "a list of merges", merges)
        for i, merge in enumerate(merges):
            pair = isinstance(merge, list) and len(merge) == 2
            if not (isinstance(merge, str) or (pair and all(isinstance(m, str) for m in merge))):
                raise bad(f"model.merges[{i}]", "'left right' or a pair of strings", merge)
    added = data.get("added_tokens", [])
    if not isinstance(added, list):
        raise bad("added_tokens", "a list of token objects", added)
    for i, token in enumerate(added):
        if not isinstance(token, dict):
            raise bad(f"added_tokens[{i}]", "an object", token)
        if not is_int(token.get("id")):
            raise bad(f"added_tokens[{i}].id", "an integer", token.get("id"))
        if not isinstance(token.get("content"), str):
            raise bad(f"added_tokens[{i}].content", "a string", token.get("content"))


def _pick(
    what: str, value: Any, file: str | os.PathLike | None, reader: Any, owner: str
) -> Any | None:
    """``value`` (an object or a path) or the contents of ``file``; not both."""
    if value is not None and file is not None:
        raise TypeError(f"{owner}: pass {what}= or {what}_file=, not both")
    if file is not None:
        return reader(file)
    if isinstance(value, (str, os.PathLike)):
        return reader(value)
    return value


def _token_state(token: AddedToken) -> dict[str, Any]:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


# -- the layer ---------------------------------------------------------------------------------


# tokenizer_config.json keys that describe the files, not the tokenizer: never constructor options.
_BOOKKEEPING_KEYS = frozenset(
    {
        "tokenizer_class",
        "auto_map",
        "name_or_path",
        "special_tokens_map_file",
        "tokenizer_file",
        "vocab_file",
        "merges_file",
        "processor_class",
        "added_tokens_decoder",
        "extra_special_tokens",
        "additional_special_tokens",
        "transformers_version",
        "backend",
    }
)


class _TokenizerFiles(_TokenizerVocab):
    """The second layer of :class:`~clipbeam.model.tokenization_utils._TokenizerBase`.

    Builds a tokenizer from a checkpoint (:meth:`from_pretrained`) and writes one
    (:meth:`save_pretrained`); a family says which vocabulary files it reads and writes.
    """

    # tokenizer_config.json keys (besides the shared ones) passed to the constructor
    _config_keys: ClassVar[tuple[str, ...]] = ()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[_T], source: str | os.PathLike, *, revision: str | None = None, **kwargs: Any
    ) -> _T:
        """Loads the tokenizer of a checkpoint (folder, fsspec URL or hub id).

        Reads ``tokenizer.json`` if the checkpoint has one, else the family's vocabulary files
        (``vocab.json`` + ``merges.txt`` for CLIP, ``vocab.txt`` for BERT), and the options of
        ``tokenizer_config.json`` and ``special_tokens_map.json``. As in transformers 5, only the
        vocabulary, merges and added tokens come from ``tokenizer.json``; the text pipeline is
        the family's, set up by the config (``do_lower_case``...).

        Args:
            source: where the checkpoint is; see :func:`clipbeam.model.hub.resolve_source`.
            revision: hub branch, tag or commit.
            **kwargs: constructor options; they override the config files.

        Raises:
            CheckpointNotFoundError: the checkpoint has no vocabulary for this family.
            CheckpointError: the files are unreadable or for another tokenizer family.
        """
        checkpoint = resolve_source(source, revision=revision)
        config = _read_json(checkpoint.get(TOKENIZER_CONFIG_FILE))
        if "added_tokens_decoder" not in config:
            # transformers reads the legacy special_tokens_map.json only in this case, and lets
            # it override the config.
            config.update(_read_json(checkpoint.get(SPECIAL_TOKENS_MAP_FILE)))
        options = cls._options_from_config(config)
        tokenizer_json = checkpoint.get(TOKENIZER_FILE)
        if tokenizer_json is not None:
            vocab_options = cls._read_tokenizer_json(tokenizer_json)
            if "added_tokens_decoder" in config:
                vocab_options.pop("added_tokens_decoder")
        else:
            vocab_options = cls._vocab_files_options(checkpoint)
        options.update(vocab_options)
        options.setdefault("name_or_path", os.fspath(source))
        options.update(kwargs)
        return cls(**options)

    @classmethod
    def _options_from_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor options a tokenizer_config.json (or special tokens map) sets."""
        keys = {
            *SPECIAL_TOKENS_ATTRIBUTES,
            "model_max_length",
            "max_len",
            "padding_side",
            "truncation_side",
            "clean_up_tokenization_spaces",
            "model_input_names",
            *cls._config_keys,
        }
        options = {k: v for k, v in config.items() if k in keys}
        # Other options (call defaults such as max_length, family flags of other versions) are
        # kept in init_kwargs, as transformers keeps them; file bookkeeping is not.
        options.update(
            (k, v) for k, v in config.items() if k not in keys and k not in _BOOKKEEPING_KEYS
        )
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            if options.get(key) is not None:
                options[key] = _as_added_token(options[key])
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
        # transformers 4.5x wrote extra_special_tokens as a name -> token dict.
        if isinstance(extra, Mapping):
            extra = list(extra.values())
        if extra:
            options["additional_special_tokens"] = list(extra)
        if "added_tokens_decoder" in config:
            options["added_tokens_decoder"] = {
                int(i): _added_token_from_dict(t) for i, t in config["added_tokens_decoder"].items()
            }
        return options

    @classmethod
    def _read_tokenizer_json(cls, path: Path) -> dict[str, Any]:
        data = _read_json(path)
        model = data.get("model")
        if not isinstance(model, dict) or "vocab" not in model:
            raise CheckpointError(f"{path} has no model vocabulary; is it a tokenizers file?")
        if model.get("type") != cls._model_type:
            raise CheckpointError(
                f"{path} holds a {model.get('type')} tokenizer; {cls.__name__} needs "
                f"{cls._model_type}. Load this checkpoint with its own tokenizer class."
            )
        _check_tokenizer_json(path, data, bpe=cls._model_type == "BPE")
        options: dict[str, Any] = {"vocab": dict(model["vocab"])}
        if cls._model_type == "BPE":
            options["merges"] = [
                tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]
            ]
        options["added_tokens_decoder"] = {
            int(t["id"]): _added_token_from_dict(t) for t in data.get("added_tokens", [])
        }
        return options

    @classmethod
    def _vocab_files_options(cls, checkpoint: Any) -> dict[str, Any]:
        raise NotImplementedError

    # -- saving --------------------------------------------------------------------------------

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes the family's vocabulary files; returns their paths."""
        raise NotImplementedError

    def save_pretrained(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes a checkpoint folder that this class and transformers can load.

        Files: ``tokenizer_config.json``, ``special_tokens_map.json``, ``tokenizer.json`` and the
        vocabulary files of :meth:`save_vocabulary`.

        Args:
            save_directory: the folder (created if missing).
            filename_prefix: prefix for the file names (``prefix-tokenizer.json``...).

        Returns:
            The paths written.
        """
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_pretrained needs a directory; {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        special = self.special_tokens_map
        if self._extra:
            special["additional_special_tokens"] = self.extra_special_tokens
        config: dict[str, Any] = {
            **self._kept_options,
            "tokenizer_class": type(self).__name__.removesuffix("Fast"),
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **self._family_config(),
            **special,
            "added_tokens_decoder": {
                str(i): _token_state(t) for i, t in self.added_tokens_decoder.items()
            },
        }
        if self.model_input_names != type(self).model_input_names:
            config["model_input_names"] = self.model_input_names
        written = []
        for name, content in (
            (TOKENIZER_CONFIG_FILE, config),
            (SPECIAL_TOKENS_MAP_FILE, special),
        ):
            path = directory / (prefix + name)
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", "utf-8")
            written.append(str(path))
        path = directory / (prefix + TOKENIZER_FILE)
        self._backend.save(str(path))
        written.append(str(path))
        return (*written, *self.save_vocabulary(directory, filename_prefix))
