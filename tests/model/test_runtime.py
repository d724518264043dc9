"""Compute dtype resolution and torch.compile of the towers (model.runtime)."""

from __future__ import annotations

import pytest
import torch

from clipbeam.model import runtime
from clipbeam.model.modeling_clip import CLIPModel
from clipbeam.model.runtime import (
    compile_towers,
    compute_dtype,
    cpu_has_native_bf16,
    should_compile,
)
from tests.model.conftest import pixel_batch, text_batch

ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 sha_ni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Pretends to run on the machine and CPU a cpuinfo text describes."""

    def use(machine: str, cpuinfo: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo)
        monkeypatch.setattr(runtime, "_CPUINFO", path)
        monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
        cpu_has_native_bf16.cache_clear()

    yield use
    cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "native"),
    [
        ("x86_64", ZEN4, True),
        ("x86_64", SKYLAKE, False),
        ("x86_64", "processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile\n", True),
        ("aarch64", GRAVITON3, True),
        ("aarch64", "processor\t: 0\nFeatures\t: fp asimd\n", False),
        ("x86_64", "", False),
    ],
)
def test_native_bf16_is_read_from_cpu_flags(cpu, machine, cpuinfo, native):
    cpu(machine, cpuinfo)
    assert cpu_has_native_bf16() is native
    assert compute_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)


def test_no_cpuinfo_means_no_native_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "_CPUINFO", tmp_path / "absent")  # not Linux
    assert runtime._cpu_flags() == set()


def test_auto_is_half_precision_on_gpus(cpu):
    cpu("x86_64", SKYLAKE)
    assert compute_dtype("auto", "cuda") == torch.float16
    assert compute_dtype("auto", torch.device("cuda:1")) == torch.float16
    assert compute_dtype("auto", "mps") == torch.float16


def test_explicit_dtypes_and_errors():
    assert compute_dtype("float32", "cpu") == torch.float32
    assert compute_dtype("bfloat16", "cpu") == torch.bfloat16
    assert compute_dtype(torch.float16, "cuda") == torch.float16
    with pytest.raises(ValueError, match=r"dtype must be one of auto, .* \(got 'int8'\)"):
        compute_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        compute_dtype(torch.float64, "cpu")
    with pytest.raises(ValueError, match=r"float16 on CPU is emulated.*--dtype auto"):
        compute_dtype("float16", "cpu")


def test_should_compile_defaults_to_gpus_only():
    assert should_compile(None, "cuda") and not should_compile(None, "cpu")
    assert should_compile(True, "cpu") and not should_compile(False, "cuda:0")


def test_compiled_towers_match_eager(hf_checkpoint):
    path = hf_checkpoint("clip-b32")
    eager = CLIPModel.from_pretrained(path)
    compiled = compile_towers(CLIPModel.from_pretrained(path))
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # names unchanged
    text, pixels = text_batch("clip-b32"), pixel_batch("clip-b32")
    with torch.inference_mode():
        torch.testing.assert_close(
            compiled.get_image_features(pixels), eager.get_image_features(pixels)
        )
        torch.testing.assert_close(
            compiled.get_text_features(**text), eager.get_text_features(**text)
        )
    with pytest.raises(ValueError, match="needs a model with text_model and vision_model"):
        compile_towers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["clip-b32", "chinese-b16"])
def test_towers_compile_without_graph_breaks(hf_checkpoint, family):
    """Each tower is one graph: a break (e.g. at every linear layer's kernel choice) would leave
    torch.compile nothing to fuse across layers."""
    from clipbeam.model import ChineseCLIPModel

    cls = ChineseCLIPModel if family.startswith("chinese") else CLIPModel
    model = cls.from_pretrained(hf_checkpoint(family)).eval()
    text, pixels = text_batch(family), pixel_batch(family)
    with torch.inference_mode():
        for tower, args in ((model.vision_model, (pixels,)), (model.text_model, ())):
            # get_*_features run the towers pooled_only (and eagerly, text on packed tokens)
            kwargs = {"pooled_only": True} if args else {**text, "pooled_only": True}
            torch._dynamo.reset()
            explained = torch._dynamo.explain(tower)(*args, **kwargs)
            assert explained.graph_break_count == 0, explained.break_reasons
