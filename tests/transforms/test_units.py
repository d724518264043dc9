"""Planning work units from input patterns, and streaming one unit's rows."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipbeam.transforms.units import WorkUnit, input_root, iter_batches, plan_units


def write(path, rows: int, row_group_size: int) -> None:
    table = pa.table({"i": pa.array(range(rows), type=pa.int64())})
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def folder(tmp_path):
    write(tmp_path / "b.parquet", 7, 3)  # row groups of 3, 3, 1
    write(tmp_path / "a.parquet", 4, 4)
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.parquet", 2, 5)
    write(tmp_path / "_hidden.parquet", 2, 5)  # markers and temp files are never inputs
    (tmp_path / "notes.txt").write_text("not parquet")
    return tmp_path


def test_glob_gives_one_unit_per_row_group_in_file_order(folder):
    units = plan_units(str(folder / "*.parquet"))
    assert [(u.path.rsplit("/", 1)[-1], u.row_group, u.num_rows) for u in units] == [
        ("a.parquet", 0, 4),
        ("b.parquet", 0, 3),
        ("b.parquet", 1, 3),
        ("b.parquet", 2, 1),
    ]
    assert [u.file_index for u in units] == [0, 1, 1, 1]
    assert [u.row_offset for u in units] == [0, 0, 3, 6]
    assert units[3].name == "part-00001-00002"
    assert units[3].row_id(0) == "b.parquet:6"


def test_folder_input_reads_parquet_files_at_any_depth(folder):
    units = plan_units(str(folder))
    names = sorted({u.source_name for u in units})
    assert names == ["a.parquet", "b.parquet", "sub/c.parquet"]


def test_single_file_and_several_patterns(folder):
    units = plan_units([str(folder / "a.parquet"), str(folder / "*.parquet")])
    assert len(units) == 4  # a.parquet is matched twice, used once
    assert plan_units(str(folder / "a.parquet"))[0].source_name == "a.parquet"


def test_no_match_is_an_error_that_says_what_to_do(folder):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        plan_units(str(folder / "*.nothing"))


def test_a_file_that_is_not_parquet_is_named(folder):
    with pytest.raises(ValueError, match=r"notes\.txt as Parquet"):
        plan_units(str(folder / "*.txt"))


def test_empty_row_groups_are_skipped(tmp_path):
    schema = pa.schema([("i", pa.int64())])
    with pq.ParquetWriter(tmp_path / "e.parquet", schema) as writer:
        writer.write_table(pa.table({"i": pa.array([], type=pa.int64())}))
        writer.write_table(pa.table({"i": [1, 2]}))
    units = plan_units(str(tmp_path / "e.parquet"))
    assert [(u.row_group, u.num_rows) for u in units] == [(1, 2)]
    assert units[0].row_offset == 0


def test_iter_batches_streams_only_its_row_group(folder):
    unit = plan_units(str(folder / "b.parquet"))[1]
    batches = list(iter_batches(unit, ["i"], batch_size=2))
    assert [b.num_rows for b in batches] == [2, 1]
    assert pa.concat_arrays([b.column(0) for b in batches]).to_pylist() == [3, 4, 5]


def test_input_root():
    assert input_root("gs://b/data/*.parquet") == "gs://b/data/"
    assert input_root("/x/y/**/z*.parquet") == "/x/y/"
    assert input_root("rel.parquet") == ""


def test_units_are_hashable_values():
    a = WorkUnit("p", 0, 3, 0)
    assert a == WorkUnit("p", 0, 3, 0) and len({a, WorkUnit("p", 0, 3, 0)}) == 1
