"""Memory: the peak resident memory of ``clipbeam score`` as the input grows 10x.

A job streams every work unit (Parquet row group) in windows of a few batches, decodes images a
batch ahead of the model and writes rows as it goes, so its memory should not grow with the
input. This runs the same job over inputs of increasing size, each in its own process on Beam's
DirectRunner, and prints each process's peak resident set size (``ru_maxrss``) and how much it
grew from the smallest input.

The rows are small real-photo JPEGs (random crops of scikit-image's photos) with alt-text
captions, and the model a tiny random CLIP, so that 100,000 rows take minutes: what is measured
is the pipeline's memory, not the model's (a larger model adds its fixed size to every run). The
jobs run with one torch thread: on a machine shared with other work, a tiny model's many small
operations otherwise spend most of their time waiting for torch's threads to meet.

Run ``python -m benchmarks.bench_memory`` (``--rows 10000 100000`` by default; ``--help``).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from benchmarks.workloads import (
    PHOTOS,
    alt_text_captions,
    build_checkpoint,
    describe_machine,
    load_average,
    photo,
)

ROWS_PER_FILE = 10_000
ROW_GROUP = 2_000


def small_jpegs(count: int, side: int, seed: int = 0) -> list[bytes]:
    """``count`` different JPEGs of about ``side`` x ``3/4 side``, cut from the photos."""
    rng = random.Random(seed)
    photos = [photo(name) for name in PHOTOS]
    out = []
    for _ in range(count):
        source = rng.choice(photos)
        width, height = source.size
        crop = rng.randint(side, min(width, height))
        left, top = rng.randrange(width - crop + 1), rng.randrange(height - crop + 1)
        tile = source.crop((left, top, left + crop, top + crop * 3 // 4))
        buffer = io.BytesIO()
        tile.resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def write_dataset(folder: Path, rows: int, side: int) -> None:
    """``rows`` rows in files of :data:`ROWS_PER_FILE`, row groups of :data:`ROW_GROUP`."""
    folder.mkdir(parents=True)
    images = small_jpegs(256, side)
    captions = alt_text_captions(4096)
    for number, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        count = min(ROWS_PER_FILE, rows - start)
        table = pa.table(
            {
                "id": [f"row-{start + i:07d}" for i in range(count)],
                "image": pa.array([images[(start + i) % 256] for i in range(count)], pa.binary()),
                "text": [captions[(start + i) % 4096] for i in range(count)],
            }
        )
        pq.write_table(table, folder / f"part-{number:04d}.parquet", row_group_size=ROW_GROUP)


def peak_rss(command: list[str]) -> tuple[int, float]:
    """Runs ``command``; returns its peak resident set size in bytes and its wall time."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    output = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output.decode(errors='replace')}")
    return usage.ru_maxrss * 1024, seconds  # Linux reports kilobytes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[10_000, 100_000], help="input sizes to run"
    )
    parser.add_argument("--image-side", type=int, default=96, help="width of the JPEGs")
    parser.add_argument("--preprocess", choices=("exact", "fast"), default="exact")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if min(args.rows) < 1 or args.image_side < 8 or args.batch_size < 1:
        parser.error("--rows and --batch-size must be at least 1, --image-side at least 8")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    print(f"machine: {describe_machine()}")
    print(f"load average at start: {load_average()}")
    begin = time.perf_counter()
    peaks: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_checkpoint(root / "tiny", "tiny")
        for rows in sorted(args.rows):
            data = root / f"data-{rows}"
            write_dataset(data, rows, args.image_side)
            command = [sys.executable, "-m", "clipbeam.pipeline", "score", "--input", str(data)]
            command += ["--output", str(root / f"out-{rows}"), "--model", str(checkpoint)]
            command += ["--id-column", "id", "--preprocess", args.preprocess]
            command += ["--batch-size", str(args.batch_size)]
            command += ["--runner", "DirectRunner", "--direct_num_workers", "1"]
            peaks[rows], seconds = peak_rss(command)
            written = sum(
                pq.ParquetFile(f).metadata.num_rows
                for f in (root / f"out-{rows}").rglob("*.parquet")
            )
            print(
                f"  {rows:>9,} rows: peak RSS {peaks[rows] / 2**20:7.1f} MiB, {seconds:6.1f} s "
                f"({rows / seconds:,.0f} rows/s), {written:,} rows written"
            )
    smallest = min(peaks)
    for rows, peak in sorted(peaks.items()):
        if rows != smallest:
            print(
                f"  peak RSS at {rows:,} rows / at {smallest:,} rows: {peak / peaks[smallest]:.3f}"
            )
    print(f"load average at end: {load_average()} ({time.perf_counter() - begin:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
