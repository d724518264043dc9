"""The numerical kernels the towers run on: linear layers, activations, and their fusion.

Matrix products are almost all of a CLIP forward pass, so which GEMM library runs them decides
the speed. On CPU, ``torch.nn.functional.linear`` in float32 calls MKL, which takes a generic
AVX2 path on AMD processors; oneDNN (also part of every x86 PyTorch build) runs AVX-512 there and
was 2-3x faster per product on the AMD EPYC this project is benchmarked on
(``benchmarks/bench_model.py``). oneDNN can also apply the activation inside the product
(gelu, relu, silu, tanh), saving a pass over the largest activation tensor. :func:`linear` picks
oneDNN for CPU inference in float32 or bfloat16 and ``F.linear`` everywhere else: on GPU, when
gradients are needed (oneDNN's kernel has no backward), and when
``torch.backends.mkldnn.flags(enabled=False)`` turns oneDNN off. Both kernels compute the same
float32 products; they differ only in summation order (about 1e-6 relative).

The oneDNN call is wrapped in a ``torch.library`` custom op, so ``torch.compile`` keeps it as one
opaque call and fuses the elementwise work around it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .quantization import Int8Weight

__all__ = [
    "ACTIVATIONS",
    "get_activation",
    "linear",
    "onednn_linear_available",
    "quick_gelu",
]


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``.

    Without autograd it runs in place on one new buffer (3 passes, 1 allocation instead of 3):
    on a ViT-B/16 MLP this activation costs a third as much as the matrix product before it.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x * torch.sigmoid(1.702 * x)
    out = x.mul(1.702)
    out.sigmoid_()
    return out.mul_(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# hidden_act names of config.json (transformers' ACT2FN names) that these models can run.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}

# Activations oneDNN applies inside the product: hidden_act -> (post-op, algorithm).
# quick_gelu is not one of them (oneDNN's swish would need its alpha, which torch does not pass).
_POSTOPS: dict[str, tuple[str, str]] = {
    "gelu": ("gelu", "none"),
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "gelu_fast": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
    "swish": ("swish", ""),
    "tanh": ("tanh", ""),
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function named ``hidden_act`` in a config.

    Raises:
        ValueError: the name is not one of the supported activations.
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported hidden_act {name!r} in the model config; supported: "
            f"{', '.join(sorted(ACTIVATIONS))}"
        ) from None


@torch.library.custom_op("clipbeam::onednn_linear", mutates_args=())
def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, postop: str, algorithm: str
) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])  # oneDNN takes 2-D input: [*, in] -> [N, in]
    out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, postop, [], algorithm)
    return out.view(*x.shape[:-1], weight.shape[0])


@_onednn_linear.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, postop: str, algorithm: str
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# What the torch build and the CPU offer, read once at import: ``torch.compile`` cannot trace
# ``torch.backends.mkldnn.is_available`` or oneDNN's CPU query, and asking them inside the
# compiled towers broke the graph at every linear layer.
_ONEDNN_LINEAR_BUILT = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)
# oneDNN's own check that this CPU runs bfloat16 kernels (AVX-512 or newer on x86).
_ONEDNN_BF16 = _ONEDNN_LINEAR_BUILT and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onednn_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's linear kernel can run ``dtype`` products here.

    float32 needs only a torch build with oneDNN, enabled. bfloat16 also needs a CPU that oneDNN
    runs it on (AVX-512 or newer on x86): on an AVX2-only CPU its inner product refuses bfloat16
    ("could not create a primitive descriptor"), so ``F.linear`` computes those instead.
    """
    if not (_ONEDNN_LINEAR_BUILT and torch.backends.mkldnn.enabled):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and _ONEDNN_BF16)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return False
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return False  # the oneDNN kernel has no backward
    return onednn_linear_available(x.dtype)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor | Int8Weight,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` on the fastest kernel for the inputs.

    Args:
        x: ``[..., in]`` inputs.
        weight: ``[out, in]`` weight, as in ``nn.Linear``, or an int8 one
            (:mod:`clipbeam.model.quantization`), multiplied in int8.
        bias: ``[out]`` bias, or ``None``.
        activation: a ``hidden_act`` name applied to the result (fused into the product where
            the kernel can), or ``None``.

    Returns:
        ``[..., out]`` outputs.
    """
    if isinstance(weight, Int8Weight):
        out = weight.linear(x, bias)
        return out if activation is None else get_activation(activation)(out)
    if _use_onednn(x, weight, bias):
        postop, algorithm = _POSTOPS.get(activation or "", ("none", ""))
        out = _onednn_linear(x, weight, bias, postop, algorithm)
        if activation is None or activation in _POSTOPS:
            return out
        return get_activation(activation)(out)
    out = F.linear(x, weight, bias)
    return out if activation is None else get_activation(activation)(out)
