"""ParquetSpool: zstd files with metadata, published whole on commit, never on failure."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.writer import ParquetSpool, job_metadata

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.float32())], metadata={"k": "v"})


def rows(*ids):
    return pa.table({"id": list(ids), "x": pa.array([1.0] * len(ids), type=pa.float32())})


def test_commit_publishes_a_zstd_file_with_metadata(tmp_path):
    path = str(tmp_path / "kept" / "part-00000-00000.parquet")
    with ParquetSpool(path, SCHEMA) as spool:
        spool.write(rows("a", "b"))
        spool.write(rows())  # empty: ignored
        spool.write(rows("c").to_batches()[0])
        assert not os.path.exists(path)  # nothing visible before commit
        spool.commit()
    assert spool.rows == 3
    file = pq.ParquetFile(path)
    assert file.read().column("id").to_pylist() == ["a", "b", "c"]
    assert file.schema_arrow.metadata == {b"k": b"v"}
    assert file.metadata.row_group(0).column(0).compression == "ZSTD"
    assert os.listdir(tmp_path / "kept") == ["part-00000-00000.parquet"]  # no temp file left


def test_an_exception_leaves_the_old_file_untouched(tmp_path):
    path = str(tmp_path / "part.parquet")
    with ParquetSpool(path, SCHEMA) as spool:
        spool.write(rows("old"))
        spool.commit()
    with pytest.raises(RuntimeError, match="boom"), ParquetSpool(path, SCHEMA) as spool:
        spool.write(rows("new"))
        raise RuntimeError("boom")
    assert pq.read_table(path).column("id").to_pylist() == ["old"]
    assert os.listdir(tmp_path) == ["part.parquet"]


def test_a_second_commit_replaces_instead_of_duplicating(tmp_path):
    path = str(tmp_path / "part.parquet")
    for ids in (["a", "b"], ["a", "b"]):
        with ParquetSpool(path, SCHEMA) as spool:
            spool.write(rows(*ids))
            spool.commit()
    assert pq.read_table(path).num_rows == 2


def test_empty_file_still_has_the_schema(tmp_path):
    path = str(tmp_path / "empty.parquet")
    with ParquetSpool(path, SCHEMA) as spool:
        spool.commit()
    assert pq.read_table(path).schema.names == ["id", "x"]


def test_misuse_is_reported(tmp_path):
    spool = ParquetSpool(str(tmp_path / "p.parquet"), SCHEMA)
    spool.commit()
    with pytest.raises(RuntimeError, match="after commit"):
        spool.write(rows("a"))
    spool.discard()  # a no-op after commit


def test_job_metadata_records_model_and_options():
    spec = JobSpec(kind="score", model="m", output="o", options={"runner": "DirectRunner"})
    md = job_metadata(spec, {"clipbeam.model": "m"})
    assert md["clipbeam.model"] == "m" and md["clipbeam.kind"] == "score"
    assert json.loads(md["clipbeam.options"]) == {"runner": "DirectRunner"}
    assert json.loads(md["clipbeam.job"])["kind"] == "score"
