"""The k-means fit sample: the ``fit_rows`` rows of smallest priority over the whole dataset.

Every row gets a priority from a hash of ``(seed, id)`` (:func:`priorities`); the sample is the
rows of smallest ``(priority, id as text)``, so it is drawn across all units, does not depend on
how units are spread over workers, and is the same on every run with one ``--seed``.

Candidates travel as arrays (:class:`Candidates`: one element per work unit, not one per row),
and :class:`SmallestCandidates` selects them (within a unit, then over units) holding at most
twice ``fit_rows`` rows after each step: what the sample costs is bounded by ``fit_rows``,
whatever the number of rows and units.
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

    @classmethod
    def concat(cls, parts: list[Candidates], dim: int) -> Candidates:
        if not parts:
            return cls.empty(dim)
        return cls(
            np.concatenate([c.priority for c in parts]),
            np.concatenate([c.ids for c in parts]),
            np.concatenate([c.vectors for c in parts]),
        )

    def __len__(self) -> int:
        return len(self.priority)

    def smallest(self, n: int) -> Candidates:
        """The ``n`` candidates of smallest ``(priority, id)``, in that order (copies)."""
        order = np.lexsort((self.ids, self.priority))[:n]
        return Candidates(self.priority[order], self.ids[order], self.vectors[order])


class SmallestCandidates(beam.CombineFn):
    """:class:`Candidates` -> the ``n`` of smallest ``(priority, id)`` over all of them, in that
    order (``dim``: the vectors' width, for an empty result).

    The accumulator is a list of parts, selected down to ``n`` rows (one sort, one copy) only
    once they hold more than ``2 n``: adding a batch copies nothing."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.n, self.dim = n, dim

    def create_accumulator(self) -> list[Candidates]:
        return []

    def add_input(self, accumulator: list[Candidates], element: Candidates) -> list[Candidates]:
        accumulator.append(element)
        return self._bounded(accumulator)

    def merge_accumulators(self, accumulators) -> list[Candidates]:
        return self._bounded([part for accumulator in accumulators for part in accumulator])

    def compact(self, accumulator: list[Candidates]) -> list[Candidates]:
        return [self.extract_output(accumulator)] if len(accumulator) > 1 else accumulator

    def extract_output(self, accumulator: list[Candidates]) -> Candidates:
        return Candidates.concat(accumulator, self.dim).smallest(self.n)

    def _bounded(self, accumulator: list[Candidates]) -> list[Candidates]:
        if sum(len(part) for part in accumulator) <= 2 * self.n:
            return accumulator
        return [self.extract_output(accumulator)]
