"""Grouping through files, for runners whose shuffle is memory: batches and groups on disk.

The DirectRunner holds every element that crosses a step boundary (a GroupByKey, or a step
waiting on a side input) in its own memory, so a dedup of N embeddings needs N embeddings of RAM
there, and 10M rows of 512-d (20 GB) do not fit a laptop. With ``--shuffle files`` the rows
cross those boundaries as files under ``OUTPUT/_staging/`` and the runner holds only
their names and offsets:

- :func:`stage_batch` writes a read batch to a file and passes on a :class:`StagedBatch`; the
  assignment step adds its nearest centroids in a small file of their own
  (:meth:`StagedBatch.with_assignment`), and every later pass loads the batch back
  (:meth:`StagedBatch.load`).
- :class:`CoGroupByKeyInFiles` replaces ``beam.CoGroupByKey``: each input's ``(key, value)``
  elements are encoded by Beam's own coder and buffered per bundle; at most every
  :data:`FLUSH_BYTES` they are written to one file, sorted into segments by bucket (the key
  itself, or a hash of it into a fixed number of buckets), and only ``(bucket, (path, offset,
  length))`` goes through the runner's GroupByKey. Each bucket is then read back alone and its
  keys emitted as CoGroupByKey emits them: ``(key, {tag: [values]})``.

A worker so holds one bucket (one cluster group) and one flush buffer, whatever the number of
rows. Files of a retried bundle are left unreferenced; the folder goes when the job ends (and
before a run starts). The files hold Beam's encoding of the elements (its fallback for arrays
is pickle, as in the runner's own buffers) and are read only by the job that wrote them.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from clipbeam.transforms import storage

__all__ = ["FLUSH_BYTES", "CoGroupByKeyInFiles", "StagedBatch", "stage_batch"]

# Encoded elements one bundle buffers before it writes them out.
FLUSH_BYTES = 32 << 20
_LENGTH = struct.Struct("<I")


def _coder() -> beam.coders.Coder:
    return beam.coders.FastPrimitivesCoder()


@dataclass(frozen=True)
class StagedBatch:
    """A :class:`~clipbeam.transforms.dedup.read.Batch` written under the staging folder.

    Attributes:
        path: the batch as read (ids, vectors, hashes, kept columns).
        rows: its rows.
        assignment: the file of its nearest centroids (and reference rows), once assigned.
        clusters, counts: the distinct clusters of its rows and their rows, once assigned.
    """

    path: str
    rows: int
    assignment: str | None = None
    clusters: np.ndarray | None = None
    counts: np.ndarray | None = None

    def load(self):
        batch = _coder().decode(storage.read_bytes(self.path))
        if self.assignment is not None:
            batch.cluster, batch.distance, batch.reference = _coder().decode(
                storage.read_bytes(self.assignment)
            )
        return batch

    def with_assignment(self, batch) -> StagedBatch:
        """This batch with ``batch``'s assignment (``cluster``, ``distance``, ``reference``)
        written beside it."""
        path = self.path.removesuffix(".batch") + ".assigned"
        storage.write_atomic(
            path, _coder().encode((batch.cluster, batch.distance, batch.reference))
        )
        clusters, counts = np.unique(batch.cluster, return_counts=True)
        return replace(self, assignment=path, clusters=clusters, counts=counts)

    def cluster_counts(self, k: int) -> np.ndarray:
        """Rows per cluster, ``(k,)``."""
        out = np.zeros(k, dtype=np.int64)
        out[self.clusters] = self.counts
        return out


def stage_batch(batch, folder: str) -> StagedBatch:
    """Writes ``batch`` under ``folder``; its handle."""
    path = storage.join(folder, "batches", f"{uuid.uuid4().hex}.batch")
    storage.write_atomic(path, _coder().encode(batch))
    return StagedBatch(path, len(batch.ids))


def _bucket(key: Any, buckets: int | None) -> Any:
    """The key itself, or a stable hash of its encoding into ``buckets``."""
    if buckets is None:
        return key
    digest = hashlib.blake2b(_coder().encode(key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


class _Spill(beam.DoFn):
    """``(key, value)`` -> ``(bucket, (path, offset, length))`` per bucket of each file written."""

    def __init__(self, folder: str, tag: str, buckets: int | None, flush_bytes: int):
        self.folder, self.tag, self.buckets, self.flush_bytes = folder, tag, buckets, flush_bytes

    def start_bundle(self) -> None:
        self._coder = _coder()
        self._held: dict[Any, list[bytes]] = {}
        self._bytes = 0

    def process(self, element: tuple) -> Iterator[tuple]:
        key, value = element
        record = self._coder.encode((key, self.tag, value))
        self._held.setdefault(_bucket(key, self.buckets), []).append(record)
        self._bytes += len(record) + _LENGTH.size
        if self._bytes >= self.flush_bytes:
            yield from self._flush()

    def finish_bundle(self) -> Iterator:
        for element in self._flush():
            yield GlobalWindows.windowed_value(element)

    def _flush(self) -> Iterator[tuple]:
        if not self._held:
            return
        path = storage.join(self.folder, f"{uuid.uuid4().hex}.records")
        segments = []
        offset = 0
        with storage.atomic_writer(path) as f:
            for bucket, records in self._held.items():
                start = offset
                for record in records:
                    f.write(_LENGTH.pack(len(record)))
                    f.write(record)
                    offset += _LENGTH.size + len(record)
                segments.append((bucket, (path, start, offset - start)))
        self._held, self._bytes = {}, 0
        yield from segments


def _records(segment: tuple) -> Iterator[tuple]:
    path, offset, length = segment
    with storage.open_input(path) as f:
        f.seek(offset)
        data = f.read(length)
    coder = _coder()
    at = 0
    while at < len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        at += _LENGTH.size
        yield coder.decode(data[at : at + size])
        at += size


class _ReadBucket(beam.DoFn):
    """``(bucket, segments)`` -> ``(key, {tag: [values]})`` for every key of the bucket."""

    def __init__(self, tags: tuple[str, ...]):
        self.tags = tags

    def process(self, element: tuple) -> Iterator[tuple]:
        _, segments = element
        groups: dict[Any, dict[str, list]] = {}
        for segment in sorted(segments):
            for key, tag, value in _records(segment):
                joined = groups.get(key)
                if joined is None:
                    joined = groups[key] = {t: [] for t in self.tags}
                joined[tag].append(value)
        for key in sorted(groups, key=repr):
            yield key, groups.pop(key)


class CoGroupByKeyInFiles(beam.PTransform):
    """``{tag: PCollection of (key, value)}`` -> ``(key, {tag: [values]})``, as
    ``beam.CoGroupByKey``, through files under ``folder`` (module docstring).

    Args:
        folder: where the records are written (a folder of this transform's own).
        buckets: ``None``: one bucket per key (a reader holds one key's values); a number:
            keys hashed into that many buckets (for many small keys).
        flush_bytes: encoded bytes a bundle buffers before it writes a file.
    """

    def __init__(self, folder: str, buckets: int | None = None, flush_bytes: int = FLUSH_BYTES):
        super().__init__()
        self.folder, self.buckets, self.flush_bytes = folder, buckets, flush_bytes

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        tags = tuple(inputs)
        # Each input is written where it is produced: flattening the elements first would have
        # the DirectRunner buffer them all, the very thing this transform avoids.
        segments = [
            pcoll
            | f"Spill{tag.title()}"
            >> beam.ParDo(_Spill(self.folder, tag, self.buckets, self.flush_bytes))
            for tag, pcoll in inputs.items()
        ]
        return (
            segments
            | "Segments" >> beam.Flatten()
            | "ByBucket" >> beam.GroupByKey()
            | "ReadBuckets" >> beam.ParDo(_ReadBucket(tags))
        )
