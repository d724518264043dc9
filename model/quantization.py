"""int8 inference on CPU: the towers' linear layers with int8 weights and per-batch int8 inputs.

:func:`quantize_int8` turns a loaded float32 CLIP or Chinese-CLIP model into one whose linear
layers multiply in int8 (dynamic quantization): each weight is rounded once to int8 with one
scale per output channel, and each product's input is rounded to 8 bits with a scale taken from
that input's range, per call (per batch), so no calibration data is needed. Everything else
(embeddings, the patch convolution, LayerNorms, attention itself, activations, the projections
into the joint space) stays float32.

The kernels are PyTorch's own quantized ops (``torch.ops.quantized.linear_prepack`` /
``linear_dynamic``, what ``torch.ao.quantization.quantize_dynamic`` runs) on our own module,
:class:`Int8Linear`: ``quantize_dynamic``'s replacement modules have no ``weight`` tensor, which
the towers' fast paths read (fused q/k/v, the key-free pooled last layer). torchao 0.18, the
library PyTorch now points to, ran these products 8-10x slower than these ops in eager mode on
CPU (``benchmarks/bench_model.py``'s machine), so it is not used. The ops' backend is picked per
CPU at packing time (:func:`int8_engine`): oneDNN where the CPU has VNNI int8 dot products
(AVX512-VNNI, AVX-VNNI, AMX), FBGEMM (with 7-bit inputs, which its AVX2 kernels need to never
saturate) elsewhere.

How the towers' speed work carries over:

* q, k and v of a layer are packed as one ``[3D, D]`` int8 weight at quantization time
  (:func:`clipbeam.model.modeling_clip.fused_projection` returns it), so the fused product has no
  per-call copy at all.
* The pooled last layer (``attend_from_rows``) reads the key and value weights as float tensors:
  :func:`float_weight` gives their int8 values times their scales, and the few rows it multiplies
  stay float32.
* Biases stay float32 and are added after the product, so quick_gelu's folding into LayerNorm
  and biases (``CLIPMLP.add_to``) and :class:`~clipbeam.model.modeling_clip.TokenPacking` run
  unchanged.

A quantized model is for inference only: it has no gradients and cannot be saved (save the float
model). Because each input's scale comes from its whole batch, a row's embedding depends very
slightly on the rows it is batched with (see README for the measured accuracy).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .runtime import _cpu_flags

__all__ = [
    "FLOAT_LAYERS",
    "INT8",
    "Int8Linear",
    "Int8Weight",
    "float_weight",
    "int8_engine",
    "is_quantized",
    "model_bytes",
    "quantize_int8",
]

# The name of this mode wherever a dtype is named (``--dtype int8``, output metadata).
INT8 = "int8"

# Layers kept in float32 by default, as regular expressions over module names. The projections
# into the joint space are one small product per row (0.1% of a ViT-B/16 image tower's work) that
# every embedding goes through last; the BERT pooler is not used by the features.
FLOAT_LAYERS: tuple[str, ...] = (r"(visual|text)_projection", r"text_model\.pooler\..*")

# Names of the q, k and v layers of one attention module (CLIP's, BERT's), packed as one product.
_QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))

# CPU flags of int8 dot-product instructions (4 products summed per 32-bit lane, no saturation).
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def int8_engine() -> str:
    """The quantized backend for this CPU: ``"onednn"`` with VNNI, else ``"fbgemm"``.

    Measured on ViT-B/16's four product shapes at batch 8 on the Zen 4 EPYC of
    ``benchmarks/bench_model.py`` (AVX512-VNNI): oneDNN 21 ms, FBGEMM 42 ms, float32 oneDNN 91 ms;
    with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) its int8 products took 118 ms, FBGEMM's
    59 ms.
    """
    return "onednn" if _VNNI_FLAGS & _cpu_flags() else "fbgemm"


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    """Packs with backend ``name``; the packed weights keep it, so the global is restored."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@dataclass(eq=False)
class Int8Weight:
    """A ``[out, in]`` linear weight packed as int8, one scale per output row.

    ``rows`` set means this is a part of a weight packed together with others (q, k and v of one
    layer): ``parent`` holds the packed product and this weight is its rows ``rows``.
    """

    packed: Any  # torch.ops.quantized LinearPackedParams (a ScriptObject), bias-free
    shape: torch.Size
    reduce_range: bool  # inputs in 7 bits (FBGEMM's AVX2 kernels)
    parent: Int8Weight | None = None
    rows: slice | None = None

    @classmethod
    def pack(cls, weight: torch.Tensor, engine: str) -> Int8Weight:
        """Rounds ``weight`` (float, ``[out, in]``) to int8 per output row and packs it."""
        weight = weight.detach().float().contiguous()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings(), _engine(engine):
            # torch 2.13 deprecates quantized tensor types in favour of torchao (see the module
            # docstring for why its kernels are not used); the packing op still takes one.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
            qweight = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qweight, None)
        return cls(packed, weight.shape, reduce_range=engine == "fbgemm")

    @classmethod
    def pack_together(cls, weights: Sequence[torch.Tensor], engine: str) -> list[Int8Weight]:
        """Packs weights that read the same input as one product; returns their parts."""
        whole = cls.pack(torch.cat([w.detach() for w in weights]), engine)
        parts, start = [], 0
        for w in weights:
            rows = slice(start, start + w.shape[0])
            parts.append(cls(whole.packed, w.shape, whole.reduce_range, whole, rows))
            start = rows.stop
        return parts

    @classmethod
    def joined(cls, weights: Sequence[Int8Weight]) -> Int8Weight:
        """The packed product of ``weights``, which must be the parts of one in order.

        Raises:
            ValueError: the weights were not packed together, or not in this order.
        """
        parent = weights[0].parent
        starts = [0] + [w.rows.stop for w in weights[:-1] if w.rows is not None]
        if (
            parent is None
            or any(w.parent is not parent for w in weights)
            or [w.rows.start for w in weights if w.rows is not None] != starts
            or weights[-1].rows.stop != parent.shape[0]
        ):
            raise ValueError(
                f"these {len(weights)} int8 weights were not packed together in this order; "
                "quantize_int8 packs q, k and v of one attention layer as one product"
            )
        return parent

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ weight.T + bias`` with ``x`` rounded to int8 on its own range: ``[..., out]``."""
        if x.dtype != torch.float32:
            raise TypeError(f"int8 linear layers take float32 inputs (got {x.dtype})")
        out = torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)
        if self.rows is not None:
            out = out[..., self.rows]  # a view: the bias is added out of place
            return out if bias is None else out + bias
        return out if bias is None else out.add_(bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight these int8 values and scales stand for."""
        qweight, _ = torch.ops.quantized.linear_unpack(self.packed)
        weight = qweight.dequantize()
        return weight if self.rows is None else weight[self.rows]


def float_weight(weight: torch.Tensor | Int8Weight) -> torch.Tensor:
    """A linear layer's weight as a float tensor: itself, or an int8 weight's float values."""
    return weight.dequantize() if isinstance(weight, Int8Weight) else weight


class Int8Linear(nn.Module):
    """An ``nn.Linear`` for inference with an :class:`Int8Weight`; the bias stays float32.

    ``weight`` and ``bias`` keep ``nn.Linear``'s names, so the towers' code, which passes them to
    :func:`clipbeam.model.kernels.linear`, runs on either.
    """

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.linear(x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        raise RuntimeError(
            "an int8-quantized model cannot be saved or give a state_dict (its weights are packed "
            "for its CPU's kernels); save the float32 model and quantize after loading"
        )


def is_quantized(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` has quantized ``model``."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def quantize_int8(
    model: nn.Module, *, float_layers: Sequence[str] = FLOAT_LAYERS, engine: str | None = None
) -> nn.Module:
    """Replaces the linear layers of a float32 model on CPU with :class:`Int8Linear`, in place.

    Args:
        model: a CLIP or Chinese-CLIP model (or one tower), float32, on CPU.
        float_layers: regular expressions; linear layers whose module name matches one in full
            stay float32 (default :data:`FLOAT_LAYERS`, the projections).
        engine: the quantized backend, ``"onednn"`` or ``"fbgemm"``; default :func:`int8_engine`.

    Returns:
        ``model``, in eval mode, without gradients.

    Raises:
        ValueError: the model is not float32 on CPU, or is quantized already.
    """
    params = list(model.parameters())
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        kinds = sorted({f"{p.dtype} on {p.device.type}" for p in params})
        raise ValueError(
            f"int8 quantization needs a float32 model on CPU (got {', '.join(kinds)}); load it "
            "with dtype=float32 on cpu"
        )
    if is_quantized(model):
        raise ValueError("this model is quantized already")
    engine = engine or int8_engine()
    keep = [re.compile(p) for p in float_layers]
    chosen = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(p.fullmatch(name) for p in keep)
    }
    packed: dict[str, Int8Weight] = {}
    for name, _ in model.named_modules():
        for triple in _QKV_NAMES:
            group = [f"{name}.{p}" if name else p for p in triple]
            if all(g in chosen for g in group):
                parts = Int8Weight.pack_together([chosen[g].weight for g in group], engine)
                packed.update(zip(group, parts, strict=True))
    for name, linear in chosen.items():
        weight = packed.get(name) or Int8Weight.pack(linear.weight, engine)
        _replace(model, name, Int8Linear(weight, linear.bias))
    model.eval().requires_grad_(False)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def model_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take in memory: float tensors, plus int8 values and their
    per-row float32 scales for each packed weight (counted once when shared)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    packed = {}
    for m in model.modules():
        if isinstance(m, Int8Linear):
            whole = m.weight.parent or m.weight
            packed[id(whole)] = whole.shape
    return total + sum(rows * cols + rows * 4 for rows, cols in packed.values())
