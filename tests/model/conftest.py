"""Tiny random checkpoints of both families, written by transformers, for the model tests.

Fixtures:

* ``clip_checkpoint`` / ``chinese_clip_checkpoint`` / ``checkpoint`` (both in turn), from the
  plugin :mod:`tests.checkpoints`: complete folders with tokenizer and preprocessor files.
* ``hf_checkpoint``: a factory ``hf_checkpoint(variant, model_class="CLIPModel", seed=0)`` that
  saves a transformers model of one of the tiny :data:`VARIANTS` with random weights (cached per
  session) and returns the folder.

The variants cover what parity depends on: ``quick_gelu`` and ``gelu``, the real image
geometries (224 px with patch 32 and 16, 224 and 336 px with patch 14: patch grids of 7x7, 14x14,
16x16 and 24x24, so image position tables and image sequence lengths are those of the released
models), a projection size unlike either width, text and vision widths that differ, and CLIP's
legacy ``eos_token_id == 2`` pooling. The widths and depths are tiny (16 to 40 wide, 2 or 3
layers) and the text context is short (12 or 16 positions), which keeps the tests fast.

Helpers: inputs (:func:`text_batch`, :func:`pixel_batch`), parity assertions
(:func:`assert_close` and its tuple / output variants), and for random-initialisation tests
:func:`init_config` and :func:`assert_same_init_statistics`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

__all__ = [
    "VARIANTS",
    "assert_all_close",
    "assert_close",
    "assert_nested_close",
    "assert_same_init_statistics",
    "assert_same_output",
    "hf_checkpoint",
    "hf_config",
    "init_config",
    "text_batch",
]

# Text vocabularies are tiny; ids 0..2 are special, BOS and EOS are the two largest ids (as in
# the OpenAI vocabulary, which the legacy argmax pooling relies on).
VOCAB = 64
BOS, EOS = VOCAB - 2, VOCAB - 1

VARIANTS: dict[str, dict] = {
    # ViT-B/32 at 224 px: a 7x7 patch grid.
    "clip-b32": {
        "family": "clip",
        "projection_dim": 20,
        "text": {"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "quick_gelu"},
        "vision": {
            "hidden_size": 24,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
    },
    # A LAION-style model: gelu everywhere, ViT-B/16 at 224 px (14x14 grid), and a legacy config
    # (eos_token_id 2).
    "clip-b16-gelu-legacy-eos": {
        "family": "clip",
        "projection_dim": 12,
        "text": {
            "hidden_size": 16,
            "num_attention_heads": 2,
            "hidden_act": "gelu",
            "bos_token_id": 0,
            "eos_token_id": 2,
        },
        "vision": {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 16,
            "hidden_act": "gelu",
        },
    },
    # ViT-L/14 at 336 px: a 24x24 grid, three layers.
    "clip-l14-336": {
        "family": "clip",
        "projection_dim": 24,
        "text": {"hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 3},
        "vision": {
            "hidden_size": 40,
            "num_attention_heads": 5,
            "num_hidden_layers": 3,
            "image_size": 336,
            "patch_size": 14,
        },
    },
    # Chinese-CLIP ViT-B/16 at 224 px: a 14x14 grid.
    "chinese-b16": {
        "family": "chinese_clip",
        "projection_dim": 20,
        "text": {"hidden_size": 32, "num_attention_heads": 4, "hidden_act": "gelu"},
        "vision": {
            "hidden_size": 24,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 16,
        },
    },
    # Chinese-CLIP ViT-H/14 at 224 px (16x16 grid), a wider text tower with gelu_new.
    "chinese-h14": {
        "family": "chinese_clip",
        "projection_dim": 12,
        "text": {"hidden_size": 40, "num_attention_heads": 5, "hidden_act": "gelu_new"},
        "vision": {
            "hidden_size": 24,
            "num_attention_heads": 3,
            "num_hidden_layers": 3,
            "image_size": 224,
            "patch_size": 14,
        },
    },
    # The transformers default Chinese-CLIP vision geometry (224 px, patch 32: 7x7), quick_gelu.
    "chinese-b32": {
        "family": "chinese_clip",
        "projection_dim": 16,
        "text": {"hidden_size": 16, "num_attention_heads": 2},
        "vision": {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 32,
        },
    },
}
CLIP_VARIANTS = [name for name, v in VARIANTS.items() if v["family"] == "clip"]
CHINESE_VARIANTS = [name for name, v in VARIANTS.items() if v["family"] == "chinese_clip"]


def hf_config(variant: str) -> dict:
    """The full ``config.json`` dict (text_config, vision_config, projection_dim) of a variant."""
    spec = VARIANTS[variant]
    text = {
        "vocab_size": VOCAB,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        **spec["text"],
    }
    if spec["family"] == "clip":
        text = {"max_position_embeddings": 12, "bos_token_id": BOS, "eos_token_id": EOS, **text}
        text["pad_token_id"] = 0
    else:
        text = {"max_position_embeddings": 16, "type_vocab_size": 2, "pad_token_id": 0, **text}
    vision = {"intermediate_size": 40, "num_hidden_layers": 2, **spec["vision"]}
    return {
        "model_type": spec["family"],
        "text_config": text,
        "vision_config": vision,
        "projection_dim": spec["projection_dim"],
    }


def hf_model(variant: str, model_class: str, seed: int = 0) -> torch.nn.Module:
    """A transformers model of ``model_class`` with random weights, for a variant."""
    import transformers

    config_dict = hf_config(variant)
    full_cls = (
        transformers.CLIPConfig
        if config_dict["model_type"] == "clip"
        else (transformers.ChineseCLIPConfig)
    )
    full = full_cls(**{k: v for k, v in config_dict.items() if k != "model_type"})
    config = full
    if "Text" in model_class:
        config = full.text_config
    elif "Vision" in model_class:
        config = full.vision_config
    if model_class.endswith("WithProjection"):
        config.projection_dim = full.projection_dim
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(config).eval()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``hf_checkpoint(variant, model_class="CLIPModel", seed=0) -> folder``.

    The folder holds ``config.json`` and ``model.safetensors`` written by transformers'
    ``save_pretrained``; each combination is built once per session.
    """
    cache: dict[tuple[str, str, int], Path] = {}

    def build(variant: str, model_class: str | None = None, seed: int = 0) -> Path:
        family = VARIANTS[variant]["family"]
        model_class = model_class or ("CLIPModel" if family == "clip" else "ChineseCLIPModel")
        key = (variant, model_class, seed)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"{variant}-{model_class}")
            hf_model(variant, model_class, seed).save_pretrained(path)
            cache[key] = path
        return cache[key]

    return build


def text_batch(
    variant: str, lengths: tuple[int, ...] = (5, 9, 3), seed: int = 0
) -> dict[str, torch.Tensor]:
    """A right-padded batch of token ids of mixed lengths for a variant's text tower.

    Each row is ``[BOS, tokens..., EOS]`` of the given length, then padding (id 0) with
    ``attention_mask`` 0. Chinese-CLIP batches also get non-trivial ``token_type_ids``.
    """
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        body = torch.randint(3, BOS, (length - 2,), generator=generator)
        input_ids[row, :length] = torch.cat([torch.tensor([BOS]), body, torch.tensor([EOS])])
        attention_mask[row, :length] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if VARIANTS[variant]["family"] == "chinese_clip":
        batch["token_type_ids"] = (torch.arange(width) >= width // 2).long().expand_as(input_ids)
    return batch


def pixel_batch(
    variant: str, images: int = 2, seed: int = 0, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Random normalized pixels ``[images, 3, height, width]`` for a variant's image tower.

    ``size`` is ``(height, width)``; default the variant's ``image_size`` square.
    """
    side = VARIANTS[variant]["vision"]["image_size"]
    height, width = size or (side, side)
    return torch.randn(images, 3, height, width, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5) -> None:
    """Same shape and max abs difference <= ``atol`` (float32 parity: 1e-5)."""
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


def assert_all_close(ours: tuple | None, ref: tuple | None, atol: float = 1e-5) -> None:
    """:func:`assert_close` over two equally long tuples of tensors (hidden states...)."""
    assert ours is not None and ref is not None and len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert_close(a, b, atol)


def assert_nested_close(ours: Any, ref: Any, atol: float = 1e-5) -> None:
    """:func:`assert_close` through nested tuples (``return_dict=False`` outputs): the same
    structure, and close tensors at every leaf."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{type(ours).__name__} where a tensor is expected"
        assert_close(ours, ref, atol)
        return
    assert isinstance(ours, tuple) and isinstance(ref, tuple), (type(ours), type(ref))
    assert len(ours) == len(ref), f"{len(ours)} items where transformers has {len(ref)}"
    for a, b in zip(ours, ref, strict=True):
        assert_nested_close(a, b, atol)


def assert_same_output(ours: Any, ref: Any, atol: float = 1e-5) -> None:
    """Output tuples item by item (:func:`assert_nested_close`), output objects key by key:
    transformers' outputs order their keys by when each was first set, ours by field."""
    if isinstance(ref, tuple):
        assert_nested_close(ours, ref, atol)
        return
    assert sorted(ours.keys()) == sorted(ref.keys())
    for key in ref:
        assert_nested_close(ours[key], ref[key], atol)


# Init settings whose effect differs per tower: ranges alone, then factors that scale them. (In
# Chinese-CLIP the BERT text tower draws from initializer_range alone; the image tower and the
# projections scale by initializer_factor as CLIP's do.)
INIT_SETTINGS = {
    "initializer_range": {
        "text_config": {"initializer_range": 0.05},
        "vision_config": {"initializer_range": 0.1},
    },
    "initializer_factor": {
        "text_config": {"initializer_range": 0.01, "initializer_factor": 2.0},
        "vision_config": {"initializer_range": 0.03, "initializer_factor": 0.5},
        "initializer_factor": 1.5,
    },
}


def init_config(family: str, **settings: Any) -> dict:
    """A ``config.json`` dict for random-initialisation tests: widths of 96 and 128 (tensors
    large enough for their statistics to tell init schemes apart), two layers, 224 px images.

    ``settings`` holds extra ``text_config`` / ``vision_config`` entries and top-level keys.
    """
    text = {"hidden_size": 96, "intermediate_size": 128, "num_attention_heads": 4}
    text |= {"num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 32}
    vision = {"hidden_size": 128, "intermediate_size": 192, "num_attention_heads": 4}
    vision |= {"num_hidden_layers": 2, "image_size": 224, "patch_size": 32}
    return {
        "model_type": family,
        "text_config": {**text, **settings.pop("text_config", {})},
        "vision_config": {**vision, **settings.pop("vision_config", {})},
        "projection_dim": 80,
        **settings,
    }


def assert_same_init_statistics(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Both randomly initialised models have the same parameter names and, per tensor, the same
    mean and standard deviation within five standard errors.

    Constant tensors (LayerNorm weights, biases, ``logit_scale``) must be equal. For a tensor of
    ``n`` values drawn with deviation ``s``, the two sample deviations differ with a standard
    error of about ``s / sqrt(n)`` and the two means with ``s * sqrt(2 / n)``.
    """
    ours_params, ref_params = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert sorted(ours_params) == sorted(ref_params)
    for name, ref_value in ref_params.items():
        a, b = ours_params[name].detach().double(), ref_value.detach().double()
        assert a.shape == b.shape, name
        n = b.numel()
        if n == 1 or b.std().item() == 0:
            assert torch.allclose(a, b), f"{name}: {a.flatten()[:4]} != {b.flatten()[:4]}"
            continue
        s_ours, s_ref = a.std().item(), b.std().item()
        assert abs(s_ours - s_ref) <= 5 * s_ref / n**0.5, f"{name}: std {s_ours} vs {s_ref}"
        m_ours, m_ref = a.mean().item(), b.mean().item()
        assert abs(m_ours - m_ref) <= 5 * s_ref * (2 / n) ** 0.5, (
            f"{name}: mean {m_ours} vs {m_ref}"
        )
