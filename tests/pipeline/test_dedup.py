"""`clipbeam dedup` on the real DirectRunner, checked against a brute-force SemDeDup."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.cli import main
from clipbeam.pipeline.dedup import run
from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms.dedup.kmeans import KMeansModel


def planted(n_distinct=120, d=32, seed=0):
    """Distinct unit vectors, near copies of some (noise 0.005) and byte-identical images."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_distinct, d)).astype(np.float32)
    near = x[:15] + 0.005 * rng.normal(size=(15, d)).astype(np.float32)
    x = np.concatenate([x, near])
    ids = [f"row{i:04d}" for i in range(len(x))]
    images = [f"image-{i}".encode() for i in range(len(x))]
    # rows 20..24 are exact copies (same bytes, same embedding) of rows 30..34
    for i in range(20, 25):
        images[i] = images[i + 10]
        x[i] = x[i + 10]
    pairs = {(f"row{i:04d}", f"row{n_distinct + i:04d}") for i in range(15)}
    return ids, x, images, pairs


def write(path, ids, x, images=None, *, dtype=None, fixed=True, rows_per_group=50):
    values = pa.array(x.ravel().astype(np.float16 if dtype == pa.float16() else np.float32))
    d = x.shape[1]
    offsets = pa.array(np.arange(0, len(x) * d + 1, d, dtype=np.int32))
    column = (
        pa.FixedSizeListArray.from_arrays(values, d)
        if fixed
        else pa.ListArray.from_arrays(offsets, values)
    )
    table = {"id": pa.array(ids), "image_embedding": column}
    if images is not None:
        table["image"] = pa.array(images, type=pa.binary())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path, row_group_size=rows_per_group)


def dedup(tmp_path, inputs, *extra, name="out"):
    out = tmp_path / name
    run(["--input", *map(str, inputs), "--output", str(out), *extra])
    table = ds.dataset(out / "dedup").to_table().sort_by("id")
    summary = json.loads((out / "summary.json").read_text())
    return out, table, summary


def load_model(out):
    model = KMeansModel.from_bytes((out / "_kmeans.npz").read_bytes())
    model.splits = KMeansModel.from_bytes((out / "_kmeans_splits.npz").read_bytes()).splits
    return model


def brute_force(table, x_by_id, model, eps):
    """SemDeDup over the job's groups, all pairs at once, ranked with its own distances."""
    want = {}
    groups = {}
    cluster_of = {r["id"]: (r["cluster"], r["subcluster"]) for r in table.to_pylist()}
    for row in table.to_pylist():
        if row["exact_duplicate_of"] is None:
            groups.setdefault((row["cluster"], row["subcluster"]), []).append(row["id"])
    for members in groups.values():
        x = np.stack([x_by_id[i] for i in members])
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        cluster, part = cluster_of[members[0]]
        splits = model.splits
        c = splits[cluster][part] if cluster in splits else model.centroids[cluster]
        distance = 1.0 - x @ c
        # farthest first; equal distances: the larger id first (two stable sorts)
        order = sorted(range(len(members)), key=lambda i: members[i], reverse=True)
        order = sorted(order, key=lambda i: -distance[i])
        s = x[order] @ x[order].T
        for rank, i in enumerate(order):
            best = s[rank, :rank].max() if rank else None
            want[members[i]] = (best, [best is None or best < 1 - e for e in eps])
    return want


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dedup")
    ids, x, images, pairs = planted()
    write(tmp_path / "in" / "a.parquet", ids[:70], x[:70], images[:70])
    write(tmp_path / "in" / "b.parquet", ids[70:], x[70:], images[70:])
    out, table, summary = dedup(
        tmp_path,
        [tmp_path / "in"],
        "--clusters",
        "6",
        "--fit-rows",
        "100",
        "--eps",
        "0.01,0.05",
        "--image-column",
        "image",
        "--seed",
        "7",
        "--keep-columns",
        "image",
    )
    return tmp_path, ids, x, pairs, out, table, summary


def test_every_id_once_and_the_counts_add_up(planted_run):
    _, ids, _, _, out, table, summary = planted_run
    assert table["id"].to_pylist() == sorted(ids)
    images = dict(zip(ids, planted()[2], strict=True))
    assert table["image"].to_pylist() == [images[i] for i in sorted(ids)]  # --keep-columns
    assert summary["input_rows"] == summary["output_rows"] + summary["error_rows"] == len(ids)
    assert set(summary["eps"]) == {"0.01", "0.05"}
    assert {"keep_eps_0.01", "keep_eps_0.05"} <= set(table.column_names)
    for key, column in (("0.01", "keep_eps_0.01"), ("0.05", "keep_eps_0.05")):
        removed = table.num_rows - sum(table[column].to_pylist())
        assert summary["eps"][key] == {"kept": table.num_rows - removed, "removed": removed}
    duplicates = ds.dataset(out / "duplicates").to_table()
    assert sorted(duplicates["id"].to_pylist()) == sorted(
        r["id"] for r in table.to_pylist() if not r["keep_eps_0.01"]
    )
    assert ds.dataset(out / "errors").to_table().num_rows == 0
    assert summary["clusters"] == 6 and summary["kmeans"]["sample_rows"] == 100
    metadata = pq.read_schema(next((out / "dedup").glob("*.parquet"))).metadata
    assert json.loads(metadata[b"clipbeam.job"])["clusters"] == 6


def test_planted_and_exact_duplicates_are_found(planted_run):
    _, _, _, pairs, _, table, summary = planted_run
    rows = {r["id"]: r for r in table.to_pylist()}
    for i in range(20, 25):
        # the copy with the smallest id is kept
        assert rows[f"row{i + 10:04d}"]["exact_duplicate_of"] == f"row{i:04d}"
        assert rows[f"row{i:04d}"]["exact_duplicate_of"] is None
    assert summary["exact_duplicates"] == 5
    removed = {i for i, r in rows.items() if not r["keep_eps_0.01"]}
    found = {p for p in pairs if len(set(p) & removed) == 1}
    semantic = removed - {f"row{i:04d}" for i in range(30, 35)}
    assert len(found) == len(pairs)  # recall 1: one row of every planted pair is removed
    assert len(semantic) == len(pairs)  # precision 1: nothing else is
    for a, b in pairs:
        gone, kept = (a, b) if a in removed else (b, a)
        assert rows[gone]["duplicate_of"] == kept and rows[gone]["max_similarity"] > 0.99


def test_equals_brute_force_semdedup_over_the_same_assignment(planted_run):
    _, ids, x, _, out, table, _ = planted_run
    want = brute_force(table, dict(zip(ids, x, strict=True)), load_model(out), [0.01, 0.05])
    for row in table.to_pylist():
        if row["exact_duplicate_of"] is not None:
            assert row["max_similarity"] is None and not row["keep_eps_0.01"]
            continue
        best, keeps = want[row["id"]]
        if best is None:
            assert row["max_similarity"] is None and row["duplicate_of"] is None
        else:
            assert row["max_similarity"] == pytest.approx(best, abs=1e-5)
        assert [row["keep_eps_0.01"], row["keep_eps_0.05"]] == keeps


def test_one_cluster_is_plain_all_pairs_and_float16_lists_read(tmp_path):
    ids, x, _, pairs = planted(60, 16, seed=3)
    write(tmp_path / "in.parquet", ids, x, dtype=pa.float16(), fixed=False)
    out, table, summary = dedup(tmp_path, [tmp_path / "in.parquet"], "--clusters", "1")
    assert summary["clusters"] == 1 and summary["renormalized_rows"] == len(ids)
    x16 = x.astype(np.float16).astype(np.float32)
    want = brute_force(table, dict(zip(ids, x16, strict=True)), load_model(out), [0.01])
    for row in table.to_pylist():
        best, keeps = want[row["id"]]
        assert [row["keep_eps_0.01"]] == keeps
        if best is not None:
            assert row["max_similarity"] == pytest.approx(best, abs=1e-5)
    removed = {r["id"] for r in table.to_pylist() if not r["keep_eps_0.01"]}
    # near copies of rows 0..14 that also were exact (20..24 copy 30..34): 15 pairs + 5 copies
    assert {p for p in pairs if len(set(p) & removed) == 1} == pairs


def test_oversized_clusters_are_split_and_recorded(tmp_path):
    rng = np.random.default_rng(5)
    hot = rng.normal(size=(1, 16)) + 0.3 * rng.normal(size=(120, 16))  # one skewed cluster
    x = np.concatenate([hot, rng.normal(size=(40, 16))]).astype(np.float32)
    ids = [f"r{i:03d}" for i in range(len(x))]
    write(tmp_path / "in.parquet", ids, x)
    _, table, summary = dedup(
        tmp_path,
        [tmp_path / "in.parquet"],
        "--clusters",
        "2",
        "--max-cluster-rows",
        "40",
        "--eps",
        "0.5",
    )
    assert summary["clusters_split"] and summary["largest_cluster"] > 40
    assert summary["cluster_groups"] > 2
    assert sorted(table["id"].to_pylist()) == ids
    split = int(next(iter(summary["split_clusters"])))
    parts = set(table.filter(pa.compute.equal(table["cluster"], split))["subcluster"].to_pylist())
    assert len(parts) > 1
    sizes = {}
    for row in table.to_pylist():
        key = (row["cluster"], row["subcluster"])
        sizes[key] = sizes.get(key, 0) + 1
    assert summary["groups_over_bound"] == sum(n > 40 for n in sizes.values())
    # a part over the bound is written in chunks: no group written is that large
    assert summary["largest_group"] <= max(n for n in sizes.values())
    if summary["groups_over_bound"]:
        assert summary["largest_group"] < max(sizes.values())


@pytest.mark.parametrize("shuffle", ["files", "runner"])
def test_a_group_of_near_copies_is_tiled_and_equals_all_pairs(tmp_path, shuffle):
    rng = np.random.default_rng(6)
    hot = rng.normal(size=(1, 16)) + 0.003 * rng.normal(size=(150, 16))  # near copies of one
    x = np.concatenate([hot, rng.normal(size=(30, 16))]).astype(np.float32)
    ids = [f"r{i:03d}" for i in range(len(x))]
    write(tmp_path / "in.parquet", ids, x)
    out, table, summary = dedup(
        tmp_path,
        [tmp_path / "in.parquet"],
        "--clusters", "2", "--max-cluster-rows", "40", "--eps", "0.0001,0.01", "--block-rows", "16",
        "--shuffle", shuffle,
    )  # fmt: skip
    assert summary["shuffle"] == shuffle
    assert summary["groups_over_bound"] >= 1
    assert summary["largest_group"] < 150  # no worker held the whole hot group
    assert sorted(table["id"].to_pylist()) == ids
    want = brute_force(table, dict(zip(ids, x, strict=True)), load_model(out), [0.0001, 0.01])
    for row in table.to_pylist():
        best, keeps = want[row["id"]]
        assert [row["keep_eps_0.0001"], row["keep_eps_0.01"]] == keeps
        if best is None:
            assert row["max_similarity"] is None
        else:
            assert row["max_similarity"] == pytest.approx(best, abs=1e-5)


def test_fewer_rows_than_clusters_and_error_rows(tmp_path):
    ids = [f"r{i}" for i in range(6)]
    values = [[1.0, 0.0], [0.0, 1.0], None, [1.0, 2.0, 3.0], [0.0, 0.0], [0.6, 0.8]]
    pq.write_table(
        pa.table({"id": ids, "image_embedding": pa.array(values, type=pa.list_(pa.float32()))}),
        tmp_path / "in.parquet",
    )
    out, table, summary = dedup(tmp_path, [tmp_path / "in.parquet"], "--clusters", "50")
    errors = ds.dataset(out / "errors").to_table().sort_by("id")
    assert errors["id"].to_pylist() == ["r2", "r3", "r4"]
    assert errors["error_type"].to_pylist() == [
        "NullEmbedding",
        "EmbeddingDimension",
        "ZeroEmbedding",
    ]
    assert table["id"].to_pylist() == ["r0", "r1", "r5"]
    assert summary["clusters"] == 3 and summary["error_rows"] == 3
    assert summary["input_rows"] == summary["output_rows"] + summary["error_rows"]


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("text", r"embedding column 'text' of .*in.parquet is string; expected fixed_size_list"),
        ("nope", r"embedding column 'nope' is not in .*in.parquet \(its columns: id, text"),
    ],
)
def test_bad_embedding_columns_are_launch_errors(tmp_path, capsys, column, message):
    pq.write_table(pa.table({"id": ["a"], "text": ["b"]}), tmp_path / "in.parquet")
    argv = ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]
    with pytest.raises(LaunchError, match=message):
        run([*argv, "--embedding-column", column])
    assert main(["dedup", *argv, "--embedding-column", column]) == 2
    assert "clipbeam: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_input_files_of_two_dimensions_are_a_launch_error(tmp_path):
    write(tmp_path / "in" / "a.parquet", ["a"], np.ones((1, 4), np.float32))
    write(tmp_path / "in" / "b.parquet", ["b"], np.ones((1, 8), np.float32))
    with pytest.raises(LaunchError, match=r"different dimensions.*: 4.*: 8"):
        run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])


def test_resume_after_lost_groups_gives_the_same_result(planted_run, tmp_path):
    base, *_, table, summary = planted_run
    copy = tmp_path / "out"
    argv = [
        "--input",
        str(base / "in"),
        "--output",
        str(copy),
        "--clusters",
        "6",
        "--fit-rows",
        "100",
        "--eps",
        "0.01,0.05",
        "--image-column",
        "image",
        "--seed",
        "7",
        "--keep-columns",
        "image",
    ]
    run(argv)  # a second run of the same job gives the same rows
    assert ds.dataset(copy / "dedup").to_table().sort_by("id").equals(table)
    # A killed run: two groups never finished, and no summary yet.
    for path in sorted((copy / "_groups").glob("*.json"))[:2]:
        path.unlink()
        (copy / "dedup" / path.name.replace(".json", ".parquet")).unlink()
    (copy / "summary.json").unlink()
    with pytest.raises(LaunchError, match="already holds results"):
        run(argv)
    with pytest.raises(LaunchError, match=r"different job.*eps"):
        run([*argv, "--resume", "--eps", "0.02"])
    run([*argv, "--resume"])
    again = ds.dataset(copy / "dedup").to_table().sort_by("id")
    assert again.equals(table)
    resumed = json.loads((copy / "summary.json").read_text())
    assert resumed["resumed_groups"] == summary["cluster_groups"] - 2
    assert resumed["eps"] == summary["eps"]


def test_the_runners_shuffle_and_files_give_the_same_rows(planted_run, tmp_path):
    """auto is files on the DirectRunner (its shuffle is memory); both give one result, and
    the files are gone when the job ends, and when a run starts (a killed run's)."""
    base, *_, table, summary = planted_run
    assert summary["shuffle"] == "files"
    assert not (base / "out" / "_staging").exists()

    def run_with(shuffle: str) -> tuple[Path, Path]:
        out = tmp_path / shuffle
        leftover = out / "_staging" / "ByCluster" / "killed.records"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"from a killed run")
        run(
            [
                "--input", str(base / "in"), "--output", str(out), "--clusters", "6",
                "--fit-rows", "100", "--eps", "0.01,0.05", "--image-column", "image",
                "--seed", "7", "--keep-columns", "image", "--shuffle", shuffle,
            ]
        )  # fmt: skip
        assert ds.dataset(out / "dedup").to_table().sort_by("id").equals(table)
        assert json.loads((out / "summary.json").read_text())["shuffle"] == shuffle
        return out, leftover

    _, leftover = run_with("runner")
    assert leftover.exists()  # the runner's shuffle writes no staging: it is not touched
    out, _ = run_with("files")
    assert not (out / "_staging").exists()


def test_multi_processing_gives_the_same_rows(planted_run, tmp_path):
    base, *_, table, _ = planted_run
    out = tmp_path / "out"
    run(
        [
            "--input", str(base / "in"), "--output", str(out), "--clusters", "6",
            "--fit-rows", "100", "--eps", "0.01,0.05", "--image-column", "image", "--seed", "7",
            "--keep-columns", "image",
            "--direct_running_mode=multi_processing", "--direct_num_workers=2",
        ]
    )  # fmt: skip
    assert ds.dataset(out / "dedup").to_table().sort_by("id").equals(table)


def test_against_a_reference_set(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(80, 16)).astype(np.float32)
    ids = [f"r{i:02d}" for i in range(80)]
    write(tmp_path / "in.parquet", ids, x)
    # the evaluation set: near copies of rows 0..9, and 30 rows of its own
    ref = np.concatenate([x[:10] + 0.005 * rng.normal(size=(10, 16)), rng.normal(size=(30, 16))])
    ref_ids = [f"eval{i:02d}" for i in range(40)]
    write(tmp_path / "eval" / "e.parquet", ref_ids, ref.astype(np.float32))
    out, table, summary = dedup(
        tmp_path,
        [tmp_path / "in.parquet"],
        "--clusters", "3", "--against", str(tmp_path / "eval"), "--against-eps", "0.01",
    )  # fmt: skip
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    sims = unit(x) @ unit(ref.astype(np.float32)).T
    rows = {r["id"]: r for r in table.to_pylist()}
    for i, row_id in enumerate(ids):
        row = rows[row_id]
        assert row["max_reference_similarity"] == pytest.approx(sims[i].max(), abs=1e-5)
        assert row["nearest_reference"] == ref_ids[int(sims[i].argmax())]
        assert row["keep_against"] == (i >= 10)
    assert summary["against_removed"] == 10
    duplicates = set(ds.dataset(out / "duplicates").to_table()["id"].to_pylist())
    assert {f"r{i:02d}" for i in range(10)} <= duplicates


def test_against_of_another_dimension_is_a_launch_error(tmp_path):
    write(tmp_path / "in.parquet", ["a", "b"], np.eye(2, 8, dtype=np.float32))
    write(tmp_path / "eval.parquet", ["e"], np.ones((1, 4), np.float32))
    argv = ["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]
    with pytest.raises(LaunchError, match=r"dimension 4, the --input embeddings have dimension 8"):
        run([*argv, "--against", str(tmp_path / "eval.parquet")])
    assert not (tmp_path / "out").exists()
