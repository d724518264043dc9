"""Decontamination: every row's nearest row of a reference set (an evaluation set's embeddings).

The reference set is read once (:class:`ReadReference` per work unit, combined into one
:class:`Reference`) and broadcast to every worker as a side input; it is the one thing besides the
fit sample and one cluster group a worker holds (1M x 512 float32 is 2 GB). Each batch of rows is
compared with it in blocks of reference rows (:func:`nearest_reference`): its largest cosine and
that row's id. A row is removed (``keep_against`` false) when ``max_reference_similarity >=
1 - against_eps``. Reference rows without a usable embedding are skipped and counted.

With ``--against-image-column`` the reference set holds images: each record batch is embedded
with the job's ``--model`` as the input's images are (:mod:`clipbeam.transforms.dedup.embed`),
and a reference image that fails to decode is a skipped row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np

from clipbeam.transforms.dedup.read import record_rows
from clipbeam.transforms.dedup.spec import DedupSpec
from clipbeam.transforms.embeddings import embedding_matrix, l2_normalize
from clipbeam.transforms.units import WorkUnit, iter_batches

__all__ = ["CombineReference", "ReadReference", "Reference", "nearest_reference"]

_BLOCK = 8192


@dataclass
class Reference:
    """The reference set: ids (as text), ``(n, d)`` unit rows, rows skipped."""

    ids: list
    vectors: np.ndarray
    skipped: int = 0


class ReadReference(beam.DoFn):
    """One work unit of the reference set -> one :class:`Reference`."""

    def __init__(self, spec: DedupSpec):
        self.spec = spec
        self._job = None
        self._encoder = None
        if spec.against_image_column is not None:
            from clipbeam.transforms.dedup import embed

            self._job = embed.reference_image_job(spec)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_encoder": None}  # a copy loads its own model

    def setup(self) -> None:
        if self._job is not None and self._encoder is None:
            from clipbeam.transforms.dedup import embed

            self._encoder = embed.acquire(self.spec)

    def process(self, unit: WorkUnit) -> Iterator[Reference]:
        spec = self.spec
        id_column = spec.against_id_column
        vectors_column = spec.against_image_column or spec.against_embedding_column
        columns = [c for c in (id_column, vectors_column) if c is not None]
        ids: list = []
        parts = []
        skipped, start = 0, 0
        if self._job is not None:
            from clipbeam.transforms.dedup import embed
        rows = record_rows(spec.batch_size, self._job is not None)
        for record in iter_batches(unit, dict.fromkeys(columns), batch_size=rows):
            if self._job is not None:
                matrix, rejected = embed.embed_record(record, self._job, self._encoder, unit)
            else:
                matrix, rejected = embedding_matrix(record.column(vectors_column), spec.dim)
            vectors, zero, _ = l2_normalize(matrix)
            bad = {r.index for r in rejected} | {int(i) for i in np.flatnonzero(zero)}
            good = [i for i in range(record.num_rows) if i not in bad]
            if id_column is None:
                ids += [unit.row_id(start + i) for i in good]
            else:
                values = record.column(id_column).to_pylist()
                ids += [str(values[i]) for i in good]
            parts.append(vectors[good])
            skipped += len(bad)
            start += record.num_rows
        vectors = np.concatenate(parts) if parts else np.zeros((0, spec.dim), np.float32)
        yield Reference(ids, vectors, skipped)


class CombineReference(beam.CombineFn):
    """Every unit's :class:`Reference` -> the whole set (units in input order is not needed:
    ties of similarity go to the smaller id, whatever the order)."""

    def create_accumulator(self) -> list:
        return []

    def add_input(self, accumulator: list, element: Reference) -> list:
        accumulator.append(element)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return [r for a in accumulators for r in a]

    def extract_output(self, accumulator: list) -> Reference:
        # Sorted by id, so that the nearest of equal similarities is the same on every run.
        ids = [i for r in accumulator for i in r.ids]
        dim = accumulator[0].vectors.shape[1] if accumulator else 0
        vectors = (
            np.concatenate([r.vectors for r in accumulator])
            if accumulator
            else np.zeros((0, dim), np.float32)
        )
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return Reference(
            [ids[i] for i in order], vectors[order], sum(r.skipped for r in accumulator)
        )


def nearest_reference(x: np.ndarray, reference: Reference) -> tuple[np.ndarray, list]:
    """Per row of ``x``: the largest cosine to a reference row, and that row's id (ties: the
    smaller id); ``-inf`` and ``None`` for an empty reference set."""
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    r = reference.vectors
    for s in range(0, len(r), _BLOCK):
        tile = x @ r[s : s + _BLOCK].T  # (n, block)
        local = tile.argmax(axis=1)
        value = tile[np.arange(n), local]
        better = value > best
        best = np.where(better, value, best)
        arg = np.where(better, s + local, arg)
    return best, [reference.ids[j] if j >= 0 else None for j in arg]
