"""SemDeDup inside one cluster: rank, then each row's largest cosine to an earlier-ranked row.

As NeMo Curator implements SemDeDup (Abbas et al. 2023) with its default ``which_to_keep="hard"``:
the rows of a cluster are ranked by cosine distance to their centroid, farthest first (ties: the
larger id first); row ``i``'s ``max_similarity`` is the largest cosine between it and any row
ranked before it, and ``duplicate_of`` is that row. At threshold ``eps`` a row is removed when
``max_similarity >= 1 - eps``; the first row of a cluster is always kept.

Similarities are computed in ``block x block`` tiles, so memory stays ``O(block^2)`` besides the
cluster's own ``(n, d)`` matrix, and the ``n^2/2`` products are computed once for every ``eps``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_BLOCK", "keep_masks", "max_earlier", "max_similarity", "rank"]

DEFAULT_BLOCK = 1024


def rank(distance: np.ndarray, ids: Sequence) -> np.ndarray:
    """The order of a cluster's rows: farthest from the centroid first, ties by larger id."""
    if len(distance) == 0:
        return np.zeros(0, dtype=np.int64)
    id_order = np.argsort(np.asarray(ids), kind="stable")
    id_rank = np.empty(len(id_order), dtype=np.int64)
    id_rank[id_order] = np.arange(len(id_order))
    # lexsort: the last key is the primary one; both negated for "descending".
    return np.lexsort((-id_rank, -np.asarray(distance, dtype=np.float64)))


def max_similarity(ranked: np.ndarray, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``ranked`` (unit rows, in rank order), the largest cosine to an earlier
    row and that row's index.

    Returns:
        ``(similarity, index)``: float32 and int64 arrays of length ``n``; row 0 has
        ``-inf`` and ``-1`` (no earlier row). Of equal similarities the earliest row wins.
    """
    position = np.arange(len(ranked))
    return max_earlier(ranked, position, ranked, position, block)


def max_earlier(
    queries: np.ndarray,
    query_position: np.ndarray,
    candidates: np.ndarray,
    candidate_position: np.ndarray,
    block: int = DEFAULT_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the largest cosine to a candidate ranked before it.

    Positions are ranks in one order shared by queries and candidates (a row may be both, with
    one position). Tiles are ``block x block``; candidate blocks that hold no row ranked before
    any query of a block are skipped, so a cluster against itself costs ``n^2 / 2`` products.

    Returns:
        ``(similarity, index)``: per query the largest cosine (``-inf`` when no candidate is
        earlier) and the candidate's index (``-1``). Of equal similarities the earliest
        candidate wins.
    """
    order = np.argsort(candidate_position, kind="stable")
    c = np.ascontiguousarray(candidates[order], dtype=np.float32)
    c_position = np.asarray(candidate_position)[order]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q_position = np.asarray(query_position)
    n = len(q)
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for a in range(0, n, block):
        e = min(a + block, n)
        rows, positions = q[a:e], q_position[a:e, None]
        last = positions.max()
        for s in range(0, len(c), block):
            if c_position[s] >= last:
                break  # sorted: no candidate from here on is ranked before any query here
            t = min(s + block, len(c))
            tile = rows @ c[s:t].T  # (e - a, t - s): queries of this block x candidates
            tile = np.where(c_position[None, s:t] < positions, tile, -np.inf)
            local = tile.argmax(axis=1)
            value = tile[np.arange(e - a), local]
            better = value > best[a:e]
            best[a:e] = np.where(better, value, best[a:e])
            arg[a:e] = np.where(better, s + local, arg[a:e])
    found = arg >= 0
    arg[found] = order[arg[found]]
    return best, arg


def keep_masks(similarity: np.ndarray, eps: Sequence[float]) -> list[np.ndarray]:
    """One keep mask per ``eps``: a row is kept unless ``similarity >= 1 - eps``."""
    return [~(similarity >= 1.0 - e) for e in eps]
