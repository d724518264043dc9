"""clipbeam search: top-k of many queries over precomputed embeddings, against NumPy and faiss.

1. In memory, ``--rows`` unit vectors of ``--dim`` and ``--queries`` unit query vectors, ``--k``
   best per query, three ways in the same run on the same machine:

   - clipbeam's engine as the job runs it: per work unit of ``--unit-rows`` rows,
     :class:`~clipbeam.transforms.search.QueryHeaps` over batches of 4096 rows (query blocks of
     256, exact ties by id), then the units' candidates merged per query (what
     ``Top.SmallestPerKey`` does);
   - a NumPy brute force: ``queries @ block.T`` per block of ``--unit-rows`` rows,
     ``argpartition`` per block, then per query over the blocks' candidates;
   - faiss ``IndexFlatIP`` (exact inner product), the index built (``add``) and searched.

   Rows/s are rows searched by every query per second; ratios are faiss or NumPy time over
   clipbeam's. The three must return the same rows (random vectors: no ties).
2. ``clipbeam search``'s pipeline on the DirectRunner over ``--job-rows`` rows in Parquet (row
   groups of 10,000), the same query vectors given straight to :func:`build_search` (no model
   has 512-d towers offline; the cost does not depend on where query vectors come from):
   rows/s including Parquet reading, the staging of each unit's candidates and the writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for lo in range(0, rows, 100_000):  # in blocks: no float64 copy of the whole matrix
        out[lo : lo + 100_000] = rng.standard_normal((min(100_000, rows - lo), dim))
    return _unit(out)


def clipbeam_topk(x: np.ndarray, q: np.ndarray, k: int, unit_rows: int) -> list[list[int]]:
    from clipbeam.transforms.search import QueryHeaps, SearchSpec, order_key

    spec = SearchSpec(output="-", model="-", queries=tuple(map(str, range(len(q)))), top_k=k)
    merged: list[list[tuple]] = [[] for _ in range(len(q))]
    for lo in range(0, len(x), unit_rows):  # one work unit
        heaps = QueryHeaps(spec, q)
        for b in range(lo, min(lo + unit_rows, len(x)), 4096):  # ReadUnit's batches
            end = min(b + 4096, lo + unit_rows, len(x))
            heaps.add(list(range(b, end)), x[b:end])
        for qi, candidate in heaps.candidates():
            merged[qi].append(candidate)
    return [[c[1] for c in sorted(m, key=order_key)[:k]] for m in merged]


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, block: int) -> list[list[int]]:
    values, indices = [], []
    for lo in range(0, len(x), block):
        s = q @ x[lo : lo + block].T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        values.append(np.take_along_axis(s, part, axis=1))
        indices.append(part + lo)
    v, i = np.concatenate(values, axis=1), np.concatenate(indices, axis=1)
    best = np.argsort(-v, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(i, best, axis=1).tolist()


def faiss_topk(x: np.ndarray, q: np.ndarray, k: int) -> tuple[list[list[int]], float]:
    import faiss

    start = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    built = time.perf_counter() - start
    _, found = index.search(q, k)
    return found.tolist(), built


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()}"


def bench_engine(
    rows: int, dim: int, queries: int, k: int, unit_rows: int, repeats: int
) -> np.ndarray:
    import statistics

    import faiss

    import clipbeam.transforms.search  # noqa: F401 (Beam's import time is not search time)

    start = time.perf_counter()
    x = _vectors(rows, dim, 0)
    q = _vectors(queries, dim, 1)
    print(
        f"data: {rows:,} x {dim} float32 rows, {queries} queries, top-{k}, generated in "
        f"{time.perf_counter() - start:.1f}s; faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} threads; load average {os.getloadavg()[0]:.1f}"
    )
    runs: dict[str, list[float]] = {"clipbeam": [], "numpy": [], "faiss": []}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    built = []
    for _ in range(repeats):  # alternating, so drifts of a shared machine hit all three
        for name, fn, args in (
            ("clipbeam", clipbeam_topk, (x, q, k, unit_rows)),
            ("numpy", numpy_topk, (x, q, k, unit_rows)),
            ("faiss", faiss_topk, (x, q, k)),
        ):
            start, start_cpu = time.perf_counter(), time.process_time()
            found = fn(*args)
            runs[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            if name == "clipbeam":
                ours = found
            elif name == "numpy":
                brute = found
            else:
                theirs, add = found
                built.append(add)
    timings = {name: statistics.median(values) for name, values in runs.items()}
    cpu_s = {name: statistics.median(values) for name, values in cpu.items()}
    same_numpy = sum(a == b for a, b in zip(ours, brute, strict=True))
    same_faiss = sum(a == b for a, b in zip(ours, theirs, strict=True))
    for name, seconds in timings.items():
        extra = f" (index add {statistics.median(built):.1f}s)" if name == "faiss" else ""
        print(
            f"  {name:9s} {seconds:7.1f}s wall ({cpu_s[name]:6.1f}s CPU)  "
            f"{rows / seconds:10,.0f} rows/s  {rows * queries / seconds / 1e6:8,.1f}M "
            f"row-query pairs/s{extra}"
        )
    print(
        f"  ratios of wall time (median of {repeats}): numpy / clipbeam "
        f"{timings['numpy'] / timings['clipbeam']:.2f}, faiss / clipbeam "
        f"{timings['faiss'] / timings['clipbeam']:.2f}; of CPU time: "
        f"{cpu_s['numpy'] / cpu_s['clipbeam']:.2f}, {cpu_s['faiss'] / cpu_s['clipbeam']:.2f}; "
        f"same top-{k} as numpy for "
        f"{same_numpy}/{queries} queries, as faiss for {same_faiss}/{queries}; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    del x
    return q


def bench_job(rows: int, dim: int, q: np.ndarray, k: int) -> None:
    import apache_beam as beam

    from clipbeam.pipeline.search import build_search, reader_spec
    from clipbeam.pipeline.validate import plan
    from clipbeam.transforms.search import SearchSpec

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        per_file = 100_000
        for f, lo in enumerate(range(0, rows, per_file)):
            part = _vectors(min(per_file, rows - lo), dim, 10 + f)
            column = pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), dim)
            ids = pa.array([f"r{i:08d}" for i in range(lo, lo + len(part))])
            pq.write_table(pa.table({"id": ids, "image_embedding": column}),
                           folder / f"part-{f:03d}.parquet", row_group_size=10_000)  # fmt: skip
        out = Path(tmp) / "out"
        spec = SearchSpec(output=str(out), model="-", queries=tuple(f"q{i}" for i in range(len(q))),
                          top_k=k, dim=dim)  # fmt: skip
        units = plan([str(folder)])
        with pq.ParquetFile(units[0].path) as f:
            schema = f.schema_arrow
        assert reader_spec(spec).dim == dim
        start = time.perf_counter()
        with beam.Pipeline() as pipeline:
            build_search(pipeline, spec, units, schema, q, [str(folder)], started_at=start)
        seconds = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_searched"] == rows and summary["result_rows"] == k * len(q)
    print(f"clipbeam search pipeline (DirectRunner, {len(units)} units of 10,000 rows): "
          f"{rows:,} x {dim} rows, {len(q)} queries, top-{k}: {seconds:.1f}s, "
          f"{rows / seconds:,.0f} rows/s")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_search", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--unit-rows", type=int, default=65_536)
    parser.add_argument("--job-rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    print(f"machine: {_machine()}")
    q = bench_engine(args.rows, args.dim, args.queries, args.k, args.unit_rows, args.repeats)
    if args.job_rows:
        bench_job(args.job_rows, args.dim, q, args.k)


if __name__ == "__main__":
    main()
