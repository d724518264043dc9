"""The per-unit steps of ``clipbeam search``: scoring a work unit, and the join of kept columns.

:class:`SearchUnit` reads one unit with dedup's reader (:class:`~clipbeam.transforms.dedup.read.
ReadUnit`: rows without a usable embedding go to ``errors/<unit>.parquet``), keeps per query the
unit's best ``spec.limit`` rows (:class:`~clipbeam.transforms.search.QueryHeaps`), stages them as
``_units/search-<unit>.parquet`` and then writes the unit's marker ``_units/search-<unit>.json``
(its counts). Both files are published whole (temporary name, then rename), the marker last: with
``--resume``, a unit whose marker records this very unit (file, version, row group) is not read
again, its staged candidates are. Every input row is thus counted once, as searched or as an
error, however often the job ran.

:class:`ReadKept` is one side of the join of ``--keep-columns``: it streams the id and the kept
columns of a unit and sends the rows whose id is among the results, keyed by id; the results are
keyed by id too, and ``CoGroupByKey`` joins them (a row never travels through the top-k heaps with
its captions or image bytes).

Both DoFns emit one output of ``(tag, value)`` pairs, split by FlatMaps downstream, not
``ParDo.with_outputs`` (see :class:`clipbeam.transforms.process.StageScores` for why).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from clipbeam.transforms import storage
from clipbeam.transforms.dedup.read import BATCHES_TAG, STATS_TAG, ReadUnit
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats
from clipbeam.transforms.search import QueryHeaps, SearchSpec
from clipbeam.transforms.units import WorkUnit, iter_batches

__all__ = [
    "CANDIDATES_TAG",
    "MARKER_DIR",
    "MATCHES_TAG",
    "RESUMED_TAG",
    "JoinKept",
    "ReadKept",
    "SearchUnit",
    "join_kept",
    "tagged_values",
]

CANDIDATES_TAG = "candidates"
MATCHES_TAG = "matches"
RESUMED_TAG = "resumed"
MARKER_DIR = "_units"
_LOGGER = logging.getLogger("clipbeam")
_KEPT_BATCH = 4096


def tagged_values(pair: tuple[str, Any], tag: str) -> Iterator[Any]:
    """The value of a ``(tag, value)`` pair if its tag is ``tag``."""
    if pair[0] == tag:
        yield pair[1]


class SearchUnit(beam.DoFn):
    """Work unit -> ``(tag, value)`` pairs: ``("candidates", (query index, (similarity, id)))``,
    ``("matches", (query index, rows at or above the floor))`` with ``--min-similarity``,
    ``("stats", DedupStats)`` and, for a unit an earlier run finished, ``("resumed", 1)``.

    Args:
        spec: the job.
        reading: the dedup spec the rows are read with (same columns, no kept columns).
        schema: the first input file's schema.
        queries: ``(len(spec.queries), dim)`` float32 unit query vectors.
    """

    def __init__(
        self, spec: SearchSpec, reading: DedupSpec, schema: pa.Schema, queries: np.ndarray
    ):
        self.spec = spec
        self.reader = ReadUnit(reading, schema, sample=False)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)

    def setup(self) -> None:
        self.reader.setup()

    def teardown(self) -> None:
        self.reader.teardown()

    def process(self, unit: WorkUnit) -> Iterator[tuple[str, Any]]:
        marker = storage.join(self.spec.output, MARKER_DIR, f"search-{unit.name}.json")
        staged = storage.join(self.spec.output, MARKER_DIR, f"search-{unit.name}.parquet")
        done = _read_marker(marker, unit) if self.spec.resume else None
        if done is not None and storage.exists(staged):
            stats, matches = done
            yield RESUMED_TAG, 1
        else:
            heaps = QueryHeaps(self.spec, self.queries)
            stats = DedupStats()
            for tag, value in self.reader.process(unit):
                if tag == BATCHES_TAG:
                    heaps.add(value.ids, value.vectors)
                elif tag == STATS_TAG:  # no fit sample: the reader was made with sample=False
                    stats += value
            matches = heaps.matches.tolist()
            _stage(staged, heaps)
            # Written last: a marker promises that the unit's files are in place.
            record = {"unit": unit.identity, "stats": stats.to_json(), "matches": matches}
            storage.write_atomic(marker, json.dumps(record, sort_keys=True).encode("utf-8"))
        for pair in _read_staged(staged):
            yield CANDIDATES_TAG, pair
        if self.spec.min_similarity is not None:
            for q, count in enumerate(matches):
                if count:
                    yield MATCHES_TAG, (q, count)
        yield STATS_TAG, stats


def _stage(path: str, heaps: QueryHeaps) -> None:
    """The unit's candidates -> ``path`` (``query, similarity, id``), published whole."""
    import pyarrow.parquet as pq

    pairs = list(heaps.candidates())
    table = pa.table(
        {
            "query": pa.array([q for q, _ in pairs], type=pa.int32()),
            "similarity": pa.array([c[0] for _, c in pairs], type=pa.float64()),
            "id": pa.array([c[1] for _, c in pairs]) if pairs else pa.nulls(0, pa.string()),
        }
    )
    with storage.atomic_writer(path) as f:
        pq.write_table(table, f)


def _read_staged(path: str) -> Iterator[tuple[int, tuple]]:
    import pyarrow.parquet as pq

    with storage.open_input(path) as f:
        table = pq.read_table(f)
    columns = [table.column(name).to_pylist() for name in ("query", "similarity", "id")]
    for q, similarity, row_id in zip(*columns, strict=True):
        yield q, (similarity, row_id)


def _read_marker(path: str, unit: WorkUnit) -> tuple[DedupStats, list[int]] | None:
    """The stored counts of ``unit`` if an earlier run finished it (a marker of this very unit:
    same file, version and row group), else ``None``."""
    if not storage.exists(path):
        return None
    record = json.loads(storage.read_bytes(path).decode("utf-8"))
    if not isinstance(record, dict) or record.get("unit") != unit.identity:
        _LOGGER.info("--resume: %s is not a marker of %s; searching the unit again", path, unit)
        return None
    return DedupStats.from_json(record["stats"]), list(record["matches"])


class ReadKept(beam.DoFn):
    """Work unit -> ``(id, (unit name, row, {kept column: value}))`` for the rows whose id is a
    result id (a side input, ``beam.pvalue.AsList``).

    Args:
        spec: the job.
        id_column: the id column of the files read (``None``: ``"<file>:<row>"`` ids).
    """

    def __init__(self, spec: SearchSpec, id_column: str | None):
        self.spec = spec
        self.id_column = id_column

    def process(self, unit: WorkUnit, result_ids: list) -> Iterator[tuple[Any, tuple]]:
        wanted = set(result_ids)
        if not wanted:
            return
        columns = [c for c in (self.id_column, *self.spec.keep_columns) if c is not None]
        start = 0
        for record in iter_batches(unit, list(dict.fromkeys(columns)), batch_size=_KEPT_BATCH):
            if self.id_column is None:
                ids = [unit.row_id(start + i) for i in range(record.num_rows)]
            else:
                ids = record.column(self.id_column).to_pylist()
            hits = [i for i, row_id in enumerate(ids) if row_id in wanted]
            if hits:
                taken = record.take(pa.array(hits, type=pa.int64()))
                values = {name: taken.column(name).to_pylist() for name in self.spec.keep_columns}
                for n, i in enumerate(hits):
                    kept = {name: values[name][n] for name in self.spec.keep_columns}
                    yield ids[i], (unit.name, unit.row_offset + start + i, kept)
            start += record.num_rows


def join_kept(element: tuple[Any, dict[str, list]]) -> Iterator[tuple[int, tuple]]:
    """One id's ``CoGroupByKey`` group -> ``(query index, (similarity, id, kept values))`` for
    each result of that id. An id held by several input rows takes the first in input order."""
    row_id, group = element
    found = sorted(group["kept"], key=lambda k: (k[0], k[1]))
    kept = found[0][2] if found else None
    for q, similarity in group["hits"]:
        yield q, (similarity, row_id, kept)


class JoinKept(beam.PTransform):
    """``(query index, candidates)`` -> the same, each candidate with its kept columns, joined by
    id (``CoGroupByKey``) from the rows of ``units`` (``--keep-from``, or the input).

    Args:
        spec: the job.
        units: the work units the kept columns are read from (by ``spec.id_column``).
    """

    def __init__(self, spec: SearchSpec, units: Sequence[WorkUnit]):
        super().__init__()
        self.spec = spec
        self.units = list(units)

    def expand(self, ranked: beam.PCollection) -> beam.PCollection:
        hits = ranked | "ResultIds" >> beam.FlatMap(_hits)
        ids = hits | "Ids" >> beam.Keys() | "DistinctIds" >> beam.Distinct()
        kept = (
            ranked.pipeline
            | "PlanKept" >> beam.Create(self.units, reshuffle=False)
            | "SpreadKept" >> beam.Reshuffle()
            | "ReadKept"
            >> beam.ParDo(ReadKept(self.spec, self.spec.id_column), beam.pvalue.AsList(ids))
        )
        return (
            {"hits": hits, "kept": kept}
            | "JoinById" >> beam.CoGroupByKey()
            | "Joined" >> beam.FlatMap(join_kept)
            | "ByQuery" >> beam.GroupByKey()
        )


def _hits(element: tuple[int, Iterable[tuple]]) -> Iterator[tuple[Any, tuple[int, float]]]:
    """One query's candidates -> ``(id, (query index, similarity))``."""
    q, candidates = element
    for similarity, row_id in candidates:
        yield row_id, (q, similarity)
