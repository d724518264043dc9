"""A tokenizer's vocabulary: special and added tokens, id and token lookups, decoding.

:class:`_TokenizerVocab` is the first of the three layers of the tokenizer base (then
:mod:`~clipbeam.model.tokenization_files` for loading and saving,
:mod:`~clipbeam.model.tokenization_utils` for encoding). It wraps the Rust ``tokenizers.Tokenizer``
that a family (:mod:`~clipbeam.model.tokenization_clip`, :mod:`~clipbeam.model.tokenization_bert`)
builds, keeps the named special tokens (``pad_token``, ``pad_token_id``... as descriptors) and the
extra ones, and registers them and the recorded added tokens in the backend with the ids
transformers gives them.

Where transformers silently does something surprising, this layer raises instead:

* Without ``model_max_length`` in the arguments or in ``tokenizer_config.json``, it defaults to the
  model's context (77 for CLIP, 512 for BERT) rather than "unlimited".
* Decoding an id outside the vocabulary raises (transformers drops it).
* Setting a special token that is not in the vocabulary raises (transformers maps it to unk).

Only adding tokens, at construction, mutates the shared Rust tokenizer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from tokenizers import AddedToken, Tokenizer

from .hub import CheckpointError

logger = logging.getLogger(__name__)

# transformers' marker for "no length limit": int(1e30) is what it writes to tokenizer_config.json
# and anything above 1e20 disables length-based truncation and padding.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

SPECIAL_TOKENS_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

TokenLike = str | AddedToken


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


class _SpecialToken:
    """Descriptor for ``tokenizer.pad_token`` (a str or None) and ``tokenizer.pad_token_id``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.as_id = name.endswith("_id")
        self.key = name.removesuffix("_id")

    def __get__(self, obj: _TokenizerVocab | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        token = obj._special[self.key]
        if token is None:
            return None
        return obj._backend.token_to_id(token.content) if self.as_id else token.content

    def __set__(self, obj: _TokenizerVocab, value: Any) -> None:
        obj._set_special_token(self.key, value, by_id=self.as_id)


# -- the layer ---------------------------------------------------------------------------------


class _TokenizerVocab:
    """The first layer of :class:`~clipbeam.model.tokenization_utils._TokenizerBase`.

    Holds the Rust backend and the shared settings, registers the special and added tokens,
    answers vocabulary questions and decodes ids; declares the hooks a family implements.
    """

    model_input_names: ClassVar[list[str]] = ["input_ids", "attention_mask"]
    # the Rust model type a tokenizer.json must have for this class
    _model_type: ClassVar[str] = ""
    # model_max_length when neither the arguments nor tokenizer_config.json give one
    _default_model_max_length: ClassVar[int] = VERY_LARGE_INTEGER
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

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # transformers keeps what a tokenizer was built with: init_inputs (positional) and
        # init_kwargs (keywords, the file options from_pretrained read included).
        self = super().__new__(cls)
        self.init_inputs = args
        self.init_kwargs = dict(kwargs)
        return self

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
        **kwargs: Any,
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
            **kwargs: other options (``max_length``, ``padding``...), kept in ``init_kwargs``
                and ``tokenizer_config.json`` as transformers keeps them; a processor uses the
                call options among them as its defaults.
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
        # Options no field of this class takes, written back to tokenizer_config.json.
        self._kept_options = {k: _to_python(v) for k, v in kwargs.items()}
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

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """Content -> id of the added tokens, in id order (transformers' name)."""
        return self.get_added_vocab()

    def add_tokens(
        self,
        new_tokens: TokenLike | Sequence[TokenLike],
        special_tokens: bool = False,
    ) -> int:
        """Adds tokens matched whole before the model runs (textual inversion's new words).

        Tokens already in the vocabulary keep their id; the others get the next ids, which the
        model's embedding must then have (resize it).

        Args:
            new_tokens: a token or tokens (strings or ``AddedToken``).
            special_tokens: mark them special (kept whole, skipped by ``skip_special_tokens``).

        Returns:
            How many tokens were added (the backend's count, as transformers returns it: a
            token of the base vocabulary added as a whole word counts, a repeat does not).
        """
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        tokens = []
        for token in new_tokens:
            if not isinstance(token, (str, AddedToken)):
                raise TypeError(
                    f"a token to add must be a str or AddedToken, got {type(token).__name__}"
                )
            if special_tokens:
                tokens.append(_as_added_token(token))
            else:
                tokens.append(AddedToken(token) if isinstance(token, str) else token)
        if special_tokens:
            return self._backend.add_special_tokens(tokens)
        return self._backend.add_tokens(tokens)

    def add_special_tokens(
        self,
        special_tokens_dict: Mapping[str, Any],
        replace_extra_special_tokens: bool = True,
    ) -> int:
        """Sets named special tokens (``pad_token``...) and extra ones, adding new ones.

        Args:
            special_tokens_dict: ``{"pad_token": "[PAD]", "additional_special_tokens": [...]}``
                (``extra_special_tokens`` is transformers 5's name of the latter).
            replace_extra_special_tokens: the given extra tokens replace the current ones (they
                stay in the vocabulary); False appends them.

        Returns:
            How many tokens were added (see :meth:`add_tokens`).
        """
        added = 0
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                values = [value] if isinstance(value, (str, AddedToken)) else list(value)
                added += self.add_tokens(values, special_tokens=True)
                tokens = [_as_added_token(v) for v in values]
                if replace_extra_special_tokens:
                    self._extra = tokens
                else:
                    self._extra += [t for t in tokens if t.content not in self.extra_special_tokens]
            elif key in SPECIAL_TOKENS_ATTRIBUTES:
                if value is not None:
                    added += self.add_tokens(value, special_tokens=True)
                self._set_special_token(key, value, by_id=False)
            else:
                raise ValueError(
                    f"add_special_tokens got the key {key!r}; the keys are "
                    f"{sorted(SPECIAL_TOKENS_ATTRIBUTES)} and additional_special_tokens"
                )
        return added

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


def _to_python(value: Any) -> Any:
    """Ints and (nested) lists of ints from numpy arrays, torch tensors and numpy scalars."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value
