"""Pooling: the one state that stands for a whole sequence, per tower (parity breaks here).

CLIP's text tower pools at the end-of-text token (:func:`eos_pool`), the ViT image tower at its
class token (:func:`class_token_pool`), Chinese-CLIP's text tower at its [CLS] token
(:func:`cls_pool`).
"""

from __future__ import annotations

import torch

from .attention import take_rows

__all__ = [
    "class_token_pool",
    "cls_pool",
    "eos_pool",
    "eos_positions",
]


def eos_pool(
    hidden_states: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int
) -> torch.Tensor:
    """CLIP text pooling: the hidden state at each sequence's end-of-text token.

    Configs written before transformers#24773 say ``eos_token_id == 2`` although the real EOS
    is the last vocabulary entry; for them, as in transformers and OpenAI's code, the position
    of the largest token id is taken. Otherwise it is the first position holding
    ``eos_token_id`` (position 0 if a sequence has none).

    Args:
        hidden_states: ``[batch, seq, hidden]``.
        input_ids: ``[batch, seq]``.
        eos_token_id: the config's ``eos_token_id``.

    Returns:
        ``[batch, hidden]``.
    """
    positions = eos_positions(input_ids, eos_token_id, hidden_states.device)
    return take_rows(hidden_states, positions)[:, 0]


def eos_positions(
    input_ids: torch.Tensor, eos_token_id: int, device: torch.device | None = None
) -> torch.Tensor:
    """The ``[batch]`` positions :func:`eos_pool` pools at (see there), on ``device``."""
    ids = input_ids.to(device=device, dtype=torch.int)
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def class_token_pool(hidden_states: torch.Tensor) -> torch.Tensor:
    """ViT pooling: the state of the class token, which comes first. ``[B, S, D] -> [B, D]``."""
    return hidden_states[:, 0]


def cls_pool(hidden_states: torch.Tensor) -> torch.Tensor:
    """Chinese-CLIP text pooling: the final hidden state of the first ([CLS]) token.

    The full model projects this state directly; BERT's ``pooler`` (dense + tanh) is not used
    there, only by the standalone :class:`ChineseCLIPTextModel`'s ``pooler_output``.
    ``[B, S, D] -> [B, D]``.
    """
    return hidden_states[:, 0]
