"""CLIP parity with transformers: same random weights, same outputs (max abs diff <= 1e-5)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import transformers

from clipbeam.model.configuration import CLIPConfig, CLIPTextConfig
from clipbeam.model.kernels import get_activation
from clipbeam.model.modeling_clip import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)
from clipbeam.model.pooling import eos_pool
from tests.model.conftest import (
    CLIP_VARIANTS,
    EOS,
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

OURS = {
    cls.__name__: cls
    for cls in (
        CLIPModel,
        CLIPTextModel,
        CLIPVisionModel,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
    )
}


@pytest.mark.parametrize("variant", CLIP_VARIANTS)
def test_full_model_matches_transformers(variant, hf_checkpoint):
    path = hf_checkpoint(variant)
    ours = CLIPModel.from_pretrained(path)
    ref = transformers.CLIPModel.from_pretrained(path, attn_implementation="eager").eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3)
    flags = {"output_hidden_states": True, "output_attentions": True}
    with torch.no_grad():
        out = ours(**text, pixel_values=pixels, return_loss=False, **flags)
        exp = ref(**text, pixel_values=pixels, **flags)
        features = ours.get_text_features(**text), ours.get_image_features(pixels)
        exp_features = ref.get_text_features(**text), ref.get_image_features(pixels)

    assert out.logits_per_image.shape == (3, 3)
    for key in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert_close(out[key], exp[key])
    for ours_tower, ref_tower in (
        (out.text_model_output, exp.text_model_output),
        (out.vision_model_output, exp.vision_model_output),
    ):
        assert_close(ours_tower.last_hidden_state, ref_tower.last_hidden_state)
        assert_all_close(ours_tower.hidden_states, ref_tower.hidden_states)
        assert_all_close(ours_tower.attentions, ref_tower.attentions)
    # transformers 5 returns output objects here; the documented API returns the tensor.
    assert_close(features[0], exp_features[0].pooler_output)
    assert_close(features[1], exp_features[1].pooler_output)
    assert features[0].shape == (3, hf_config(variant)["projection_dim"])


@pytest.mark.parametrize("variant", CLIP_VARIANTS)
def test_towers_match_transformers(variant, hf_checkpoint):
    text, pixels = text_batch(variant), pixel_batch(variant)
    flags = {"output_hidden_states": True, "output_attentions": True}
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        path = hf_checkpoint(variant, name)
        ours = OURS[name].from_pretrained(path)
        ref = getattr(transformers, name).from_pretrained(path, attn_implementation="eager")
        with torch.no_grad():
            out, exp = ours(**text, **flags), ref.eval()(**text, **flags)
        assert_close(out.last_hidden_state, exp.last_hidden_state)
        assert_all_close(out.hidden_states, exp.hidden_states)
        assert_all_close(out.attentions, exp.attentions)
        if name == "CLIPTextModel":
            assert_close(out.pooler_output, exp.pooler_output)
        else:
            assert_close(out.text_embeds, exp.text_embeds)
    for name in ("CLIPVisionModel", "CLIPVisionModelWithProjection"):
        path = hf_checkpoint(variant, name)
        ours = OURS[name].from_pretrained(path)
        ref = getattr(transformers, name).from_pretrained(path, attn_implementation="eager")
        with torch.no_grad():
            out, exp = ours(pixels, **flags), ref.eval()(pixel_values=pixels, **flags)
        assert_close(out.last_hidden_state, exp.last_hidden_state)
        assert_all_close(out.hidden_states, exp.hidden_states)
        assert_all_close(out.attentions, exp.attentions)
        if name == "CLIPVisionModel":
            assert_close(out.pooler_output, exp.pooler_output)
        else:
            assert_close(out.image_embeds, exp.image_embeds)


@pytest.mark.parametrize("variant", CLIP_VARIANTS)
def test_towers_match_transformers_on_the_sdpa_path(variant, hf_checkpoint):
    """Without output_attentions our towers run scaled_dot_product_attention (as transformers'
    default does): padded text batches of mixed lengths and images agree within 1e-5."""
    text = text_batch(variant, lengths=(5, 12, 3, 8))
    pixels = pixel_batch(variant, images=3)
    for name, inputs in (
        ("CLIPTextModel", text),
        ("CLIPTextModelWithProjection", text),
        ("CLIPVisionModel", {"pixel_values": pixels}),
        ("CLIPVisionModelWithProjection", {"pixel_values": pixels}),
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
        assert_same_output(out, exp)


@pytest.mark.parametrize("size", [(448, 448), (224, 320)], ids=["2x", "non-square"])
def test_interpolate_pos_encoding_matches_transformers(size, hf_checkpoint):
    """At twice the trained size (and a non-square one) the position embeddings are resized
    as transformers resizes them."""
    variant = "clip-b16-gelu-legacy-eos"  # 224 px, patch 16: a 14x14 grid, resized to 28x28
    path = hf_checkpoint(variant)
    ours = CLIPModel.from_pretrained(path)
    ref = transformers.CLIPModel.from_pretrained(path).eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3, size=size)
    with torch.no_grad():
        features = ours.get_image_features(pixels, interpolate_pos_encoding=True)
        exp = ref.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
        out = ours(**text, pixel_values=pixels, interpolate_pos_encoding=True)
        exp_out = ref(**text, pixel_values=pixels, interpolate_pos_encoding=True)
        at_trained_size = ours.get_image_features(pixel_batch(variant))
    assert_close(features, exp.pooler_output)
    assert_close(out.logits_per_image, exp_out.logits_per_image)
    grid = (size[0] // 16) * (size[1] // 16)
    assert out.vision_model_output.last_hidden_state.shape[1] == 1 + grid
    assert_close(out.vision_model_output.last_hidden_state, exp_out.vision_model_output[0])
    # At the trained size nothing is resized: the same numbers as without the flag.
    with torch.no_grad():
        same = ours.get_image_features(pixel_batch(variant), interpolate_pos_encoding=True)
    assert torch.equal(same, at_trained_size)
    for name in ("CLIPVisionModel", "CLIPVisionModelWithProjection"):
        tower_path = hf_checkpoint(variant, name)
        tower = OURS[name].from_pretrained(tower_path)
        ref_tower = getattr(transformers, name).from_pretrained(tower_path).eval()
        with torch.no_grad():
            out = tower(pixels, interpolate_pos_encoding=True)
            exp = ref_tower(pixel_values=pixels, interpolate_pos_encoding=True)
        assert_close(out[0], exp[0])
        assert_close(out.last_hidden_state, exp.last_hidden_state)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        ours.get_image_features(pixels)
    with pytest.raises(ValueError, match="no whole 16x16 patch"):
        ours.get_image_features(pixels[..., :8, :], interpolate_pos_encoding=True)


# The transformers 5 keyword arguments (its **kwargs) every entry point accepts as well.
KEYWORDS = {"output_attentions", "output_hidden_states", "return_dict"}


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("CLIPModel", "forward"),
        ("CLIPModel", "get_text_features"),
        ("CLIPModel", "get_image_features"),
        *((name, "forward") for name in OURS if name != "CLIPModel"),
    ],
)
def test_transformers_arguments_are_accepted(name, method):
    ref = inspect.signature(getattr(getattr(transformers, name), method)).parameters
    ours = inspect.signature(getattr(OURS[name], method)).parameters
    wanted = {n for n, p in ref.items() if p.kind != p.VAR_KEYWORD and n != "self"} | KEYWORDS
    assert wanted <= set(ours), f"{name}.{method} lacks {sorted(wanted - set(ours))}"


def test_return_dict_and_output_flags_match_transformers(hf_checkpoint):
    variant = "clip-b32"
    path = hf_checkpoint(variant)
    ours = CLIPModel.from_pretrained(path)
    ref = transformers.CLIPModel.from_pretrained(path, attn_implementation="eager").eval()
    text, pixels = text_batch(variant), pixel_batch(variant, images=3)
    flags = {"output_attentions": True, "output_hidden_states": True}
    with torch.no_grad():
        for kwargs in ({}, {"return_loss": True, **flags}):
            out = ours(**text, pixel_values=pixels, return_dict=False, **kwargs)
            exp = ref(**text, pixel_values=pixels, return_dict=False, **kwargs)
            # The tower outputs come last; in transformers 5 their pooler_output holds the
            # projected embeddings, here the tower's own pooled state (as in transformers 4).
            assert len(out) == len(exp)
            assert_nested_close(out[:-2], exp[:-2])
            whole = ours(**text, pixel_values=pixels, **kwargs)
            assert_nested_close(out, whole.to_tuple())
        for kwargs in ({"return_dict": False, **flags}, {"output_hidden_states": True}):
            out = ours.get_text_features(**text, **kwargs)
            exp = ref.get_text_features(**text, **kwargs)
            assert_same_output(out, exp)
            out = ours.get_image_features(pixels, **kwargs)
            exp = ref.get_image_features(pixel_values=pixels, **kwargs)
            assert_same_output(out, exp)
        # An output object, as transformers 5 returns; the tensor without any of the keywords.
        out = ours.get_text_features(**text, output_attentions=True)
        exp = ref.get_text_features(**text, output_attentions=True)
        assert_close(out.pooler_output, exp.pooler_output)
        assert_all_close(out.attentions, exp.attentions)
        assert ours.get_image_features(pixels, return_dict=True).keys() == list(
            ref.get_image_features(pixel_values=pixels).keys()
        )
        assert isinstance(ours.get_text_features(**text), torch.Tensor)
        for name in ("CLIPTextModel", "CLIPVisionModelWithProjection"):
            tower_path = hf_checkpoint(variant, name)
            tower = OURS[name].from_pretrained(tower_path)
            ref_tower = getattr(transformers, name).from_pretrained(tower_path).eval()
            inputs = text if "Text" in name else {"pixel_values": pixels}
            out = tower(**inputs, output_hidden_states=True, return_dict=False)
            exp = ref_tower(**inputs, output_hidden_states=True, return_dict=False)
            assert_nested_close(out, exp)


@pytest.mark.parametrize(
    "name",
    [
        "CLIPModel",
        "CLIPTextModel",
        "CLIPVisionModel",
        "CLIPTextModelWithProjection",
        "CLIPVisionModelWithProjection",
    ],
)
def test_save_pretrained_is_read_by_transformers(name, tmp_path):
    variant = "clip-l14-336"
    config = CLIPConfig.from_dict(hf_config(variant))
    if "Text" in name:
        config = CLIPTextConfig.from_dict(
            {**config.text_config.to_dict(), "projection_dim": config.projection_dim}
        )
    elif "Vision" in name:
        config = type(config.vision_config).from_dict(
            {**config.vision_config.to_dict(), "projection_dim": config.projection_dim}
        )
    torch.manual_seed(0)
    ours = OURS[name](config).eval()
    ours.save_pretrained(tmp_path)
    ref = getattr(transformers, name).from_pretrained(tmp_path).eval()

    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert set(ours_state) <= set(ref_state)  # transformers adds its index buffers
    for key, value in ours_state.items():
        assert torch.equal(value, ref_state[key]), key
    text, pixels = text_batch(variant), pixel_batch(variant)
    with torch.no_grad():
        if name == "CLIPModel":
            out, exp = ours(**text, pixel_values=pixels), ref(**text, pixel_values=pixels)
            assert_close(out.logits_per_text, exp.logits_per_text)
        elif "Text" in name:
            assert_close(ours(**text).last_hidden_state, ref(**text).last_hidden_state)
        else:
            assert_close(ours(pixels).last_hidden_state, ref(pixel_values=pixels).last_hidden_state)


def test_padding_does_not_change_a_sequence(hf_checkpoint):
    """A sequence scores the same alone and right-padded inside a batch of longer ones."""
    model = CLIPModel.from_pretrained(hf_checkpoint("clip-b32"))
    batch = text_batch("clip-b32", lengths=(4, 10, 7))
    with torch.no_grad():
        padded = model.get_text_features(**batch)
        alone = model.get_text_features(batch["input_ids"][:1, :4])
    assert_close(padded[:1], alone)


def test_legacy_eos_pooling_takes_the_largest_id():
    hidden = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    ids = torch.tensor([[5, 9, 2, 2], [5, 6, 7, 2]])
    # eos_token_id == 2 (legacy configs): the position of the largest id, not of token 2.
    assert eos_pool(hidden, ids, eos_token_id=2).flatten().tolist() == [1.0, 6.0]
    # Any other id: the first position holding it.
    assert eos_pool(hidden, ids, eos_token_id=7).flatten().tolist() == [0.0, 6.0]


def test_return_loss_and_output_access(hf_checkpoint):
    path = hf_checkpoint("clip-b32")
    ours = CLIPModel.from_pretrained(path)
    ref = transformers.CLIPModel.from_pretrained(path).eval()
    text, pixels = text_batch("clip-b32"), pixel_batch("clip-b32", images=3)
    with torch.no_grad():
        out = ours(**text, pixel_values=pixels, return_loss=True)
        exp = ref(**text, pixel_values=pixels, return_loss=True)
    assert_close(out.loss, exp.loss)
    assert out["loss"] is out.loss and out[0] is out.loss
    assert "text_model_output" in out and out.keys()[0] == "loss"
    flat = out.to_tuple()
    assert isinstance(flat[-1], tuple) and len(flat) == 7
    # The tower outputs keep the tower's pooled state (before projection).
    assert out.text_model_output.pooler_output.shape[-1] == 32
    assert out.vision_model_output.hidden_states is None
    with torch.no_grad():
        no_loss = ours(**text, pixel_values=pixels)
    assert no_loss.loss is None and no_loss[0] is no_loss.logits_per_image
    with pytest.raises(KeyError, match="loss"):
        no_loss["loss"]


def test_config_flags_are_the_defaults(hf_checkpoint):
    model = CLIPTextModel.from_pretrained(hf_checkpoint("clip-b32", "CLIPTextModel"))
    batch = text_batch("clip-b32")
    assert model(**batch).hidden_states is None
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    out = model(**batch)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert model(**batch, output_attentions=False).attentions is None


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_stays_close(dtype, atol, hf_checkpoint):
    path = hf_checkpoint("clip-b16-gelu-legacy-eos")
    full = CLIPModel.from_pretrained(path)
    half = CLIPModel.from_pretrained(path, dtype=dtype)
    assert half.dtype == dtype and half.logit_scale.dtype == dtype
    text, pixels = text_batch("clip-b16-gelu-legacy-eos"), pixel_batch("clip-b16-gelu-legacy-eos")
    with torch.no_grad():
        out, exp = half(**text, pixel_values=pixels), full(**text, pixel_values=pixels)
        attn = half.text_model(**text, output_attentions=True).attentions
    assert out.text_embeds.dtype == dtype
    assert_close(out.text_embeds, exp.text_embeds, atol)
    assert_close(out.image_embeds, exp.image_embeds, atol)
    assert attn[0].dtype == dtype and torch.isfinite(attn[0]).all()


def test_input_errors_are_clear(hf_checkpoint):
    model = CLIPModel.from_pretrained(hf_checkpoint("clip-b32"))
    with pytest.raises(ValueError, match=r"\[batch, seq\].*input_ids\[None\]"):
        model.get_text_features(torch.tensor([1, 2, EOS]))
    with pytest.raises(ValueError, match="13 tokens but the model has 12 positions"):
        model.get_text_features(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, channels, 224, 224\]"):
        model.get_image_features(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="missing: pixel_values"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long))


def test_random_init_follows_the_transformers_scheme():
    config = CLIPConfig.from_dict(
        {
            "text_config": {"num_hidden_layers": 2, "initializer_factor": 2.0},
            "vision_config": {"num_hidden_layers": 2},
        }
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    text = model.text_model
    assert text.embeddings.token_embedding.weight.std().item() == pytest.approx(0.04, rel=0.05)
    q_std = 512**-0.5 * (2 * 2) ** -0.5 * 2.0
    q = text.encoder.layers[0].self_attn.q_proj
    assert q.weight.std().item() == pytest.approx(q_std, rel=0.05)
    assert not q.bias.any()
    vision = model.vision_model.embeddings
    assert vision.class_embedding.std().item() == pytest.approx(768**-0.5, rel=0.15)
    assert model.visual_projection.weight.std().item() == pytest.approx(768**-0.5, rel=0.05)
    assert model.logit_scale.item() == pytest.approx(2.6592)
    assert model.training  # like transformers: a fresh model trains, from_pretrained evaluates


@pytest.mark.parametrize("settings", INIT_SETTINGS.values(), ids=list(INIT_SETTINGS))
@pytest.mark.parametrize(
    "name", ["CLIPModel", "CLIPTextModelWithProjection", "CLIPVisionModelWithProjection"]
)
def test_random_init_matches_transformers(name, settings):
    """Every parameter of a fresh model has transformers' distribution (mean and std)."""
    config = init_config("clip", **copy.deepcopy(settings))
    ours_config = CLIPConfig.from_dict(config)
    ref_config = transformers.CLIPConfig(**{k: v for k, v in config.items() if k != "model_type"})
    if name != "CLIPModel":
        tower = "text_config" if "Text" in name else "vision_config"
        ours_config = type(getattr(ours_config, tower)).from_dict(
            {**config[tower], "projection_dim": config["projection_dim"]}
        )
        ref_config = getattr(ref_config, tower)
        ref_config.projection_dim = config["projection_dim"]
    torch.manual_seed(0)
    ours = OURS[name](ours_config)
    torch.manual_seed(1)
    assert_same_init_statistics(ours, getattr(transformers, name)(ref_config))


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unsupported hidden_act 'swiglu'.*quick_gelu"):
        CLIPTextModel(CLIPTextConfig(hidden_act="swiglu", num_hidden_layers=1))
    x = torch.linspace(-3, 3, 7)
    assert_close(get_activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
