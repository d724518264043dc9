"""One corrupt data page in an otherwise valid file: that row group's rows go to errors/ (file, row
group, reason), every other row to the output, and --resume finishes the same way."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.datasets import build_dataset
from tests.pipeline.jobtools import ids, run_job


def corrupt_page(path: str, row_group: int, column: str) -> None:
    """Overwrites the header of ``column``'s first page in ``row_group`` (footer left intact)."""
    metadata = pq.ParquetFile(path).metadata
    group = metadata.row_group(row_group)
    chunk = next(
        group.column(i)
        for i in range(group.num_columns)
        if group.column(i).path_in_schema.split(".")[0] == column
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for i in range(start, start + 12):
        data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("column", ["image", "id"])
def test_corrupt_page_fails_only_its_row_group(tmp_path, clip_checkpoint, column):
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=6, row_group_size=3, seed=6)
    corrupt_page(data.files[1], 1, column)
    bad = [r for r in data.rows if r.file_index == 1 and r.row_group == 1]
    good = [r for r in data.rows if r not in bad]
    out = str(tmp_path / "out")
    args = ("--id-column", "id", "--batch-size", "2")
    for resume in ((), ("--resume",)):
        run = run_job("score", data.pattern, out, clip_checkpoint, *args, *resume)
        assert sorted(ids(run.table("scores"))) == sorted(r.id for r in good)
        errors = run.table("errors").to_pylist()
        assert [e["error_type"] for e in errors] == ["corrupt_input"] * len(bad)
        assert sorted(e["row_number"] for e in errors) == [r.row for r in bad]
        assert {e["source_file"] for e in errors} == {data.files[1]}
        message = errors[0]["error_message"]
        assert f"row group 1 of {data.files[1]} cannot be read" in message
        assert "thrift" in message.lower() or "page" in message.lower()
        if column == "image":  # the ids still read
            assert sorted(e["id"] for e in errors) == sorted(r.id for r in bad)
        else:
            assert [e["id"] for e in errors] == [None] * len(bad)
        summary = run.summary
        assert summary["input_rows"] == len(data.rows)
        assert summary["output_rows"] == len(good) and summary["error_rows"] == len(bad)
    assert run.summary["resumed_units"] == data.num_row_groups()


def test_corrupt_page_in_a_top_fraction_filter(tmp_path, clip_checkpoint):
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=4, row_group_size=2, seed=7)
    corrupt_page(data.files[0], 0, "text")
    out = str(tmp_path / "out")
    run = run_job("filter", data.pattern, out, clip_checkpoint, "--top-fraction", "0.5")
    summary = run.summary
    assert summary["error_rows"] == 2
    assert summary["input_rows"] == summary["kept"] + summary["rejected"] + 2
