"""`clipbeam search --image-column`: raw images embedded in the same job, on the real
DirectRunner, give the results of a search over `clipbeam embed`'s output of the same rows."""

import json

import pyarrow.dataset as ds
import pytest

from clipbeam.pipeline.options import LaunchError
from clipbeam.pipeline.search import run
from tests.datasets import build_dataset
from tests.pipeline.jobtools import run_job

QUERIES = ("--queries", "a red circle,a blue square,a green triangle", "--top-k", "4")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-images")
    data = build_dataset(
        root / "in",
        num_files=2,
        rows_per_file=12,
        row_group_size=5,
        text_column=None,
        plant={"corrupt_image": 2, "missing_image": 1},
        extra_columns=False,
    )
    return root, data


def _results(output) -> list[tuple]:
    table = ds.dataset(output / "results").to_table()
    rows = table.select(["query", "rank", "id", "similarity"]).to_pylist()
    return sorted((r["query"], r["rank"], r["id"], r["similarity"]) for r in rows)


def test_raw_images_equal_search_of_their_embed_output(images):
    root, data = images
    model = ("--model", "demo-clip", "--dtype", "float32", "--device", "cpu")
    raw = root / "raw"
    run(
        ["--input", data.pattern, "--output", str(raw), *model, "--image-column", "image", *QUERIES]
    )
    embedded = root / "embedded"
    run_job("embed", data.pattern, str(embedded), "demo-clip", "--id-column", "id",
            "--text-column", "none", "--device", "cpu")  # fmt: skip
    from_embed = root / "from-embed"
    run(["--input", f"{embedded}/embeddings", "--output", str(from_embed), *model, *QUERIES])

    got, want = _results(raw), _results(from_embed)
    assert [g[:3] for g in got] == [w[:3] for w in want] and len(got) == 12
    assert all(abs(g[3] - w[3]) < 1e-5 for g, w in zip(got, want, strict=True))
    # rows whose image fails are errors/ rows with the embed job's reasons, each id once
    errors = ds.dataset(raw / "errors").to_table()
    embed_errors = ds.dataset(embedded / "errors").to_table()
    pairs = zip(errors["id"].to_pylist(), errors["error_type"].to_pylist(), strict=True)
    embed_pairs = zip(
        embed_errors["id"].to_pylist(), embed_errors["error_type"].to_pylist(), strict=True
    )
    assert sorted(pairs) == sorted(embed_pairs) and len(errors) == len(data.bad_rows)
    summary = json.loads((raw / "summary.json").read_text())
    assert summary["input_rows"] == len(data) and summary["error_rows"] == len(data.bad_rows)


def test_a_missing_image_column_is_a_launch_error(images, tmp_path):
    _, data = images
    argv = ["--input", data.pattern, "--output", str(tmp_path / "out"), "--model", "demo-clip"]
    with pytest.raises(LaunchError, match="--image-column 'picture' is not a column"):
        run([*argv, "--image-column", "picture", *QUERIES])
    assert not (tmp_path / "out").exists()
