"""Image preprocessing: clipbeam's exact and fast modes against transformers' PIL processor.

Every variant starts from the JPEG bytes of a real 1600 x 1200 photograph (see
:func:`benchmarks.workloads.camera_photos`) and ends with the model's ``(3, 224, 224)`` input, so
decoding is included:

* ``transformers``: ``PIL.Image.open`` + ``CLIPImageProcessorPil`` (transformers' PIL processor
  with openai/clip-vit-base-patch16's settings);
* ``clipbeam exact`` / ``clipbeam fast``: ``transforms.images.prepare_image``, what a job runs per
  image (the limits checks included).

It prints: whether exact mode equals transformers bit for bit on every photo; milliseconds per
image on one thread, the variants timed in turn and medians compared; images/s with the decode
thread pool of a job (one thread per CPU); and fast mode's accuracy as the cosine similarity of
image features against exact mode's, with two yardsticks: re-saving the photo as a quality 75
JPEG (a change nobody would call a different image) and nearest-neighbour resizing (a known bad
preprocessing).

Random-weight towers hardly react to their input at the usual initialization (every image gets
nearly the same features), so the accuracy is reported for a ViT-B/16 at that initialization,
for a small tower with larger initial weights that does tell images apart, and for the demo
models trained for clipbeam (``model/pretrained``) when present; add trained checkpoints you
have with ``--model``.

Run ``python -m benchmarks.bench_preprocess`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import transformers

from benchmarks.workloads import (
    camera_photos,
    describe_machine,
    interleaved_medians,
    load_average,
)
from clipbeam.model.image_processing import CLIPImageProcessor
from clipbeam.model.image_settings import ImageSettings
from clipbeam.model.image_transforms import process_image
from clipbeam.transforms.images import prepare_image
from clipbeam.transforms.prefetch import decode_pool, decode_threads, prefetch

PRETRAINED = Path(__file__).resolve().parent.parent / "model" / "pretrained"


def _reference(data: bytes, processor: Any) -> np.ndarray:
    return processor(PIL.Image.open(io.BytesIO(data)), return_tensors="np")["pixel_values"][0]


def _ours(mode: str, settings: ImageSettings) -> Callable[[bytes], np.ndarray]:
    return lambda data: prepare_image(data, "bytes", settings, mode=mode).pixels


def check_exact(photos: dict[str, bytes], settings: ImageSettings, reference: Any) -> None:
    ours = _ours("exact", settings)
    same = sum(np.array_equal(ours(d), _reference(d, reference)) for d in photos.values())
    print(f"exact mode equals transformers bit for bit: {same} of {len(photos)} photos")


def single_thread(
    photos: dict[str, bytes], settings: ImageSettings, reference: Any, repeats: int
) -> None:
    variants = {
        "transformers": lambda d: _reference(d, reference),
        "clipbeam exact": _ours("exact", settings),
        "clipbeam fast": _ours("fast", settings),
    }
    for group in sorted({name.split("/")[0] for name in photos}):
        data = [d for name, d in photos.items() if name.startswith(group)]
        calls = {
            label: (lambda f=f, data=data: [f(d) for d in data]) for label, f in variants.items()
        }
        medians = interleaved_medians(calls, repeats)
        size = statistics.mean(len(d) for d in data) / 1000
        print(f"  {group} photos ({len(data)}, {size:.0f} kB on average), ms per image:")
        for label, seconds in medians.items():
            print(f"    {label:<16} {seconds / len(data) * 1000:7.2f}")
        base = medians["transformers"]
        for label in ("clipbeam exact", "clipbeam fast"):
            print(f"    ratio {label} / transformers: {base / medians[label]:.2f}x")


def pooled(photos: dict[str, bytes], settings: ImageSettings, reference: Any, repeats: int) -> None:
    data = list(photos.values()) * 2
    pool = decode_pool()

    def through_pool(work: Callable[[bytes], np.ndarray]) -> Callable[[], Any]:
        return lambda: [r for batch in prefetch(data, work, 32, pool=pool) for r in batch]

    calls = {
        "transformers, 1 thread": lambda: [_reference(d, reference) for d in data],
        "transformers, pool": through_pool(lambda d: _reference(d, reference)),
        "clipbeam exact, pool": through_pool(_ours("exact", settings)),
        "clipbeam fast, pool": through_pool(_ours("fast", settings)),
    }
    medians = interleaved_medians(calls, repeats)
    print(f"  images/s over all {len(data)} photos, decode pool of {decode_threads()} threads:")
    for label, seconds in medians.items():
        print(f"    {label:<24} {len(data) / seconds:8.1f}")
    for label in ("clipbeam exact, pool", "clipbeam fast, pool"):
        for base in ("transformers, 1 thread", "transformers, pool"):
            print(f"    ratio {label} / {base}: {medians[base] / medians[label]:.2f}x")


# -- accuracy ------------------------------------------------------------------------------------


def _reencoded(data: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _vision_tower(
    *, width: int, layers: int, heads: int, image_size: int, patch: int, init: float
) -> Callable[[np.ndarray], torch.Tensor]:
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        projection_dim=512,
        initializer_factor=init,
    )
    tower = transformers.CLIPVisionModelWithProjection(config).eval()
    return lambda pixels: tower(pixel_values=torch.from_numpy(pixels)).image_embeds


def _checkpoint_tower(source: str) -> tuple[Callable[[np.ndarray], torch.Tensor], Any]:
    from clipbeam.model import load_model, load_processor

    loaded = load_model(source, dtype=torch.float32).eval()
    processor = load_processor(source).image_processor

    def features(pixels: np.ndarray) -> torch.Tensor:
        output = loaded.get_image_features(pixel_values=torch.from_numpy(pixels))
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    return features, processor


def accuracy(photos: dict[str, bytes], models: Sequence[str], batch: int) -> None:
    """Cosine similarity of fast-mode image features to exact-mode ones, per model."""
    towers: list[tuple[str, Callable[[np.ndarray], torch.Tensor], CLIPImageProcessor]] = [
        (
            "ViT-B/16, random weights at the usual initialization",
            _vision_tower(width=768, layers=12, heads=12, image_size=224, patch=16, init=1.0),
            CLIPImageProcessor(),
        ),
        (
            "small ViT/32, random weights at 3x the usual scale (reacts to its input)",
            _vision_tower(width=64, layers=4, heads=4, image_size=224, patch=32, init=3.0),
            CLIPImageProcessor(),
        ),
    ]
    trained = [str(p) for p in sorted(PRETRAINED.glob("*")) if (p / "config.json").exists()]
    for source in [*trained, *models]:
        features, processor = _checkpoint_tower(source)
        towers.append((f"trained checkpoint {source}", features, processor))

    data = list(photos.values())
    q75 = [_reencoded(d, 75) for d in data]
    for label, tower, processor in towers:
        settings = processor.resolve_settings()
        nearest = processor.resolve_settings(resample=PIL.Image.Resampling.NEAREST)
        inputs = {
            "exact": [_ours("exact", settings)(d) for d in data],
            "fast": [_ours("fast", settings)(d) for d in data],
            "JPEG q75 re-save, exact": [_ours("exact", settings)(d) for d in q75],
            "nearest-neighbour resize": [
                process_image(PIL.Image.open(io.BytesIO(d)), nearest) for d in data
            ],
        }
        with torch.inference_mode():
            feats = {
                name: torch.nn.functional.normalize(
                    torch.cat(
                        [tower(np.stack(p[i : i + batch])) for i in range(0, len(p), batch)]
                    ).float(),
                    dim=-1,
                )
                for name, p in inputs.items()
            }
        exact = feats["exact"]
        others = exact @ exact.T
        cross = others[~torch.eye(len(exact), dtype=torch.bool)]
        print(f"  {label}:")
        print(f"    different photos, for scale: mean cosine {float(cross.mean()):.4f}")
        for name in ("fast", "JPEG q75 re-save, exact", "nearest-neighbour resize"):
            cos = (feats[name] * exact).sum(-1)
            print(
                f"    {name:<26} vs exact: min {float(cos.min()):.5f}  mean {float(cos.mean()):.5f}"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_preprocess", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--photos", choices=("upscaled", "mosaic", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a trained checkpoint to measure fast mode's accuracy with (repeatable)",
    )
    parser.add_argument("--no-accuracy", action="store_true", help="only time")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    print(f"machine: {describe_machine()}")
    print(f"load average at start: {load_average()}")
    photos = camera_photos(args.photos)
    reference = transformers.CLIPImageProcessorPil()  # openai/clip-vit-base-patch16's settings
    settings = CLIPImageProcessor().resolve_settings()
    check_exact(photos, settings, reference)
    start = time.perf_counter()
    print("\nsingle thread, decoding included:")
    single_thread(photos, settings, reference, args.repeats)
    print("\nwith a job's decode thread pool:")
    pooled(photos, settings, reference, args.repeats)
    if not args.no_accuracy:
        print("\nfast mode's accuracy: cosine similarity of image features to exact mode's:")
        accuracy(photos, args.model, args.batch_size)
    print(f"\nload average at end: {load_average()} ({time.perf_counter() - start:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
