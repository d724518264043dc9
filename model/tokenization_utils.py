"""The shared tokenizer base, ``_TokenizerBase``: encoding, truncation and padding.

``_TokenizerBase`` is what :class:`~clipbeam.model.tokenization_clip.CLIPTokenizer` and
:class:`~clipbeam.model.tokenization_bert.BertTokenizer` subclass. It is built in three layers,
each in its own module::

    _TokenizerVocab   (tokenization_vocab)   special and added tokens, lookups, decoding
    _TokenizerFiles   (tokenization_files)   from_pretrained, save_pretrained
    _TokenizerPadding (tokenization_padding) pad(), pad_batch()
    _TokenizerBase    (this module)          __call__, encode, truncation, padding

Both tokenizers have the API of the transformers 5 classes of the same names (``__call__``,
``encode``, ``decode``, ``from_pretrained``, ``save_pretrained``...) and give the same token ids,
attention masks and token type ids; ``tests/model/test_tokenization_utils.py`` checks that against
transformers on several hundred strings.

Behaviour, as in transformers 5.23:

* The empty string encodes to ``[bos, eos]`` (CLIP) or ``[CLS, SEP]`` (BERT).
* Text longer than the context is kept whole unless ``truncation=True`` or ``max_length`` is
  given (a warning is logged); ``truncation=True`` cuts to ``model_max_length``, keeping the
  end-of-text token.
* Pairs are ``<bos> A <eos> <eos> B <eos>`` for CLIP and ``[CLS] A [SEP] B [SEP]`` with token type
  ids 0 then 1 for BERT; ``truncation=True`` shortens the longer sequence first.
* Padding uses the checkpoint's ``pad_token``: ``<|endoftext|>`` (49407) for OpenAI CLIP, ``"!"``
  (id 0) in some LAION configs, ``[PAD]`` (0) for BERT.

Where transformers silently does something surprising, this base raises or differs instead:

* A ``max_length`` too small to hold the special tokens raises (transformers does not truncate).
* ``text_pair=""`` is a pair with an empty second sequence, for a single text as for a batch.

The encoders never change the settings of the shared Rust tokenizer, so one instance can serve
several threads (Beam runs DoFns in threads). For the Beam engine, :meth:`encode_batch_ids` and
:meth:`pad_batch` split tokenization from padding so texts can be bucketed by length and each
batch padded to its own longest.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Encoding

from .batch import BatchEncoding
from .tokenization_padding import _TokenizerPadding
from .tokenization_vocab import LARGE_INTEGER, _check_side

logger = logging.getLogger(__name__)

_PADDING = {"longest": "longest", "max_length": "max_length", "do_not_pad": None}
_TRUNCATION = {
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
    "do_not_truncate": None,
}


# -- truncation -----------------------------------------------------------------------------------


def _truncate(
    first: Encoding,
    second: Encoding | None,
    budget: int,
    strategy: str,
    direction: str,
    stride: int = 0,
) -> None:
    """Shortens ``first`` (and ``second``) in place to ``budget`` tokens, as tokenizers does.

    The rules are those of the Rust ``truncate_encodings`` that transformers relies on, so the
    results match it token for token: ``longest_first`` trims the longer sequence down to the
    shorter one, then both to half the budget each; ``only_first``/``only_second`` trim one side.
    The cut tokens go to each encoding's ``overflowing`` windows, ``stride`` tokens overlapping.
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
            first.truncate(budget, stride=stride, direction=direction)
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
        first.truncate(n1, stride=stride, direction=direction)
        second.truncate(n2, stride=stride, direction=direction)
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
    target.truncate(len(target) - excess, stride=stride, direction=direction)


# -- the shared base ----------------------------------------------------------------------------


class _TokenizerBase(_TokenizerPadding):
    """What CLIP's and BERT's tokenizers share: encoding, decoding, special tokens, saving.

    Subclasses build the Rust pipeline (model, normalizer, pre-tokenizer, decoder) and say how
    special tokens wrap one or two sequences. This class adds encoding, truncation and padding
    to the vocabulary (:class:`~clipbeam.model.tokenization_vocab._TokenizerVocab`) and file
    (:class:`~clipbeam.model.tokenization_files._TokenizerFiles`) and padding
    (:class:`~clipbeam.model.tokenization_padding._TokenizerPadding`) layers.
    """

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
        is_split_into_words: bool = False,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
    ) -> BatchEncoding:
        """Tokenizes one text or a batch (optionally with second texts) for the model.

        Args:
            text: a string, a list of strings (a batch), or a list of ``(text, text_pair)``
                tuples (a batch of pairs); with ``is_split_into_words``, a list of words (one
                sequence) or a list of such lists (a batch).
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
            is_split_into_words: the input is pre-tokenized into words; each word is
                tokenized alone, as transformers does.
            stride: with ``return_overflowing_tokens``, how many tokens each overflow window
                repeats from the one before.
            return_overflowing_tokens: return the tokens truncation cut as more rows (windows
                of ``max_length``), with ``overflow_to_sample_mapping`` giving each row's text.
                The output is then always one row per window.

        Returns:
            A :class:`~clipbeam.model.batch.BatchEncoding`. For a single string without
            ``return_tensors`` each value is one list; otherwise one row per text.

        Raises:
            TypeError: a text is not a string.
            ValueError: inconsistent options (padding without a pad token, a ``max_length``
                that cannot hold the special tokens, ragged sequences with ``return_tensors``).
        """
        if text_pair is None and not is_split_into_words and _is_pair_batch(text):
            text, text_pair = [t[0] for t in text], [t[1] for t in text]
        read = _as_words if is_split_into_words else _as_texts
        texts, batched = read(text, "text")
        pairs = None
        if text_pair is not None:
            if is_split_into_words:
                pairs, pairs_batched = read(text_pair, "text_pair")
                if pairs_batched != batched:
                    raise TypeError("text and text_pair must both be one sequence or both batches")
            elif batched != (not isinstance(text_pair, str)):
                raise TypeError(
                    "text_pair must be a str for a single text and a list for a batch "
                    f"(got text={type(text).__name__}, text_pair={type(text_pair).__name__})"
                )
            else:
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
            pretokenized=is_split_into_words,
            stride=stride,
        )
        if return_overflowing_tokens:
            mapping = [i for i, e in enumerate(encodings) for _ in range(1 + len(e.overflowing))]
            encodings = [row for e in encodings for row in (e, *e.overflowing)]
            batched = True
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
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = mapping

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
        pretokenized: bool = False,
        stride: int = 0,
    ) -> list[Encoding]:
        """Encodes, truncates and adds special tokens, without touching the backend's settings.

        Each side is encoded without special tokens, truncated here, then given its special
        tokens by the backend's post-processor: the same steps the backend takes when its
        truncation is enabled, but without mutable shared state.
        """
        options = {"add_special_tokens": False, "is_pretokenized": pretokenized}
        firsts = self._backend.encode_batch(texts, **options)
        seconds: list[Encoding | None] = (
            list(self._backend.encode_batch(pairs, **options))
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
                _truncate(first, second, budget, truncation, self.truncation_side, stride)
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


def _as_texts(text: Any, name: str) -> tuple[list[str], bool]:
    """``(texts, batched)``; rejects anything but a str or a list/tuple of str."""
    if isinstance(text, str):
        return [text], False
    if isinstance(text, (list, tuple)):
        for index, item in enumerate(text):
            if not isinstance(item, str):
                hint = (
                    " (pass is_split_into_words=True for pre-tokenized input)"
                    if isinstance(item, (list, tuple))
                    else ""
                )
                raise TypeError(f"{name}[{index}] is a {type(item).__name__}, expected str{hint}")
        return list(text), True
    raise TypeError(f"{name} must be a str or a list of str, got {type(text).__name__}")


def _is_pair_batch(text: Any) -> bool:
    """Whether ``text`` is a batch of ``(text, text_pair)`` tuples (or 2-item lists)."""
    return (
        isinstance(text, (list, tuple))
        and bool(text)
        and all(
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
            for item in text
        )
    )


def _as_words(text: Any, name: str) -> tuple[list[list[str]], bool]:
    """``(sequences of words, batched)`` for ``is_split_into_words`` input."""
    if isinstance(text, (list, tuple)) and all(isinstance(word, str) for word in text):
        return [list(text)], False
    if isinstance(text, (list, tuple)) and all(
        isinstance(seq, (list, tuple)) and all(isinstance(w, str) for w in seq) for seq in text
    ):
        return [list(seq) for seq in text], True
    raise TypeError(
        f"{name} with is_split_into_words=True must be a list of str (one sequence) or a list "
        f"of lists of str (a batch), got a {type(text).__name__} of other items"
    )


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
