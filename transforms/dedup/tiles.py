"""A cluster group too large for one worker, computed in tiles spread over workers.

When a ``(cluster, part)`` group still holds more than ``max_cluster_rows`` rows after the
second-level k-means (near copies of one image do not divide), its rows are dealt into
``m = ceil(n / max_cluster_rows)`` chunks by a hash of their id. Every pair of chunks
``{a, b}`` (``a <= b``) is one tile, a Beam key of its own: the tile holds the rows of two chunks
only, and computes for each of them its largest cosine to a row of the tile ranked before it
(rank: farthest from the centroid first, ties by larger id, a total order every tile computes
alike). The per-row maxima of the ``m`` tiles a row is in are merged where the chunk is written
(:class:`~clipbeam.transforms.dedup.stages.DedupGroup`): the result is the group's SemDeDup
computed whole, with ``m`` times the rows shuffled and at most two chunks in one worker.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from clipbeam.transforms.dedup import semdedup
from clipbeam.transforms.dedup.sample import priorities
from clipbeam.transforms.dedup.spec import DedupSpec

__all__ = ["Tile", "add_chunk", "chunk_count", "merge_partials", "to_tiles"]


def chunk_count(rows: int, bound: int) -> int:
    """Chunks of a group of ``rows`` rows: 1 up to ``bound`` rows."""
    return 1 if rows <= bound else math.ceil(rows / bound)


def add_chunk(keyed: tuple, counts: dict, spec: DedupSpec) -> tuple:
    """``((cluster, part), row)`` -> ``((cluster, part, chunk), row)``."""
    (c, p), row = keyed
    m = chunk_count(counts[(c, p)], spec.max_cluster_rows)
    chunk = 0 if m == 1 else int(priorities(spec.seed + 1, [row[0]])[0] % m)
    return (c, p, chunk), row


def to_tiles(keyed: tuple, counts: dict, spec: DedupSpec) -> Iterator[tuple]:
    """A row (or an exact-copy notice) of chunk ``a`` of a tiled group -> each of its tiles."""
    (c, p, a), value = keyed
    m = chunk_count(counts[(c, p)], spec.max_cluster_rows)
    if m == 1:
        return
    for b in range(m):
        yield (c, p, min(a, b), max(a, b)), (a, value)


class Tile(beam.DoFn):
    """One tile -> ``((cluster, part, chunk), (id, similarity, earlier id, its rank key))`` for
    every row of the tile that has an earlier-ranked row in it."""

    def __init__(self, spec: DedupSpec):
        self.spec = spec

    def process(self, element: tuple) -> Iterator[tuple]:
        (c, p, a, b), joined = element
        copies = {row_id for _, (row_id, _) in joined["exact"]}
        members = [(chunk, row) for chunk, row in joined["rows"] if row[0] not in copies]
        if not members:
            return
        ids = [row[0] for _, row in members]
        chunks = np.array([chunk for chunk, _ in members])
        distance = np.array([row[2] for _, row in members])
        position = np.empty(len(members), dtype=np.int64)
        position[semdedup.rank(distance, ids)] = np.arange(len(members))
        x = np.stack([row[1] for _, row in members])
        block = self.spec.block_rows
        if a == b:
            pairs = [(np.arange(len(members)), np.arange(len(members)))]
        else:  # only the pairs across the two chunks: each chunk against itself is its own tile
            in_a, in_b = np.flatnonzero(chunks == a), np.flatnonzero(chunks == b)
            pairs = [(in_a, in_b), (in_b, in_a)]
        for queries, candidates in pairs:
            best, arg = semdedup.max_earlier(
                x[queries], position[queries], x[candidates], position[candidates], block
            )
            for i, similarity, j in zip(queries, best, arg, strict=True):
                if j < 0:
                    continue
                k = int(candidates[j])
                # (distance, id) of the earlier row: larger is earlier; it breaks similarity ties
                earlier = (float(distance[k]), ids[k])
                yield (c, p, int(chunks[i])), (ids[i], float(similarity), ids[k], earlier)


def merge_partials(partials: list) -> dict:
    """Per row id: ``(similarity, earlier id)``, the largest over its tiles (ties: the earlier)."""
    merged: dict = {}
    for row_id, similarity, earlier, key in partials:
        held = merged.get(row_id)
        if held is None or (similarity, key) > (held[0], held[2]):
            merged[row_id] = (similarity, earlier, key)
    return {row_id: (s, e) for row_id, (s, e, _) in merged.items()}
