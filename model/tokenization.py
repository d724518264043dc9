"""Tokenizers for CLIP (byte-level BPE) and Chinese-CLIP (BERT WordPiece) on the Rust `tokenizers`.

``CLIPTokenizer`` and ``BertTokenizer`` have the API of the transformers 5 classes of the same
names (``__call__``, ``encode``, ``decode``, ``from_pretrained``, ``save_pretrained``...) and give
the same token ids, attention masks and token type ids; ``tests/model/test_tokenization.py``
checks that against transformers on several hundred strings. ``CLIPTokenizerFast`` and
``BertTokenizerFast`` are the same classes under their older names.

Behaviour, as in transformers 5.23:

* CLIP text is NFC-normalized, whitespace runs become one space, then lowercased. There is no
  ftfy and no HTML unescaping: ``"&amp;"`` stays three tokens. (OpenAI's original tokenizer ran
  ``ftfy.fix_text`` and ``html.unescape``; transformers 5 no longer does, with or without ftfy.)
* The empty string encodes to ``[bos, eos]`` (CLIP) or ``[CLS, SEP]`` (BERT).
* Text longer than the context is kept whole unless ``truncation=True`` or ``max_length`` is
  given (a warning is logged); ``truncation=True`` cuts to ``model_max_length``, keeping the
  end-of-text token.
* Pairs are ``<bos> A <eos> <eos> B <eos>`` for CLIP and ``[CLS] A [SEP] B [SEP]`` with token type
  ids 0 then 1 for BERT; ``truncation=True`` shortens the longer sequence first.
* Padding uses the checkpoint's ``pad_token``: ``<|endoftext|>`` (49407) for OpenAI CLIP, ``"!"``
  (id 0) in some LAION configs, ``[PAD]`` (0) for BERT.

Where transformers silently does something surprising, these classes raise or differ instead:

* A constructor without a vocabulary raises (transformers builds a 3-token vocabulary), and the
  transformers 4 arguments ``vocab_file=``/``merges_file=`` are honoured (transformers 5 ignores
  them for ``CLIPTokenizer``).
* Without ``model_max_length`` in the arguments or in ``tokenizer_config.json``, it defaults to the
  model's context (77 for CLIP, 512 for BERT) rather than "unlimited".
* A ``max_length`` too small to hold the special tokens raises (transformers does not truncate).
* Decoding an id outside the vocabulary raises (transformers drops it).
* Setting a special token that is not in the vocabulary raises (transformers maps it to unk).
* ``text_pair=""`` is a pair with an empty second sequence, for a single text as for a batch.

The encoders never change the settings of the shared Rust tokenizer, so one instance can serve
several threads (Beam runs DoFns in threads); only adding tokens, at construction, mutates it.
For the Beam engine, :meth:`encode_batch_ids` and :meth:`pad_batch` split tokenization from
padding so texts can be bucketed by length and each batch padded to its own longest.
"""

from __future__ import annotations

import copy
import gzip
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from tokenizers import (
    AddedToken,
    Encoding,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE, WordPiece

from .batch import BatchEncoding
from .hub import CheckpointError, CheckpointNotFoundError, resolve_source

__all__ = [
    "BertTokenizer",
    "BertTokenizerFast",
    "CLIPTokenizer",
    "CLIPTokenizerFast",
    "bytes_to_unicode",
    "load_openai_bpe",
]

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# transformers' marker for "no length limit": int(1e30) is what it writes to tokenizer_config.json
# and anything above 1e20 disables length-based truncation and padding.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CHINESE_ROBERTA_VOCAB_FILE = "chinese_roberta_wwm_ext_vocab.txt"
# OpenAI's SimpleTokenizer keeps the first 49152 - 256 - 2 merges of the file: with 2 * 256 byte
# tokens and 2 special tokens that makes the 49408-token vocabulary of every CLIP checkpoint.
OPENAI_BPE_MERGES = 49152 - 256 - 2

# CLIP's word split (as in transformers' CLIPTokenizer): special tokens, English contractions,
# runs of letters, single digits, runs of other non-space symbols. Whitespace is dropped.
CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

_PADDING = {"longest": "longest", "max_length": "max_length", "do_not_pad": None}
_TRUNCATION = {
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
    "do_not_truncate": None,
}

TokenLike = str | AddedToken
_T = TypeVar("_T", bound="_TokenizerBase")


# -- vocabulary files ---------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """Maps each of the 256 byte values to a printable character, as GPT-2 and CLIP do.

    Printable Latin-1 bytes map to themselves; the others (controls, space, ...) are moved to
    code points from 256 up, so every byte sequence becomes a string of visible characters that
    BPE can merge. The order of the dict (printable bytes first) is the order of the first 256
    tokens of CLIP's vocabulary.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def load_openai_bpe(
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Builds CLIP's vocabulary and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

    The vocabulary is built the way OpenAI's ``SimpleTokenizer`` builds it: the 256 byte
    characters, the same with the ``</w>`` end-of-word suffix, the concatenation of each of the
    first 48894 merges, then ``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens).

    Args:
        path: the gzipped merges file; ``None`` for the copy bundled with this package.

    Returns:
        ``(vocab, merges)``: token to id, and the merges in priority order.

    Raises:
        CheckpointError: the file has fewer merges than CLIP needs or a malformed line.
    """
    if path is None:
        raw = resources.files(__package__).joinpath("data", OPENAI_BPE_FILE).read_bytes()
        where = f"bundled {OPENAI_BPE_FILE}"
    else:
        raw = Path(path).read_bytes()
        where = os.fspath(path)
    # Only the head of the 262k-line file is used: split off just that.
    lines = gzip.decompress(raw).decode("utf-8").split("\n", OPENAI_BPE_MERGES + 1)
    # Line 0 is the "#version" header; OpenAI skips it and keeps the next 48894 lines.
    merge_lines = lines[1 : OPENAI_BPE_MERGES + 1]
    if len(merge_lines) < OPENAI_BPE_MERGES:
        raise CheckpointError(
            f"{where} has {len(merge_lines)} merges after its header; CLIP needs "
            f"{OPENAI_BPE_MERGES}. Pass the original bpe_simple_vocab_16e6.txt.gz."
        )
    merges = [_parse_merge(line, where, number) for number, line in enumerate(merge_lines, 2)]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = [
        *byte_tokens,
        *(token + "</w>" for token in byte_tokens),
        *(left + right for left, right in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    return {token: index for index, token in enumerate(tokens)}, merges


def _parse_merge(line: str, where: str, number: int) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 2 or not all(parts):
        raise CheckpointError(
            f"{where} line {number}: expected a merge of two tokens separated by one space, "
            f"got {line!r}"
        )
    return parts[0], parts[1]


def _read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Reads a ``merges.txt``: an optional ``#version`` header, then one ``left right`` a line."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    return [
        _parse_merge(line.removesuffix("\r"), os.fspath(path), number)
        for number, line in enumerate(lines, 1)
        if line.strip() and not (number == 1 and line.startswith("#version"))
    ]


def _read_vocab_json(path: str | os.PathLike) -> dict[str, int]:
    vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise CheckpointError(f"{os.fspath(path)} must be a JSON object of token -> integer id")
    return vocab


def _read_wordpiece_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Reads a ``vocab.txt``: one token a line, its id the line number from 0.

    As the Rust reader transformers uses: lines are split on ``\\n`` only (not on U+2028, a
    line separator to ``str.splitlines``), trailing Unicode whitespace is dropped (so the
    Chinese vocabulary's ``"\\u2028"`` entry reads as ``""``), and a repeated token keeps
    its last id.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {line.rstrip(): index for index, line in enumerate(lines)}


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _bundled(name: str) -> Path:
    path = Path(str(resources.files(__package__).joinpath("data", name)))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"the bundled vocabulary {path} is missing; reinstall clipbeam"
        )
    return path


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


# -- special and added tokens -------------------------------------------------------------------


def _as_added_token(value: TokenLike | Mapping[str, Any]) -> AddedToken:
    """A special token as an ``AddedToken`` (strings become special, unnormalized tokens)."""
    if isinstance(value, AddedToken):
        token = copy.deepcopy(value)
        token.special = True
        return token
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, Mapping):
        fields = {k: v for k, v in value.items() if k not in ("__type", "special")}
        try:
            return AddedToken(**fields, special=True)
        except TypeError as exc:
            raise CheckpointError(f"cannot read the added token {dict(value)!r}: {exc}") from exc
    raise TypeError(f"a special token must be a str or AddedToken, got {type(value).__name__}")


def _content(token: TokenLike) -> str:
    return token if isinstance(token, str) else token.content


def _added_token_from_dict(value: Mapping[str, Any]) -> AddedToken:
    fields = {k: v for k, v in value.items() if k not in ("__type", "id")}
    try:
        return AddedToken(**fields)
    except TypeError as exc:
        raise CheckpointError(f"cannot read the added token {dict(value)!r}: {exc}") from exc


def _token_state(token: AddedToken) -> dict[str, Any]:
    return {
        "content": token.content,
        "lstrip": token.lstrip,
        "normalized": token.normalized,
        "rstrip": token.rstrip,
        "single_word": token.single_word,
        "special": token.special,
    }


class _SpecialToken:
    """Descriptor for ``tokenizer.pad_token`` (a str or None) and ``tokenizer.pad_token_id``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.as_id = name.endswith("_id")
        self.key = name.removesuffix("_id")

    def __get__(self, obj: _TokenizerBase | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        token = obj._special[self.key]
        if token is None:
            return None
        return obj._backend.token_to_id(token.content) if self.as_id else token.content

    def __set__(self, obj: _TokenizerBase, value: Any) -> None:
        obj._set_special_token(self.key, value, by_id=self.as_id)


# -- truncation -----------------------------------------------------------------------------------


def _truncate(
    first: Encoding, second: Encoding | None, budget: int, strategy: str, direction: str
) -> None:
    """Shortens ``first`` (and ``second``) in place to ``budget`` tokens, as tokenizers does.

    The rules are those of the Rust ``truncate_encodings`` that transformers relies on, so the
    results match it token for token: ``longest_first`` trims the longer sequence down to the
    shorter one, then both to half the budget each; ``only_first``/``only_second`` trim one side.
    """
    if budget == 0:
        first.truncate(0, direction=direction)
        if second is not None:
            second.truncate(0, direction=direction)
        return
    total = len(first) + (len(second) if second is not None else 0)
    if total <= budget:
        return
    excess = total - budget
    if strategy == "longest_first":
        if second is None:
            first.truncate(budget, direction=direction)
            return
        n1, n2 = len(first), len(second)
        swapped = n1 > n2
        if swapped:
            n1, n2 = n2, n1
        # n1 is now the shorter one: keep it whole if the longer can absorb the cut.
        n2 = n1 if n1 > budget else max(n1, budget - n1)
        if n1 + n2 > budget:
            n1 = budget // 2
            n2 = n1 + budget % 2
        if swapped:
            n1, n2 = n2, n1
        first.truncate(n1, direction=direction)
        second.truncate(n2, direction=direction)
        return
    if strategy == "only_second" and second is None:
        raise ValueError("truncation='only_second' needs a text_pair; got a single text")
    target = first if strategy == "only_first" else second
    assert target is not None
    if len(target) <= excess:
        which = "first" if strategy == "only_first" else "second"
        raise ValueError(
            f"truncation={strategy!r} cannot fit the input in max_length: the {which} sequence "
            f"has {len(target)} tokens but {excess} must go. Use truncation='longest_first' or "
            "a larger max_length."
        )
    target.truncate(len(target) - excess, direction=direction)


# -- the shared implementation ------------------------------------------------------------------


class _TokenizerBase:
    """What CLIP's and BERT's tokenizers share: encoding, decoding, special tokens, saving.

    Subclasses build the Rust pipeline (model, normalizer, pre-tokenizer, decoder) and say how
    special tokens wrap one or two sequences.
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    # the Rust model type a tokenizer.json must have for this class
    _model_type: ClassVar[str] = ""
    # model_max_length when neither the arguments nor tokenizer_config.json give one
    _default_model_max_length: ClassVar[int] = VERY_LARGE_INTEGER
    # tokenizer_config.json keys (besides the shared ones) passed to the constructor
    _config_keys: ClassVar[tuple[str, ...]] = ()
    # the special tokens the post-processor writes into every sequence
    _template_tokens: ClassVar[tuple[str, ...]] = ()

    bos_token = _SpecialToken()
    eos_token = _SpecialToken()
    unk_token = _SpecialToken()
    sep_token = _SpecialToken()
    pad_token = _SpecialToken()
    cls_token = _SpecialToken()
    mask_token = _SpecialToken()
    bos_token_id = _SpecialToken()
    eos_token_id = _SpecialToken()
    unk_token_id = _SpecialToken()
    sep_token_id = _SpecialToken()
    pad_token_id = _SpecialToken()
    cls_token_id = _SpecialToken()
    mask_token_id = _SpecialToken()

    def __init__(
        self,
        backend: Tokenizer,
        special_tokens: Mapping[str, TokenLike | Mapping[str, Any] | None],
        *,
        model_max_length: int | None = None,
        max_len: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        clean_up_tokenization_spaces: bool = False,
        additional_special_tokens: Sequence[TokenLike] | None = None,
        extra_special_tokens: Sequence[TokenLike] | None = None,
        added_tokens_decoder: Mapping[int, AddedToken | Mapping[str, Any]] | None = None,
        model_input_names: Sequence[str] | None = None,
        name_or_path: str = "",
    ) -> None:
        """Wraps ``backend`` and registers the special and added tokens in it.

        Args:
            backend: the Rust tokenizer with model, normalizer, pre-tokenizer and decoder set.
            special_tokens: ``{"bos_token": ..., "pad_token": ...}``; ``None`` leaves one unset.
            model_max_length: the longest input the model accepts; what ``truncation=True``
                and ``padding="max_length"`` use when ``max_length`` is not given. Values above
                1e20 mean "no limit", as in transformers. Defaults to the model's context.
            max_len: old transformers name of ``model_max_length``.
            padding_side: ``"right"`` or ``"left"``.
            truncation_side: ``"right"`` (keep the beginning) or ``"left"`` (keep the end).
            clean_up_tokenization_spaces: default of :meth:`decode`'s argument of that name.
            additional_special_tokens: more special tokens (never split, skipped by decode).
            extra_special_tokens: transformers 5 name of ``additional_special_tokens``.
            added_tokens_decoder: id -> added token, as saved by transformers; each must get
                that id, else the files are inconsistent and ``CheckpointError`` is raised.
            model_input_names: the keys ``__call__`` returns by default.
            name_or_path: where the tokenizer was loaded from (for ``repr``).
        """
        self._backend = backend
        if model_max_length is None:
            model_max_length = max_len
        self.model_max_length = (
            self._default_model_max_length if model_max_length is None else int(model_max_length)
        )
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.model_input_names = list(model_input_names or type(self).model_input_names)
        self.name_or_path = name_or_path
        self._warned: set[str] = set()
        _check_side("padding_side", padding_side)
        _check_side("truncation_side", truncation_side)

        unknown = set(special_tokens) - set(SPECIAL_TOKENS_ATTRIBUTES)
        if unknown:
            raise TypeError(f"unknown special token names {sorted(unknown)}")
        self._special: dict[str, AddedToken | None] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        for key, value in special_tokens.items():
            self._special[key] = None if value is None else _as_added_token(value)
        if additional_special_tokens is not None and extra_special_tokens is not None:
            raise TypeError("pass additional_special_tokens= or extra_special_tokens=, not both")
        extra = additional_special_tokens or extra_special_tokens or []
        self._extra = [_as_added_token(token) for token in extra]

        self._register_tokens(added_tokens_decoder or {})
        for key in self._template_tokens:
            if self._special[key] is None:
                raise ValueError(f"{type(self).__name__} needs a {key}; got None")
        self._update_post_processor()

    def _register_tokens(self, recorded: Mapping[int, AddedToken | Mapping[str, Any]]) -> None:
        """Adds the recorded added tokens, then the special tokens, to the backend.

        The steps are transformers', so the outcome is too: tokens missing from the vocabulary
        get the same new ids (recorded tokens by id, then named special tokens, then extra
        ones), and when one content comes with different flags (an ``AddedToken`` dict for
        ``eos_token`` and a plain string for ``pad_token``), the last one listed wins.
        """
        tokens = [
            token if isinstance(token, AddedToken) else _added_token_from_dict(token)
            for _, token in sorted((int(i), t) for i, t in recorded.items())
        ]
        recorded_contents = {token.content for token in tokens}
        for token in [t for t in self._special.values() if t is not None] + self._extra:
            if token.content in recorded_contents or token in tokens:
                continue
            if self._backend.token_to_id(token.content) is None and all(
                t.content != token.content for t in tokens
            ):
                logger.warning(
                    "special token %r is not in the vocabulary; it gets a new id beyond the %d "
                    "tokens the model embeds",
                    token.content,
                    self._backend.get_vocab_size(with_added_tokens=False),
                )
            tokens.append(token)
        if tokens:
            self._backend.add_tokens(tokens)
        for index, token in sorted((int(i), t) for i, t in recorded.items()):
            content = token.content if isinstance(token, AddedToken) else token.get("content")
            got = self._backend.token_to_id(content)
            if got != index:
                raise CheckpointError(
                    f"added token {content!r} is recorded with id {index} but gets id {got} in "
                    f"a vocabulary of {self._backend.get_vocab_size()} tokens; the tokenizer "
                    "files disagree. Re-save the tokenizer with save_pretrained."
                )

    # -- subclass hooks ------------------------------------------------------------------------

    def _update_post_processor(self) -> None:
        """Sets the Rust post-processor that adds the special tokens around the sequences."""
        raise NotImplementedError

    def _special_tokens_mask(self, n0: int, n1: int | None) -> list[int]:
        raise NotImplementedError

    def _finish_decoded(self, text: str) -> str:
        """Family-specific fix-up of the text the Rust decoder returns."""
        return text

    def _family_config(self) -> dict[str, Any]:
        """Constructor options of the family, as saved in tokenizer_config.json."""
        return {}

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """Adds the model's special tokens around one sequence of ids or a pair of them."""
        raise NotImplementedError

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """The token type ids of :meth:`build_inputs_with_special_tokens`' output."""
        raise NotImplementedError

    # -- special tokens ------------------------------------------------------------------------

    def _set_special_token(self, key: str, value: Any, *, by_id: bool) -> None:
        if value is None:
            if key in self._template_tokens:
                raise ValueError(f"{type(self).__name__} cannot work without a {key}")
            self._special[key] = None
            return
        if by_id:
            token = self._backend.id_to_token(int(value))
            if token is None:
                raise ValueError(f"{key}_id={value} is not an id of this {len(self)}-token vocab")
            value = token
        if not isinstance(value, (str, AddedToken)):
            raise TypeError(f"{key} must be a str or AddedToken, got {type(value).__name__}")
        content = str(value) if isinstance(value, str) else value.content
        if self._backend.token_to_id(content) is None:
            raise ValueError(
                f"{key}={content!r} is not in the vocabulary; use a token it has (for padding, "
                f"tokenizer.{key} = tokenizer.eos_token is the usual choice)"
            )
        self._special[key] = _as_added_token(value)
        if key in self._template_tokens:
            self._update_post_processor()

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, e.g. ``{"bos_token": "<|startoftext|>", ...}``."""
        return {k: t.content for k, t in self._special.items() if t is not None}

    @property
    def extra_special_tokens(self) -> list[str]:
        """Special tokens beyond the named ones."""
        return [t.content for t in self._extra]

    additional_special_tokens = extra_special_tokens

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token, named then extra, without repeats."""
        tokens = [*self.special_tokens_map.values(), *self.extra_special_tokens]
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of :attr:`all_special_tokens`."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def pad_token_type_id(self) -> int:
        """The token type id of padding positions."""
        return 0

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The Rust ``tokenizers.Tokenizer`` doing the work (do not change its settings)."""
        return self._backend

    @property
    def is_fast(self) -> bool:
        """Always ``True``: these tokenizers run on the Rust library."""
        return True

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without tokens added beyond it."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary, added tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Id -> ``AddedToken`` for the tokens matched before the model (special ones included)."""
        return dict(sorted(self._backend.get_added_tokens_decoder().items()))

    def get_added_vocab(self) -> dict[str, int]:
        """Content -> id of the added tokens."""
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens wrap a single sequence (or a pair)."""
        return self._backend.num_special_tokens_to_add(pair)

    @property
    def max_len_single_sentence(self) -> int:
        """The most tokens of text one sequence can hold within ``model_max_length``."""
        return self.model_max_length - self.num_special_tokens_to_add(False)

    @property
    def max_len_sentences_pair(self) -> int:
        """The most tokens of text a pair can hold within ``model_max_length``."""
        return self.model_max_length - self.num_special_tokens_to_add(True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Ids of tokens (strings of the vocabulary); unknown ones give ``unk_token_id``."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(token) for token in tokens]

    def _token_to_id(self, token: str) -> int:
        index = self._backend.token_to_id(token)
        return self.unk_token_id if index is None else index

    def convert_ids_to_tokens(
        self, ids: int | Sequence[int], skip_special_tokens: bool = False
    ) -> str | list[str] | None:
        """Token strings of ids; a single int gives one string (``None`` if out of range)."""
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        tokens = []
        for index in _to_python(ids):
            if index not in skip:
                tokens.append(self._backend.id_to_token(int(index)))
        return tokens

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Joins tokens back into text with the family's decoder."""
        return self._finish_decoded(self._backend.decoder.decode(list(tokens)))

    # -- encoding ------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Tokenizes one text or a batch (optionally with second texts) for the model.

        Args:
            text: a string, or a list of strings (a batch).
            text_pair: second sequence(s): a string for a single text, a list for a batch.
            add_special_tokens: wrap the sequences in the model's special tokens.
            padding: ``True``/``"longest"`` pads to the longest in the batch,
                ``"max_length"`` to ``max_length`` (default ``model_max_length``),
                ``False``/``"do_not_pad"`` leaves lengths as they are.
            truncation: ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"``, or
                ``False``/``"do_not_truncate"``. ``None`` means ``"longest_first"`` when only
                ``max_length`` is given, else no truncation (as in transformers).
            max_length: length limit for truncation and ``padding="max_length"``, special
                tokens included; defaults to ``model_max_length``.
            pad_to_multiple_of: round padded lengths up to a multiple of this.
            padding_side: overrides :attr:`padding_side` for this call.
            return_tensors: ``"pt"``, ``"np"`` or ``None`` (Python lists).
            return_token_type_ids: defaults to whether the model takes ``token_type_ids``.
            return_attention_mask: defaults to whether the model takes ``attention_mask``.
            return_special_tokens_mask: also return 1 for special tokens, 0 for text.
            return_offsets_mapping: also return each token's ``(start, end)`` in its text.
            return_length: also return each sequence's length (after padding).
            verbose: log a warning for sequences longer than ``model_max_length``.

        Returns:
            A :class:`~clipbeam.model.batch.BatchEncoding`. For a single string without
            ``return_tensors`` each value is one list; otherwise one row per text.

        Raises:
            TypeError: a text is not a string.
            ValueError: inconsistent options (padding without a pad token, a ``max_length``
                that cannot hold the special tokens, ragged sequences with ``return_tensors``).
        """
        texts, batched = _as_texts(text, "text")
        pairs = None
        if text_pair is not None:
            if batched != (not isinstance(text_pair, str)):
                raise TypeError(
                    "text_pair must be a str for a single text and a list for a batch "
                    f"(got text={type(text).__name__}, text_pair={type(text_pair).__name__})"
                )
            pairs, _ = _as_texts(text_pair, "text_pair")
            if len(pairs) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        pad, trunc, max_length = self._strategies(
            padding, truncation, max_length, pad_to_multiple_of, verbose
        )
        encodings = self._encode(
            texts,
            pairs,
            add_special_tokens=add_special_tokens,
            truncation=trunc,
            max_length=max_length,
        )
        if pad is not None:
            target = (
                max_length if pad == "max_length" else max((len(e) for e in encodings), default=0)
            )
            self._pad(encodings, target, pad_to_multiple_of, padding_side)
        if verbose and max_length is None:
            self._warn_if_too_long(encodings)

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data: dict[str, Any] = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encodings]
        if return_length:
            data["length"] = [len(e) for e in encodings]

        if return_tensors is not None:
            return BatchEncoding(_rectangular(data), tensor_type=return_tensors)
        if not batched:
            # transformers unbatches the list-valued keys only: "length" stays a 1-item list.
            data = {k: v[0] if isinstance(v[0], list) else v for k, v in data.items()}
        return BatchEncoding(data)

    def encode(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """The ``input_ids`` of :meth:`__call__` (a list, or a tensor with ``return_tensors``)."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            **kwargs,
        )["input_ids"]

    def tokenize(
        self, text: str, pair: str | None = None, add_special_tokens: bool = False
    ) -> list[str]:
        """The token strings of ``text`` (without special tokens unless asked)."""
        texts, _ = _as_texts(text, "text")
        pairs = None if pair is None else _as_texts(pair, "pair")[0]
        encoding = self._encode(
            texts, pairs, add_special_tokens=add_special_tokens, truncation=None, max_length=None
        )
        return encoding[0].tokens

    def encode_batch_ids(
        self, texts: Sequence[str], max_length: int | None = None
    ) -> list[list[int]]:
        """Fast path for inference: ids with special tokens, truncated, not padded.

        Equal to ``self(texts, truncation=True, max_length=max_length)["input_ids"]`` but
        without offsets, masks or padding, so a caller can sort texts by length, batch them
        and pad each batch with :meth:`pad_batch` to its own longest.

        Args:
            texts: the texts.
            max_length: the most ids per text, special tokens included; defaults to
                ``model_max_length``.

        Returns:
            One list of ids per text.
        """
        batch, _ = _as_texts(list(texts), "texts")
        limit = self.model_max_length if max_length is None else max_length
        n_special = self.num_special_tokens_to_add(False)
        budget = self._budget(limit, n_special)
        encodings = self._backend.encode_batch_fast(batch, add_special_tokens=False)
        keep_end = self.truncation_side == "left"
        out = []
        for encoding in encodings:
            ids = encoding.ids
            if budget is not None and len(ids) > budget:
                ids = ids[len(ids) - budget :] if keep_end else ids[:budget]
            out.append(self.build_inputs_with_special_tokens(ids))
        return out

    def pad_batch(
        self,
        batch_ids: Sequence[Sequence[int]],
        *,
        length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = "pt",
        return_token_type_ids: bool | None = None,
    ) -> BatchEncoding:
        """Pads single-sequence ids (from :meth:`encode_batch_ids`) into one batch.

        Args:
            batch_ids: one list of ids per text.
            length: pad every row to this length instead of the longest row.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side: overrides :attr:`padding_side`.
            return_tensors: ``"pt"`` (default), ``"np"`` or ``None`` for lists.
            return_token_type_ids: defaults to whether the model takes ``token_type_ids``
                (all zeros: each row is one sequence).

        Returns:
            ``input_ids`` and ``attention_mask`` (and ``token_type_ids``), int64, shape
            ``(len(batch_ids), padded_length)``.
        """
        if self.pad_token_id is None:
            raise ValueError(f"{type(self).__name__} has no pad_token; set tokenizer.pad_token")
        side = self.padding_side if padding_side is None else padding_side
        _check_side("padding_side", side)
        longest = max((len(ids) for ids in batch_ids), default=0)
        target = longest if length is None else length
        if target < longest:
            raise ValueError(f"length={length} is shorter than the longest row ({longest} ids)")
        if pad_to_multiple_of and target % pad_to_multiple_of:
            target += pad_to_multiple_of - target % pad_to_multiple_of
        input_ids = np.full((len(batch_ids), target), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(batch_ids), target), dtype=np.int64)
        for row, ids in enumerate(batch_ids):
            span = slice(0, len(ids)) if side == "right" else slice(target - len(ids), target)
            input_ids[row, span] = ids
            mask[row, span] = 1
        data: dict[str, Any] = {"input_ids": input_ids}
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_token_type_ids:
            data["token_type_ids"] = np.zeros_like(input_ids)
        data["attention_mask"] = mask
        if return_tensors is None:
            return BatchEncoding({k: v.tolist() for k, v in data.items()})
        return BatchEncoding(data, tensor_type=return_tensors)

    def _strategies(
        self,
        padding: bool | str,
        truncation: bool | str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        verbose: bool,
    ) -> tuple[str | None, str | None, int | None]:
        """Resolves padding and truncation options the way transformers does."""
        # transformers: a max_length alone turns truncation on.
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding is True:
            if (
                verbose
                and max_length is not None
                and truncation in (None, False, "do_not_truncate")
            ):
                warnings.warn(
                    "max_length is ignored when padding=True and there is no truncation; "
                    "use padding='max_length' to pad to max_length",
                    stacklevel=3,
                )
            pad = "longest"
        elif padding is False or padding is None:
            pad = None
        elif isinstance(padding, str) and padding in _PADDING:
            pad = _PADDING[padding]
        else:
            raise ValueError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad' "
                f"(got {padding!r})"
            )
        if truncation is True:
            trunc = "longest_first"
        elif truncation is False or truncation is None:
            trunc = None
        elif isinstance(truncation, str) and truncation in _TRUNCATION:
            trunc = _TRUNCATION[truncation]
        else:
            raise ValueError(
                "truncation must be True, False, 'longest_first', 'only_first', 'only_second' "
                f"or 'do_not_truncate' (got {truncation!r})"
            )
        if max_length is None:
            unlimited = self.model_max_length > LARGE_INTEGER
            if pad == "max_length":
                pad = None if unlimited else pad
                max_length = None if unlimited else self.model_max_length
            if trunc is not None:
                trunc = None if unlimited else trunc
                max_length = None if unlimited else self.model_max_length
        if pad is not None and self.pad_token_id is None:
            raise ValueError(
                f"padding needs a pad_token and {type(self).__name__} has none; set one, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token"
            )
        if (
            trunc is not None
            and pad is not None
            and pad_to_multiple_of
            and max_length is not None
            and max_length % pad_to_multiple_of
        ):
            raise ValueError(
                f"truncation and padding are both on but max_length={max_length} is not a "
                f"multiple of pad_to_multiple_of={pad_to_multiple_of}"
            )
        return pad, trunc, max_length

    def _budget(self, max_length: int, n_special: int) -> int | None:
        """How many text tokens fit in ``max_length``; ``None`` for no limit."""
        if max_length > LARGE_INTEGER:
            return None
        if max_length < n_special:
            raise ValueError(
                f"max_length={max_length} cannot hold the {n_special} special tokens "
                f"{type(self).__name__} adds; use max_length >= {n_special}"
            )
        return max_length - n_special

    def _encode(
        self,
        texts: list[str],
        pairs: list[str] | None,
        *,
        add_special_tokens: bool,
        truncation: str | None,
        max_length: int | None,
    ) -> list[Encoding]:
        """Encodes, truncates and adds special tokens, without touching the backend's settings.

        Each side is encoded without special tokens, truncated here, then given its special
        tokens by the backend's post-processor: the same steps the backend takes when its
        truncation is enabled, but without mutable shared state.
        """
        firsts = self._backend.encode_batch(texts, add_special_tokens=False)
        seconds: list[Encoding | None] = (
            list(self._backend.encode_batch(pairs, add_special_tokens=False))
            if pairs is not None
            else [None] * len(firsts)
        )
        budget = None
        if truncation is not None and max_length is not None:
            n_special = (
                self.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
            )
            budget = self._budget(max_length, n_special)
        out = []
        for first, second in zip(firsts, seconds, strict=True):
            if budget is not None:
                _truncate(first, second, budget, truncation, self.truncation_side)
            out.append(self._backend.post_process(first, second, add_special_tokens))
        return out

    def _pad(
        self,
        encodings: list[Encoding],
        target: int,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
    ) -> None:
        side = self.padding_side if padding_side is None else padding_side
        _check_side("padding_side", side)
        if pad_to_multiple_of and target % pad_to_multiple_of:
            target += pad_to_multiple_of - target % pad_to_multiple_of
        for encoding in encodings:
            encoding.pad(
                target,
                direction=side,
                pad_id=self.pad_token_id,
                pad_type_id=self.pad_token_type_id,
                pad_token=self.pad_token,
            )

    def _warn_if_too_long(self, encodings: list[Encoding]) -> None:
        longest = max((len(e) for e in encodings), default=0)
        if longest > self.model_max_length and "too_long" not in self._warned:
            self._warned.add("too_long")
            logger.warning(
                "a tokenized sequence has %d tokens, more than model_max_length=%d; the model "
                "will fail on it. Pass truncation=True to cut texts to the context.",
                longest,
                self.model_max_length,
            )

    # -- decoding ------------------------------------------------------------------------------

    def decode(
        self,
        token_ids: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Turns ids back into text.

        Args:
            token_ids: an id, a list of ids, a batch (list of lists), or a numpy array or
                torch tensor of them.
            skip_special_tokens: leave special tokens out of the text.
            clean_up_tokenization_spaces: remove spaces before punctuation (`` .`` -> ``.``);
                defaults to :attr:`clean_up_tokenization_spaces`. As in transformers it is
                ignored, with a warning, for CLIP's BPE, where it would corrupt text.

        Returns:
            The text, or a list of texts for a batch.

        Raises:
            ValueError: an id is not in the vocabulary.
        """
        ids = _to_python(token_ids)
        if isinstance(ids, int):
            ids = [ids]
        if ids and isinstance(ids[0], list):
            return [
                self._decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in ids
            ]
        return self._decode(ids, skip_special_tokens, clean_up_tokenization_spaces)

    def batch_decode(
        self,
        sequences: Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """Decodes each sequence of a batch; see :meth:`decode`."""
        rows = _to_python(sequences)
        if rows and not isinstance(rows[0], list):
            rows = [rows]  # one sequence, as transformers accepts
        return [
            self._decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows
        ]

    def _decode(self, ids: list[int], skip_special_tokens: bool, clean_up: bool | None) -> str:
        size = len(self)
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(
                f"cannot decode ids {bad[:5]}: the vocabulary has ids 0 to {size - 1}. "
                "Strip label padding such as -100 before decoding."
            )
        text = self._finish_decoded(self._backend.decode(ids, skip_special_tokens))
        if clean_up is None:
            clean_up = self.clean_up_tokenization_spaces
        if clean_up:
            if self._model_type == "BPE":
                if "cleanup" not in self._warned:
                    self._warned.add("cleanup")
                    logger.warning(
                        "ignoring clean_up_tokenization_spaces=True for %s: the clean-up is "
                        "meant for WordPiece and would remove real spaces from BPE output",
                        type(self).__name__,
                    )
            else:
                text = self.clean_up_tokenization(text)
        return text

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Removes the spaces tokenization leaves before punctuation and English contractions."""
        for spaced, joined in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            text = text.replace(spaced, joined)
        return text

    # -- special token helpers of transformers 4 -------------------------------------------------

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for special tokens, 0 for text tokens.

        Args:
            token_ids_0: ids of the first sequence (without special tokens unless
                ``already_has_special_tokens``).
            token_ids_1: ids of the second sequence, if any.
            already_has_special_tokens: ``token_ids_0`` already holds the special tokens;
                the mask marks every id that is a special token.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "token_ids_1 must be None when already_has_special_tokens=True: the "
                    "formatted sequence already holds both parts"
                )
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        return self._special_tokens_mask(
            len(token_ids_0), None if token_ids_1 is None else len(token_ids_1)
        )

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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, "
            f"vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side={self.padding_side!r}, truncation_side={self.truncation_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )


def _check_side(name: str, value: str) -> None:
    if value not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left' (got {value!r})")


def _as_texts(text: Any, name: str) -> tuple[list[str], bool]:
    """``(texts, batched)``; rejects anything but a str or a list/tuple of str."""
    if isinstance(text, str):
        return [text], False
    if isinstance(text, (list, tuple)):
        for index, item in enumerate(text):
            if not isinstance(item, str):
                hint = (
                    " (pre-tokenized input is not supported)"
                    if isinstance(item, (list, tuple))
                    else ""
                )
                raise TypeError(f"{name}[{index}] is a {type(item).__name__}, expected str{hint}")
        return list(text), True
    raise TypeError(f"{name} must be a str or a list of str, got {type(text).__name__}")


def _to_python(value: Any) -> Any:
    """Ints and (nested) lists of ints from numpy arrays, torch tensors and numpy scalars."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def _rectangular(data: dict[str, Any]) -> dict[str, Any]:
    """Checks that every row has one length before tensors are made of the rows."""
    rows = data["input_ids"]
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make tensors of sequences of {min(lengths)} to {max(lengths)} tokens; pass "
            "padding=True (and truncation=True for texts longer than the context)"
        )
    if not rows:
        # An empty batch: (0, 0) int64 rather than torch's float (0,).
        return {
            k: np.zeros((0, 0, 2) if k == "offset_mapping" else (0, 0), dtype=np.int64)
            if k != "length"
            else np.zeros((0,), dtype=np.int64)
            for k in data
        }
    return data


# -- CLIP -----------------------------------------------------------------------------------------


class CLIPTokenizer(_TokenizerBase):
    """CLIP's tokenizer: byte-level BPE with a ``</w>`` end-of-word suffix.

    Lowercases, NFC-normalizes and collapses whitespace, splits words with CLIP's pattern, and
    wraps texts as ``<|startoftext|> ... <|endoftext|>`` (ids 49406 and 49407 in OpenAI's
    vocabulary). Load it with :meth:`from_pretrained` or build OpenAI's with
    :meth:`from_openai_bpe`.

    Example::

        tokenizer = CLIPTokenizer.from_openai_bpe()
        batch = tokenizer(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    _model_type: ClassVar[str] = "BPE"
    # every CLIP text tower has 77 positions
    _default_model_max_length: ClassVar[int] = 77
    _template_tokens: ClassVar[tuple[str, ...]] = ("bos_token", "eos_token")

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike | None = None,
        merges: Sequence[tuple[str, str] | str] | str | os.PathLike | None = None,
        *,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        unk_token: TokenLike = "<|endoftext|>",
        bos_token: TokenLike = "<|startoftext|>",
        eos_token: TokenLike = "<|endoftext|>",
        pad_token: TokenLike | None = "<|endoftext|>",
        **options: Any,
    ) -> None:
        """Builds the tokenizer from a vocabulary and merges.

        Args:
            vocab: token -> id, or the path of a ``vocab.json``.
            merges: merges in priority order (``("a", "b")`` pairs or ``"a b"`` strings), or
                the path of a ``merges.txt``.
            vocab_file: path of a ``vocab.json`` (the transformers 4 argument).
            merges_file: path of a ``merges.txt`` (the transformers 4 argument).
            unk_token: token for what the vocabulary cannot represent.
            bos_token: start-of-text token.
            eos_token: end-of-text token; CLIP pools the text embedding there.
            pad_token: padding token (``<|endoftext|>`` for OpenAI checkpoints).
            **options: shared options, see :class:`_TokenizerBase` (``model_max_length``,
                ``padding_side``, ``additional_special_tokens``...).

        Raises:
            TypeError: no vocabulary or no merges were given.
        """
        owner = type(self).__name__
        vocab = _pick("vocab", vocab, vocab_file, _read_vocab_json, owner)
        merges = _pick("merges", merges, merges_file, _read_merges, owner)
        if vocab is None or merges is None:
            raise TypeError(
                f"{owner} needs a vocabulary and merges: pass vocab=/merges= (dict and list, or "
                f"file paths) or vocab_file=/merges_file=, or use {owner}.from_pretrained(path) "
                f"or {owner}.from_openai_bpe()"
            )
        merge_pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        backend = Tokenizer(
            BPE(
                vocab=dict(vocab),
                merges=merge_pairs,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=_content(unk_token),
            )
        )
        backend.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        special = {
            "unk_token": unk_token,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "pad_token": pad_token,
        }
        for key in ("sep_token", "cls_token", "mask_token"):
            if key in options:
                special[key] = options.pop(key)
        super().__init__(backend, special, **options)

    @classmethod
    def from_openai_bpe(
        cls: type[_T], bpe_path: str | os.PathLike | None = None, **options: Any
    ) -> _T:
        """OpenAI CLIP's tokenizer, from ``bpe_simple_vocab_16e6.txt.gz`` (bundled by default).

        Gives the same ids as every OpenAI CLIP checkpoint (``"a photo of a cat"`` ->
        ``[49406, 320, 1125, 539, 320, 2368, 49407]``), with ``model_max_length=77``.

        Args:
            bpe_path: another copy of the merges file.
            **options: constructor options (``pad_token``, ``model_max_length``...).
        """
        vocab, merges = load_openai_bpe(bpe_path)
        # OpenAI's tokenizer finds special tokens in the lowercased text, and the hub
        # checkpoints mark them normalized: "<|ENDOFTEXT|>" is the end-of-text token too.
        for key, content in (
            ("bos_token", "<|startoftext|>"),
            ("eos_token", "<|endoftext|>"),
            ("unk_token", "<|endoftext|>"),
            ("pad_token", "<|endoftext|>"),
        ):
            options.setdefault(key, AddedToken(content, special=True, normalized=True))
        options.setdefault("name_or_path", "openai-clip-bpe")
        return cls(vocab, merges, **options)

    @classmethod
    def _vocab_files_options(cls, checkpoint: Any) -> dict[str, Any]:
        if checkpoint.get("vocab.json") is None or checkpoint.get("merges.txt") is None:
            raise checkpoint.missing(
                f"checkpoint {checkpoint.source!r} has no tokenizer.json and no vocab.json + "
                f"merges.txt, which {cls.__name__} needs; looked in {checkpoint.describe()}",
                TOKENIZER_FILE,
                "vocab.json",
                "merges.txt",
            )
        return {
            "vocab_file": checkpoint.require("vocab.json"),
            "merges_file": checkpoint.require("merges.txt"),
        }

    def _update_post_processor(self) -> None:
        bos, eos = self._special["bos_token"], self._special["eos_token"]
        assert bos is not None and eos is not None
        self._backend.post_processor = processors.RobertaProcessing(
            (eos.content, self._backend.token_to_id(eos.content)),
            (bos.content, self._backend.token_to_id(bos.content)),
            trim_offsets=False,
            add_prefix_space=False,
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``<bos> A <eos>``, or ``<bos> A <eos> <eos> B <eos>`` for a pair."""
        bos, eos = [self.bos_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return bos + list(token_ids_0) + eos
        return bos + list(token_ids_0) + eos + eos + list(token_ids_1) + eos

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """All zeros: CLIP has no segment embeddings."""
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def _special_tokens_mask(self, n0: int, n1: int | None) -> list[int]:
        mask = [1] + [0] * n0 + [1]
        return mask if n1 is None else [*mask, 1, *([0] * n1), 1]

    def _finish_decoded(self, text: str) -> str:
        # The byte-level decoder leaves the end-of-word suffix in; it marks a word boundary.
        return text.replace("</w>", " ").strip()

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes ``vocab.json`` and ``merges.txt`` (the CLIP hub layout); returns their paths."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory: {directory}")
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        model = json.loads(self._backend.to_str())["model"]
        vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
        lines = ["#version: 0.2"]
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            if " " in left or " " in right:
                raise ValueError(f"merge {merge!r} holds a space; merges.txt cannot represent it")
            lines.append(f"{left} {right}")
        vocab_path = directory / f"{prefix}vocab.json"
        merges_path = directory / f"{prefix}merges.txt"
        vocab_path.write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", "utf-8")
        merges_path.write_text("\n".join(lines) + "\n", "utf-8")
        return str(vocab_path), str(merges_path)


CLIPTokenizerFast = CLIPTokenizer


# -- BERT (Chinese-CLIP) --------------------------------------------------------------------------


class BertTokenizer(_TokenizerBase):
    """BERT's WordPiece tokenizer, as Chinese-CLIP uses it.

    Cleans control characters, puts spaces around CJK characters, lowercases and strips
    accents (``strip_accents=None`` follows ``do_lower_case``), splits on whitespace and
    punctuation, then WordPiece with ``##`` continuations; texts become ``[CLS] ... [SEP]``
    with ``token_type_ids``. Load it with :meth:`from_pretrained`, or get the bundled Chinese
    RoBERTa-wwm-ext vocabulary of Chinese-CLIP with :meth:`from_chinese_roberta_wwm_ext`.
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "token_type_ids", "attention_mask"]
    _model_type: ClassVar[str] = "WordPiece"
    # BERT's position embeddings
    _default_model_max_length: ClassVar[int] = 512
    _config_keys: ClassVar[tuple[str, ...]] = (
        "do_lower_case",
        "tokenize_chinese_chars",
        "strip_accents",
    )
    _template_tokens: ClassVar[tuple[str, ...]] = ("cls_token", "sep_token")

    def __init__(
        self,
        vocab: Mapping[str, int] | str | os.PathLike | None = None,
        *,
        vocab_file: str | os.PathLike | None = None,
        do_lower_case: bool = True,
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        unk_token: TokenLike = "[UNK]",
        sep_token: TokenLike = "[SEP]",
        pad_token: TokenLike | None = "[PAD]",
        cls_token: TokenLike = "[CLS]",
        mask_token: TokenLike | None = "[MASK]",
        **options: Any,
    ) -> None:
        """Builds the tokenizer from a WordPiece vocabulary.

        Args:
            vocab: token -> id, or the path of a ``vocab.txt`` (one token a line).
            vocab_file: path of a ``vocab.txt`` (the transformers 4 argument).
            do_lower_case: lowercase the text.
            tokenize_chinese_chars: make every CJK character a word of its own.
            strip_accents: remove accents; ``None`` does so exactly when lowercasing.
            unk_token: token for words the vocabulary cannot spell.
            sep_token: separator ending each sequence.
            pad_token: padding token.
            cls_token: classification token starting the input (Chinese-CLIP pools there).
            mask_token: masked language model token.
            **options: shared options, see :class:`_TokenizerBase`.

        Raises:
            TypeError: no vocabulary was given.
        """
        owner = type(self).__name__
        vocab = _pick("vocab", vocab, vocab_file, _read_wordpiece_vocab, owner)
        if vocab is None:
            raise TypeError(
                f"{owner} needs a vocabulary: pass vocab= (dict or vocab.txt path) or "
                f"vocab_file=, or use {owner}.from_pretrained(path) or "
                f"{owner}.from_chinese_roberta_wwm_ext()"
            )
        self.do_lower_case = do_lower_case
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.strip_accents = strip_accents
        backend = Tokenizer(WordPiece(dict(vocab), unk_token=_content(unk_token)))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        special = {
            "unk_token": unk_token,
            "sep_token": sep_token,
            "pad_token": pad_token,
            "cls_token": cls_token,
            "mask_token": mask_token,
        }
        for key in ("bos_token", "eos_token"):
            if key in options:
                special[key] = options.pop(key)
        super().__init__(backend, special, **options)

    @classmethod
    def from_chinese_roberta_wwm_ext(cls: type[_T], **options: Any) -> _T:
        """Chinese-CLIP's tokenizer on the bundled 21128-token Chinese RoBERTa-wwm-ext vocab.

        ``model_max_length`` defaults to 52, the context length of OFA-Sys' Chinese-CLIP code
        (hub checkpoints' configs say 52 or 512; :meth:`from_pretrained` follows them).

        Args:
            **options: constructor options.
        """
        options.setdefault("model_max_length", 52)
        options.setdefault("name_or_path", "chinese-roberta-wwm-ext")
        return cls(vocab_file=_bundled(CHINESE_ROBERTA_VOCAB_FILE), **options)

    @classmethod
    def _vocab_files_options(cls, checkpoint: Any) -> dict[str, Any]:
        path = checkpoint.get("vocab.txt")
        if path is None:
            raise checkpoint.missing(
                f"checkpoint {checkpoint.source!r} has no tokenizer.json and no vocab.txt, which "
                f"{cls.__name__} needs; looked in {checkpoint.describe()}",
                TOKENIZER_FILE,
                "vocab.txt",
            )
        return {"vocab_file": path}

    def _family_config(self) -> dict[str, Any]:
        return {
            "do_lower_case": self.do_lower_case,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
        }

    def _update_post_processor(self) -> None:
        cls_token, sep_token = self._special["cls_token"], self._special["sep_token"]
        assert cls_token is not None and sep_token is not None
        cls_, sep = cls_token.content, sep_token.content
        self._backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_}:0 $A:0 {sep}:0",
            pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[
                (cls_, self._backend.token_to_id(cls_)),
                (sep, self._backend.token_to_id(sep)),
            ],
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """``[CLS] A [SEP]``, or ``[CLS] A [SEP] B [SEP]`` for a pair."""
        cls_, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls_ + list(token_ids_0) + sep
        return cls_ + list(token_ids_0) + sep + list(token_ids_1) + sep

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``."""
        first = [0] * (len(token_ids_0) + 2)
        return first if token_ids_1 is None else first + [1] * (len(token_ids_1) + 1)

    def _special_tokens_mask(self, n0: int, n1: int | None) -> list[int]:
        mask = [1] + [0] * n0 + [1]
        return mask if n1 is None else [*mask, *([0] * n1), 1]

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Writes ``vocab.txt`` (one token a line, in id order); returns its path."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise NotADirectoryError(f"save_vocabulary needs an existing directory: {directory}")
        by_id = sorted(self._backend.get_vocab(with_added_tokens=False).items(), key=lambda x: x[1])
        for expected, (token, index) in enumerate(by_id):
            if index != expected:
                raise ValueError(
                    f"cannot write vocab.txt: the vocabulary has no token with id {expected} "
                    f"(next is {token!r} with id {index}); save_pretrained's tokenizer.json "
                    "keeps such a vocabulary"
                )
            if "\n" in token:
                raise ValueError(f"token {token!r} holds a newline; vocab.txt cannot represent it")
        path = directory / f"{filename_prefix + '-' if filename_prefix else ''}vocab.txt"
        path.write_text("".join(f"{token}\n" for token, _ in by_id), "utf-8")
        return (str(path),)


BertTokenizerFast = BertTokenizer
