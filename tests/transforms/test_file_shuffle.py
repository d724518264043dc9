"""`--shuffle files`: the file-backed CoGroupByKey and staged batches, on the real DirectRunner."""

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from clipbeam.transforms.dedup.file_shuffle import CoGroupByKeyInFiles, stage_batch
from clipbeam.transforms.dedup.read import Batch


def _canonical(element):
    """``(key, {tag: values})`` with each tag's values sorted (grouping keeps no order)."""
    key, joined = element
    return key, {tag: sorted(values, key=repr) for tag, values in sorted(joined.items())}


def _elements(n):
    rng = np.random.default_rng(3)
    rows = [((i % 7, i % 3), (f"id{i}", rng.normal(size=4).astype(np.float32))) for i in range(n)]
    notes = [((i % 7, 0), (f"id{i}", None)) for i in range(0, n, 5)]
    return rows, notes


def _lists(element):
    """Arrays as lists, so that elements compare by value."""
    key, joined = _canonical(element)
    return key, {
        tag: [(i, None if v is None else v.tolist()) for i, v in values]
        for tag, values in joined.items()
    }


@pytest.mark.parametrize("buckets", [None, 2])
def test_equals_beam_cogroupbykey_across_several_flushes(tmp_path, buckets):
    rows, notes = _elements(400)
    want: dict = {}
    for tag, elements in (("rows", rows), ("notes", notes)):
        for key, value in elements:
            want.setdefault(key, {"rows": [], "notes": []})[tag].append(value)
    with beam.Pipeline() as p:
        inputs = {
            "rows": p | "Rows" >> beam.Create(rows),
            "notes": p | "Notes" >> beam.Create(notes),
        }
        folder = str(tmp_path / "shuffle")
        grouped = inputs | CoGroupByKeyInFiles(folder, buckets, flush_bytes=2_000)
        assert_that(grouped | beam.Map(_lists), equal_to([_lists(e) for e in want.items()]))
    files = list((tmp_path / "shuffle").glob("*.records"))
    assert len(files) > 2  # 2,000 bytes a flush: the rows were written in several files


def test_a_key_with_values_in_one_tag_only_has_the_other_tags_empty(tmp_path):
    with beam.Pipeline() as p:
        inputs = {
            "rows": p | "Rows" >> beam.Create([("a", 1), ("b", 2), ("a", 3)]),
            "exact": p | "Exact" >> beam.Create([("c", 9)]),
        }
        got = inputs | CoGroupByKeyInFiles(str(tmp_path / "s")) | beam.Map(_canonical)
        assert_that(
            got,
            equal_to(
                [
                    ("a", {"exact": [], "rows": [1, 3]}),
                    ("b", {"exact": [], "rows": [2]}),
                    ("c", {"exact": [9], "rows": []}),
                ]
            ),
        )


def test_a_staged_batch_loads_back_with_its_assignment(tmp_path):
    batch = Batch(
        ids=["x", "y", "z"],
        vectors=np.eye(3, dtype=np.float32),
        sha=[None, "ab", None],
        keep=pa.table({"caption": ["one", None, "three"]}),
    )
    staged = stage_batch(batch, str(tmp_path))
    loaded = staged.load()
    assert loaded.ids == batch.ids and loaded.sha == batch.sha
    np.testing.assert_array_equal(loaded.vectors, batch.vectors)
    assert loaded.keep.equals(batch.keep) and loaded.cluster is None
    loaded.cluster = np.array([2, 0, 2])
    loaded.distance = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    loaded.reference = (np.array([0.5, 0.6, 0.7]), ["r1", "r2", "r3"])
    assigned = staged.with_assignment(loaded)
    assert assigned.cluster_counts(4).tolist() == [1, 0, 2, 0]
    again = assigned.load()
    np.testing.assert_array_equal(again.cluster, [2, 0, 2])
    np.testing.assert_array_equal(again.distance, loaded.distance)
    assert again.reference[1] == ["r1", "r2", "r3"]
