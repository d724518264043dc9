"""The k-means fit sample: the ``fit_rows`` rows of smallest priority over the whole dataset.

Every row gets a priority from a hash of ``(seed, id)`` (:func:`priorities`); the sample is the
rows of smallest ``(priority, id as text)``, so it is drawn across all units, does not depend on
how units are spread over workers, and is the same on every run with one ``--seed``.

Candidates travel as arrays (:class:`Candidates`: one element per work unit, not one per row),
and :class:`SmallestCandidates` combines them keeping at most twice ``fit_rows`` rows at any
time: what the sample costs is bounded by ``fit_rows``, whatever the number of rows and units.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

__all__ = ["Candidates", "SmallestCandidates", "priorities"]


def priorities(seed: int, ids: list) -> np.ndarray:
    """Sampling priority of each row: 63 bits of blake2b over ``seed`` and the id."""
    key = str(seed).encode("ascii")
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(str(i).encode("utf-8"), digest_size=8, key=key).digest(), "big"
            )
            >> 1
            for i in ids
        ],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class Candidates:
    """Fit-sample candidates: ``priority`` ``(n,)`` int64, ``ids`` ``(n,)`` the ids as text,
    ``vectors`` ``(n, d)`` float32 (unit rows)."""

    priority: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> Candidates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.str_), np.zeros((0, dim), np.float32))

    @classmethod
    def of(cls, seed: int, ids: list, vectors: np.ndarray) -> Candidates:
        """The rows ``ids`` / ``vectors`` with their priorities under ``seed``."""
        text = np.array([str(i) for i in ids], dtype=np.str_)
        return cls(priorities(seed, ids), text, np.asarray(vectors, np.float32))

    def __len__(self) -> int:
        return len(self.priority)

    def __add__(self, other: Candidates) -> Candidates:
        return Candidates(
            np.concatenate([self.priority, other.priority]),
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.vectors, other.vectors]),
        )

    def smallest(self, n: int) -> Candidates:
        """The ``n`` candidates of smallest ``(priority, id)``, in that order (copies)."""
        order = np.lexsort((self.ids, self.priority))[:n]
        return Candidates(self.priority[order], self.ids[order], self.vectors[order])

    def bounded(self, n: int) -> Candidates:
        """Itself while it holds at most ``2 n`` rows, else its ``n`` smallest: a running
        selection that sorts once per ``n`` rows added."""
        return self if len(self) <= 2 * n else self.smallest(n)


class SmallestCandidates(beam.CombineFn):
    """:class:`Candidates` -> the ``n`` of smallest ``(priority, id)`` over all of them, in that
    order (``dim``: the vectors' width, for an empty result)."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.n, self.dim = n, dim

    def create_accumulator(self) -> Candidates:
        return Candidates.empty(self.dim)

    def add_input(self, accumulator: Candidates, element: Candidates) -> Candidates:
        return (accumulator + element).bounded(self.n)

    def merge_accumulators(self, accumulators) -> Candidates:
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged = (merged + accumulator).bounded(self.n)
        return merged

    def compact(self, accumulator: Candidates) -> Candidates:
        return accumulator.smallest(self.n)

    def extract_output(self, accumulator: Candidates) -> Candidates:
        return accumulator.smallest(self.n)
