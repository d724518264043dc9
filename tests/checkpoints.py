"""Tiny random-weight checkpoints of both families, saved by transformers as on the Hub.

Each builder writes a complete checkpoint folder: ``config.json``, ``model.safetensors``, the
tokenizer files (``vocab.json`` + ``merges.txt`` + ``tokenizer.json`` for CLIP, ``vocab.txt`` +
``tokenizer.json`` for Chinese-CLIP, with the real bundled vocabularies) and
``preprocessor_config.json`` laid out like the official ones (CLIP: resize the shortest edge then
center-crop; Chinese-CLIP: resize straight to a square, no crop). Tests load them with ``model/``
and compare against ``transformers`` loading the very same files.

Use as pytest fixtures (``clip_checkpoint``, ``chinese_clip_checkpoint``, ``checkpoint`` which is
parametrized over both) after registering this module as a plugin, or call the builders directly.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

__all__ = [
    "CHINESE_CLIP_CONTEXT",
    "CLIP_CONTEXT",
    "build_checkpoint",
    "build_chinese_clip_checkpoint",
    "build_clip_checkpoint",
    "checkpoint",
    "chinese_clip_checkpoint",
    "clip_checkpoint",
    "openai_bpe_vocab",
]

DATA = Path(__file__).resolve().parent.parent / "model" / "data"
CLIP_CONTEXT = 77
CHINESE_CLIP_CONTEXT = 52
_OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table that the CLIP BPE is built on."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the vocabulary's order


def openai_bpe_vocab() -> tuple[dict[str, int], list[str]]:
    """The OpenAI CLIP vocabulary (49408 entries) and merges, from the bundled BPE file.

    Built the way OpenAI's ``simple_tokenizer`` builds it (and as the Hub's ``vocab.json``
    lists it): 256 byte symbols, the same with ``</w>``, one symbol per merge, then the two
    special tokens.
    """
    with gzip.open(DATA / "bpe_simple_vocab_16e6.txt.gz", "rt", encoding="utf-8") as f:
        lines = f.read()
    merges = lines.split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _vision_config(image_size: int) -> dict:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
        "num_channels": 3,
    }


def build_clip_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    projection_dim: int = 16,
    hidden_act: str = "quick_gelu",
) -> Path:
    """Writes a tiny random CLIP checkpoint (ViT image tower, causal BPE text tower) to ``path``.

    Args:
        path: the folder to create.
        seed: torch seed for the random weights.
        image_size: input resolution (a multiple of the patch size, 8).
        projection_dim: size of the joint embedding.
        hidden_act: ``"quick_gelu"`` (OpenAI) or ``"gelu"`` (LAION).

    Returns:
        ``path`` as a :class:`Path`.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = openai_bpe_vocab()
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": CLIP_CONTEXT,
        "hidden_act": hidden_act,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    vision = {**_vision_config(image_size), "hidden_act": hidden_act}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path)

    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    pairs = [tuple(m.split()) for m in merges]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=CLIP_CONTEXT)
    tokenizer.save_pretrained(path)

    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": image_size},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": _OPENAI_MEAN,
            "image_std": _OPENAI_STD,
            "do_convert_rgb": True,
        },
    )
    return path


def build_chinese_clip_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    projection_dim: int = 16,
) -> Path:
    """Writes a tiny random Chinese-CLIP checkpoint (ViT image tower, BERT text tower).

    Args:
        path: the folder to create.
        seed: torch seed for the random weights.
        image_size: input resolution (a multiple of the patch size, 8).
        projection_dim: size of the joint embedding.

    Returns:
        ``path`` as a :class:`Path`.
    """
    import torch
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_lines = (DATA / "chinese_roberta_wwm_ext_vocab.txt").read_text(encoding="utf-8")
    vocab = {tok: i for i, tok in enumerate(vocab_lines.splitlines())}
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "pad_token_id": vocab["[PAD]"],
    }
    vision = {**_vision_config(image_size), "hidden_act": "quick_gelu"}
    config = ChineseCLIPConfig(
        text_config=text, vision_config=vision, projection_dim=projection_dim
    )
    torch.manual_seed(seed)
    ChineseCLIPModel(config).eval().save_pretrained(path)

    (path / "vocab.txt").write_text(vocab_lines, encoding="utf-8")
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=CHINESE_CLIP_CONTEXT)
    tokenizer.save_pretrained(path)

    # As in OFA-Sys/chinese-clip-*: resize straight to a square, no center crop.
    _write_json(
        path / "preprocessor_config.json",
        {
            "image_processor_type": "ChineseCLIPImageProcessor",
            "do_resize": True,
            "size": {"height": image_size, "width": image_size},
            "resample": 3,
            "do_center_crop": False,
            "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": _OPENAI_MEAN,
            "image_std": _OPENAI_STD,
            "do_convert_rgb": True,
        },
    )
    return path


def build_checkpoint(family: str, path: str | Path, **kwargs) -> Path:
    """Builds a checkpoint of ``family`` (``"clip"`` or ``"chinese_clip"``) at ``path``."""
    builders = {"clip": build_clip_checkpoint, "chinese_clip": build_chinese_clip_checkpoint}
    if family not in builders:
        raise ValueError(f"family must be one of {sorted(builders)} (got {family!r})")
    return builders[family](path, **kwargs)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint folder, built once per test session."""
    return build_clip_checkpoint(tmp_path_factory.mktemp("clip") / "checkpoint")


@pytest.fixture(scope="session")
def chinese_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Chinese-CLIP checkpoint folder, built once per test session."""
    return build_chinese_clip_checkpoint(tmp_path_factory.mktemp("chinese_clip") / "checkpoint")


@pytest.fixture(scope="session", params=["clip", "chinese_clip"])
def checkpoint(request: pytest.FixtureRequest) -> Path:
    """Each family's tiny checkpoint in turn."""
    return request.getfixturevalue(f"{request.param}_checkpoint")
