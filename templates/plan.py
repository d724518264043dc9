"""Capacity planning for clipbeam on Dataflow: workers, GPUs and hours for a number of pairs.

Measures, on this machine and on one CPU core, the two costs a pair has on a worker:

- decoding and preprocessing one image (a 640x480 JPEG, resized and cropped to 224x224): the CPU
  work a GPU worker's vCPUs must keep up with;
- running CLIP ViT-B/16 (random weights, the same arithmetic as the real checkpoint) on the
  image and its caption in float32, and in int8 (``--dtype int8``): the model cost of a CPU
  worker;

then prints the planning table of the README from those figures and from the GPU anchor
(clip-retrieval's published 1,100 images/s per A100 on ViT-B/16; not measured by clipbeam)::

    python -m templates.plan            # measure (about a minute), then print the table
    python -m templates.plan --cpu-pairs-per-core 2.1 --decode-per-core 95   # table only
    python -m templates.plan --cpu-pairs-per-core 2.1 --decode-per-core 95 --int8-pairs-per-core 3

Figures per core are scaled to a worker linearly (one SDK process per vCPU on CPU workers): an
assumption, as are the GPU anchor and the absence of startup and I/O time in the hours.

``clipbeam dedup`` of precomputed embeddings is planned from two rates measured by
``python -m benchmarks.bench_dedup`` (not here: the job takes minutes): the whole job's rows/s on
the DirectRunner with its one worker thread (``--dedup-rows-per-core``), and the k-means fit's
row-centroid products/s (``--fit-products-per-s``), the fit being one worker's step over at most
``--fit-rows``::

    python -m templates.plan --dedup-rows-per-core 1400 --fit-products-per-s 2e8
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# clip-retrieval `clip inference`, ViT-B/16 on one A100 (the project's published anchor).
GPU_ANCHOR_PAIRS_PER_S = 1100.0
DATASETS = (10_000_000, 100_000_000, 1_000_000_000)
# Workers per dataset size in the table: enough to finish in hours, not days.
GPU_WORKERS = {10_000_000: 4, 100_000_000: 16, 1_000_000_000: 64}
CPU_WORKERS = {10_000_000: 50, 100_000_000: 200, 1_000_000_000: 1000}
CPU_WORKER_VCPUS = 16  # e.g. n2-standard-16
# Dedup of embeddings: CPU workers only (no model), clusters and fit sample as NeMo Curator sizes
# them for LAION-scale data, one embedding of 512 float32 per row.
DEDUP_ROWS = 1_000_000_000
DEDUP_WORKERS = (50, 100, 200)
DEDUP_CLUSTERS = 50_000
DEDUP_FIT_ROWS = 1_000_000
DEDUP_DIM = 512
CAPTION = "a photo of a red double-decker bus parked next to a brick building on a sunny day"


@dataclass(frozen=True)
class Throughput:
    """What one CPU core does per second.

    Attributes:
        decode_per_core: images decoded and preprocessed.
        cpu_pairs_per_core: pairs through decoding, both ViT-B/16 towers (float32) and the
            normalization of the embeddings.
        int8_pairs_per_core: the same with ``--dtype int8``; ``None``: not measured (no int8
            rows in the table).
    """

    decode_per_core: float
    cpu_pairs_per_core: float
    int8_pairs_per_core: float | None = None


def _rate(work: Callable[[], int], seconds: float) -> float:
    """Items per second of ``work`` (which returns how many items it did), after a warm-up."""
    work()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += work()
    return done / (time.perf_counter() - start)


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # A smooth gradient with mild noise: photo-like entropy, unlike pure noise.
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def measure(seconds: float = 10.0, batch_size: int = 8) -> Throughput:
    """Measures :class:`Throughput` on one core of this machine (``torch`` on one thread)."""
    import torch
    from PIL import Image

    from clipbeam.model import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )
    from clipbeam.model.quantization import quantize_int8
    from clipbeam.transforms.encoder import Encoder

    torch.set_num_threads(1)
    images = [_jpeg(seed) for seed in range(batch_size)]
    processor = CLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224),
        CLIPTokenizer.from_openai_bpe(),
    )

    def decode() -> int:
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        processor.image_processor(decoded, return_tensors="pt")
        return len(images)

    # ViT-B/16 as openai/clip-vit-base-patch16 (random weights: same arithmetic, no download).
    config = CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "patch_size": 16},
        projection_dim=512,
    )
    float32 = CLIPModel(config).eval()
    int8 = quantize_int8(CLIPModel(config).eval())
    encoders = [
        Encoder(m, processor, device=torch.device("cpu"), batch_size=batch_size)
        for m in (float32, int8)
    ]

    def pairs(encoder: Encoder) -> Callable[[], int]:
        def run() -> int:
            decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
            encoder.encode_images(decoded)
            encoder.encode_texts([CAPTION] * len(images))
            return len(images)

        return run

    return Throughput(
        decode_per_core=_rate(decode, seconds),
        cpu_pairs_per_core=_rate(pairs(encoders[0]), seconds * 3),
        int8_pairs_per_core=_rate(pairs(encoders[1]), seconds * 3),
    )


def _hours(pairs: int, per_second: float) -> float:
    return pairs / per_second / 3600


def _count(n: int) -> str:
    return f"{n // 1_000_000_000}B" if n >= 1_000_000_000 else f"{n // 1_000_000}M"


def table(throughput: Throughput) -> str:
    """The planning table (Markdown) for :data:`DATASETS`."""
    feed_vcpus = math.ceil(GPU_ANCHOR_PAIRS_PER_S / throughput.decode_per_core)
    worker_rate = throughput.cpu_pairs_per_core * CPU_WORKER_VCPUS
    lines = [
        "| pairs | GPU workers (1 A100 each) | hours | GPU-hours "
        f"| CPU workers ({CPU_WORKER_VCPUS} vCPUs each) | hours | vCPU-hours |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pairs in DATASETS:
        gpu_hours = _hours(pairs, GPU_ANCHOR_PAIRS_PER_S)
        cpu_hours = _hours(pairs, throughput.cpu_pairs_per_core)
        lines.append(
            f"| {_count(pairs)} | {GPU_WORKERS[pairs]} | {gpu_hours / GPU_WORKERS[pairs]:.1f} "
            f"| {gpu_hours:,.0f} | {CPU_WORKERS[pairs]} "
            f"| {_hours(pairs, worker_rate * CPU_WORKERS[pairs]):.1f} | {cpu_hours:,.0f} |"
        )
    int8 = throughput.int8_pairs_per_core
    for pairs in DATASETS if int8 else ():
        lines.append(
            f"| {_count(pairs)}, CPU int8 | | | | {CPU_WORKERS[pairs]} "
            f"| {_hours(pairs, int8 * CPU_WORKER_VCPUS * CPU_WORKERS[pairs]):.1f} "
            f"| {_hours(pairs, int8):,.0f} |"
        )
    int8_note = ""
    if int8:
        int8_note = f", {int8:.2f} in int8 ({int8 / throughput.cpu_pairs_per_core:.2f}x)"
    lines += [
        "",
        f"Measured on one core: {throughput.decode_per_core:.0f} images/s decoded and "
        f"preprocessed, {throughput.cpu_pairs_per_core:.2f} pairs/s through ViT-B/16 float32 "
        f"on CPU{int8_note}. Feeding {GPU_ANCHOR_PAIRS_PER_S:,.0f} images/s to one GPU takes about "
        f"{feed_vcpus} vCPUs of decoding.",
    ]
    return "\n".join(lines)


def dedup_table(
    rows_per_core: float,
    fit_products_per_s: float,
    *,
    rows: int = DEDUP_ROWS,
    clusters: int = DEDUP_CLUSTERS,
    fit_rows: int = DEDUP_FIT_ROWS,
    niter: int = 20,
) -> str:
    """The dedup planning table (Markdown): workers, hours and vCPU-hours for ``rows``.

    The hours are the fit (one worker, ``fit_rows x clusters x niter`` row-centroid products)
    plus the rest of the job spread over every vCPU at ``rows_per_core``; the bytes shuffled
    (every row's embedding and id, grouped by cluster) are shown for the Shuffle service's bill.
    """
    fit_hours = fit_rows * clusters * niter / fit_products_per_s / 3600
    vcpu_hours = _hours(rows, rows_per_core)
    shuffled_tb = rows * (DEDUP_DIM * 4 + 64) / 1e12
    lines = [
        f"| embeddings | CPU workers ({CPU_WORKER_VCPUS} vCPUs each) | fit hours (one worker) "
        "| hours | vCPU-hours |",
        "|---:|---:|---:|---:|---:|",
    ]
    for workers in DEDUP_WORKERS:
        hours = fit_hours + vcpu_hours / (workers * CPU_WORKER_VCPUS)
        lines.append(
            f"| {_count(rows)} | {workers} | {fit_hours:.1f} | {hours:.1f} "
            f"| {vcpu_hours + fit_hours * CPU_WORKER_VCPUS:,.0f} |"
        )
    lines += [
        "",
        f"From {rows_per_core:,.0f} rows/s per core (the whole job, DirectRunner) and a fit of "
        f"{fit_rows:,} rows x {clusters:,} clusters x {niter} iterations at "
        f"{fit_products_per_s:.3g} row-centroid products/s; about {shuffled_tb:.1f} TB of "
        f"{DEDUP_DIM}-d float32 rows shuffled by cluster.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measures (unless both figures are given) and prints the planning table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-per-core", type=float, help="skip measuring: images/s")
    parser.add_argument("--cpu-pairs-per-core", type=float, help="skip measuring: pairs/s")
    parser.add_argument("--int8-pairs-per-core", type=float, help="skip measuring: int8 pairs/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    parser.add_argument(
        "--dedup-rows-per-core", type=float, help="dedup table only: the job's rows/s per core"
    )
    parser.add_argument(
        "--fit-products-per-s",
        type=float,
        default=2e8,
        help="dedup: the k-means fit's row-centroid products/s (benchmarks/bench_dedup.py)",
    )
    args = parser.parse_args(argv)
    if args.dedup_rows_per_core:
        print(dedup_table(args.dedup_rows_per_core, args.fit_products_per_s))
        return 0
    if args.decode_per_core and args.cpu_pairs_per_core:
        throughput = Throughput(
            args.decode_per_core, args.cpu_pairs_per_core, args.int8_pairs_per_core
        )
    else:
        throughput = measure(args.seconds)
    print(table(throughput))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
