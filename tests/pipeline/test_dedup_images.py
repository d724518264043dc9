"""`clipbeam dedup --model`: raw images embedded in the same job, on the real DirectRunner."""

import json
import pickle

import pyarrow.dataset as ds
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
