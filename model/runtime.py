"""How a loaded model runs: the compute dtype that suits the hardware, and ``torch.compile``.

``dtype="auto"`` (:func:`compute_dtype`) means:

* CUDA GPUs: float16. Every CUDA GPU since Volta multiplies it on tensor cores, and it keeps three
  more mantissa bits than bfloat16 (CLIP was trained in float16, so its activations fit the
  range). Pass ``bfloat16`` explicitly for checkpoints whose activations overflow float16.
* CPUs with native bfloat16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16): bfloat16. On the AMD
  EPYC of ``benchmarks/bench_model.py`` it ran ViT-B/16 about 1.7x faster than float32, with
  image and text features at cosine >= 0.9999 to float32 ones.
* Other CPUs: float32. Without hardware support bfloat16 is emulated and slower than float32.

:func:`compile_towers` compiles both towers of a model in place with ``torch.compile``.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "COMPUTE_DTYPES",
    "compile_towers",
    "compute_dtype",
    "cpu_has_native_bf16",
    "should_compile",
]

# The names a caller may pass as a compute dtype.
COMPUTE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# CPU feature flags that mean bfloat16 products run in hardware: x86 (/proc/cpuinfo "flags") and
# aarch64 ("Features"). AVX512-BF16 converts and multiplies bfloat16 (Cooper Lake, Zen 4 and
# later); AMX-BF16 is Sapphire Rapids' matrix unit.
_BF16_FLAGS = {"x86_64": {"avx512_bf16", "amx_bf16"}, "aarch64": {"bf16"}}
_CPUINFO = Path("/proc/cpuinfo")


def _cpu_flags() -> set[str]:
    """The feature flags of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()  # not Linux: no /proc to read; callers treat this as "no native bf16"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 products in hardware.

    ``torch.backends.cpu.get_cpu_capability()`` says only ``"AVX512"`` on these CPUs, and
    oneDNN's own check accepts any AVX-512 CPU (where it emulates bfloat16), so the flags the
    kernel reports are read instead. Outside Linux the answer is ``False``.
    """
    wanted = _BF16_FLAGS.get(platform.machine().lower().replace("amd64", "x86_64"), set())
    return bool(wanted & _cpu_flags())


def compute_dtype(name: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The dtype to run a model in on ``device``.

    Args:
        name: ``"auto"`` (see the module docstring), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a torch dtype.
        device: where the model runs.

    Raises:
        ValueError: ``name`` is not one of those, or float16 was asked for on a CPU (PyTorch's CPU
            float16 matrix products are emulated and many times slower than float32).
    """
    dev = torch.device(device)
    if isinstance(name, torch.dtype):
        dtype = name
    elif name in COMPUTE_DTYPES:
        dtype = COMPUTE_DTYPES[name]
    else:
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)} (got {name!r})")
    if dtype is None:
        if dev.type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if dev.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16 (got {dtype})")
    if dtype == torch.float16 and dev.type == "cpu":
        raise ValueError(
            "float16 on CPU is emulated and many times slower than float32; use --dtype auto "
            "(bfloat16 where the CPU has it, else float32), bfloat16 or float32"
        )
    return dtype


def should_compile(requested: bool | None, device: str | torch.device) -> bool:
    """Whether to ``torch.compile`` the towers: ``requested`` if given, else on CUDA only.

    On CPU the towers already run on oneDNN (:mod:`clipbeam.model.kernels`), and compiling fuses
    only the
    elementwise work between products: ``benchmarks/bench_model.py`` measured 2-12% more
    throughput in float32 and none in bfloat16, for 20 s to about 3 minutes of compilation per
    process on two cores (see ``benchmarks/README.md``). Compiled text towers also run padded
    batches as they are (packing real tokens, :class:`clipbeam.model.attention.TokenPacking`,
    depends
    on the data and is left out of the graph), so on CPU the eager text tower is the faster one.
    Pass ``compile=True`` for long float32 image jobs.
    """
    if requested is not None:
        return requested
    return torch.device(device).type == "cuda"


def compile_towers(model: nn.Module) -> nn.Module:
    """Compiles the text and image towers of a CLIP or Chinese-CLIP model in place.

    Each tower's ``__call__`` is compiled (``nn.Module.compile``), so ``get_text_features``,
    ``get_image_features`` and ``forward`` all use the compiled code, while parameter names,
    ``state_dict()`` and ``save_pretrained`` are unchanged. Shapes are specialised on the first
    call and made dynamic on the first change (text lengths vary from batch to batch), so a job
    compiles each tower about twice. Compilation happens on the first call of each tower.

    Args:
        model: a model with ``text_model`` and ``vision_model`` towers, in eval mode.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: the model lacks one of the towers.
    """
    towers = [getattr(model, name, None) for name in ("text_model", "vision_model")]
    if not all(isinstance(t, nn.Module) for t in towers):
        raise ValueError(
            f"compile_towers needs a model with text_model and vision_model towers "
            f"(got {type(model).__name__})"
        )
    for tower in towers:
        tower.compile()
    return model
