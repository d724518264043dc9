"""A wrong image column fails at launch; a job where nearly every row fails exits non-zero."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline import cli
from clipbeam.pipeline.sample import looks_like_image, looks_like_location
from tests.datasets import build_dataset, encode_image, make_image
from tests.pipeline.jobtools import DIRECT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("images/0001.jpg", True),
        ("photo.png", True),
        ("gs://bucket/a", True),
        ("https://example.com/cat?size=big", True),
        (r"C:\data\cat", True),
        ("a dog running on the beach", False),
        ("a red square.", False),
        ("", False),
        ("two\nlines.txt", False),
    ],
)
def test_looks_like_location(value, expected):
    assert looks_like_location(value) is expected


def test_looks_like_image():
    assert looks_like_image(encode_image(make_image(random.Random(0)), "png"))
    assert not looks_like_image(b"a caption stored as bytes")
    assert not looks_like_image(b"")


def _main(*argv: str) -> int:
    return cli.main([*argv, "--dtype", "float32", *DIRECT])


def test_a_caption_column_as_image_column_fails_at_launch(tmp_path, capsys):
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=5)
    args = ["score", "--input", data.pattern, "--output", str(tmp_path / "out")]
    status = _main(*args, "--model", "demo-clip", "--image-column", "text")
    err = capsys.readouterr().err
    assert status == 2
    assert "--image-column 'text': the first 4 non-null values" in err  # one row group
    assert "none of which looks like a file path or URL" in err
    assert not (tmp_path / "out").exists()


def test_bytes_that_are_not_images_are_warned_about_at_launch(tmp_path, caplog):
    from clipbeam.pipeline.sample import check_sample
    from clipbeam.transforms.spec import JobSpec
    from clipbeam.transforms.units import plan_units

    (tmp_path / "in").mkdir()
    table = pa.table(
        {
            "blob": pa.array([None, b"not an image", b"\x00\x01\x02"], pa.binary()),
            "text": ["a", "b", "c"],
        }
    )
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    spec = JobSpec(kind="score", model="m", output=str(tmp_path / "out"), image_column="blob")
    (unit,) = plan_units([str(tmp_path / "in")])
    with caplog.at_level("WARNING", logger="clipbeam"):
        check_sample(spec, unit, "bytes")
    assert "the first 2 non-null values" in caplog.text
    assert "none of which is an image" in caplog.text


def test_one_good_image_is_enough_to_launch(tmp_path, clip_checkpoint, capsys):
    data = build_dataset(
        tmp_path / "in", num_files=1, rows_per_file=6, plant={"corrupt_image": 5}, seed=3
    )
    args = ["score", "--input", data.pattern, "--output", str(tmp_path / "out")]
    # 5 of 6 rows fail: more than half, so --max-error-fraction 0.5 fails the job, after writing.
    status = _main(*args, "--model", str(clip_checkpoint), "--max-error-fraction", "0.5")
    err = capsys.readouterr().err
    assert status == 1, err
    assert "5 of 6 input rows (83%) went to" in err
    assert "more than --max-error-fraction 0.5; most common reason: corrupt_image (5 rows)" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["error_rows"] == 5 and summary["output_rows"] == 1
    assert summary["options"]["max_error_fraction"] == 0.5
    # The recorded options are what the job ran with, in summary.json and every output file.
    assert summary["options"]["allowed_url_schemes"] == ["file", "gs", "http", "https"]
    recorded = pq.read_schema(next((tmp_path / "out" / "scores").glob("*.parquet"))).metadata
    assert json.loads(recorded[b"clipbeam.options"]) == summary["options"]
    assert (
        json.loads(recorded[b"clipbeam.job"])["allowed_url_schemes"]
        == (summary["options"]["allowed_url_schemes"])
    )


def test_default_fails_only_a_job_where_nearly_every_row_fails(tmp_path, clip_checkpoint, capsys):
    data = build_dataset(
        tmp_path / "in", num_files=1, rows_per_file=6, plant={"corrupt_image": 5}, seed=3
    )
    args = ["score", "--input", data.pattern, "--output", str(tmp_path / "out")]
    assert _main(*args, "--model", str(clip_checkpoint)) == 0  # 83% <= the default 90%

    every = build_dataset(
        tmp_path / "all",
        num_files=1,
        rows_per_file=4,
        plant={"missing_image": 4},
        image_format="path",
        seed=4,
    )
    args = ["score", "--input", every.pattern, "--output", str(tmp_path / "out2")]
    status = _main(*args, "--model", str(clip_checkpoint))
    err = capsys.readouterr().err
    assert status == 1, err
    assert "4 of 4 input rows (100%)" in err
    assert "most common reason: missing_image (4 rows)" in err
    assert (tmp_path / "out2" / "summary.json").exists()
