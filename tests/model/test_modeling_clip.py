"""CLIP parity with transformers: same random weights, same outputs (max abs diff <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
import transformers

from model.configuration import CLIPConfig, CLIPTextConfig
from model.modeling_clip import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    eos_pool,
    get_activation,
)
from tests.model.conftest import (
    CLIP_VARIANTS,
    EOS,
    assert_all_close,
    assert_close,
    hf_config,
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
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, channels, 64, 64\]"):
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


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unsupported hidden_act 'swiglu'.*quick_gelu"):
        CLIPTextModel(CLIPTextConfig(hidden_act="swiglu", num_hidden_layers=1))
    x = torch.linspace(-3, 3, 7)
    assert_close(get_activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
