"""Heads: what three heads cost a ``clipbeam score`` job, and ``clipbeam train-head`` on 100k rows.

* ``score``: ``clipbeam score`` on generated scenes with the demo model, without heads and with
  three (a LAION-layout aesthetic MLP, a Curator-layout NSFW MLP and a format-1 MLP, random
  weights) in one run; each variant is its own process, the variants take turns, medians are
  compared. Then the same in one process on prepared pixels: the image tower alone
  (``encode_pixels``) against the tower with the heads (``embed_pixels``), which isolates the
  heads' cost from the job's noise.
* ``train-head``: ``clipbeam train-head`` (linear probe, then ``--hidden 64``) on 100,000
  synthetic 768-dim embeddings with a binary label, read from Parquet.

The machine's load (``os.getloadavg``) is printed next to each figure: on a shared machine the
job figures move with it. Run ``python -m benchmarks.bench_heads`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores"


def _make_heads(root: Path, dim: int) -> list[str]:
    import torch
    from safetensors.torch import save_file

    from clipbeam.model.heads import Head, HeadConfig, LayerConfig, save_head

    torch.manual_seed(0)
    sizes = [(dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    laion = {}
    for i, (a, b) in zip((0, 2, 4, 6, 7), sizes, strict=True):
        laion[f"layers.{i}.weight"] = torch.randn(b, a) * a**-0.5
        laion[f"layers.{i}.bias"] = torch.zeros(b)
    torch.save(laion, root / "aesthetic.pth")
    curator = {"norm.mean": torch.zeros(dim), "norm.variance": torch.ones(dim)}
    for i, (a, b) in enumerate([(dim, 64), (64, 512), (512, 256), (256, 1)], start=1):
        curator[f"linear_{i}.weight"] = torch.randn(b, a) * a**-0.5
        curator[f"linear_{i}.bias"] = torch.zeros(b)
    save_file(curator, str(root / "nsfw.safetensors"))
    own = Head(
        HeadConfig(layers=(LayerConfig(dim, 256, "relu"), LayerConfig(256, 1)), embedding_dim=dim)
    )
    save_head(own, root / "own")
    return [
        f"aesthetic={root / 'aesthetic.pth'}",
        f"nsfw={root / 'nsfw.safetensors'}",
        f"own={root / 'own'}",
    ]


def bench_score(rows: int, repeats: int, model: str) -> None:
    from clipbeam.pipeline.demo.scenes import write_scenes
    from clipbeam.transforms.encoder import Encoder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_scenes(root / "scenes.parquet", rows, seed=1, row_group_size=250)
        probe = Encoder.load(model, device="cpu", dtype="float32")
        heads = _make_heads(root, probe.projection_dim)
        head_args = [a for h in heads for a in ("--head", h)]
        times: dict[str, list[float]] = {"no heads": [], "3 heads": []}
        for r in range(repeats):
            for name, extra in (("no heads", []), ("3 heads", head_args)):
                out = root / f"out-{r}-{len(extra)}"
                command = [sys.executable, "-m", "clipbeam.pipeline", "score", "--input", data,
                           "--output", str(out), "--model", model, "--text-column", "caption_en",
                           "--dtype", "float32", *extra]  # fmt: skip
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["no heads"])
        with_heads = statistics.median(times["3 heads"])
        print(f"clipbeam score, {rows} rows, {model}, {repeats} runs each ({_load()}):")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:9s}: {rows / median:7.1f} rows/s (median {median:.1f} s)")
        print(f"  3 heads / no heads time: {with_heads / base:.3f}")
        bench_in_process(model, heads, max(5, repeats * 5))


def bench_in_process(model: str, heads: list[str], repeats: int) -> None:
    """In one process: the image tower alone against the tower with the heads, on the same
    pixels (a batch of scenes), ``repeats`` times each in turn; prints the medians."""
    from clipbeam.model.image_processing import process_image
    from clipbeam.pipeline.demo.scenes import render, sample_scene
    from clipbeam.transforms.encoder import Encoder

    heads_arg = [tuple(h.split("=", 1)) for h in heads]
    encoder = Encoder.load(model, device="cpu", dtype="float32", heads=heads_arg)
    rng = np.random.default_rng(0)
    pixels = np.stack(
        [
            process_image(render(sample_scene(rng)), encoder.image_settings)
            for _ in range(encoder.batch_size)
        ]
    )
    embeddings, _ = encoder.embed_pixels(pixels)  # warm-up
    plain, headed, alone = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode_pixels(pixels)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        encoder.embed_pixels(pixels)
        headed.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(10):
            encoder.apply_heads(embeddings)
        alone.append((time.perf_counter() - start) / 10)
    p, h, a = statistics.median(plain), statistics.median(headed), statistics.median(alone)
    print(
        f"  one batch of {len(pixels)} in process ({Path(model).name}): tower {p * 1e3:.1f} ms, "
        f"tower + {len(heads)} heads {h * 1e3:.1f} ms ({(h / p - 1) * 100:+.2f}%); the heads "
        f"alone {a * 1e3:.2f} ms = {a / p * 100:.2f}% of the tower ({_load()})"
    )


def bench_vit_b16(repeats: int) -> None:
    """The heads' cost next to a full-size tower: ViT-B/16 (random weights, 512-d projection)."""
    from benchmarks.workloads import build_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_checkpoint(root / "vit-b16", "vit-b16")
        print("ViT-B/16 image tower with and without 3 heads:")
        bench_in_process(str(checkpoint), _make_heads(root, 512), repeats)


def bench_train(rows: int, dim: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbeam.pipeline.heads import train_main

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    direction = rng.normal(size=dim).astype(np.float32)
    label = (x @ direction + rng.normal(scale=0.5, size=rows) > 0).tolist()
    ids = [f"r{i}" for i in range(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        pq.write_table(pa.table({"id": ids, "image_embedding": embedding}), root / "emb.parquet")
        pq.write_table(pa.table({"id": ids, "label": label}), root / "labels.parquet")
        for extra in ([], ["--hidden", "64"]):
            start = time.perf_counter()
            train_main(["--embeddings", str(root / "emb.parquet"), "--labels",
                        str(root / "labels.parquet"), "--label-column", "label", "--out",
                        str(root / "head"), *extra])  # fmt: skip
            seconds = time.perf_counter() - start
            kind = "linear probe" if not extra else "MLP --hidden 64"
            print(f"train-head {kind}, {rows:,} x {dim} embeddings: {seconds:.1f} s ({_load()})")


def main(argv: list[str] | None = None) -> None:
    """Runs both measurements."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_heads", description=__doc__)
    parser.add_argument("--rows", type=int, default=1000, help="rows of the score job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="demo-clip")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--train-dim", type=int, default=768)
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--vit-b16",
        action="store_true",
        help="also measure the heads next to a ViT-B/16 tower (random weights), in one process",
    )
    args = parser.parse_args(argv)
    if not args.skip_score:
        bench_score(args.rows, args.repeats, args.model)
    if args.vit_b16:
        bench_vit_b16(max(5, args.repeats * 5))
    if not args.skip_train:
        bench_train(args.train_rows, args.train_dim)


if __name__ == "__main__":
    main()
