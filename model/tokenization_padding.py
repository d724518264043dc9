"""The padding layer of the tokenizers: :meth:`_TokenizerPadding.pad` and ``pad_batch``.

``pad`` is transformers' ``tokenizer.pad``: it pads already encoded inputs (a dict of lists, or
a list of dicts such as a data collator receives). ``pad_batch`` is the Beam engine's fast path
for ids made by ``encode_batch_ids``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .batch import BatchEncoding
from .tokenization_files import _TokenizerFiles
from .tokenization_vocab import _check_side, _to_python

__all__: list[str] = []

# The value each known key is padded with (None: the tokenizer's own pad ids).
_PAD_VALUES = {"attention_mask": 0, "special_tokens_mask": 1}


class _TokenizerPadding(_TokenizerFiles):
    """The third layer of :class:`~clipbeam.model.tokenization_utils._TokenizerBase`."""

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Pads encoded inputs to one length, as transformers' ``tokenizer.pad``.

        Args:
            encoded_inputs: a ``BatchEncoding`` or dict of lists (one row per text, or a single
                sequence), or a list of such dicts (one per text).
            padding: ``True``/``"longest"``, ``"max_length"`` (to ``max_length``, default
                ``model_max_length``) or ``False``/``"do_not_pad"``.
            max_length: the length for ``padding="max_length"``.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side: overrides :attr:`padding_side`.
            return_attention_mask: add (or keep) ``attention_mask``; default whether the model
                takes one.
            return_tensors: ``"pt"``, ``"np"`` or ``None`` (lists).
            verbose: accepted for transformers' signature.

        Returns:
            The padded :class:`~clipbeam.model.batch.BatchEncoding`.

        Raises:
            ValueError: there is no ``input_ids`` or no pad token.
        """
        del verbose
        if (
            isinstance(encoded_inputs, (list, tuple))
            and encoded_inputs
            and isinstance(encoded_inputs[0], Mapping)
        ):
            keys = list(encoded_inputs[0])
            data = {k: [_to_python(row[k]) for row in encoded_inputs] for k in keys}
        elif isinstance(encoded_inputs, Mapping):
            data = {k: _to_python(v) for k, v in encoded_inputs.items()}
        else:
            raise TypeError(
                "pad() takes a dict (or BatchEncoding) of lists or a list of dicts, got "
                f"{type(encoded_inputs).__name__}"
            )
        if "input_ids" not in data:
            raise ValueError(f"pad() needs input_ids among the inputs (got keys {sorted(data)})")
        single = bool(data["input_ids"]) and not isinstance(data["input_ids"][0], list)
        if single:
            data = {k: [v] for k, v in data.items()}
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        if return_attention_mask and "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(row) for row in data["input_ids"]]
        elif not return_attention_mask:
            data.pop("attention_mask", None)
        longest = max((len(row) for row in data["input_ids"]), default=0)
        if padding in (True, "longest"):
            target: int | None = longest
        elif padding == "max_length":
            target = self.model_max_length if max_length is None else max_length
        elif padding in (False, "do_not_pad"):
            target = None
        else:
            raise ValueError(
                "padding must be True, False, 'longest', 'max_length' or 'do_not_pad' (got a "
                f"{type(padding).__name__} that is none of them)"
            )
        if target is not None:
            if pad_to_multiple_of and target % pad_to_multiple_of:
                target += pad_to_multiple_of - target % pad_to_multiple_of
            if self.pad_token_id is None:
                raise ValueError(f"{type(self).__name__} has no pad_token; set tokenizer.pad_token")
            side = self.padding_side if padding_side is None else padding_side
            _check_side("padding_side", side)
            pads = {
                "input_ids": self.pad_token_id,
                "token_type_ids": self.pad_token_type_id,
                **_PAD_VALUES,
            }
            for key, rows in data.items():
                if key not in pads:
                    continue
                value = pads[key]
                data[key] = [
                    row + [value] * (target - len(row))
                    if side == "right"
                    else [value] * (target - len(row)) + row
                    for row in rows
                ]
        if single:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)

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
