"""int8 towers (model.quantization): which layers are int8, accuracy against float32 on both
families and both CPU backends, the fast paths (fused q/k/v, pooled last layer, packed text,
quick_gelu folding) on int8 weights, and what a quantized model refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipbeam.model import runtime
from clipbeam.model.attention import fused_projection
from clipbeam.model.configuration import ChineseCLIPConfig, CLIPConfig
from clipbeam.model.modeling_chinese_clip import ChineseCLIPModel
from clipbeam.model.modeling_clip import CLIPModel
from clipbeam.model.quantization import (
    FLOAT_LAYERS,
    Int8Linear,
    Int8Weight,
    int8_engine,
    is_quantized,
    model_bytes,
    quantize_int8,
)

from .conftest import init_config

ENGINES = ("onednn", "fbgemm")
CLASSES = {"clip": (CLIPModel, CLIPConfig), "chinese_clip": (ChineseCLIPModel, ChineseCLIPConfig)}


def build(family: str, seed: int = 0, **settings) -> nn.Module:
    model_cls, config_cls = CLASSES[family]
    torch.manual_seed(seed)
    config = init_config(family, vision_config={"hidden_act": "quick_gelu"}, **settings)
    return model_cls(config_cls.from_dict(config)).eval()


def pair(family: str, **quantize) -> tuple[nn.Module, nn.Module]:
    return build(family), quantize_int8(build(family), **quantize)


def text_inputs(lengths=(5, 12, 3, 9), vocab=512, seed=0) -> dict[str, torch.Tensor]:
    """Right-padded ids whose largest id (CLIP's legacy EOS rule) ends each text."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, vocab - 1, (length,), generator=gen)
        ids[row, length - 1] = vocab - 1
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


PIXELS = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_every_tower_linear_layer_is_int8_and_the_projections_stay_float():
    model = quantize_int8(build("clip"))
    names = {n for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    floats = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert floats == {"visual_projection", "text_projection"}
    assert "vision_model.encoder.layers.0.self_attn.q_proj" in names
    assert "text_model.encoder.layers.1.mlp.fc2" in names
    assert len(names) == 2 * 2 * 6  # two towers, two layers, q/k/v/out/fc1/fc2
    assert is_quantized(model) and not is_quantized(build("clip"))
    assert not any(p.requires_grad for p in model.parameters())


def test_float_layers_choose_what_stays_float32():
    model = quantize_int8(build("clip"), float_layers=(r"vision_model\.encoder\.layers\.0\..*",))
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear | Int8Linear)}
    assert kinds["vision_model.encoder.layers.0.mlp.fc1"] is nn.Linear
    assert kinds["vision_model.encoder.layers.1.mlp.fc1"] is Int8Linear
    assert kinds["visual_projection"] is Int8Linear  # not kept: float_layers replaces the default


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("family", CLASSES)
def test_features_stay_close_to_float32(family, engine):
    ref, q = pair(family, engine=engine)
    with torch.inference_mode():
        image = cosine(q.get_image_features(pixel_values=PIXELS), ref.get_image_features(PIXELS))
        texts = text_inputs()
        text = cosine(q.get_text_features(**texts), ref.get_text_features(**texts))
    assert image > 0.995, image
    assert text > 0.995, text
    # and not equal: the products really ran in int8
    with torch.inference_mode():
        assert not torch.equal(q.get_image_features(PIXELS), ref.get_image_features(PIXELS))


def test_qkv_are_one_packed_product():
    model = quantize_int8(build("clip"))
    attn = model.vision_model.encoder.layers[0].self_attn
    weight, bias = fused_projection(attn.q_proj, attn.k_proj, attn.v_proj)
    assert weight is attn.q_proj.weight.parent and weight.shape == (3 * 128, 128)
    assert bias.shape == (3 * 128,)
    with pytest.raises(ValueError, match="not packed together in this order"):
        fused_projection(attn.k_proj, attn.q_proj, attn.v_proj)
    other = model.vision_model.encoder.layers[1].self_attn
    with pytest.raises(ValueError, match="not packed together"):
        fused_projection(attn.q_proj, attn.k_proj, other.v_proj)


def test_a_part_computes_its_rows_of_the_packed_product():
    model = quantize_int8(build("clip"))
    attn = model.vision_model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, 128)
    whole = attn.q_proj.weight.parent.linear(x)
    assert torch.equal(attn.k_proj(x), whole[..., 128:256] + attn.k_proj.bias)
    dense = attn.v_proj.weight.dequantize()
    reference = build("clip").vision_model.encoder.layers[0].self_attn.v_proj.weight
    assert dense.shape == reference.shape
    assert (dense - reference).abs().max() <= reference.abs().amax(1).max() / 127


@pytest.mark.parametrize("family", CLASSES)
def test_pooled_only_and_packed_paths_agree_with_the_full_int8_pass(family):
    """The fast paths (key-free pooled layer on dequantized k/v, packed real tokens) compute
    what the full int8 pass computes, up to per-batch input rounding."""
    model = quantize_int8(build(family))
    with torch.inference_mode():
        fast = model.get_image_features(pixel_values=PIXELS)
        full = model.get_image_features(pixel_values=PIXELS, return_dict=True).pooler_output
        assert cosine(fast, full) > 0.999
        texts = text_inputs()
        fast = model.get_text_features(**texts)
        full = model.get_text_features(**texts, return_dict=True).pooler_output
        assert cosine(fast, full) > 0.999


def test_quick_gelu_folding_runs_on_int8_weights():
    """CLIPMLP.add_to folds 1.702 into the LayerNorm and biases; on int8 weights the folded
    and the plain feed-forward residual agree (the input scale folds into the int8 rounding)."""
    model = quantize_int8(build("clip"))
    layer = model.vision_model.encoder.layers[0]
    x = torch.randn(2, 50, 128)
    with torch.inference_mode():
        folded = layer.mlp.add_to(x, layer.layer_norm2)
        plain = x + layer.mlp(layer.layer_norm2(x))
    assert (folded - plain).abs().max() < 1e-3 * plain.abs().max()


def test_engines_follow_the_cpu(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "_CPUINFO", cpuinfo)
    cpuinfo.write_text("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert int8_engine() == "onednn"
    cpuinfo.write_text("flags\t: fpu avx2 fma\n")
    assert int8_engine() == "fbgemm"
    before = torch.backends.quantized.engine
    quantize_int8(build("clip"), engine="fbgemm")
    assert torch.backends.quantized.engine == before  # packing does not change the global


def test_memory_is_about_a_quarter():
    ref, q = pair("clip", float_layers=FLOAT_LAYERS)
    linear = sum(m.weight.numel() for m in ref.modules() if isinstance(m, nn.Linear))
    saved = model_bytes(ref) - model_bytes(q)
    projections = ref.visual_projection.weight.numel() + ref.text_projection.weight.numel()
    # every int8 weight: 1 byte instead of 4 per value, plus a float32 scale per row
    assert 3 * (linear - projections) * 0.95 < saved < 3 * (linear - projections)


def test_refusals():
    with pytest.raises(ValueError, match=r"float32 model on CPU \(got torch.bfloat16 on cpu\)"):
        quantize_int8(build("clip").to(torch.bfloat16))
    model = quantize_int8(build("clip"))
    with pytest.raises(ValueError, match="quantized already"):
        quantize_int8(model)
    with pytest.raises(RuntimeError, match="cannot be saved"):
        model.state_dict()
    fc1 = model.vision_model.encoder.layers[0].mlp.fc1
    with pytest.raises(TypeError, match=r"float32 inputs \(got torch.bfloat16\)"):
        fc1(torch.randn(2, 128, dtype=torch.bfloat16))
    assert isinstance(fc1.weight, Int8Weight) and "int8" in repr(fc1)
