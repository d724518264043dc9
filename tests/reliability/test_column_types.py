"""Every Arrow type a writer may store a usable column in runs: string_view, large_string,
binary_view and dictionary-encoded ids, captions, images (bytes, struct fields, paths) and kept
columns, alone or mixed across the files of one job."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.datasets import build_dataset
from tests.pipeline.jobtools import check_accounting, check_errors, run_job

# Per layout: the type each column is cast to in file 0 and in file 1 (None: left as written).
TEXTS = [pa.string_view(), pa.large_string(), "dictionary"]
BYTES = [pa.binary_view(), pa.large_binary(), "dictionary"]


def _cast(column: pa.ChunkedArray, to) -> pa.ChunkedArray:
    if pa.types.is_struct(column.type):  # {bytes, path}: view fields, or large ones
        fields = [
            pa.field("bytes", BYTES[0] if to == "view" else pa.large_binary()),
            pa.field("path", pa.string_view() if to == "view" else pa.large_string()),
        ]
        return column.cast(pa.struct(fields))
    if to == "dictionary":
        return column.dictionary_encode()
    return column.cast(to)


def _rewrite(dataset, layout: str) -> None:
    for index, path in enumerate(dataset.files):
        table = pq.read_table(path)
        text_type, bytes_type = TEXTS[index % 3], BYTES[index % 3]
        image_type = {"bytes": bytes_type, "path": text_type}.get(layout)
        if layout == "hf-struct":
            image_type = "view" if index % 2 == 0 else "large"
        columns = {"id": text_type, "text": text_type, "image": image_type}
        for extra in dataset.extra_columns:
            if pa.types.is_string(table.schema.field(extra).type):
                columns[extra] = TEXTS[(index + 1) % 3]
        for name, to in columns.items():
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, _cast(table.column(name), to))
        pq.write_table(table, path, row_group_size=dataset.row_group_size)


@pytest.mark.parametrize("layout", ["bytes", "hf-struct", "path"])
def test_view_large_and_dictionary_columns(tmp_path, clip_checkpoint, layout):
    data = build_dataset(
        tmp_path / "in",
        num_files=3,
        rows_per_file=4,
        row_group_size=3,
        image_format=layout,
        plant={"corrupt_image": 1, "null_text": 1},
        seed=8,
    )
    _rewrite(data, layout)
    kept = [c for c in data.extra_columns if c != "id"]
    args = ["--id-column", "id", "--batch-size", "2"]
    if kept:
        args += ["--keep-columns", ",".join(kept)]
    run = run_job("score", data.pattern, str(tmp_path / "out"), clip_checkpoint, *args)
    check_accounting(run, data, output_folders=["scores"])
    check_errors(run, data)
    assert run.table("scores").schema.field("id").type == pa.string()


def test_top_fraction_filter_over_view_columns(tmp_path, clip_checkpoint):
    data = build_dataset(tmp_path / "in", num_files=3, rows_per_file=4, row_group_size=2, seed=9)
    _rewrite(data, "bytes")
    out = str(tmp_path / "out")
    run = run_job(
        "filter", data.pattern, out, clip_checkpoint, "--id-column", "id", "--top-fraction", "0.5"
    )
    check_accounting(run, data, output_folders=["kept", "rejected"])


def test_the_report_and_train_head_read_view_large_and_dictionary_columns(
    tmp_path, clip_checkpoint
):
    """The readers outside the jobs take the same types: the report finds every thumbnail in
    view-typed inputs, train-head joins labels whose id and label columns are view or dictionary
    typed."""
    from clipbeam.pipeline.heads import train_main
    from clipbeam.pipeline.report.collect import collect

    data = build_dataset(tmp_path / "in", num_files=3, rows_per_file=6, row_group_size=3, seed=10)
    _rewrite(data, "bytes")
    out = str(tmp_path / "out")
    run_job("embed", data.pattern, out, clip_checkpoint, "--id-column", "id")
    report = collect(out, examples=4)
    shown = [*report.best, *report.worst, *report.samples]
    assert shown and all(example.thumbnail for example in shown)

    ids = [row.id for row in data.good_rows]
    for index, (id_type, label_type) in enumerate([(TEXTS[0], TEXTS[2]), (TEXTS[2], TEXTS[1])]):
        labels = pa.table({"id": ids, "label": ["a" if i % 2 else "b" for i in range(len(ids))]})
        labels = labels.set_column(0, "id", _cast(labels.column("id"), id_type))
        labels = labels.set_column(1, "label", _cast(labels.column("label"), label_type))
        path = tmp_path / f"labels-{index}.parquet"
        pq.write_table(labels, path)
        head = tmp_path / f"head-{index}"
        argv = ["--embeddings", f"{out}/embeddings/*.parquet", "--labels", str(path)]
        train_main([*argv, "--label-column", "label", "--out", str(head)])
        assert (head / "head.safetensors").exists()
