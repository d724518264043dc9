"""Reading one work unit for dedup and search: ids, normalized embeddings, image hashes, kept
columns.

The embeddings come from an embedding column, or, with a model in the spec, from raw images
embedded here (:mod:`clipbeam.transforms.dedup.embed`: one model per worker process, the DoFn
pickles without it). Rows without a usable embedding (or whose image fails) go to
``errors/<unit>.parquet``. Each unit also proposes its part
of the k-means fit sample (:mod:`~clipbeam.transforms.dedup.sample`): its ``fit_rows`` rows of
smallest priority, as one element of arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from clipbeam.transforms import storage
from clipbeam.transforms.dedup.sample import Candidates, SmallestCandidates
from clipbeam.transforms.dedup.spec import DedupSpec, DedupStats
from clipbeam.transforms.embeddings import Rejected, embedding_matrix, l2_normalize
from clipbeam.transforms.rows import ERROR_FIELDS
from clipbeam.transforms.units import WorkUnit, iter_batches
from clipbeam.transforms.writer import ParquetSpool

__all__ = [
    "BATCHES_TAG",
    "SAMPLE_TAG",
    "STATS_TAG",
    "Batch",
    "ReadUnit",
    "ReadUnits",
    "dedup_id_field",
    "error_schema",
    "record_rows",
]

BATCHES_TAG = "batches"
SAMPLE_TAG = "sample"
STATS_TAG = "stats"
_BATCH_ROWS = 4096


def record_rows(batch_size: int, images: bool) -> int:
    """Rows per record batch read: a few model batches where image bytes are read (decoded one
    batch ahead of the model), so that a record holds hundreds of encoded images, not thousands
    (4,096 photos of 500 KB are 2 GB); 4,096 rows of embeddings otherwise."""
    return 8 * batch_size if images else _BATCH_ROWS


def dedup_id_field(spec: DedupSpec, schema: pa.Schema) -> pa.Field:
    """The id column of every output: the input's id column, or ``id: string``."""
    if spec.id_column is None:
        return pa.field("id", pa.string())
    return schema.field(spec.id_column).with_name(spec.id_column)


def error_schema(spec: DedupSpec, schema: pa.Schema) -> pa.Schema:
    """Schema of ``errors/`` files, as the other jobs write them."""
    return pa.schema([dedup_id_field(spec, schema), *ERROR_FIELDS])


@dataclass
class Batch:
    """Usable rows of one read batch.

    Attributes:
        ids: row ids (Python values).
        vectors: ``(n, dim)`` float32, unit norm.
        sha: sha256 hex digest of each row's image bytes (``None`` without bytes).
        keep: the ``--keep-columns`` of these rows.
        cluster: nearest centroid (set by the assign step).
        distance: cosine distance to it (set by the assign step).
        reference: with ``--against``, the largest cosine to a reference row and that row's
            id, per row (set by the assign step).
    """

    ids: list
    vectors: np.ndarray
    sha: list
    keep: pa.Table
    cluster: np.ndarray | None = None
    distance: np.ndarray | None = None
    reference: tuple | None = None

    # The interface it shares with a batch staged in a file
    # (:class:`~clipbeam.transforms.dedup.file_shuffle.StagedBatch`).
    def load(self) -> Batch:
        return self

    def with_assignment(self, batch: Batch) -> Batch:
        return batch

    def cluster_counts(self, k: int) -> np.ndarray:
        """Rows per cluster, ``(k,)`` (once assigned)."""
        return np.bincount(self.cluster, minlength=k).astype(np.int64)


def _image_bytes(column: pa.Array) -> list:
    """Each row's encoded image bytes; ``None`` where there are none (a path or URL column:
    such rows take no part in the exact step)."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            return [None] * len(column)
        column = column.field("bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return [None] * len(column)
    return column.to_pylist()


class ReadUnit(beam.DoFn):
    """Work unit -> ``(tag, value)`` pairs: ``("batches", Batch)``, at most one ``("sample",
    Candidates)`` and one ``("stats", DedupStats)``; :class:`ReadUnits` splits them.

    Args:
        spec: the job.
        schema: the first input file's schema (types the id and error columns).
        sample: whether to propose k-means fit candidates (search does not fit).
    """

    def __init__(self, spec: DedupSpec, schema: pa.Schema, *, sample: bool = True):
        self.spec = spec
        self.schema = schema
        self.sample = sample
        self._encoder = None
        self._job = None
        if spec.model is not None:  # torch is imported only by a job that embeds images
            from clipbeam.transforms.dedup import embed

            self._job = embed.image_job(spec)
        self._counters = {
            name: Metrics.counter("clipbeam", name)
            for name in ("input_rows", "error_rows", "units")
        }

    def __getstate__(self) -> dict[str, Any]:
        # A worker may pickle this DoFn again after it loaded its model (Dask ships a side
        # input's task graph from inside a running task): the model stays behind, a copy loads
        # its own.
        return {**self.__dict__, "_encoder": None}

    def setup(self) -> None:
        if self._job is not None and self._encoder is None:
            from clipbeam.transforms.dedup import embed

            self._encoder = embed.acquire(self.spec)

    def process(self, unit: WorkUnit) -> Iterator:
        spec = self.spec
        vectors = None if spec.model is not None else spec.embedding_column
        columns = [spec.id_column, vectors, spec.image_column, *spec.keep_columns]
        columns = list(dict.fromkeys(c for c in columns if c is not None))
        errors_path = storage.join(spec.output, "errors", f"{unit.name}.parquet")
        stats = DedupStats(units=1)
        selection = SmallestCandidates(spec.fit_rows, spec.dim)
        sample = selection.create_accumulator()
        start = 0
        with contextlib.ExitStack() as stack:
            errors = stack.enter_context(ParquetSpool(errors_path, error_schema(spec, self.schema)))
            rows = record_rows(spec.batch_size, spec.image_column is not None)
            for record in iter_batches(unit, columns, batch_size=rows):
                batch, rejected, renormalized = self._read(unit, record, start)
                errors.write(self._errors(unit, record, start, rejected, errors.schema))
                stats += DedupStats(
                    input_rows=record.num_rows,
                    error_rows=len(rejected),
                    renormalized_rows=renormalized,
                )
                start += record.num_rows
                if not batch.ids:
                    continue
                yield BATCHES_TAG, batch
                if not self.sample:
                    continue
                candidates = Candidates.of(spec.seed, batch.ids, batch.vectors)
                sample = selection.add_input(sample, candidates)
            if errors.rows:
                errors.commit()
            else:
                errors.discard()
                storage.delete(errors_path, missing_ok=True)
        if sample:
            yield SAMPLE_TAG, selection.extract_output(sample)
        for name, counter in self._counters.items():
            counter.inc(getattr(stats, name))
        yield STATS_TAG, stats

    def _read(
        self, unit: WorkUnit, record: pa.RecordBatch, start: int
    ) -> tuple[Batch, list[Rejected], int]:
        spec = self.spec
        if self._job is not None:
            from clipbeam.transforms.dedup import embed

            self.setup()
            matrix, rejected = embed.embed_record(record, self._job, self._encoder, unit)
        else:
            matrix, rejected = embedding_matrix(record.column(spec.embedding_column), spec.dim)
        vectors, zero, renormalized = l2_normalize(matrix)
        bad = {r.index for r in rejected}
        rejected += [
            Rejected(int(i), "ZeroEmbedding", "the embedding is all zeros: it has no direction")
            for i in np.flatnonzero(zero)
            if int(i) not in bad
        ]
        bad = {r.index for r in rejected}
        good = [i for i in range(record.num_rows) if i not in bad]
        take = pa.array(good, type=pa.int64())
        if spec.id_column is None:
            ids = [unit.row_id(start + i) for i in good]
        else:
            ids = record.column(spec.id_column).take(take).to_pylist()
        sha: list = [None] * len(good)
        if spec.image_column is not None:
            images = _image_bytes(record.column(spec.image_column).take(take))
            sha = [None if b is None else hashlib.sha256(b).hexdigest() for b in images]
        keep = pa.table(
            {name: record.column(name).take(take) for name in spec.keep_columns}
            if spec.keep_columns
            else {"_": pa.nulls(len(good))}
        )
        batch = Batch(ids=ids, vectors=vectors[good], sha=sha, keep=keep)
        return batch, sorted(rejected, key=lambda r: r.index), int(renormalized[good].sum())

    def _errors(
        self,
        unit: WorkUnit,
        record: pa.RecordBatch,
        start: int,
        rejected: list[Rejected],
        schema: pa.Schema,
    ) -> pa.Table:
        indices = [r.index for r in rejected]
        if self.spec.id_column is None:
            ids = pa.array([unit.row_id(start + i) for i in indices], type=pa.string())
        else:
            ids = record.column(self.spec.id_column).take(pa.array(indices, type=pa.int64()))
        columns = [
            ids,
            pa.array([unit.path] * len(indices), type=pa.string()),
            pa.array([unit.row_offset + start + i for i in indices], type=pa.int64()),
            pa.array([r.error_type for r in rejected], type=pa.string()),
            pa.array([r.message for r in rejected], type=pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=schema)


class ReadUnits(beam.PTransform):
    """Work units -> ``{"batches", "sample", "stats"}`` PCollections (``sample`` only with
    ``sample=True``), read by :class:`ReadUnit`.

    One output of ``(tag, value)`` pairs split by FlatMaps, not ``ParDo.with_outputs``: Beam's
    DaskRunner (2.77) keys a transform's Dask bag by the producing transform, not by the output
    tag, so every consumer of a multi-output ParDo would get the elements of all its outputs.
    """

    def __init__(self, spec: DedupSpec, schema: pa.Schema, *, sample: bool = True):
        super().__init__()
        self.spec, self.schema, self.sample = spec, schema, sample

    def expand(self, units: beam.PCollection[WorkUnit]) -> dict[str, beam.PCollection]:
        tagged = units | "ReadUnit" >> beam.ParDo(
            ReadUnit(self.spec, self.schema, sample=self.sample)
        )
        tags = (BATCHES_TAG, SAMPLE_TAG, STATS_TAG) if self.sample else (BATCHES_TAG, STATS_TAG)
        return {tag: tagged | f"Split{tag.title()}" >> beam.FlatMap(_tagged, tag) for tag in tags}


def _tagged(pair: tuple[str, Any], tag: str) -> Iterator[Any]:
    """The value of a ``(tag, value)`` pair if its tag is ``tag``."""
    if pair[0] == tag:
        yield pair[1]
