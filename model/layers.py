"""CLIP's transformer layers (attention, MLP, pre-LayerNorm block, encoder stack) and
:func:`run_layers`, the layer loop of both families' encoders.

Module attribute names are the checkpoint keys (``encoder.layers.N.self_attn.q_proj``,
``mlp.fc1``, ``layer_norm1``...). Linear layers run through :func:`clipbeam.model.kernels.linear`
(oneDNN on CPU) with their ``weight`` and ``bias`` read directly, so forward hooks on the
``nn.Linear`` submodules are not called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import TokenPacking, self_attention, take_rows
from .configuration import CLIPTextConfig, CLIPVisionConfig
from .kernels import get_activation, linear
from .modeling_outputs import BaseModelOutputWithPooling

__all__ = [
    "CLIPMLP",
    "CLIPAttention",
    "CLIPEncoder",
    "CLIPEncoderLayer",
    "run_layers",
]


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
