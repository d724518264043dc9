"""Attention and token packing: the building blocks of both families' transformer layers.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (:func:`attend`); the
weights are computed explicitly only when ``output_attentions`` asks for them.

For speed (``benchmarks/bench_model.py``): q, k and v are one product (:func:`fused_projection`);
a tower's last layer can attend from its pooled position alone, without keys or values
(:func:`attend_from_rows`); and a padded text batch can run its products on its real tokens
alone (:class:`TokenPacking`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import linear
from .quantization import Int8Weight, float_weight

__all__ = [
    "TokenPacking",
    "attend",
    "attend_from_rows",
    "fused_projection",
    "mask_to_bias",
    "self_attention",
    "take_rows",
]


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over ``[batch, heads, seq, head_dim]`` tensors.

    Args:
        query, key, value: the projected inputs, split into heads.
        bias: additive mask broadcastable to ``[batch, heads, seq, seq]`` (0 where attention is
            allowed, the dtype's minimum where not), or ``None``.
        dropout_p: dropout on the attention probabilities (pass 0 in eval mode).
        need_weights: also return the attention probabilities.

    Returns:
        ``[batch, heads, seq, head_dim]`` outputs, and the ``[batch, heads, seq, seq]``
        probabilities when ``need_weights`` (else ``None``).
    """
    if not need_weights:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout_p)
        return out, None
    # SDPA does not return the probabilities: compute them as transformers' eager path does,
    # with the softmax in float32.
    scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(weights, value), weights


def mask_to_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turns a boolean "may attend" mask into the additive bias :func:`attend` takes.

    Masked scores get the dtype's minimum rather than ``-inf``: a row with every key masked
    (a padding query under left padding) then gets uniform weights instead of NaN, as in
    transformers.
    """
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def fused_projection(*layers: nn.Linear) -> tuple[torch.Tensor | Int8Weight, torch.Tensor]:
    """The weights and biases of linear layers that read the same input, stacked for one product.

    One ``[3D, D]`` product instead of three ``[D, D]`` ones (q, k, v) ran about 25% faster on
    CPU for ViT-B/16; stacking the weights costs a copy of about 0.1 ms per layer, and keeps the
    checkpoint's separate tensors as the only parameters (so loading, saving, training and weight
    tying see the Hugging Face layout unchanged). Inside ``torch.compile`` the copy is traced.
    ``[out, in]`` each -> ``[sum(out), in]`` and ``[sum(out)]``.
    """
    weights = [layer.weight for layer in layers]
    if isinstance(weights[0], Int8Weight):  # packed as one product when quantized
        weight = Int8Weight.joined(weights)
    else:
        weight = torch.cat(weights)
    bias = torch.cat([layer.bias for layer in layers])
    return weight, bias


def take_rows(x: torch.Tensor, rows: torch.Tensor | int) -> torch.Tensor:
    """Row ``rows[b]`` of each sequence ``b`` (or row ``rows`` of every sequence).

    ``[B, S, ...] -> [B, 1, ...]``; from a packed ``[1, T, ...]`` batch (:class:`TokenPacking`),
    ``rows`` being packed positions (``TokenPacking.packed_rows``), the same ``[B, 1, ...]``.
    """
    if isinstance(rows, int):
        return x[:, rows : rows + 1]
    return x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)


def _bias_rows(bias: torch.Tensor | None, rows: torch.Tensor | int) -> torch.Tensor | None:
    """The attention bias of the query rows :func:`take_rows` keeps.

    ``[B or 1, 1, S or 1, S] -> [B or 1, 1, 1, S]``.
    """
    if bias is None or bias.shape[-2] == 1:
        return bias  # the same for every query
    if isinstance(rows, int):
        return bias[:, :, rows : rows + 1]
    bias = bias.expand(rows.shape[0], *bias.shape[1:])
    return take_rows(bias.transpose(1, 2), rows).transpose(1, 2)  # queries to dim 1 and back


@dataclass(frozen=True)
class TokenPacking:
    """The real tokens of a padded batch, for running the token-wise work on them alone.

    Every product of a transformer layer (q/k/v, output projection, MLP) and its LayerNorms
    treat tokens one by one; only attention mixes them, and a padded key never reaches a real
    query (the mask removes it). So a batch of captions of mixed lengths can run those products
    on its ``T`` real tokens, packed as one ``[1, T, D]`` sequence, and go back to the padded
    ``[B, S, D]`` layout only for attention. This is exact for every real token; on alt-text
    batches sorted by length and padded to their longest caption it skips the 18-28% of the
    work that padding is (``benchmarks/bench_model.py``'s captions).

    Padded positions get no state at all, so towers pack only when the pooled output is all
    that is wanted (``pooled_only``) and the pooled positions are real tokens.
    """

    index: torch.Tensor  # [T] flat positions ``b * seq + s`` of the real tokens, ascending
    batch: int
    seq: int
    rows: torch.Tensor | int  # the pooled position of each sequence, in the padded layout
    packed_rows: torch.Tensor  # the same positions among the packed tokens

    @classmethod
    def of(cls, attention_mask: torch.Tensor, rows: torch.Tensor | int) -> TokenPacking | None:
        """The packing of ``attention_mask`` (``[B, S]``, 1 for tokens) for a tower pooled at
        ``rows`` (see :func:`take_rows`), or ``None`` where packing saves nothing (no padding),
        could change the result (a pooled position is padding), or cannot be traced (inside
        ``torch.compile``: the number of tokens depends on the data)."""
        if torch.compiler.is_compiling():
            return None
        keep = attention_mask.to(torch.bool)
        batch, seq = keep.shape
        if bool(keep.all()) or not bool(take_rows(keep[..., None], rows).all()):
            return None
        index = keep.flatten().nonzero().squeeze(1)
        starts = torch.arange(batch, device=index.device) * seq
        return cls(index, batch, seq, rows, torch.searchsorted(index, starts + rows))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, C] -> [1, T, C]``: the real tokens' rows, in order."""
        return x.flatten(0, 1).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """``[1, T, C] -> [B, S, C]``, zeros at the padded positions."""
        flat = x.new_zeros(self.batch * self.seq, x.shape[-1]).index_copy(0, self.index, x[0])
        return flat.view(self.batch, self.seq, -1)


def self_attention(
    hidden_states: torch.Tensor,
    bias: torch.Tensor | None,
    projections: tuple[nn.Linear, nn.Linear, nn.Linear],
    num_heads: int,
    *,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    rows: torch.Tensor | int | None = None,
    packing: TokenPacking | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention up to the output projection.

    Args:
        hidden_states: ``[B, S, D]`` inputs, or the packed ``[1, T, D]`` real tokens of a
            padded batch (``packing``).
        bias: additive mask ``[B or 1, 1, S or 1, S]`` in the padded layout (see :func:`attend`).
        projections: the q, k and v layers, computed as one product (:func:`fused_projection`).
        num_heads: attention heads.
        dropout_p: dropout on the attention probabilities.
        need_weights: also return the probabilities ``[B, H, S, S]``.
        rows: attend from these positions only (one per sequence, see :func:`take_rows`;
            packed positions under ``packing``): :func:`attend_from_rows`.
        packing: ``hidden_states`` are packed: q/k/v are computed on the real tokens and spread
            to the padded layout for attention, whose outputs are packed again.

    Returns:
        ``[B, S, D]`` outputs (packed ``[1, T, D]``; ``[B, 1, D]`` with ``rows``), and the
        probabilities when ``need_weights``.
    """
    if rows is not None:
        if need_weights:
            raise ValueError("attention from the pooled rows alone has no attention weights")
        attended = attend_from_rows(
            hidden_states, bias, projections, num_heads, rows, packing, dropout_p
        )
        return attended, None
    qkv = linear(hidden_states, *fused_projection(*projections))
    if packing is not None:
        qkv = packing.unpack(qkv)
    batch, seq, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    qkv = qkv.view(batch, seq, 3, num_heads, width // num_heads)
    query, key, value = qkv.permute(2, 0, 3, 1, 4)  # [B, S, 3, H, d] -> 3 x [B, H, S, d]
    out, weights = attend(query, key, value, bias, dropout_p=dropout_p, need_weights=need_weights)
    out = out.transpose(1, 2).flatten(2)  # [B, H, S, d] -> [B, S, D]
    return (out if packing is None else packing.pack(out)), weights


def attend_from_rows(
    hidden_states: torch.Tensor,
    bias: torch.Tensor | None,
    projections: tuple[nn.Linear, nn.Linear, nn.Linear],
    num_heads: int,
    rows: torch.Tensor | int,
    packing: TokenPacking | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention from one position per sequence (the pooled one, on a tower's last layer),
    without computing keys or values: ``[B, 1, D]``.

    With one query ``q`` per sequence, the keys and values at every position are not needed:
    ``q . (W_k x_j + b_k)`` is ``(W_k^T q) . x_j`` plus a term the same for every ``j``, which
    softmax ignores; and as the probabilities ``p_j`` sum to one, ``sum_j p_j (W_v x_j + b_v)``
    is ``W_v (sum_j p_j x_j) + b_v``. Per head that is two vector products per position instead
    of two ``[d, D]`` products, so the last layer skips its key and value products (a sixth of
    a layer's work; the query, output projection and MLP run at ``rows`` alone too). Equal to
    full attention up to float32 rounding.

    Args:
        hidden_states: ``[B, S, D]``, or packed ``[1, T, D]`` under ``packing``.
        bias: additive mask ``[B or 1, 1, S or 1, S]`` (padded layout).
        projections: the q, k and v layers.
        num_heads: attention heads.
        rows: the query position of each sequence (packed positions under ``packing``).
        packing: how ``hidden_states`` are packed, if they are.
        dropout_p: dropout on the attention probabilities (which then no longer sum to one:
            the value bias is scaled by their sum).
    """
    q_proj, k_proj, v_proj = projections
    query = linear(take_rows(hidden_states, rows), q_proj.weight, q_proj.bias)  # [B, 1, D]
    x = hidden_states if packing is None else packing.unpack(hidden_states)  # [B, S, D]
    batch, _, width = x.shape
    head_dim = width // num_heads
    per_head = (num_heads, head_dim, width)
    # Heads are the rows of each product (never a broadcast batch dimension, which would copy
    # the weights or the states once per head): W_k^T q per head [B, H, D], then the scores.
    query = query.view(batch, num_heads, head_dim) * head_dim**-0.5
    keyed = torch.einsum("bhd,hdc->bhc", query, float_weight(k_proj.weight).view(per_head))
    scores = torch.bmm(keyed, x.transpose(1, 2))  # [B, H, S]
    if bias is not None:
        scores = scores + _bias_rows(bias, rows if packing is None else packing.rows).flatten(1, 2)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
    value_bias = v_proj.bias.view(num_heads, head_dim)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
        value_bias = value_bias * probs.sum(dim=-1, keepdim=True)
    mixed = torch.bmm(probs, x)  # sum_j p_j x_j: [B, H, D]
    out = torch.einsum("bhc,hdc->bhd", mixed, float_weight(v_proj.weight).view(per_head))
    out = out + value_bias
    return out.reshape(batch, 1, width)
