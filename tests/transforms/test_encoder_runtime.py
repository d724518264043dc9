"""The encoder's compute dtype ("auto"), torch.compile option and overflow check, end to end from
the command line."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clipbeam.model import runtime
from clipbeam.pipeline.arguments import parse_args
from clipbeam.transforms.encoder import Encoder, acquire_encoder

BASE = ["--input", "data/*.parquet", "--output", "out", "--model", "ckpt"]


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_follows_the_cpu(clip_checkpoint, monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    encoder = Encoder.load(str(clip_checkpoint), device="cpu", dtype="auto")
    assert encoder.dtype == expected
    assert encoder.metadata()["clipbeam.model_dtype"] == str(expected).removeprefix("torch.")


def test_float16_on_cpu_is_refused(clip_checkpoint):
    with pytest.raises(ValueError, match="float16 on CPU is emulated"):
        Encoder.load(str(clip_checkpoint), device="cpu", dtype="float16")


def test_compile_option_compiles_both_towers(clip_checkpoint):
    plain = acquire_encoder(str(clip_checkpoint), device="cpu", dtype="float32", batch_size=2)
    compiled = acquire_encoder(
        str(clip_checkpoint), device="cpu", dtype="float32", batch_size=2, compile=True
    )
    assert compiled is not plain  # the compile setting is part of the shared model's key
    for tower in (compiled.model.text_model, compiled.model.vision_model):
        assert tower._compiled_call_impl is not None
    assert plain.model.vision_model._compiled_call_impl is None  # not on CPU by default


def test_non_finite_features_fail_with_advice(clip_checkpoint, monkeypatch):
    encoder = Encoder.load(str(clip_checkpoint), device="cpu")

    def overflowing(pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.full((len(pixel_values), encoder.projection_dim), float("inf"))

    monkeypatch.setattr(encoder.model, "get_image_features", overflowing)
    with pytest.raises(FloatingPointError, match=r"non-finite image features.*--dtype bfloat16"):
        encoder.encode_images([Image.new("RGB", (40, 30))] * 2)


def test_command_line_defaults_to_auto_dtype_and_compile_on_gpu_only():
    spec = parse_args(["embed", *BASE]).spec
    assert (spec.dtype, spec.compile) == ("auto", None)
    assert parse_args(["embed", *BASE, "--compile"]).spec.compile is True
    spec = parse_args(["embed", *BASE, "--no-compile", "--dtype", "bfloat16"]).spec
    assert (spec.dtype, spec.compile) == ("bfloat16", False)
