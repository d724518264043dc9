"""Configs: HF defaults, every Hub config.json layout parsed as transformers does, round trips."""

from __future__ import annotations

import copy
import json
from dataclasses import fields

import pytest
import torch
import transformers

from clipbeam.model.configuration import (
    BaseConfig,
    ChineseCLIPConfig,
    ChineseCLIPTextConfig,
    ChineseCLIPVisionConfig,
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    config_class_for,
)
from clipbeam.model.hub import CheckpointError, CheckpointNotFoundError

CLASSES = [
    CLIPConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    ChineseCLIPConfig,
    ChineseCLIPTextConfig,
    ChineseCLIPVisionConfig,
]

# Generation and bookkeeping keys that transformers 4.1x wrote into every sub-config.
_V4_NOISE = {
    "_name_or_path": "",
    "add_cross_attention": False,
    "bad_words_ids": None,
    "chunk_size_feed_forward": 0,
    "decoder_start_token_id": None,
    "diversity_penalty": 0.0,
    "do_sample": False,
    "early_stopping": False,
    "finetuning_task": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "is_decoder": False,
    "is_encoder_decoder": False,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0,
    "max_length": 20,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "num_beams": 1,
    "output_scores": False,
    "prefix": None,
    "pruned_heads": {},
    "return_dict": True,
    "temperature": 1.0,
    "tie_word_embeddings": True,
    "top_k": 50,
    "top_p": 1.0,
    "torch_dtype": None,
    "torchscript": False,
    "transformers_version": "4.16.0.dev0",
    "use_bfloat16": False,
}

# openai/clip-vit-base-patch32: full sub-configs, null *_dict, the legacy eos_token_id 2.
OPENAI_B32 = {
    "_name_or_path": "openai/clip-vit-base-patch32",
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 512,
    "text_config": {
        **_V4_NOISE,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 512,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 2048,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 512,
        "vocab_size": 49408,
    },
    "text_config_dict": None,
    "transformers_version": None,
    "vision_config": {
        **_V4_NOISE,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "patch_size": 32,
        "projection_dim": 512,
    },
    "vision_config_dict": None,
}

# openai/clip-vit-large-patch14-336: full sub-configs plus partial *_dict next to them.
OPENAI_L14_336 = {
    "_name_or_path": "openai/clip-vit-large-patch14-336",
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {
        **_V4_NOISE,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "vocab_size": 49408,
    },
    "text_config_dict": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
    },
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": {
        **_V4_NOISE,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 1024,
        "image_size": 336,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "vision_config_dict": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    },
}

# The oldest layout: null sub-configs, everything in *_dict.
OPENAI_B16_DICT_ONLY = {
    "architectures": ["CLIPModel"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 512,
    "text_config": None,
    "text_config_dict": {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
    },
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": None,
    "vision_config_dict": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "patch_size": 16,
    },
}

# OFA-Sys/chinese-clip-vit-base-patch16: RoBERTa-wwm-ext BERT keys in text_config_dict.
CHINESE_B16 = {
    "architectures": ["ChineseCLIPModel"],
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "logit_scale_init_value": 2.6592,
    "model_type": "chinese_clip",
    "projection_dim": 512,
    "text_config": None,
    "text_config_dict": {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "directionality": "bidi",
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "chinese_clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "output_past": True,
        "pad_token_id": 0,
        "pooler_fc_size": 768,
        "pooler_num_attention_heads": 12,
        "pooler_num_fc_layers": 3,
        "pooler_size_per_head": 128,
        "pooler_type": "first_token_transform",
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 21128,
    },
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": None,
    "vision_config_dict": {
        "dropout": 0.0,
        "hidden_size": 768,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "model_type": "chinese_clip_vision_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "patch_size": 16,
        "projection_dim": 512,
    },
}

# OFA-Sys/chinese-clip-vit-huge-patch14: the current layout.
CHINESE_H14 = {
    "architectures": ["ChineseCLIPModel"],
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "logit_scale_init_value": 2.6592,
    "model_type": "chinese_clip",
    "projection_dim": 1024,
    "text_config": {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "directionality": "bidi",
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "chinese_clip_text_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": 21128,
    },
    "torch_dtype": "float32",
    "transformers_version": "4.26.0.dev0",
    "vision_config": {
        "dropout": 0.0,
        "hidden_act": "quick_gelu",
        "hidden_size": 1280,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "layer_norm_eps": 1e-05,
        "model_type": "chinese_clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 32,
        "patch_size": 14,
        "projection_dim": 1024,
    },
}

HUB_CONFIGS = {
    "openai/clip-vit-base-patch32": OPENAI_B32,
    "openai/clip-vit-large-patch14-336": OPENAI_L14_336,
    "dict-only layout (clip-vit-base-patch16 style)": OPENAI_B16_DICT_ONLY,
    "OFA-Sys/chinese-clip-vit-base-patch16": CHINESE_B16,
    "OFA-Sys/chinese-clip-vit-huge-patch14": CHINESE_H14,
}


def assert_same_as_transformers(ours: BaseConfig, ref: object) -> None:
    """Every field of ours (sub-configs recursively) equals transformers' attribute."""
    for f in fields(ours):
        if f.name == "extra":
            continue
        value = getattr(ours, f.name)
        expected = getattr(ref, f.name)
        if isinstance(value, BaseConfig):
            assert_same_as_transformers(value, expected)
        elif f.name == "dtype":
            assert value == (None if expected is None else str(expected).removeprefix("torch."))
        else:
            assert value == expected, f"{type(ours).__name__}.{f.name}: {value!r} != {expected!r}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_defaults_match_transformers(cls):
    assert_same_as_transformers(cls(), getattr(transformers, cls.__name__)())


def test_documented_defaults():
    vision, text = ChineseCLIPVisionConfig(), ChineseCLIPTextConfig()
    assert (vision.patch_size, vision.hidden_act) == (32, "quick_gelu")
    assert (text.vocab_size, text.layer_norm_eps) == (30522, 1e-12)
    full = ChineseCLIPConfig()
    assert (full.projection_dim, full.logit_scale_init_value) == (512, 2.6592)
    assert CLIPTextConfig().eos_token_id == 49407


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_hub_layouts_parse_like_transformers(name):
    data = HUB_CONFIGS[name]
    ours = config_class_for(data["model_type"]).from_dict(copy.deepcopy(data))
    ref_cls = (
        transformers.CLIPConfig
        if data["model_type"] == "clip"
        else (transformers.ChineseCLIPConfig)
    )
    ref = ref_cls.from_dict(copy.deepcopy(data))
    assert_same_as_transformers(ours, ref)


def test_layout_details():
    b32 = CLIPConfig.from_dict(OPENAI_B32)
    assert b32.text_config.eos_token_id == 2  # legacy pooling for this checkpoint
    assert b32.text_config.extra["max_length"] == 20  # v4 generation keys are kept
    l14 = CLIPConfig.from_dict(OPENAI_L14_336)
    assert (l14.vision_config.image_size, l14.vision_config.patch_size) == (336, 14)
    assert l14.vision_config.num_positions == 24 * 24 + 1
    assert l14.dtype == "float32"
    dict_only = CLIPConfig.from_dict(OPENAI_B16_DICT_ONLY)
    assert dict_only.vision_config.patch_size == 16
    chinese = ChineseCLIPConfig.from_dict(CHINESE_B16)
    assert chinese.text_config.vocab_size == 21128
    assert chinese.text_config.pooler_type == "first_token_transform"  # kept, attribute access


def test_tower_config_from_a_full_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OPENAI_L14_336))
    text = CLIPTextConfig.from_pretrained(tmp_path)
    vision = CLIPVisionConfig.from_pretrained(tmp_path)
    full = CLIPConfig.from_pretrained(tmp_path)
    assert text == full.text_config and vision == full.vision_config
    assert_same_as_transformers(vision, transformers.CLIPVisionConfig.from_pretrained(tmp_path))
    assert CLIPVisionConfig.from_pretrained(tmp_path, image_size=448).image_size == 448

    (tmp_path / "config.json").write_text(json.dumps(CHINESE_B16))  # old layout: no text_config
    chinese_text = ChineseCLIPTextConfig.from_pretrained(tmp_path)
    assert chinese_text.vocab_size == 21128 and chinese_text.hidden_size == 768


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_round_trip_keeps_unknown_keys(name, tmp_path):
    data = HUB_CONFIGS[name]
    cls = config_class_for(data["model_type"])
    config = cls.from_dict({**data, "my_custom_key": [1, 2]})
    assert config.my_custom_key == [1, 2]
    again = cls.from_dict(config.to_dict())
    assert again == config
    path = config.save_pretrained(tmp_path)
    written = json.loads(path.read_text())
    assert written["my_custom_key"] == [1, 2]
    assert "transformers_version" not in written and "text_config_dict" not in written
    assert written["text_config"]["model_type"].endswith("_text_model")
    assert cls.from_pretrained(tmp_path) == config
    assert cls.from_pretrained(path) == config  # a .json file path works too


@pytest.mark.parametrize("name", list(HUB_CONFIGS))
def test_transformers_reads_a_saved_config(name, tmp_path):
    data = HUB_CONFIGS[name]
    config = config_class_for(data["model_type"]).from_dict(data)
    config.save_pretrained(tmp_path)
    ref = getattr(transformers, type(config).__name__).from_pretrained(tmp_path)
    assert_same_as_transformers(config, ref)


def test_dtype_and_torch_dtype():
    assert CLIPVisionConfig.from_dict({"torch_dtype": "float16"}).dtype == "float16"
    assert CLIPVisionConfig.from_dict({"dtype": "bfloat16", "torch_dtype": "float16"}).dtype == (
        "bfloat16"
    )
    assert CLIPVisionConfig.from_dict({"torch_dtype": "torch.float16"}).dtype == "float16"
    assert CLIPVisionConfig.from_dict({}).to_dict()["dtype"] is None
    assert getattr(torch, CLIPVisionConfig(dtype="bfloat16").dtype) is torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype must be one of .*'float32'.* \(got 'int8'\)"):
        CLIPVisionConfig(dtype="int8")


def test_invariants_have_clear_messages():
    with pytest.raises(
        ValueError, match=r"hidden_size \(100\) must be divisible by num_attention_heads \(12\)"
    ):
        CLIPVisionConfig(hidden_size=100)
    with pytest.raises(ValueError, match=r"patch_size \(32\) must not exceed image_size \(16\)"):
        CLIPVisionConfig(image_size=16)
    with pytest.raises(ValueError, match=r"projection_dim must be > 0 \(got 0\)"):
        CLIPConfig(projection_dim=0)
    with pytest.raises(TypeError, match=r"CLIPTextConfig.hidden_size must be int \(got '512'\)"):
        CLIPTextConfig.from_dict({"hidden_size": "512"})
    with pytest.raises(TypeError, match=r"eos_token_id must be int \(got \[2, 3\]\)"):
        CLIPTextConfig.from_dict({"eos_token_id": [2, 3]})
    with pytest.raises(TypeError, match="num_hidden_layers must be int"):
        ChineseCLIPTextConfig.from_dict({"num_hidden_layers": True})
    with pytest.raises(TypeError, match="vision_config must be a CLIPVisionConfig"):
        CLIPConfig(vision_config=[1])
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key' is not supported"):
        ChineseCLIPTextConfig.from_dict({"position_embedding_type": "relative_key"})
    with pytest.raises(
        ValueError, match=r"model_type 'chinese_clip_text_model'; use ChineseCLIPTextConfig"
    ):
        CLIPConfig.from_dict({"text_config": {"model_type": "chinese_clip_text_model"}})
    # Integers are fine where JSON has a float.
    assert CLIPTextConfig.from_dict({"attention_dropout": 0}).attention_dropout == 0


def test_from_text_vision_configs():
    text = ChineseCLIPTextConfig(hidden_size=64, num_attention_heads=4)
    vision = ChineseCLIPVisionConfig(patch_size=16)
    config = ChineseCLIPConfig.from_text_vision_configs(text, vision, projection_dim=256)
    assert config.text_config is text and config.vision_config is vision
    assert config.projection_dim == 256
    from_dicts = ChineseCLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    assert from_dicts.text_config == text


def test_wrong_family_and_unknown_types_are_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CHINESE_H14))
    with pytest.raises(
        CheckpointError,
        match=r"config\.json: .*of model_type 'chinese_clip'; use ChineseCLIPConfig",
    ):
        CLIPConfig.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="model_type 'chinese_clip'"):
        CLIPTextConfig.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"unsupported model_type 'bert'.*chinese_clip"):
        config_class_for("bert")


def test_unreadable_config_files(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"no config\.json"):
        CLIPConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        CLIPConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        CLIPConfig.from_pretrained(tmp_path)
