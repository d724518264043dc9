"""CLIP (Radford et al. 2021) in plain PyTorch, loading Hugging Face checkpoints one to one.

Module attribute names are the checkpoint keys (``text_model.embeddings.token_embedding``,
``vision_model.pre_layrnorm``, ``encoder.layers.N.self_attn.q_proj``, ``visual_projection``...).
Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; the weights are
computed explicitly only when ``output_attentions`` asks for them.

For speed (``benchmarks/bench_model.py``): linear layers run through
:func:`clipbeam.model.kernels.linear`
(oneDNN on CPU) with their ``weight`` and ``bias`` read directly, so forward hooks on the
``nn.Linear`` submodules are not called; q, k and v are one product (:func:`fused_projection`);
``get_text_features`` / ``get_image_features`` run each tower's last layer at the pooled
position only (``pooled_only``); and there a padded text batch runs its products on its real
tokens alone (:class:`TokenPacking`).

The image tower and the building blocks here are shared with Chinese-CLIP
(:mod:`clipbeam.model.modeling_chinese_clip`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from .kernels import get_activation, linear, quick_gelu
from .loading import PreTrainedModel

__all__ = [
    "BaseModelOutputWithPooling",
    "CLIPModel",
    "CLIPOutput",
    "CLIPTextModel",
    "CLIPTextModelOutput",
    "CLIPTextModelWithProjection",
    "CLIPVisionModel",
    "CLIPVisionModelOutput",
    "CLIPVisionModelWithProjection",
    "ModelOutput",
    "TokenPacking",
    "as_requested",
    "attend",
    "attend_from_rows",
    "eos_pool",
    "eos_positions",
    "fused_projection",
    "get_activation",
    "quick_gelu",
    "self_attention",
    "take_rows",
    "wants_output_object",
]

# -- outputs ------------------------------------------------------------------------------------


class ModelOutput:
    """Base of the output dataclasses: attribute, ``["key"]`` and index access, ``to_tuple()``.

    As in transformers, fields that are ``None`` are left out of ``keys()`` and ``to_tuple()``,
    so ``output[0]`` is the first field that has a value.
    """

    def keys(self) -> list[str]:
        """Names of the fields that are not ``None``."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        """Values of the fields that are not ``None``."""
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of the fields that are not ``None``."""
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` values in field order; nested outputs become tuples too."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no value for {key!r}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """What a tower returns.

    Attributes:
        last_hidden_state: ``[batch, seq, hidden]`` states after the last layer (and, for the
            CLIP text tower, ``final_layer_norm``).
        pooler_output: ``[batch, hidden]`` pooled state (EOS token for CLIP text, class token
            after ``post_layernorm`` for images, BERT pooler for Chinese-CLIP text; ``None`` for
            the text tower inside a full Chinese-CLIP model, which has no pooler).
        hidden_states: with ``output_hidden_states``: the encoder input, then each layer's
            output (``num_hidden_layers + 1`` tensors).
        attentions: with ``output_attentions``: each layer's ``[batch, heads, seq, seq]``
            attention probabilities.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPTextModelOutput(ModelOutput):
    """Output of :class:`CLIPTextModelWithProjection`; ``text_embeds`` is unnormalized."""

    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPVisionModelOutput(ModelOutput):
    """Output of :class:`CLIPVisionModelWithProjection`; ``image_embeds`` is unnormalized."""

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPOutput(ModelOutput):
    """Output of :class:`CLIPModel`.

    Attributes:
        loss: symmetric contrastive loss, with ``return_loss=True``.
        logits_per_image: ``[images, texts]`` scaled cosine similarities.
        logits_per_text: ``[texts, images]``, the transpose.
        text_embeds: ``[texts, projection_dim]`` L2-normalized text embeddings.
        image_embeds: ``[images, projection_dim]`` L2-normalized image embeddings.
        text_model_output: the text tower's output.
        vision_model_output: the image tower's output.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


# -- building blocks ----------------------------------------------------------------------------


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


def fused_projection(*layers: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights and biases of linear layers that read the same input, stacked for one product.

    One ``[3D, D]`` product instead of three ``[D, D]`` ones (q, k, v) ran about 25% faster on
    CPU for ViT-B/16; stacking the weights costs a copy of about 0.1 ms per layer, and keeps the
    checkpoint's separate tensors as the only parameters (so loading, saving, training and weight
    tying see the Hugging Face layout unchanged). Inside ``torch.compile`` the copy is traced.
    ``[out, in]`` each -> ``[sum(out), in]`` and ``[sum(out)]``.
    """
    weight = torch.cat([layer.weight for layer in layers])
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


def _init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with q/k/v projections stored apart (the checkpoint layout) and
    computed as one product (:func:`fused_projection`)."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)
        factor = config.initializer_factor
        in_std = self.embed_dim**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            _init_linear(proj, in_std)
        _init_linear(self.out_proj, self.embed_dim**-0.5 * factor)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        need_weights: bool = False,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attends from every position, or only from ``rows`` (see :func:`take_rows`);
        ``hidden_states`` are packed tokens when ``packing`` is given."""
        out, weights = self_attention(
            hidden_states,
            bias,
            (self.q_proj, self.k_proj, self.v_proj),
            self.num_heads,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            rows=rows,
            packing=packing,
        )
        return linear(out, self.out_proj.weight, self.out_proj.bias), weights


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
    keyed = torch.einsum("bhd,hdc->bhc", query, k_proj.weight.view(per_head))
    scores = torch.bmm(keyed, x.transpose(1, 2))  # [B, H, S]
    if bias is not None:
        scores = scores + _bias_rows(bias, rows if packing is None else packing.rows).flatten(1, 2)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
    value_bias = v_proj.bias.view(num_heads, head_dim)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
        value_bias = value_bias * probs.sum(dim=-1, keepdim=True)
    mixed = torch.bmm(probs, x)  # sum_j p_j x_j: [B, H, D]
    out = torch.einsum("bhc,hdc->bhd", mixed, v_proj.weight.view(per_head)) + value_bias
    return out.reshape(batch, 1, width)


class CLIPMLP(nn.Module):
    """The feed-forward block: fc1, activation, fc2."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.hidden_act = config.hidden_act
        self.activation_fn = get_activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        factor = config.initializer_factor
        _init_linear(self.fc1, (2 * config.hidden_size) ** -0.5 * factor)
        _init_linear(
            self.fc2,
            config.hidden_size**-0.5 * (2 * config.num_hidden_layers) ** -0.5 * factor,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = linear(hidden_states, self.fc1.weight, self.fc1.bias, self.hidden_act)
        return linear(hidden_states, self.fc2.weight, self.fc2.bias)

    def add_to(self, hidden_states: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """``hidden_states + self(norm(hidden_states))``: the block's feed-forward residual.

        For float32 inference with ``quick_gelu`` it computes the same with one pass of the
        activation instead of three: ``quick_gelu(y) = silu(a * y) / a`` with ``a = 1.702``,
        and the scale ``a`` is folded into the LayerNorm's affine parameters and fc1's bias
        (vectors), the ``1 / a`` into fc2's bias and the residual sum, so the product outputs
        are never scaled. ``silu`` then runs in place. Equal up to float32 rounding; 1.5-2.5%
        of the ViT-B/16 image tower's time on CPU.
        """
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.hidden_act != "quick_gelu" or hidden_states.dtype != torch.float32 or grad:
            return hidden_states + self(norm(hidden_states))
        a = 1.702
        normed = F.layer_norm(
            hidden_states, norm.normalized_shape, norm.weight * a, norm.bias * a, norm.eps
        )
        inner = F.silu(linear(normed, self.fc1.weight, self.fc1.bias * a), inplace=True)
        return torch.add(
            hidden_states, linear(inner, self.fc2.weight, self.fc2.bias * a), alpha=1 / a
        )


class CLIPEncoderLayer(nn.Module):
    """A pre-LayerNorm transformer block."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        need_weights: bool = False,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output at every position, or at ``rows`` only (``[B, 1, D]``); on
        packed tokens when ``packing`` is given."""
        attn, weights = self.self_attn(
            self.layer_norm1(hidden_states), bias, need_weights, rows, packing
        )
        if rows is not None:
            hidden_states = take_rows(hidden_states, rows)
        hidden_states = hidden_states + attn
        hidden_states = self.mlp.add_to(hidden_states, self.layer_norm2)
        return hidden_states, weights


class CLIPEncoder(nn.Module):
    """The stack of :class:`CLIPEncoderLayer`."""

    def __init__(self, config: CLIPTextConfig | CLIPVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> BaseModelOutputWithPooling:
        return run_layers(
            self.layers,
            hidden_states,
            bias,
            output_attentions,
            output_hidden_states,
            rows,
            packing,
        )


def run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    bias: torch.Tensor | None,
    output_attentions: bool,
    output_hidden_states: bool,
    rows: torch.Tensor | int | None = None,
    packing: TokenPacking | None = None,
) -> BaseModelOutputWithPooling:
    """Runs transformer layers in turn, collecting the states and weights that were asked for.

    Each layer is called as ``layer(hidden_states, bias, need_weights, rows, packing)`` and
    returns ``(hidden_states, weights)``.

    Args:
        rows: compute the last layer at these positions only (see :func:`take_rows`): the
            pooled ones, when only the pooled output is wanted. ``last_hidden_state`` is then
            ``[B, 1, D]``. This skips nearly all of one layer's work (about 8% of a 12-layer
            tower; see :func:`attend_from_rows`).
        packing: ``hidden_states`` are the packed real tokens of a padded batch (see
            :class:`TokenPacking`; ``rows`` are then packed positions, and required).

    Raises:
        ValueError: ``rows`` together with hidden states or attentions, which need every row;
            ``packing`` without ``rows``.
    """
    if packing is not None and rows is None:
        raise ValueError("packed tokens need the pooled rows: padded positions have no state")
    if rows is not None and (output_attentions or output_hidden_states):
        raise ValueError(
            "pooled_only computes the last layer at the pooled position only, so it cannot "
            "return every layer's hidden states or attentions; pass pooled_only=False for those"
        )
    states = [hidden_states] if output_hidden_states else None
    attentions = [] if output_attentions else None
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        hidden_states, weights = layer(
            hidden_states, bias, output_attentions, rows if i == last else None, packing
        )
        if states is not None:
            states.append(hidden_states)
        if attentions is not None:
            attentions.append(weights)
    return BaseModelOutputWithPooling(
        last_hidden_state=hidden_states,
        hidden_states=tuple(states) if states is not None else None,
        attentions=tuple(attentions) if attentions is not None else None,
    )


# -- pooling ------------------------------------------------------------------------------------


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


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy; the i-th text matches the i-th image."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    text_loss = F.cross_entropy(logits_per_text, targets)
    image_loss = F.cross_entropy(logits_per_text.t(), targets)
    return (text_loss + image_loss) / 2


def _flag(value: bool | None, default: bool | None) -> bool | None:
    return default if value is None else value


def as_requested(output: ModelOutput, return_dict: bool | None, config: Any) -> Any:
    """``output``, or ``output.to_tuple()`` when ``return_dict`` is False (as in transformers).

    Unset, ``return_dict`` falls to the config's ``return_dict`` key (kept in
    ``config.extra`` when a ``config.json`` has one), else True.
    """
    if return_dict is None:
        return_dict = config.extra.get("return_dict", True)
    return output if return_dict else output.to_tuple()


def wants_output_object(
    output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
) -> bool:
    """Whether ``get_*_features`` should return transformers 5's output object (or its tuple)
    rather than the features tensor: yes when any of these transformers 5 arguments asks for
    more than the tensor."""
    return bool(output_attentions or output_hidden_states) or return_dict is not None


# -- text tower ---------------------------------------------------------------------------------


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        std = 0.02 * config.initializer_factor
        nn.init.normal_(self.token_embedding.weight, std=std)
        nn.init.normal_(self.position_embedding.weight, std=std)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        seq = input_ids.shape[-1]
        if position_ids is None:
            positions = self.position_embedding.weight[:seq]
        else:
            positions = self.position_embedding(position_ids)
        return self.token_embedding(input_ids) + positions


class CLIPTextModel(PreTrainedModel):
    """CLIP's causal text transformer, pooled at the end-of-text token (no projection)."""

    config_class = CLIPTextConfig
    checkpoint_prefix = "text_model."
    ignored_checkpoint_keys = (
        r"vision_model\..*",
        r"(visual|text)_projection\.weight",
        "logit_scale",
    )

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        pooled_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes token ids.

        Args:
            input_ids: ``[batch, seq]`` token ids, ``seq <= max_position_embeddings``.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[batch, seq]`` positions; default ``0..seq-1``.
            output_attentions: return every layer's attention probabilities
                (default: ``config.output_attentions``).
            output_hidden_states: return every layer's hidden states
                (default: ``config.output_hidden_states``).
            return_dict: False returns ``to_tuple()`` of the output (see :func:`as_requested`).
            pooled_only: compute only what ``pooler_output`` needs: the last layer runs at the
                EOS position alone, and ``last_hidden_state`` is that position's ``[batch, 1,
                hidden]`` state.

        Returns:
            ``last_hidden_state`` after ``final_layer_norm`` and ``pooler_output`` at the EOS
            token (see :func:`eos_pool`).
        """
        _check_input_ids(input_ids, self.config.max_position_embeddings)
        hidden_states = self.embeddings(input_ids, position_ids)
        seq = input_ids.shape[1]
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=hidden_states.device).tril()
        allowed = allowed[None, None]  # causal: [1, 1, seq, seq]
        if attention_mask is not None:
            padding = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
            allowed = allowed & padding[:, None, None, :]  # and no padded key: [B, 1, S, S]
        eos = eos_positions(input_ids, self.config.eos_token_id, hidden_states.device)
        bias = mask_to_bias(allowed, hidden_states.dtype)
        rows, packing = eos if pooled_only else None, None
        if pooled_only and attention_mask is not None:
            packing = TokenPacking.of(padding, eos)
        if packing is not None:
            hidden_states, rows = packing.pack(hidden_states), packing.packed_rows
        out = self.encoder(
            hidden_states,
            bias,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            rows,
            packing,
        )
        out.last_hidden_state = self.final_layer_norm(out.last_hidden_state)
        pooled = out.last_hidden_state if pooled_only else take_rows(out.last_hidden_state, eos)
        out.pooler_output = pooled[:, 0]
        return as_requested(out, return_dict, self.config)


def _check_input_ids(input_ids: torch.Tensor, max_positions: int) -> None:
    if input_ids.ndim != 2:
        raise ValueError(
            f"input_ids must be [batch, seq] (got shape {list(input_ids.shape)}); "
            "add a batch dimension with input_ids[None]"
        )
    if input_ids.shape[1] > max_positions:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens but the model has "
            f"{max_positions} positions; tokenize with truncation=True, max_length={max_positions}"
        )


# -- image tower --------------------------------------------------------------------------------


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (a strided convolution), class token and absolute positions."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(config.num_positions, config.hidden_size)
        factor = config.initializer_factor
        nn.init.normal_(self.class_embedding, std=config.hidden_size**-0.5 * factor)
        nn.init.normal_(self.patch_embedding.weight, std=config.initializer_range * factor)
        nn.init.normal_(self.position_embedding.weight, std=config.initializer_range * factor)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Embeds ``[B, C, H, W]`` pixels as ``[B, 1 + patches, D]``.

        ``H`` and ``W`` must be ``image_size``, unless ``interpolate_pos_encoding``: then any size
        of at least one patch goes, with the position table resized to its patch grid
        (:meth:`resized_positions`); pixels beyond a whole number of patches are ignored.
        """
        size, patch = self.image_size, self.patch_size
        if pixel_values.ndim != 4 or (
            not interpolate_pos_encoding and pixel_values.shape[-2:] != (size, size)
        ):
            raise ValueError(
                f"pixel_values must be [batch, channels, {size}, {size}] for this model (got "
                f"{list(pixel_values.shape)}); preprocess images with the checkpoint's image "
                "processor, or pass interpolate_pos_encoding=True to run at another resolution"
            )
        height, width = pixel_values.shape[-2:]
        if height < patch or width < patch:
            raise ValueError(
                f"pixel_values of {height}x{width} px hold no whole {patch}x{patch} patch; "
                "images must be at least one patch wide and high"
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(dtype=weight.dtype))  # [B, D, h, w]
        patches = patches.flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        positions = self.position_embedding.weight
        if interpolate_pos_encoding:
            positions = self.resized_positions(height // patch, width // patch)
        return torch.cat([cls, patches], dim=1) + positions

    def resized_positions(self, rows: int, cols: int) -> torch.Tensor:
        """The position table for a ``rows x cols`` patch grid.

        The patch positions, seen as a ``D``-channel image of the training grid, are resized
        bicubically (``align_corners=False``, the numbers of transformers'
        ``interpolate_pos_encoding``); the class position is kept. At the training grid the
        table is returned as it is. ``[1 + g*g, D] -> [1 + rows*cols, D]``.
        """
        table = self.position_embedding.weight
        grid = self.image_size // self.patch_size
        if (rows, cols) == (grid, grid):
            return table
        dim = table.shape[-1]
        image = table[1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # -> [1, D, g, g]
        image = F.interpolate(image, size=(rows, cols), mode="bicubic", align_corners=False)
        resized = image.permute(0, 2, 3, 1).reshape(rows * cols, dim)  # [1, D, r, c] -> [r*c, D]
        return torch.cat([table[:1], resized])


class CLIPVisionModel(PreTrainedModel):
    """The ViT image tower, pooled at the class token after ``post_layernorm``."""

    config_class = CLIPVisionConfig
    checkpoint_prefix = "vision_model."
    ignored_checkpoint_keys = (
        r"text_model\..*",
        r"(visual|text)_projection\.weight",
        "logit_scale",
    )

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        *,
        pooled_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes images.

        Args:
            pixel_values: ``[batch, channels, image_size, image_size]`` normalized pixels.
            output_attentions: return every layer's attention probabilities.
            output_hidden_states: return every layer's hidden states.
            interpolate_pos_encoding: accept other image sizes, resizing the position
                embeddings to the patch grid (:meth:`CLIPVisionEmbeddings.resized_positions`).
            return_dict: False returns ``to_tuple()`` of the output (see :func:`as_requested`).
            pooled_only: compute only what ``pooler_output`` needs: the last layer runs at the
                class token alone, and ``last_hidden_state`` is its ``[batch, 1, hidden]`` state.

        Returns:
            ``last_hidden_state`` and ``pooler_output`` (class token after ``post_layernorm``).
        """
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(embeddings)
        out = self.encoder(
            hidden_states,
            None,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            0 if pooled_only else None,
        )
        out.pooler_output = self.post_layernorm(class_token_pool(out.last_hidden_state))
        return as_requested(out, return_dict, self.config)


# -- towers with projection ---------------------------------------------------------------------


class CLIPTextModelWithProjection(PreTrainedModel):
    """The text tower plus ``text_projection``: unnormalized text embeddings."""

    config_class = CLIPTextConfig
    ignored_checkpoint_keys = (r"vision_model\..*", r"visual_projection\.weight", "logit_scale")

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextModel(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        std = config.hidden_size**-0.5 * config.initializer_factor
        nn.init.normal_(self.text_projection.weight, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLIPTextModelOutput | tuple:
        """Encodes token ids (arguments as :meth:`CLIPTextModel.forward`) and projects them."""
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            output_attentions,
            output_hidden_states,
            return_dict=True,
        )
        embeds = CLIPTextModelOutput(
            text_embeds=linear(out.pooler_output, self.text_projection.weight),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return as_requested(embeds, return_dict, self.config)


class CLIPVisionModelWithProjection(PreTrainedModel):
    """The image tower plus ``visual_projection``: unnormalized image embeddings."""

    config_class = CLIPVisionConfig
    ignored_checkpoint_keys = (r"text_model\..*", r"text_projection\.weight", "logit_scale")

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        std = config.hidden_size**-0.5 * config.initializer_factor
        nn.init.normal_(self.visual_projection.weight, std=std)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> CLIPVisionModelOutput | tuple:
        """Encodes images (arguments as :meth:`CLIPVisionModel.forward`) and projects them."""
        out = self.vision_model(
            pixel_values,
            output_attentions,
            output_hidden_states,
            interpolate_pos_encoding,
            return_dict=True,
        )
        embeds = CLIPVisionModelOutput(
            image_embeds=linear(out.pooler_output, self.visual_projection.weight),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return as_requested(embeds, return_dict, self.config)


# -- the full model -----------------------------------------------------------------------------


class CLIPModel(PreTrainedModel):
    """Text and image towers, their projections into one space, and the learned logit scale."""

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.text_model = CLIPTextModel(text)
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        factor = config.initializer_factor
        nn.init.normal_(self.visual_projection.weight, std=vision.hidden_size**-0.5 * factor)
        nn.init.normal_(self.text_projection.weight, std=text.hidden_size**-0.5 * factor)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor | BaseModelOutputWithPooling | tuple:
        """Projected, unnormalized text embeddings ``[batch, projection_dim]``.

        With none of the keyword arguments this returns the tensor (the transformers 4 API,
        computed with the fast pooled-only last layer). Any of them, set, asks for transformers
        5's result: the text tower's output with ``pooler_output`` replaced by the projected
        embeddings (a tuple with ``return_dict=False``).

        Args:
            input_ids: ``[batch, seq]`` token ids.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[batch, seq]`` positions; default ``0..seq-1``.
            output_attentions: include every layer's attention probabilities.
            output_hidden_states: include every layer's hidden states.
            return_dict: return the output object (True) or its tuple (False).
        """
        detailed = wants_output_object(output_attentions, output_hidden_states, return_dict)
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            output_attentions if detailed else False,
            output_hidden_states if detailed else False,
            return_dict=True,
            pooled_only=not detailed,
        )
        features = linear(out.pooler_output, self.text_projection.weight)
        if not detailed:
            return features
        out.pooler_output = features
        return as_requested(out, return_dict, self.config)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        *,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor | BaseModelOutputWithPooling | tuple:
        """Projected, unnormalized image embeddings ``[batch, projection_dim]``.

        Returns the tensor, or transformers 5's output object as :meth:`get_text_features`
        explains.

        Args:
            pixel_values: ``[batch, channels, image_size, image_size]`` normalized pixels.
            interpolate_pos_encoding: accept other image sizes (see :class:`CLIPVisionModel`).
            output_attentions: include every layer's attention probabilities.
            output_hidden_states: include every layer's hidden states.
            return_dict: return the output object (True) or its tuple (False).
        """
        detailed = wants_output_object(output_attentions, output_hidden_states, return_dict)
        out = self.vision_model(
            pixel_values,
            output_attentions if detailed else False,
            output_hidden_states if detailed else False,
            interpolate_pos_encoding,
            return_dict=True,
            pooled_only=not detailed,
        )
        features = linear(out.pooler_output, self.visual_projection.weight)
        if not detailed:
            return features
        out.pooler_output = features
        return as_requested(out, return_dict, self.config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> CLIPOutput | tuple:
        """Scores every text against every image.

        Args:
            input_ids: ``[texts, seq]`` token ids.
            pixel_values: ``[images, channels, size, size]`` normalized pixels.
            attention_mask: ``[texts, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[texts, seq]`` positions.
            return_loss: also compute the contrastive loss (needs as many texts as images).
            output_attentions: return attention probabilities in the tower outputs.
            output_hidden_states: return hidden states in the tower outputs.
            interpolate_pos_encoding: accept other image sizes (see :class:`CLIPVisionModel`).
            return_dict: False returns ``to_tuple()`` of the output, tower outputs included.

        Returns:
            Normalized embeddings, ``logits_per_image`` / ``logits_per_text`` and the tower
            outputs (whose ``pooler_output`` is the tower's, before projection).
        """
        _require_both(input_ids, pixel_values)
        # Unset flags fall to this config's defaults if they are on, else to each tower's own.
        attentions = _flag(output_attentions, self.config.output_attentions or None)
        states = _flag(output_hidden_states, self.config.output_hidden_states or None)
        vision_out = self.vision_model(
            pixel_values, attentions, states, interpolate_pos_encoding, return_dict=True
        )
        text_out = self.text_model(
            input_ids, attention_mask, position_ids, attentions, states, return_dict=True
        )
        image_embeds = _normalize(linear(vision_out.pooler_output, self.visual_projection.weight))
        text_embeds = _normalize(linear(text_out.pooler_output, self.text_projection.weight))
        out = _dual_output(
            CLIPOutput,
            self.logit_scale,
            text_embeds,
            image_embeds,
            text_out,
            vision_out,
            return_loss,
        )
        return as_requested(out, return_dict, self.config)


def _require_both(input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None) -> None:
    missing = [
        n for n, v in (("input_ids", input_ids), ("pixel_values", pixel_values)) if v is None
    ]
    if missing:
        raise ValueError(
            f"the full model needs both input_ids and pixel_values (missing: {', '.join(missing)});"
            " use get_text_features() / get_image_features() for one modality"
        )


def _dual_output(
    output_cls: type[Any],
    logit_scale: torch.Tensor,
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_out: BaseModelOutputWithPooling,
    vision_out: BaseModelOutputWithPooling,
    return_loss: bool | None,
) -> Any:
    """Similarity logits (and loss) of normalized embeddings, packed into ``output_cls``."""
    logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device)
    logits_per_text = logits_per_text * logit_scale.exp().to(text_embeds.device)
    return output_cls(
        loss=contrastive_loss(logits_per_text) if return_loss else None,
        logits_per_image=logits_per_text.t(),
        logits_per_text=logits_per_text,
        text_embeds=text_embeds,
        image_embeds=image_embeds,
        text_model_output=text_out,
        vision_model_output=vision_out,
    )
