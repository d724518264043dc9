"""`clipbeam search --min-similarity` (range search, its cap, with --top-k) on the real
DirectRunner, checked against a brute-force NumPy search over all rows."""

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.cli import main
from tests.pipeline.test_dedup import write
from tests.pipeline.test_search import DIM, QUERIES, search


@pytest.fixture(scope="module")
def query_vectors():
    from clipbeam.transforms.encoder import Encoder

    return Encoder.load("demo-clip", device="cpu").prompt_embeddings(QUERIES, ["{}"])


def dataset(tmp_path, files=3, rows=230, seed=4):
    rng = np.random.default_rng(seed)
    ids, xs, inputs = [], [], []
    for f in range(files):
        x = rng.normal(size=(rows, DIM)).astype(np.float32)
        # A shared direction, so queries have many rows above a moderate similarity.
        x[:, :8] += 1.5
        names = [f"f{f}-{i:04d}" for i in range(rows)]
        images = [n.encode() for n in names]
        write(tmp_path / f"in{f}.parquet", names, x, images=images, rows_per_group=40)
        ids += names
        xs.append(x)
        inputs.append(tmp_path / f"in{f}.parquet")
    x = np.concatenate(xs)
    return inputs, ids, x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_range(ids, x, q, floor, limit):
    """Per query: every (id, similarity) at or above ``floor``, best first, ties by the smaller
    id, at most ``limit``; and the number of rows at or above ``floor``."""
    s = q.astype(np.float64) @ x.astype(np.float64).T
    want, counts = {}, {}
    for qi, row in enumerate(s):
        hits = sorted(
            (j for j in range(len(ids)) if row[j] >= floor), key=lambda j: (-row[j], ids[j])
        )
        counts[qi] = len(hits)
        want[qi] = [(ids[j], row[j]) for j in hits[:limit]]
    return want, counts, s


def pick_floor(s, near):
    """A floor near ``near`` that no similarity lies within 1e-4 of (float32 vs float64)."""
    for floor in np.linspace(near, near + 0.05, 51):
        if np.abs(s - floor).min() > 1e-4:
            return float(round(floor, 4))
    raise AssertionError("no clean floor")


def check(table, want):
    rows = table.to_pylist()
    for qi, query in enumerate(QUERIES):
        got = [r for r in rows if r["query"] == query]
        assert [r["rank"] for r in got] == list(range(1, len(got) + 1))
        assert [r["id"] for r in got] == [i for i, _ in want[qi]], query
        np.testing.assert_allclose(
            [r["similarity"] for r in got], [s for _, s in want[qi]], atol=1e-5
        )


@pytest.mark.parametrize("mode", [[], ["--direct_running_mode=multi_processing"]])
def test_range_search_equals_brute_force_across_units(tmp_path, query_vectors, mode):
    inputs, ids, x = dataset(tmp_path)
    s = query_vectors.astype(np.float64) @ x.T
    floor = pick_floor(s, float(np.quantile(s, 0.9)))
    want, counts, _ = brute_range(ids, x, query_vectors, floor, 10**6)
    assert min(counts.values()) > 0 and max(counts.values()) < 690  # a real cut for every query
    _, table, summary = search(
        tmp_path,
        inputs,
        "--queries",
        ",".join(QUERIES),
        "--min-similarity",
        str(floor),
        "--keep-columns",
        "image",
        *mode,
    )
    check(table, want)
    assert table.column("image").to_pylist() == [i.encode() for i in table.column("id").to_pylist()]
    assert summary["results_per_query"] == {q: counts[i] for i, q in enumerate(QUERIES)}
    assert summary["matches_per_query"] == summary["results_per_query"]
    assert summary["capped_queries"] == [] and summary["max_results_per_query"] == 1000
    assert summary["top_k"] is None and summary["min_similarity"] == floor
    assert summary["units"] > 3


def test_range_search_cap_keeps_the_best_and_names_the_capped_queries(tmp_path, query_vectors):
    inputs, ids, x = dataset(tmp_path)
    s = query_vectors.astype(np.float64) @ x.T
    floor = pick_floor(s, float(np.quantile(s, 0.8)))
    _, counts, _ = brute_range(ids, x, query_vectors, floor, 0)
    cap = sorted(counts.values())[1]  # at least two queries above the cap, one at most at it
    want, _, _ = brute_range(ids, x, query_vectors, floor, cap)
    _, table, summary = search(
        tmp_path,
        inputs,
        "--queries",
        ",".join(QUERIES),
        "--min-similarity",
        str(floor),
        "--max-results-per-query",
        str(cap),
    )
    check(table, want)
    assert summary["capped_queries"] == [q for i, q in enumerate(QUERIES) if counts[i] > cap]
    assert summary["capped_queries"]
    assert summary["matches_per_query"] == {q: counts[i] for i, q in enumerate(QUERIES)}
    assert summary["results_per_query"] == {q: min(cap, counts[i]) for i, q in enumerate(QUERIES)}


def test_top_k_with_min_similarity_keeps_the_k_best_at_or_above_it(tmp_path, query_vectors):
    inputs, ids, x = dataset(tmp_path, files=2)
    s = query_vectors.astype(np.float64) @ x.T
    # High enough that some query has fewer than K rows above it.
    floor = pick_floor(s, float(np.sort(s.max(axis=1))[1] - 0.02))
    want, counts, _ = brute_range(ids, x, query_vectors, floor, 6)
    assert min(counts.values()) < 6
    _, table, summary = search(
        tmp_path,
        inputs,
        "--queries",
        ",".join(QUERIES),
        "--min-similarity",
        str(floor),
        "--top-k",
        "6",
    )
    check(table, want)
    assert "capped_queries" not in summary  # --top-k is the count asked for, not a cap
    assert summary["results_per_query"] == {q: min(6, counts[i]) for i, q in enumerate(QUERIES)}


def test_resume_counts_every_row_once_and_rewrites_the_results(tmp_path, query_vectors):
    inputs, _, _ = dataset(tmp_path, files=2, rows=120)
    # Two unusable rows in the second file, so errors/ has rows to count once.
    table = pq.read_table(inputs[1])
    bad = table.column("image_embedding").to_pylist()
    bad[5] = [0.0] * DIM
    bad[90] = [float("nan")] * DIM
    table = table.set_column(1, "image_embedding", pa.array(bad, table.schema.field(1).type))
    pq.write_table(table, inputs[1], row_group_size=40)
    args = ("--queries", ",".join(QUERIES), "--min-similarity", "0.3", "--keep-columns", "id,image")
    out, first, summary = search(tmp_path, inputs, *args)
    markers = sorted((out / "_units").glob("search-*.json"))
    assert len(markers) == summary["units"] == 6
    # An interrupted run: two units unfinished (no marker), one marker without its candidates,
    # no results for some queries, no summary.
    for m in markers[1:3]:
        m.unlink()
    markers[4].with_suffix(".parquet").unlink()
    sorted((out / "results").iterdir())[0].unlink()
    (out / "summary.json").unlink()
    assert (
        main(
            [
                "search",
                "--input",
                *map(str, inputs),
                "--output",
                str(out),
                "--model",
                "demo-clip",
                *args,
            ]
        )
        == 2
    )  # not without --resume
    _, again, resumed = search(tmp_path, inputs, *args, "--resume")
    assert again.equals(first)
    assert first.column("image").to_pylist() == [i.encode() for i in first.column("id").to_pylist()]
    assert resumed["resumed_units"] == 3
    for key in ("input_rows", "rows_searched", "error_rows", "results_per_query", "units"):
        assert resumed[key] == summary[key], key
    assert (resumed["input_rows"], resumed["error_rows"]) == (240, 2)
    errors = ds.dataset(out / "errors").to_table()
    assert sorted(errors.column("id").to_pylist()) == ["f1-0005", "f1-0090"]


def test_resume_refuses_another_job(tmp_path, query_vectors, capsys):
    inputs, _, _ = dataset(tmp_path, files=1, rows=50)
    out, _, _ = search(tmp_path, inputs, "--queries", QUERIES[0])
    argv = ["search", "--input", str(inputs[0]), "--output", str(out), "--model", "demo-clip"]
    assert main([*argv, "--queries", QUERIES[1], "--resume"]) == 2
    assert "changed: queries" in capsys.readouterr().err
