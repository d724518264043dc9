"""clipbeam dedup: the blocked per-cluster step against a NumPy all-pairs, and a skewed job.

1. One cluster of ``--cluster-rows`` unit vectors: :func:`semdedup.max_similarity` (tiles of
   ``--block`` rows) against the whole ``n x n`` similarity matrix masked to earlier rows; the
   ratio of medians, the largest difference, and each one's peak extra memory.
2. ``clipbeam dedup`` on the DirectRunner over ``--rows`` embeddings of which 30% sit in one hot
   cluster (near copies of one direction): rows/s, the largest cluster, how it was split, the
   largest group written, the k-means fit time and inertia.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipbeam.transforms.dedup import semdedup


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _all_pairs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = x @ x.T
    s[np.triu_indices(len(x))] = -np.inf  # row i sees only j < i
    return s.max(axis=1), s.argmax(axis=1)


def _peak(fn, *args) -> tuple[float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def bench_cluster(rows: int, dim: int, block: int, repeats: int) -> None:
    x = _unit(np.random.default_rng(0).normal(size=(rows, dim)))
    ours, theirs = [], []
    for _ in range(repeats):  # alternating, so drifts of a shared machine hit both
        start = time.perf_counter()
        best, _ = semdedup.max_similarity(x, block)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        want, _ = _all_pairs(x)
        theirs.append(time.perf_counter() - start)
    diff = float(np.abs(best[1:] - want[1:]).max())
    _, our_peak = _peak(semdedup.max_similarity, x, block)
    _, their_peak = _peak(_all_pairs, x)
    print(
        f"per-cluster step, {rows} x {dim}, block {block}: blocked {statistics.median(ours):.3f}s, "
        f"all-pairs {statistics.median(theirs):.3f}s, ratio (all-pairs / blocked) "
        f"{statistics.median(theirs) / statistics.median(ours):.2f}; max |diff| {diff:.1e}; "
        f"peak extra memory {our_peak / 2**20:.0f} MiB vs {their_peak / 2**20:.0f} MiB"
    )


def bench_job(rows: int, dim: int, clusters: int, bound: int) -> None:
    from clipbeam.pipeline.dedup import run

    rng = np.random.default_rng(1)
    hot = int(rows * 0.3)
    centre = rng.normal(size=(1, dim))
    x = np.concatenate(
        [centre + 0.02 * rng.normal(size=(hot, dim)), rng.normal(size=(rows - hot, dim))]
    )
    x = _unit(x)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        per_file = max(1, rows // 8)
        for f, start in enumerate(range(0, rows, per_file)):
            part = x[start : start + per_file]
            column = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), dim)
            ids = pa.array([f"r{i:08d}" for i in range(start, start + len(part))])
            pq.write_table(
                pa.table({"id": ids, "image_embedding": column}),
                folder / f"part-{f:03d}.parquet",
                row_group_size=10_000,
            )
        out = Path(tmp) / "out"
        start = time.perf_counter()
        run(
            [
                "--input", str(folder), "--output", str(out), "--clusters", str(clusters),
                "--max-cluster-rows", str(bound), "--fit-rows", str(min(rows, 100_000)),
            ]
        )  # fmt: skip
        seconds = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
    print(
        f"dedup job, {rows} x {dim}, 30% in one cluster, --clusters {clusters} "
        f"--max-cluster-rows {bound}: {seconds:.1f}s, {rows / seconds:.0f} rows/s; largest "
        f"cluster {summary['largest_cluster']}, clusters split {summary['split_clusters']}, "
        f"largest group {summary['largest_group']}; k-means fit "
        f"{summary['kmeans']['fit_seconds']}s, inertia {summary['kmeans']['inertia']:.1f}; "
        f"removed at eps {summary['eps']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dedup", description=__doc__)
    parser.add_argument("--cluster-rows", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--job-dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--max-cluster-rows", type=int, default=10_000)
    args = parser.parse_args(argv)
    bench_cluster(args.cluster_rows, args.dim, args.block, args.repeats)
    bench_job(args.rows, args.job_dim, args.clusters, args.max_cluster_rows)


if __name__ == "__main__":
    main()
