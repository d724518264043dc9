"""Chinese-CLIP parity with transformers: same random weights, same outputs (<= 1e-5)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers

from clipbeam.model.configuration import ChineseCLIPConfig, ChineseCLIPTextConfig
from clipbeam.model.modeling_chinese_clip import (
    ChineseCLIPModel,
    ChineseCLIPTextModel,
    ChineseCLIPVisionModel,
)
from clipbeam.model.pooling import cls_pool
from tests.model.conftest import (
    CHINESE_VARIANTS,
    INIT_SETTINGS,
    assert_all_close,
    assert_close,
    assert_nested_close,
    assert_same_init_statistics,
    assert_same_output,
    hf_config,
    init_config,
    pixel_batch,
    text_batch,
)

FLAGS = {"output_hidden_states": True, "output_attentions": True}
OURS = {
    cls.__name__: cls for cls in (ChineseCLIPModel, ChineseCLIPTextModel, ChineseCLIPVisionModel)
}


@pytest.mark.parametrize("variant", CHINESE_VARIANTS)
def test_full_model_matches_transformers(variant, hf_checkpoint):
    path = hf_checkpoint(variant)
    ours = ChineseCLIPModel.from_pretrained(path)
    ref = transformers.ChineseCLIPModel.from_pretrained(path, attn_implementation="eager").eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3)
    with torch.no_grad():
        out = ours(**text, pixel_values=pixels, return_loss=True, **FLAGS)
        exp = ref(**text, pixel_values=pixels, return_loss=True, **FLAGS)
        features = ours.get_text_features(**text), ours.get_image_features(pixels)
        exp_features = ref.get_text_features(**text), ref.get_image_features(pixels)

    for key in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert_close(out[key], exp[key])
    for ours_tower, ref_tower in (
        (out.text_model_output, exp.text_model_output),
        (out.vision_model_output, exp.vision_model_output),
    ):
        assert_close(ours_tower.last_hidden_state, ref_tower.last_hidden_state)
        assert_all_close(ours_tower.hidden_states, ref_tower.hidden_states)
        assert_all_close(ours_tower.attentions, ref_tower.attentions)
    assert_close(features[0], exp_features[0].pooler_output)
    assert_close(features[1], exp_features[1].pooler_output)
    assert features[0].shape == (3, hf_config(variant)["projection_dim"])
    # The full model's text tower has no pooler: it projects the [CLS] state.
    assert out.text_model_output.pooler_output is None
    assert ours.text_model.pooler is None


@pytest.mark.parametrize("variant", CHINESE_VARIANTS)
def test_towers_match_transformers(variant, hf_checkpoint):
    text, pixels = text_batch(variant), pixel_batch(variant)
    path = hf_checkpoint(variant, "ChineseCLIPTextModel")
    ours = ChineseCLIPTextModel.from_pretrained(path)
    ref = transformers.ChineseCLIPTextModel.from_pretrained(path, attn_implementation="eager")
    with torch.no_grad():
        out, exp = ours(**text, **FLAGS), ref.eval()(**text, **FLAGS)
    assert_close(out.last_hidden_state, exp.last_hidden_state)
    assert_close(out.pooler_output, exp.pooler_output)
    assert_all_close(out.hidden_states, exp.hidden_states)
    assert_all_close(out.attentions, exp.attentions)

    path = hf_checkpoint(variant, "ChineseCLIPVisionModel")
    ours = ChineseCLIPVisionModel.from_pretrained(path)
    ref = transformers.ChineseCLIPVisionModel.from_pretrained(path, attn_implementation="eager")
    with torch.no_grad():
        out, exp = ours(pixels, **FLAGS), ref.eval()(pixel_values=pixels, **FLAGS)
    assert_close(out.last_hidden_state, exp.last_hidden_state)
    assert_close(out.pooler_output, exp.pooler_output)
    assert_all_close(out.hidden_states, exp.hidden_states)
    assert_all_close(out.attentions, exp.attentions)


@pytest.mark.parametrize("variant", CHINESE_VARIANTS)
def test_towers_match_transformers_on_the_sdpa_path(variant, hf_checkpoint):
    """Without output_attentions our towers run scaled_dot_product_attention (as transformers'
    default does): padded text batches of mixed lengths and images agree within 1e-5."""
    text = text_batch(variant, lengths=(5, 16, 3, 9))
    pixels = pixel_batch(variant, images=3)
    for name, inputs in (
        ("ChineseCLIPTextModel", text),
        ("ChineseCLIPVisionModel", {"pixel_values": pixels}),
    ):
        path = hf_checkpoint(variant, name)
        ours = OURS[name].from_pretrained(path)
        ref = getattr(transformers, name).from_pretrained(path).eval()
        assert ref.config._attn_implementation == "sdpa"
        with torch.no_grad():
            out = ours(**inputs, output_hidden_states=True)
            exp = ref(**inputs, output_hidden_states=True)
        assert out.attentions is None
        assert out.keys() == list(exp.keys())
        assert_close(out.last_hidden_state, exp.last_hidden_state)
        assert_close(out.pooler_output, exp.pooler_output)
        assert_all_close(out.hidden_states, exp.hidden_states)


def test_interpolate_pos_encoding_matches_transformers(hf_checkpoint):
    variant = "chinese-h14"  # 224 px, patch 14: a 16x16 grid, resized to 32x32
    path = hf_checkpoint(variant)
    ours = ChineseCLIPModel.from_pretrained(path)
    ref = transformers.ChineseCLIPModel.from_pretrained(path).eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3, size=(448, 448))
    with torch.no_grad():
        features = ours.get_image_features(pixels, interpolate_pos_encoding=True)
        exp = ref.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
        out = ours(**text, pixel_values=pixels, interpolate_pos_encoding=True)
        exp_out = ref(**text, pixel_values=pixels, interpolate_pos_encoding=True)
    assert_close(features, exp.pooler_output)
    assert_close(out.logits_per_image, exp_out.logits_per_image)
    assert out.vision_model_output.last_hidden_state.shape[1] == 1 + 32 * 32

    tower_path = hf_checkpoint(variant, "ChineseCLIPVisionModel")
    tower = ChineseCLIPVisionModel.from_pretrained(tower_path)
    ref_tower = transformers.ChineseCLIPVisionModel.from_pretrained(tower_path).eval()
    with torch.no_grad():
        out = tower(pixels, interpolate_pos_encoding=True, return_dict=False)
        exp = ref_tower(pixel_values=pixels, interpolate_pos_encoding=True, return_dict=False)
    assert_nested_close(out, exp)


# The transformers 5 keyword arguments (its **kwargs) every entry point accepts as well;
# ChineseCLIPTextModel's inputs_embeds is not supported.
KEYWORDS = {"output_attentions", "output_hidden_states", "return_dict"}


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("ChineseCLIPModel", "forward"),
        ("ChineseCLIPModel", "get_text_features"),
        ("ChineseCLIPModel", "get_image_features"),
        ("ChineseCLIPTextModel", "forward"),
        ("ChineseCLIPVisionModel", "forward"),
    ],
)
def test_transformers_arguments_are_accepted(name, method):
    ref = inspect.signature(getattr(getattr(transformers, name), method)).parameters
    ours = inspect.signature(getattr(OURS[name], method)).parameters
    wanted = {n for n, p in ref.items() if p.kind != p.VAR_KEYWORD and n != "self"} | KEYWORDS
    wanted.discard("inputs_embeds")
    assert wanted <= set(ours), f"{name}.{method} lacks {sorted(wanted - set(ours))}"


def test_return_dict_and_output_flags_match_transformers(hf_checkpoint):
    variant = "chinese-b16"
    path = hf_checkpoint(variant)
    ours = ChineseCLIPModel.from_pretrained(path)
    ref = transformers.ChineseCLIPModel.from_pretrained(path, attn_implementation="eager").eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3)
    with torch.no_grad():
        out = ours(**text, pixel_values=pixels, return_dict=False, **FLAGS)
        exp = ref(**text, pixel_values=pixels, return_dict=False, **FLAGS)
        # The tower outputs come last: transformers 5 adds the projected embeddings to them as
        # pooler_output; here they keep the towers' own (as in transformers 4).
        assert_nested_close(out[:-2], exp[:-2])
        assert_nested_close(out, ours(**text, pixel_values=pixels, **FLAGS).to_tuple())
        for kwargs in ({"return_dict": False, **FLAGS}, {"output_hidden_states": True}):
            out = ours.get_text_features(**text, **kwargs)
            exp = ref.get_text_features(**text, **kwargs)
            assert_same_output(out, exp)
            out = ours.get_image_features(pixels, **kwargs)
            exp = ref.get_image_features(pixel_values=pixels, **kwargs)
            assert_same_output(out, exp)
        out = ours.get_text_features(**text, output_attentions=True)
        exp = ref.get_text_features(**text, output_attentions=True)
        assert_close(out.pooler_output, exp.pooler_output)
        assert_all_close(out.attentions, exp.attentions)
        assert isinstance(ours.get_image_features(pixels), torch.Tensor)
        tower_path = hf_checkpoint(variant, "ChineseCLIPTextModel")
        tower = ChineseCLIPTextModel.from_pretrained(tower_path)
        ref_tower = transformers.ChineseCLIPTextModel.from_pretrained(tower_path).eval()
        out = tower(**text, output_hidden_states=True, return_dict=False)
        exp = ref_tower(**text, output_hidden_states=True, return_dict=False)
        assert_nested_close(out, exp)


def test_token_type_ids_matter_and_default_to_zero(hf_checkpoint):
    model = ChineseCLIPModel.from_pretrained(hf_checkpoint("chinese-b16"))
    batch = text_batch("chinese-b16")
    with torch.no_grad():
        typed = model.get_text_features(**batch)
        zeros = model.get_text_features(
            batch["input_ids"], batch["attention_mask"], torch.zeros_like(batch["input_ids"])
        )
        default = model.get_text_features(batch["input_ids"], batch["attention_mask"])
    assert_close(default, zeros)
    assert (typed - zeros).abs().max() > 1e-3


def test_padding_does_not_change_a_sequence(hf_checkpoint):
    model = ChineseCLIPModel.from_pretrained(hf_checkpoint("chinese-h14"))
    batch = text_batch("chinese-h14", lengths=(4, 12, 6))
    with torch.no_grad():
        padded = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        alone = model.get_text_features(batch["input_ids"][:1, :4])
    assert_close(padded[:1], alone)


@pytest.mark.parametrize("name", ["ChineseCLIPModel", "ChineseCLIPTextModel"])
def test_save_pretrained_is_read_by_transformers(name, tmp_path):
    variant = "chinese-h14"
    config = ChineseCLIPConfig.from_dict(hf_config(variant))
    torch.manual_seed(0)
    if name == "ChineseCLIPModel":
        ours = ChineseCLIPModel(config).eval()
    else:
        ours = ChineseCLIPTextModel(config.text_config).eval()
    ours.save_pretrained(tmp_path)
    ref = getattr(transformers, name).from_pretrained(tmp_path).eval()
    ref_state = ref.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, ref_state[key]), key
    text, pixels = text_batch(variant), pixel_batch(variant)
    with torch.no_grad():
        if name == "ChineseCLIPModel":
            out, exp = ours(**text, pixel_values=pixels), ref(**text, pixel_values=pixels)
            assert_close(out.logits_per_image, exp.logits_per_image)
        else:
            assert_close(ours(**text).pooler_output, ref(**text).pooler_output)


def test_dropout_acts_only_in_training():
    config = ChineseCLIPTextConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    model = ChineseCLIPTextModel(config)
    ids = torch.tensor([[101, 5, 6, 102]])
    assert model.training
    torch.manual_seed(1)
    first = model(ids).last_hidden_state
    second = model(ids).last_hidden_state
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_stays_close(dtype, atol, hf_checkpoint):
    path = hf_checkpoint("chinese-b16")
    full = ChineseCLIPModel.from_pretrained(path)
    half = ChineseCLIPModel.from_pretrained(path, torch_dtype=dtype)
    text, pixels = text_batch("chinese-b16"), pixel_batch("chinese-b16")
    with torch.no_grad():
        out, exp = half(**text, pixel_values=pixels), full(**text, pixel_values=pixels)
    assert out.text_embeds.dtype == dtype
    assert_close(out.text_embeds, exp.text_embeds, atol)
    assert_close(out.image_embeds, exp.image_embeds, atol)


def test_cls_pool_takes_the_first_token():
    hidden = torch.arange(12.0).view(2, 3, 2)
    assert cls_pool(hidden).tolist() == [[0.0, 1.0], [6.0, 7.0]]


def test_too_long_input_names_the_context_length(hf_checkpoint):
    model = ChineseCLIPModel.from_pretrained(hf_checkpoint("chinese-b16"))
    with pytest.raises(ValueError, match="17 tokens but the model has 16 positions"):
        model.get_text_features(torch.ones(1, 17, dtype=torch.long))


@pytest.mark.parametrize("settings", INIT_SETTINGS.values(), ids=list(INIT_SETTINGS))
@pytest.mark.parametrize("name", list(OURS))
def test_random_init_matches_transformers(name, settings):
    """Every parameter of a fresh model has transformers' distribution (mean and std)."""
    config = init_config("chinese_clip", **copy.deepcopy(settings))
    ours_config = ChineseCLIPConfig.from_dict(config)
    ref_config = transformers.ChineseCLIPConfig(
        **{k: v for k, v in config.items() if k != "model_type"}
    )
    if name != "ChineseCLIPModel":
        tower = "text_config" if "Text" in name else "vision_config"
        ours_config = getattr(ours_config, tower)
        ref_config = getattr(ref_config, tower)
    torch.manual_seed(0)
    ours = OURS[name](ours_config)
    torch.manual_seed(1)
    ref = getattr(transformers, name)(ref_config)
    assert_same_init_statistics(ours, ref)
    if name != "ChineseCLIPVisionModel":  # BERT zeroes the padding token's embedding row
        text = ours.text_model if name == "ChineseCLIPModel" else ours
        assert not text.embeddings.word_embeddings.weight[0].any()
