"""`clipbeam dedup --model`: raw images embedded in the same job, on the real DirectRunner."""

import json
import pickle

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.dedup import run
from clipbeam.pipeline.dedup_launch import parse
from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms.dedup.read import ReadUnit
from tests.datasets import build_dataset
from tests.pipeline.jobtools import run_job

COMPARED = ("id", "cluster", "subcluster", "duplicate_of", "exact_duplicate_of", "keep_eps_0.05")
SEMDEDUP = ("--clusters", "3", "--fit-rows", "100", "--eps", "0.05,0.2", "--seed", "1")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("dedup-images")
    data = build_dataset(
        root / "in",
        num_files=2,
        rows_per_file=15,
        row_group_size=6,
        text_column=None,
        plant={"corrupt_image": 2, "missing_image": 1},
        extra_columns=False,
    )
    return root, data


def test_raw_images_equal_dedup_of_their_embed_output(images):
    root, data = images
    common = ["--image-column", "image", *SEMDEDUP]
    model = ("--model", "demo-clip", "--dtype", "float32", "--device", "cpu")
    run(["--input", data.pattern, "--output", str(root / "raw"), *model, *common])
    embedded = str(root / "embedded")
    run_job(
        "embed",
        data.pattern,
        embedded,
        "demo-clip",
        "--id-column",
        "id",
        "--text-column",
        "none",
        "--keep-columns",
        "image",
        "--device",
        "cpu",
    )
    run(["--input", f"{embedded}/embeddings", "--output", str(root / "from-embed"), *common])

    assert json.loads((root / "raw" / "summary.json").read_text())["model"] == "demo-clip"
    raw = ds.dataset(root / "raw" / "dedup").to_table().sort_by("id")
    want = ds.dataset(root / "from-embed" / "dedup").to_table().sort_by("id")
    assert raw.num_rows == len(data.good_rows) > 20
    for name in COMPARED:
        assert raw.column(name).to_pylist() == want.column(name).to_pylist(), name
    got, expected = raw.column("max_similarity").to_pylist(), want.column("max_similarity")
    for a, b in zip(got, expected.to_pylist(), strict=True):
        assert (a is None and b is None) or abs(a - b) < 1e-5

    # rows whose image fails are errors/ rows with the embed job's reasons, each id once
    errors = ds.dataset(root / "raw" / "errors").to_table()
    embed_errors = ds.dataset(f"{embedded}/errors").to_table()
    assert sorted(errors.column("id").to_pylist()) == sorted(r.id for r in data.bad_rows)
    assert sorted(
        zip(errors.column("id").to_pylist(), errors.column("error_type").to_pylist(), strict=True)
    ) == sorted(
        zip(
            embed_errors.column("id").to_pylist(),
            embed_errors.column("error_type").to_pylist(),
            strict=True,
        )
    )
    assert set(raw.column("id").to_pylist()).isdisjoint(errors.column("id").to_pylist())


def test_the_reader_pickles_without_its_model(images):
    root, data = images
    spec, _, _ = parse(
        [
            "--output",
            str(root / "p"),
            "--model",
            "demo-clip",
            "--image-column",
            "image",
            "--device",
            "cpu",
            "--input",
            data.pattern,
        ]
    )
    reader = ReadUnit(spec, None)
    reader.setup()
    assert reader._encoder is not None
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._encoder is None and copy._job == reader._job


def test_model_without_image_column_and_a_bad_model_are_launch_errors(images):
    root, data = images
    with pytest.raises(LaunchError, match="--image-column"):
        run(["--input", data.pattern, "--output", str(root / "e1"), "--model", "demo-clip"])
    with pytest.raises(LaunchError, match="--model"):
        run(
            [
                "--input",
                data.pattern,
                "--output",
                str(root / "e2"),
                "--model",
                str(root / "no-such-model"),
                "--image-column",
                "image",
            ]
        )


def test_reference_images_equal_their_embed_output(images):
    """--against-image-column: the reference set's images (here the input's first file, its
    broken images included) are embedded with --model in the job. Every row's nearest reference
    row and similarity equal those of --against over the `clipbeam embed` output of the same
    images, and a reference image that fails is a skipped reference row."""
    root, data = images
    model = ("--model", "demo-clip", "--dtype", "float32", "--device", "cpu")
    common = ["--image-column", "image", *model, *SEMDEDUP, "--against-eps", "0.01"]
    reference = data.files[0]
    run(
        ["--input", data.pattern, "--output", str(root / "ref-raw"), *common,
         "--against", reference, "--against-image-column", "image"]
    )  # fmt: skip
    embedded = str(root / "ref-embedded")
    run_job(
        "embed", reference, embedded, "demo-clip", "--id-column", "id", "--text-column", "none",
        "--device", "cpu",
    )  # fmt: skip
    run(
        ["--input", data.pattern, "--output", str(root / "ref-embeddings"), *common,
         "--against", f"{embedded}/embeddings"]
    )  # fmt: skip

    raw = ds.dataset(root / "ref-raw" / "dedup").to_table().sort_by("id")
    want = ds.dataset(root / "ref-embeddings" / "dedup").to_table().sort_by("id")
    for name in ("id", "nearest_reference", "keep_against"):
        assert raw.column(name).to_pylist() == want.column(name).to_pylist(), name
    got = raw.column("max_reference_similarity").to_pylist()
    for a, b in zip(got, want.column("max_reference_similarity").to_pylist(), strict=True):
        assert abs(a - b) < 1e-5
    in_reference = {r.id for r in data.good_rows if r.file_index == 0}
    rows = {r["id"]: r for r in raw.to_pylist()}
    assert len(in_reference) >= 5
    for row_id in in_reference:  # an image of the reference set is its own nearest row
        assert rows[row_id]["max_reference_similarity"] > 0.999
        assert rows[row_id]["keep_against"] is False
    summary = json.loads((root / "ref-raw" / "summary.json").read_text())
    bad = sum(1 for r in data.bad_rows if r.file_index == 0)
    assert bad >= 1
    assert summary["reference"] == {"rows": len(in_reference), "skipped_rows": bad}
    assert summary["against_removed"] >= len(in_reference)


def test_reference_image_errors_are_launch_errors(images, tmp_path):
    _, data = images
    argv = ["--input", data.pattern, "--against", data.files[0]]
    model = ["--model", "demo-clip", "--image-column", "image"]
    with pytest.raises(LaunchError, match="embed the reference set with clipbeam embed"):
        run([*argv, "--output", str(tmp_path / "a"), "--against-image-column", "image"])
    with pytest.raises(LaunchError, match="--against-image-column 'picture' is not a column"):
        run([*argv, "--output", str(tmp_path / "b"), *model, "--against-image-column", "picture"])
    pq.write_table(pa.table({"id": ["e0"], "n": [1]}), tmp_path / "numbers.parquet")
    numbers = ["--input", data.pattern, "--against", str(tmp_path / "numbers.parquet")]
    with pytest.raises(LaunchError, match=r"--against-image-column of .*numbers\.parquet: "):
        run([*numbers, "--output", str(tmp_path / "c"), *model, "--against-image-column", "n"])
    with pytest.raises(LaunchError, match="give the reference set with --against"):
        run(["--input", data.pattern, "--output", str(tmp_path / "d"), *model,
             "--against-image-column", "image"])  # fmt: skip
    assert not any((tmp_path / d).exists() for d in "abcd")
