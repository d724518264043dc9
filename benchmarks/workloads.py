"""Inputs shared by the preprocessing, text, end-to-end and memory benchmarks.

* Real photographs at camera size: scikit-image ships a handful of photos in its wheel (no
  download). :func:`camera_photos` makes 1600 x 1200 JPEGs of them two ways: ``upscaled`` (a
  photo cropped to 4:3 and enlarged, so smoother than a camera's output) and ``mosaic`` (tiles
  of the photos at their native resolution, so with a real photo's fine detail and a real
  1600 x 1200 photo's file size, about 500 kB at quality 90).
* Captions with the length mix of web alt-text: many short, a few long enough to be truncated.
* Checkpoints with random weights, written in the Hugging Face layout that ``--model`` reads:
  ViT-B/16 size (what the speed figures are about) and a tiny one (for the memory benchmark,
  where the model must not be the bottleneck).
* Timing helpers: variants timed in turn within every repeat, medians compared.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "PHOTOS",
    "alt_text_captions",
    "build_checkpoint",
    "camera_photos",
    "describe_machine",
    "interleaved_medians",
    "load_average",
    "photo",
]

# Colour photographs in scikit-image's data folder.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
CAMERA_SIZE = (1600, 1200)
JPEG_QUALITY = 90


def photo(name: str) -> Image.Image:
    """One of :data:`PHOTOS`, as RGB."""
    with Image.open(importlib.resources.files("skimage") / "data" / name) as image:
        return image.convert("RGB")


def _upscaled(photo: Image.Image) -> Image.Image:
    width, height = photo.size
    if width * 3 > height * 4:
        crop_w, crop_h = height * 4 // 3, height
    else:
        crop_w, crop_h = width, width * 3 // 4
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    cropped = photo.crop((left, top, left + crop_w, top + crop_h))
    return cropped.resize(CAMERA_SIZE, Image.Resampling.LANCZOS)


def _mosaic(photos: list[Image.Image], rng: random.Random, start: int) -> Image.Image:
    """4 x 3 tiles of 400 x 400, each cut from a photo at its native resolution."""
    canvas = Image.new("RGB", CAMERA_SIZE)
    for index in range(12):
        photo = photos[(start + index) % len(photos)]
        width, height = photo.size
        side = min(400, width, height)
        left, top = rng.randrange(width - side + 1), rng.randrange(height - side + 1)
        tile = photo.crop((left, top, left + side, top + side))
        if side != 400:
            tile = tile.resize((400, 400), Image.Resampling.LANCZOS)
        canvas.paste(tile, ((index % 4) * 400, (index // 4) * 400))
    return canvas


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def camera_photos(kind: str = "both", seed: int = 0) -> dict[str, bytes]:
    """1600 x 1200 JPEGs (quality 90) of scikit-image's photos, by name.

    Args:
        kind: ``"upscaled"``, ``"mosaic"`` or ``"both"`` (8 of each).
        seed: where the mosaic tiles are cut.
    """
    if kind not in ("upscaled", "mosaic", "both"):
        raise ValueError(f"kind must be upscaled, mosaic or both (got {kind!r})")
    photos = [photo(name) for name in PHOTOS]
    out: dict[str, bytes] = {}
    if kind in ("upscaled", "both"):
        for name, source in zip(PHOTOS, photos, strict=True):
            out[f"upscaled/{name.split('.')[0]}"] = _jpeg(_upscaled(source))
    if kind in ("mosaic", "both"):
        rng = random.Random(seed)
        for index in range(len(photos)):
            out[f"mosaic/{index}"] = _jpeg(_mosaic(photos, rng, index))
    return out


_VOCABULARY = (
    "a photo of the cat dog man woman child red blue green old new small large wooden "
    "table sofa kitchen garden beach mountain city street night morning light portrait "
    "close up view vintage modern house car bike rocket launch pad astronaut coffee cup "
    "two three with on in at under near for sale free shipping best price high quality "
    "stock image illustration vector background texture pattern design logo icon white "
    "black and colourful watercolor painting wedding dress shoes jacket 2021 summer "
    "collection"
)
_WORDS = _VOCABULARY.split()


def alt_text_captions(count: int, seed: int = 0) -> list[str]:
    """Captions whose lengths follow web alt-text: log-normal word counts, median 9 words.

    With CLIP's tokenizer: a median of 11 tokens, one caption in ten over 30, about 1% longer
    than the 77-token context (truncated).
    """
    rng = random.Random(seed)
    captions = []
    for _ in range(count):
        words = max(1, round(rng.lognormvariate(2.2, 0.9)))
        captions.append(" ".join(rng.choice(_WORDS) for _ in range(words)))
    return captions


def build_checkpoint(
    directory: str | os.PathLike[str], size: str = "vit-b16", seed: int = 0
) -> Path:
    """Writes a CLIP checkpoint with random weights, tokenizer and image processor config.

    Args:
        directory: the folder to create.
        size: ``"vit-b16"`` (openai/clip-vit-base-patch16's shapes) or ``"tiny"`` (2 layers of
            width 32, 32 px images: the model costs next to nothing).
        seed: torch seed of the weights.
    """
    import torch
    import transformers

    from tests.checkpoints import openai_bpe_vocab

    if size not in ("vit-b16", "tiny"):
        raise ValueError(f"size must be vit-b16 or tiny (got {size!r})")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = openai_bpe_vocab()
    special = {
        "vocab_size": len(vocab),
        "max_position_embeddings": 77,
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    if size == "vit-b16":
        text = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12}
        text["num_attention_heads"] = 8
        vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
        vision.update(num_attention_heads=12, image_size=224, patch_size=16)
        projection = 512
    else:
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        text["num_attention_heads"] = 4
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        vision.update(num_attention_heads=4, image_size=32, patch_size=8)
        projection = 16
    config = transformers.CLIPConfig(
        text_config={**text, **special, "hidden_act": "quick_gelu"},
        vision_config={**vision, "hidden_act": "quick_gelu"},
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    transformers.CLIPModel(config).eval().save_pretrained(path)
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    pairs = [tuple(m.split()) for m in merges]
    transformers.CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77).save_pretrained(path)
    side = vision["image_size"]
    transformers.CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(path)
    return path


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], repeats: int, *, warmup: bool = True
) -> dict[str, float]:
    """Median seconds per call of each callable, the variants timed in turn within every
    repeat, so that load from other processes falls on all of them alike."""
    if warmup:
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the printout."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe_machine() -> str:
    """One line on the CPU and software the numbers come from."""
    import numpy
    import PIL
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cpus} CPUs for this process, {torch.get_num_threads()} torch threads; "
        f"python {platform.python_version()}, torch {torch.__version__}, Pillow "
        f"{PIL.__version__}, numpy {numpy.__version__}"
    )
