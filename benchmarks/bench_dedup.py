"""clipbeam dedup: the per-cluster step, the k-means fit, the whole job and its memory.

1. ``cluster``: one cluster of ``--cluster-rows`` unit vectors: :func:`semdedup.max_similarity`
   (tiles of ``--block`` rows) against the whole ``n x n`` similarity matrix masked to earlier
   rows (NumPy brute force); the ratio of medians, the largest difference, each one's peak extra
   memory.
2. ``fit``: spherical k-means on ``--fit-rows`` x ``--dim`` embeddings drawn around
   ``--fit-clusters`` centres: the job's faiss fit against a plain torch implementation (the
   same algorithm: random rows as the start, ``--niter`` assign/mean/normalize steps), time and
   inertia of each, on the same data in one run.
3. ``job``: ``clipbeam dedup`` on the DirectRunner over ``--rows`` embeddings of which 30% sit in
   one hot cluster (near copies of one direction): rows/s, the largest cluster, how it was
   split, the largest group written, the k-means fit time and inertia.
4. ``rss``: the same job in a fresh process for each of ``--rss-rows``: the peak RSS of the
   in-memory DirectRunner's one process (``--shuffle auto``: the rows cross its step
   boundaries as files), the same with ``--shuffle runner`` (the runner holds every grouped
   row: the comparison), in multi_processing mode of its runner process and of its largest
   worker process, and of each step that holds rows, traced (the fit, a cluster group, a
   tile).

``python -m benchmarks.bench_dedup --only cluster,fit`` runs some of them; each prints the
machine first. The job's rows/s feed ``python -m templates.plan --dedup-rows-per-core``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
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


def _torch_kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> tuple[np.ndarray, float]:
    """Spherical k-means in torch: ``(centroids, inertia)`` (sum of squared L2 distances)."""
    import torch

    data = torch.from_numpy(x)
    generator = torch.Generator().manual_seed(seed)
    centroids = data[torch.randperm(len(data), generator=generator)[:k]].clone()
    for _ in range(niter):
        nearest = torch.cat([(b @ centroids.T).argmax(1) for b in data.split(16384)])
        sums = torch.zeros_like(centroids).index_add_(0, nearest, data)
        counts = torch.bincount(nearest, minlength=k)
        moved = counts > 0  # an empty cluster keeps its centroid
        centroids[moved] = torch.nn.functional.normalize(sums[moved], dim=1)
    best = torch.cat([(b @ centroids.T).max(1).values for b in data.split(16384)])
    return centroids.numpy(), float((2.0 - 2.0 * best.double()).sum())


def bench_fit(rows: int, dim: int, k: int, niter: int) -> None:
    from clipbeam.transforms.dedup import kmeans

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(k, dim))
    x = _unit(centres[rng.integers(k, size=rows)] + 0.7 * rng.normal(size=(rows, dim)) / dim**0.5)
    start = time.perf_counter()
    _, faiss_inertia = kmeans._fit_centroids(x, k, seed=0, niter=niter)
    faiss_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, torch_inertia = _torch_kmeans(x, k, seed=0, niter=niter)
    torch_seconds = time.perf_counter() - start
    print(
        f"k-means fit, {rows} x {dim}, k {k}, {niter} iterations: faiss {faiss_seconds:.1f}s "
        f"inertia {faiss_inertia:.1f}; torch {torch_seconds:.1f}s inertia {torch_inertia:.1f}; "
        f"time ratio (torch / faiss) {torch_seconds / faiss_seconds:.2f}, inertia ratio "
        f"{torch_inertia / faiss_inertia:.4f}; {rows * k * niter / faiss_seconds:.3g} "
        "row-centroid products/s in faiss"
    )


def _write_input(folder: Path, rows: int, dim: int) -> None:
    """``rows`` unit embeddings, 30% of them near copies of one direction, in 8 files."""
    rng = np.random.default_rng(1)
    hot = int(rows * 0.3)
    centre = rng.normal(size=(1, dim))
    x = np.concatenate(
        [centre + 0.02 * rng.normal(size=(hot, dim)), rng.normal(size=(rows - hot, dim))]
    )
    x = _unit(x)
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


def _run_job(folder: Path, out: Path, rows: int, clusters: int, bound: int, *beam: str) -> float:
    """``clipbeam dedup`` over ``folder``; its seconds."""
    from clipbeam.pipeline.dedup import run

    start = time.perf_counter()
    run(
        [
            "--input", str(folder), "--output", str(out), "--clusters", str(clusters),
            "--max-cluster-rows", str(bound), "--fit-rows", str(min(rows, 100_000)), *beam,
        ]
    )  # fmt: skip
    return time.perf_counter() - start


def bench_job(rows: int, dim: int, clusters: int, bound: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        _write_input(folder, rows, dim)
        out = Path(tmp) / "out"
        seconds = _run_job(folder, out, rows, clusters, bound)
        summary = json.loads((out / "summary.json").read_text())
    print(
        f"dedup job, {rows} x {dim}, 30% in one cluster, --clusters {clusters} "
        f"--max-cluster-rows {bound}: {seconds:.1f}s, {rows / seconds:.0f} rows/s; largest "
        f"cluster {summary['largest_cluster']}, clusters split {summary['split_clusters']}, "
        f"largest group {summary['largest_group']}; k-means fit "
        f"{summary['kmeans']['fit_seconds']}s, inertia {summary['kmeans']['inertia']:.1f}; "
        f"removed at eps {summary['eps']}"
    )


# The job's own processes: the DirectRunner's runner process and its SDK workers.
_WORKERS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
# Extra arguments of each mode of bench_rss.
_MODES = {
    "in_memory": [],
    "runner_shuffle": ["--shuffle", "runner"],
    "multi_processing": list(_WORKERS),
    "traced": [],
}
# The steps that hold rows: the fit (its sample), the second-level fits, a cluster group, a tile.
_STEPS = (
    ("clipbeam.transforms.dedup.stages", "Fit"),
    ("clipbeam.transforms.dedup.stages", "FitSplits"),
    ("clipbeam.transforms.dedup.stages", "DedupGroup"),
    ("clipbeam.transforms.dedup.tiles", "Tile"),
)


def traced_steps() -> dict[str, float]:
    """Wraps each step of ``_STEPS`` so that its calls record their peak of traced memory
    (``tracemalloc``: Python and NumPy allocations made during the call, whatever it got as
    input before); returns the dict of largest peaks in MiB, filled as the job runs."""
    import importlib

    peaks: dict[str, float] = {}
    tracemalloc.start()

    def wrap(name: str, process):
        def traced(self, *args, **kwargs):
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            yield from process(self, *args, **kwargs)
            peak = (tracemalloc.get_traced_memory()[1] - before) / 2**20
            peaks[name] = max(peaks.get(name, 0.0), peak)

        return traced

    for module, name in _STEPS:
        step = getattr(importlib.import_module(module), name)
        step.process = wrap(name, step.process)
    return peaks


def own_peak_mib() -> float:
    """This process's peak RSS since it started its program (``VmHWM``; ``ru_maxrss`` would
    also count what the parent held when it forked this process)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 2**10


_CHILD = """
import json, resource
from pathlib import Path
from benchmarks.bench_dedup import _run_job, own_peak_mib, traced_steps
peaks = traced_steps() if {traced} else {{}}
seconds = _run_job(Path({folder!r}), Path({out!r}), {rows}, {clusters}, {bound}, *{beam!r})
print("bench-result", json.dumps({{
    "own": own_peak_mib(),
    "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10,
    "seconds": seconds, "steps": peaks,
}}))
"""
_WRITER = """
from pathlib import Path
from benchmarks.bench_dedup import _write_input
_write_input(Path({folder!r}), {rows}, {dim})
"""


def bench_rss(sizes: list[int], dim: int, clusters: int, bound: int, modes: list[str]) -> None:
    """Per size, the job alone in a fresh process (its input written beforehand by another
    one: this process stays small, so that what a child inherits when it forks is not counted).

    Modes: ``in_memory``, the peak RSS of the in-memory DirectRunner's one process (the
    job's default ``--shuffle auto``: files); ``runner_shuffle``, the same with ``--shuffle
    runner`` (every grouped row held by the runner); ``multi_processing``, of the runner
    process and of the largest worker process (:func:`own_peak_mib` of the process,
    ``ru_maxrss`` of its children: a worker's also counts what the runner held when it forked
    the worker);
    ``traced``, the in-memory run with each row-holding step's largest call peak
    (:func:`traced_steps`: what the job itself holds, apart from what the runner buffers)."""
    unknown = sorted(set(modes) - set(_MODES))
    if unknown:
        raise SystemExit(f"unknown --rss-modes {unknown}: choose from {sorted(_MODES)}")
    results: dict[str, list[float]] = {}
    for rows in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "in"
            writer = _WRITER.format(folder=str(folder), rows=rows, dim=dim)
            subprocess.run([sys.executable, "-c", writer], check=True)
            for mode in modes:
                beam = _MODES[mode]
                code = _CHILD.format(
                    traced=mode == "traced", folder=str(folder), out=str(Path(tmp) / mode),
                    rows=rows, clusters=clusters, bound=bound, beam=beam,
                )  # fmt: skip
                done = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, check=True
                )
                line = next(x for x in done.stdout.splitlines() if x.startswith("bench-result"))
                got = json.loads(line.split(" ", 1)[1])
                if mode == "in_memory":
                    shown = {"in-memory DirectRunner process": got["own"]}
                elif mode == "runner_shuffle":
                    shown = {"in-memory DirectRunner process, --shuffle runner": got["own"]}
                elif mode == "multi_processing":
                    shown = {"runner process": got["own"], "largest worker": got["children"]}
                else:
                    shown = {f"step {k} (traced)": v for k, v in sorted(got["steps"].items())}
                for name, mib in shown.items():
                    results.setdefault(name, []).append(mib)
                figures = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in shown.items())
                print(f"peak, {rows} x {dim}, {mode} ({got['seconds']:.0f} s): {figures}",
                      flush=True)  # fmt: skip
    for name, values in results.items():
        ratio = values[-1] / values[0] if values[0] else float("inf")
        print(
            f"peak of the {name} from {sizes[0]} to {sizes[-1]} rows: {ratio:.2f}x "
            f"({'flat within 10%' if ratio <= 1.1 else 'not flat'})"
        )


def _machine() -> str:
    import faiss
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dedup", description=__doc__)
    parser.add_argument("--only", default="cluster,fit,job,rss", help="benchmarks to run")
    parser.add_argument("--cluster-rows", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-rows", type=int, default=200_000)
    parser.add_argument("--fit-clusters", type=int, default=256)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--job-dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--max-cluster-rows", type=int, default=10_000)
    parser.add_argument("--rss-rows", default="100000,250000", help="comma-separated sizes")
    parser.add_argument(
        "--rss-modes",
        default="in_memory,runner_shuffle,multi_processing,traced",
        help="see bench_rss",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    print(_machine(), flush=True)
    if "cluster" in only:
        bench_cluster(args.cluster_rows, args.dim, args.block, args.repeats)
    if "fit" in only:
        bench_fit(args.fit_rows, args.dim, args.fit_clusters, args.niter)
    if "job" in only:
        bench_job(args.rows, args.job_dim, args.clusters, args.max_cluster_rows)
    if "rss" in only:
        sizes = [int(n) for n in args.rss_rows.split(",")]
        modes = args.rss_modes.split(",")
        bench_rss(sizes, args.job_dim, args.clusters, args.max_cluster_rows, modes)


if __name__ == "__main__":
    main()
