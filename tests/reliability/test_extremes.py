"""Numeric options at their extremes: every value the parser accepts runs, the rest is one launch
error naming the option and its range (nothing in between: no traceback on the first row)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline import cli
from clipbeam.transforms.limits import Limits, read_limited
from tests.datasets import build_dataset, encode_image, make_image
from tests.pipeline.jobtools import run_job

# The largest and smallest value each option accepts.
HIGHEST = {
    "--batch-size": "65536",
    "--max-image-bytes": "1099511627776",  # 1 TiB, allocated by no read
    "--max-text-chars": "2147483647",
    "--http-timeout": "86400",
    "--max-image-pixels": None,  # Pillow's ceiling, tested in test_limits.py
}
LOWEST = {"--batch-size": "1", "--max-text-chars": "1", "--http-timeout": "1e-300"}


@pytest.fixture
def mixed_dataset(tmp_path, image_server):
    """Images as local paths and as URLs on the loopback server, and captions."""
    import random

    rng = random.Random(4)
    image = encode_image(make_image(rng), "jpeg")
    image_server.files["ok.jpg"] = image
    (tmp_path / "ok.jpg").write_bytes(image)
    locations = [str(tmp_path / "ok.jpg"), f"{image_server.url}/img/ok.jpg"] * 2
    table = pa.table({"id": [f"r{i}" for i in range(4)], "image": locations, "text": ["a"] * 4})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    return str(tmp_path / "in" / "a.parquet")


@pytest.mark.parametrize("values", [HIGHEST, LOWEST], ids=["highest", "lowest"])
def test_accepted_extremes_run(tmp_path, clip_checkpoint, mixed_dataset, values):
    args = [x for option, v in values.items() if v is not None for x in (option, v)]
    run = run_job("score", mixed_dataset, str(tmp_path / "out"), clip_checkpoint, *args)
    summary = run.summary
    assert summary["input_rows"] == summary["output_rows"] + summary["error_rows"] == 4
    if values is HIGHEST:
        assert summary["error_rows"] == 0
    else:  # 1 character: every caption fits; 1e-300 s: no URL is read in time
        errors = run.table("errors").to_pylist()
        assert {e["error_type"] for e in errors} == {"unreadable_image"}
        assert all("--http-timeout 1e-300 s" in e["error_message"] for e in errors)


def test_filter_rules_at_their_extremes(tmp_path, clip_checkpoint):
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=3, seed=2)
    huge = str(10**30)
    run = run_job(
        "filter",
        data.pattern,
        str(tmp_path / "out"),
        clip_checkpoint,
        *("--min-image-side", huge, "--min-text-chars", huge, "--max-aspect-ratio", "1e308"),
    )
    assert run.summary["rejected"] == 3


def test_local_read_allocates_what_the_file_holds(tmp_path):
    """A 1 TiB limit used to be ``read(limit + 1)``: a 1 TiB allocation for a 3-byte file."""
    (tmp_path / "small.jpg").write_bytes(b"abc")
    limits = Limits(max_image_bytes=1 << 40)
    assert read_limited(str(tmp_path / "small.jpg"), limits) == b"abc"


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--batch-size", "65537", "expected a value in [1, 65536]"),
        ("--batch-size", "0", "expected a value in [1, 65536]"),
        ("--batch-size", "9" * 30, "expected a value in [1, 65536]"),
        ("--max-text-chars", str(2**31), "expected a value in [1, 2147483647]"),
        ("--http-timeout", "86401", "expected a value in (0, 86400.0]"),
        ("--http-timeout", "1e308", "expected a value in (0, 86400.0]"),
        ("--http-timeout", "inf", "expected a finite number"),
        ("--http-timeout", "-0.0", "expected a value in (0, 86400.0]"),
        ("--max-image-bytes", "1099511627777", "expected a value in [1, 1099511627776] bytes"),
        ("--max-image-bytes", "100000GiB", "expected a value in [1, 1099511627776] bytes"),
        ("--direct_num_workers", "-1", "--direct_num_workers -1: expected a value in [0, 1024]"),
        ("--direct_num_workers", str(10**12), "expected a value in [0, 1024]"),
        ("--num_workers", "-5", "--num_workers -5: expected a value in [0, 100000]"),
    ],
)
def test_refused_values_name_the_option_and_range(capsys, tmp_path, option, value, expected):
    argv = ["score", "--input", "x.parquet", "--output", str(tmp_path / "o"), "--model", "m"]
    status = cli.main([*argv, option, value])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert option.lstrip("-").replace("_", "-").split("-")[0] in err.replace("_", "-")
