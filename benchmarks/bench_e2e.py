"""End to end: ``clipbeam score`` against the loop a user would otherwise write, on the same rows.

The input is one Parquet file of real 1600 x 1200 JPEG photos stored as bytes, with alt-text
captions (see :mod:`benchmarks.workloads`); the model a CLIP ViT-B/16 with random weights.

* ``user loop``: what one writes with transformers: read the file in batches of 32 with pyarrow,
  ``PIL.Image.open`` each image, ``CLIPProcessor`` (transformers' PIL image processor, captions
  padded per batch and truncated), ``CLIPModel`` in float32, the cosine of the two embeddings,
  ``pyarrow.parquet.ParquetWriter``;
* ``clipbeam score`` on Beam's DirectRunner with its defaults (``--dtype auto``), in ``exact``
  and ``fast`` preprocessing, and once each with ``--dtype float32`` and ``--dtype int8`` (exact
  preprocessing) to show what the dtype brings; int8 is compared with float32, and the model's
  size on disk and in memory is printed for both.

Each variant runs as its own process, as a user would run it, so the times include starting
Python and loading the model; the variants take turns when ``--repeats`` is above 1 and medians
are compared. Steady-state rates subtract each variant's fixed cost, measured by the same
command on a one-row file.

It then measures the two stages of a clipbeam job alone, in one process with the model loaded:
decoding + preprocessing (on the job's decode thread pool) and the model (both towers, on
inputs prepared beforehand), and compares the job's steady-state rate with the slower of the two:
a job that overlaps decoding with the model runs close to its slower stage.

Run ``python -m benchmarks.bench_e2e`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.workloads import (
    alt_text_captions,
    build_checkpoint,
    camera_photos,
    describe_machine,
    load_average,
)

USER_BATCH = 32


def write_dataset(path: Path, rows: int, seed: int = 0, row_group_size: int = 256) -> None:
    """``rows`` rows of ``id``, ``image`` (JPEG bytes) and ``text``, in one Parquet file."""
    photos = list(camera_photos("both", seed).values())
    table = pa.table(
        {
            "id": [f"row-{i:06d}" for i in range(rows)],
            "image": pa.array([photos[i % len(photos)] for i in range(rows)], pa.binary()),
            "text": alt_text_captions(rows, seed),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def user_loop(data: str, checkpoint: str, output: str) -> None:
    """The straightforward transformers loop (run in a child process by the benchmark)."""
    import PIL.Image
    import torch
    import transformers

    model = transformers.CLIPModel.from_pretrained(checkpoint).eval()
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessorPil.from_pretrained(checkpoint),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(checkpoint),
    )
    writer = None
    for batch in pq.ParquetFile(data).iter_batches(batch_size=USER_BATCH):
        images = [PIL.Image.open(io.BytesIO(b)) for b in batch.column("image").to_pylist()]
        inputs = processor(
            images=images,
            text=batch.column("text").to_pylist(),
            return_tensors="pt",
            padding=True,
            truncation=True,
        )
        with torch.inference_mode():
            outputs = model(**inputs)
        scores = (outputs.image_embeds * outputs.text_embeds).sum(-1)  # both are normalized
        table = pa.table({"id": batch.column("id"), "clip_score": scores.float().numpy()})
        if writer is None:
            writer = pq.ParquetWriter(output, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def commands(
    data: Path, checkpoint: Path, out: Path, name: str, units: Path | None = None
) -> dict[str, list[str]]:
    """The variants' command lines, reading ``data`` and writing under ``out/<variant>``; with
    ``units`` (the same rows in many row groups), the runners compared on them."""
    python = sys.executable
    job = [
        python,
        "-m",
        "clipbeam.pipeline",
        "score",
        "--input",
        str(data),
        "--model",
        str(checkpoint),
    ]
    job += ["--id-column", "id", "--runner", "DirectRunner", "--direct_num_workers", "1"]
    return {
        "user loop (transformers, float32)": [
            python,
            "-m",
            "benchmarks.bench_e2e",
            "--user-loop",
            str(data),
            str(checkpoint),
            str(out / f"user-{name}.parquet"),
        ],
        "clipbeam exact": [*job, "--output", str(out / f"exact-{name}")],
        "clipbeam fast": [*job, "--output", str(out / f"fast-{name}"), "--preprocess", "fast"],
        "clipbeam exact, float32": [
            *job,
            "--output",
            str(out / f"exact32-{name}"),
            "--dtype",
            "float32",
        ],
        "clipbeam exact, int8": [*job, "--output", str(out / f"exact8-{name}"), "--dtype", "int8"],
        **(runner_commands(units, checkpoint, out, name) if units else {}),
    }


# The runners compared on the same rows split into units of UNIT_ROWS rows (one work unit each):
# Beam's DirectRunner in one process, in two worker processes, and the DaskRunner on the
# LocalCluster it starts (sized to the machine: two one-thread workers on two cores).
UNIT_ROWS = 8
RUNNERS = {
    "DirectRunner, 1 process": ["--runner", "DirectRunner", "--direct_num_workers", "1"],
    "DirectRunner, 2 processes": [
        "--runner",
        "DirectRunner",
        "--direct_running_mode",
        "multi_processing",
        "--direct_num_workers",
        "2",
    ],
    "DaskRunner, LocalCluster": ["--runner", "DaskRunner"],
}


def runner_commands(units: Path, checkpoint: Path, out: Path, name: str) -> dict[str, list[str]]:
    job = [sys.executable, "-m", "clipbeam.pipeline", "score", "--input", str(units)]
    job += ["--model", str(checkpoint), "--id-column", "id"]
    return {
        f"clipbeam runner: {label}": [*job, *args, "--output", str(out / f"{key}-{name}")]
        for key, (label, args) in enumerate(RUNNERS.items())
    }


def stages(data: Path, checkpoint: Path, mode: str) -> dict[str, float]:
    """Rows/s of decoding + preprocessing alone and of the model alone (both towers)."""
    from clipbeam.transforms.encoder import Encoder
    from clipbeam.transforms.images import prepare_image
    from clipbeam.transforms.prefetch import prefetch

    table = pq.read_table(data)
    cells, texts = table.column("image").to_pylist(), table.column("text").to_pylist()
    encoder = Encoder.load(str(checkpoint), device="cpu", dtype="auto", batch_size=USER_BATCH)
    settings = encoder.image_settings

    def prepare(cell: bytes):
        return prepare_image(cell, "bytes", settings, mode=mode)

    start = time.perf_counter()
    prepared = [p for batch in prefetch(cells, prepare, USER_BATCH) for p in batch]
    decode = time.perf_counter() - start
    pixels = np.stack([p.pixels for p in prepared])
    encoder.encode_pixels(pixels[:USER_BATCH])  # warm up
    start = time.perf_counter()
    encoder.encode_pixels(pixels)
    encoder.encode_texts(texts)
    model = time.perf_counter() - start
    return {"decode + preprocess": len(cells) / decode, "model": len(cells) / model}


def print_sizes(checkpoint: Path) -> None:
    """The model's size on disk (its checkpoint files) and its weights in memory, per dtype."""
    from clipbeam.model.quantization import model_bytes
    from clipbeam.transforms.encoder import Encoder

    disk = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    print(f"  model on disk: {disk / 2**20:.0f} MiB (float32 safetensors; int8 packs at load)")
    for dtype in ("float32", "int8"):
        encoder = Encoder.load(str(checkpoint), device="cpu", dtype=dtype)
        size = model_bytes(encoder.model) / 2**20
        print(f"  model in memory, {dtype}: {size:.0f} MiB of weights")


def _scores(path: Path) -> dict[str, float]:
    files = [path] if path.is_file() else sorted((path / "scores").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["id", "clip_score"]) for f in files])
    return dict(
        zip(table.column("id").to_pylist(), table.column("clip_score").to_pylist(), strict=True)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_e2e", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rows", type=int, default=64, help="rows in the input file")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant")
    parser.add_argument(
        "--skip-float32", action="store_true", help="skip clipbeam --dtype float32 and int8"
    )
    parser.add_argument(
        "--runners",
        action="store_true",
        help=f"also compare the runners (DirectRunner, DaskRunner) on {UNIT_ROWS}-row units",
    )
    parser.add_argument(
        "--user-loop", nargs=3, metavar=("DATA", "MODEL", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.rows < 2 or args.repeats < 1:
        parser.error("--rows must be at least 2 and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    if args.user_loop:
        user_loop(*args.user_loop)
        return
    print(f"machine: {describe_machine()}")
    print(f"load average at start: {load_average()}")
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_checkpoint(root / "vit-b16", "vit-b16")
        data, one_row = root / "data.parquet", root / "one-row.parquet"
        write_dataset(data, args.rows)
        write_dataset(one_row, 1)
        units = None
        if args.runners:
            units = root / "units.parquet"
            write_dataset(units, args.rows, row_group_size=UNIT_ROWS)
        print(f"input: {args.rows} rows, {data.stat().st_size / 1e6:.1f} MB of JPEG photos")
        full: dict[str, list[float]] = {}
        fixed: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            variants = commands(data, checkpoint, root, f"r{repeat}", units)
            singles = commands(one_row, checkpoint, root, f"one-r{repeat}", units and one_row)
            for label, command in variants.items():
                if args.skip_float32 and label.startswith("clipbeam exact, "):
                    continue
                full.setdefault(label, []).append(_timed(command))
                fixed.setdefault(label, []).append(_timed(singles[label]))
                print(f"  {label}: {full[label][-1]:.1f} s ({fixed[label][-1]:.1f} s on one row)")
        seconds = {label: statistics.median(t) for label, t in full.items()}
        startup = {label: statistics.median(t) for label, t in fixed.items()}
        steady = {label: (args.rows - 1) / (seconds[label] - startup[label]) for label in seconds}

        print(f"\nrows/s over {args.rows} rows (whole run / steady state after start-up):")
        for label in seconds:
            print(f"  {label:<44} {args.rows / seconds[label]:7.2f} / {steady[label]:7.2f}")
        base = "user loop (transformers, float32)"
        for label in seconds:
            if label != base:
                whole = seconds[base] / seconds[label]
                print(
                    f"  ratio {label} / user loop: {whole:.2f}x whole run, "
                    f"{steady[label] / steady[base]:.2f}x steady state"
                )

        if args.runners:
            base_runner = f"clipbeam runner: {next(iter(RUNNERS))}"
            for label in list(RUNNERS)[1:]:
                run = f"clipbeam runner: {label}"
                print(
                    f"  ratio {label} / {next(iter(RUNNERS))} ({UNIT_ROWS}-row units): "
                    f"{seconds[base_runner] / seconds[run]:.2f}x whole run, "
                    f"{steady[run] / steady[base_runner]:.2f}x steady state"
                )

        if "clipbeam exact, int8" in seconds:
            int8, float32 = "clipbeam exact, int8", "clipbeam exact, float32"
            print(
                f"  ratio int8 / float32 (clipbeam exact): "
                f"{seconds[float32] / seconds[int8]:.2f}x whole run, "
                f"{steady[int8] / steady[float32]:.2f}x steady state"
            )
            print_sizes(checkpoint)

        reference = _scores(root / "user-r0.parquet")
        folders = [("exact", "exact-r0"), ("fast", "fast-r0")]
        if "clipbeam exact, int8" in seconds:
            folders.append(("exact, int8", "exact8-r0"))
        for label, folder in folders:
            got = _scores(root / folder)
            gap = max(abs(got[k] - reference[k]) for k in reference)
            print(f"  largest clip_score difference, clipbeam {label} vs user loop: {gap:.4f}")

        print("\nclipbeam's stages alone (one process, model loaded) vs the job's steady state:")
        for mode in ("exact", "fast"):
            rates = stages(data, checkpoint, mode)
            slower = min(rates.values())
            job = steady[f"clipbeam {mode}"]
            shown = ", ".join(f"{name} {rate:.2f}" for name, rate in rates.items())
            print(
                f"  {mode}: {shown} rows/s; job {job:.2f} rows/s = "
                f"{job / slower:.0%} of the slower stage"
            )
    print(f"\nload average at end: {load_average()} ({time.perf_counter() - begin:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
