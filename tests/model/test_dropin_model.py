"""Code written for transformers runs on clipbeam's configs and models (issue 19, gaps 1-4).

Each test does the same thing with transformers and with clipbeam and compares the results.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import clipbeam.model as cm
from tests.model.conftest import CHINESE_VARIANTS, CLIP_VARIANTS, text_batch

CONFIG_CLASSES = [
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "CLIPConfig",
    "ChineseCLIPTextConfig",
    "ChineseCLIPVisionConfig",
    "ChineseCLIPConfig",
]


@pytest.mark.parametrize("name", CONFIG_CLASSES)
def test_unknown_keywords_are_kept_and_saved(name, tmp_path):
    """As transformers' ConfigTester builds them: keywords without a field become attributes."""
    kwargs = {"dropout": 0.1, "is_decoder": False, "my_setting": [1, 2], "num_labels": 5}
    ref = getattr(transformers, name)(**kwargs)
    ours = getattr(cm, name)(**kwargs)
    for key, value in kwargs.items():
        assert getattr(ours, key) == getattr(ref, key) == value
    assert ours.id2label == ref.id2label
    ours.num_labels = ref.num_labels = 3
    assert ours.label2id == ref.label2id
    assert json.loads(ours.to_json_string())["my_setting"] == [1, 2]
    ours.save_pretrained(tmp_path)
    again = getattr(cm, name).from_pretrained(tmp_path)
    assert again.to_dict() == ours.to_dict()
    assert again.dropout == 0.1
    # transformers reads what clipbeam saved, with the kept keywords.
    assert getattr(transformers, name).from_pretrained(tmp_path).my_setting == [1, 2]


def test_attributes_set_later_are_saved_and_defaults_read(tmp_path):
    ref, ours = transformers.CLIPTextConfig(), cm.CLIPTextConfig()
    for attr in ("return_dict", "is_encoder_decoder", "chunk_size_feed_forward", "num_labels"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    ours.return_dict = False
    ours.torch_dtype_note = "x"
    assert ours.to_dict()["return_dict"] is False
    assert not ours.use_return_dict
    path = tmp_path / "c.json"
    ours.to_json_file(path)
    assert cm.CLIPTextConfig.from_json_file(path).to_dict() == ours.to_dict()
    assert transformers.CLIPTextConfig.from_json_file(str(path)).return_dict is False
    # Field values still go through the type checks.
    with pytest.raises(TypeError, match="hidden_size must be int"):
        cm.CLIPTextConfig(hidden_size="512", dropout=0.0)


def test_torch_dtype_keyword():
    assert cm.CLIPVisionConfig(torch_dtype=torch.float16).dtype == "float16"
    assert cm.CLIPVisionConfig(dtype="bfloat16", torch_dtype="float16").dtype == "bfloat16"


def _both(checkpoint_dir, name, **kwargs):
    ref = getattr(transformers, name).from_pretrained(checkpoint_dir, **kwargs)
    ours = getattr(cm, name).from_pretrained(pretrained_model_name_or_path=checkpoint_dir, **kwargs)
    return ref, ours


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        (CLIP_VARIANTS[0], "CLIPModel"),
        (CLIP_VARIANTS[0], "CLIPTextModel"),
        (CLIP_VARIANTS[0], "CLIPVisionModel"),
        (CHINESE_VARIANTS[0], "ChineseCLIPModel"),
        (CHINESE_VARIANTS[0], "ChineseCLIPVisionModel"),
    ],
)
def test_loading_info_and_attn_implementation(hf_checkpoint, variant, name):
    transformers.logging.set_verbosity_error()
    path = hf_checkpoint(variant)
    (ref, ref_info), (ours, info) = _both(
        path, name, output_loading_info=True, attn_implementation="eager"
    )
    assert info == ref_info
    assert ours.config._attn_implementation == ref.config._attn_implementation == "eager"
    if hasattr(ref, "text_model"):
        assert ours.text_model.config._attn_implementation == "eager"
    assert ours.num_parameters() == ref.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == ref.num_parameters(
        exclude_embeddings=True
    )
    assert ours.num_parameters(only_trainable=True) == ref.num_parameters(only_trainable=True)
    _, plain = _both(path, name)
    assert plain.config._attn_implementation == "sdpa"


def test_loading_keywords_errors_and_overrides(hf_checkpoint):
    path = hf_checkpoint(CLIP_VARIANTS[0])
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        cm.CLIPModel.from_pretrained(path, attn_implementation="flash_attention_9")
    with pytest.raises(TypeError, match="takes the checkpoint once"):
        cm.CLIPModel.from_pretrained(path, pretrained_model_name_or_path=path)
    # Config keywords replace config.json values, as transformers' from_pretrained kwargs do.
    ref, ours = _both(path, "CLIPModel", output_hidden_states=True)
    assert ours.config.output_hidden_states is ref.config.output_hidden_states is True
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['devcie'\]"):
        cm.CLIPModel.from_pretrained(path, devcie="cpu")


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        (CLIP_VARIANTS[0], "CLIPTextModel"),
        (CLIP_VARIANTS[0], "CLIPVisionModel"),
        (CLIP_VARIANTS[0], "CLIPModel"),
        (CHINESE_VARIANTS[0], "ChineseCLIPModel"),
        (CHINESE_VARIANTS[0], "ChineseCLIPVisionModel"),
    ],
)
def test_input_and_output_embeddings(hf_checkpoint, variant, name):
    transformers.logging.set_verbosity_error()
    ref, ours = _both(hf_checkpoint(variant), name)
    assert ours.get_output_embeddings() is ref.get_output_embeddings() is None
    try:
        expected = ref.get_input_embeddings()
    except NotImplementedError:
        with pytest.raises(NotImplementedError):
            ours.get_input_embeddings()
        return
    got = ours.get_input_embeddings()
    assert type(got) is type(expected)
    assert torch.equal(got.weight, expected.weight)
    replacement = type(got)(*_shape_args(got))
    ours.set_input_embeddings(replacement)
    assert ours.get_input_embeddings() is replacement


def _shape_args(module):
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    return module.in_channels, module.out_channels, module.kernel_size


def test_with_projection_embeddings_are_the_towers(hf_checkpoint):
    transformers.logging.set_verbosity_error()
    path = hf_checkpoint(CLIP_VARIANTS[0], "CLIPTextModelWithProjection")
    ref, ours = _both(path, "CLIPTextModelWithProjection")
    assert torch.equal(ours.get_input_embeddings().weight, ref.get_input_embeddings().weight)
    new = torch.nn.Embedding(*_shape_args(ours.get_input_embeddings()))
    ours.set_input_embeddings(new)
    assert ours.text_model.embeddings.token_embedding is new


@pytest.mark.parametrize("variant", [CLIP_VARIANTS[0], CHINESE_VARIANTS[0]])
def test_get_text_features_honours_config_return_dict(hf_checkpoint, variant):
    transformers.logging.set_verbosity_error()
    name = "CLIPModel" if variant in CLIP_VARIANTS else "ChineseCLIPModel"
    ref, ours = _both(hf_checkpoint(variant), name)
    batch = text_batch(variant)
    # The seed examples' tensor by default; the transformers 5 object when asked.
    assert isinstance(ours.get_text_features(**batch), torch.Tensor)
    expected = ref.get_text_features(**batch, return_dict=True)
    got = ours.get_text_features(**batch, return_dict=True)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output)
    ref.config.return_dict = ours.config.return_dict = False
    expected, got = ref.get_text_features(**batch), ours.get_text_features(**batch)
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


MODEL_CLASSES = [
    "CLIPTextModel",
    "CLIPVisionModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModelWithProjection",
    "CLIPModel",
    "ChineseCLIPTextModel",
    "ChineseCLIPVisionModel",
    "ChineseCLIPModel",
]


@pytest.mark.parametrize("name", MODEL_CLASSES)
def test_class_attributes_that_ported_code_reads(name):
    """``main_input_name``, ``base_model_prefix`` and ``can_generate()`` (what generic code such
    as transformers' own common tests and trainers ask a model class), on the class and on an
    instance, as transformers gives them."""
    ref, ours = getattr(transformers, name), getattr(cm, name)
    assert ours.main_input_name == ref.main_input_name
    assert ours.base_model_prefix == ref.base_model_prefix
    assert ours.can_generate() is ref.can_generate() is False


@pytest.mark.parametrize("name", CONFIG_CLASSES)
def test_get_text_config(name):
    """A two-tower config gives its text config; a tower's config gives itself."""
    ref, ours = getattr(transformers, name)(), getattr(cm, name)()
    got, expected = ours.get_text_config(), ref.get_text_config()
    assert type(got).__name__ == type(expected).__name__
    assert (got is ours) == (expected is ref)
    assert got.to_dict() == {k: v for k, v in expected.to_dict().items() if k in got.to_dict()}
    assert ours.get_text_config(decoder=False) is got


@pytest.mark.parametrize("name", CONFIG_CLASSES)
def test_a_config_iterates_over_its_attribute_names(name):
    """``for key in config`` and ``"key" in config``, as generic code walks a config (to zero
    every ``*_range`` initializer, say): every public name transformers yields that clipbeam's
    config has is yielded too, and setting each through the loop works."""
    ref, ours = getattr(transformers, name)(my_setting=1), getattr(cm, name)(my_setting=1)
    public = {k for k in ref if not k.startswith("_")}
    assert {k for k in public if hasattr(ours, k)} <= set(ours)
    assert "my_setting" in ours and "my_setting" in ref
    assert "no_such_key" not in ours and "no_such_key" not in ref
    for key in list(ours):
        if "_range" in key or "initializer_factor" in key:
            setattr(ours, key, 1e-10)
            setattr(ref, key, 1e-10)
            assert getattr(ours, key) == getattr(ref, key) == 1e-10
