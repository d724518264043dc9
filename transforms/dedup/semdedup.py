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

__all__ = ["DEFAULT_BLOCK", "keep_masks", "max_similarity", "rank"]

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
    x = np.ascontiguousarray(ranked, dtype=np.float32)
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for a in range(0, n, block):
        e = min(a + block, n)
        rows = x[a:e]
        for s in range(0, e, block):
            t = min(s + block, e)
            tile = rows @ x[s:t].T  # (e - a, t - s): rows of this block x earlier candidates
            if t > a:  # the diagonal block: only j < i counts
                i = np.arange(a, e)[:, None]
                j = np.arange(s, t)[None, :]
                tile = np.where(j < i, tile, -np.inf)
            local = tile.argmax(axis=1)
            value = tile[np.arange(e - a), local]
            better = value > best[a:e]
            best[a:e] = np.where(better, value, best[a:e])
            arg[a:e] = np.where(better, s + local, arg[a:e])
    return best, arg


def keep_masks(similarity: np.ndarray, eps: Sequence[float]) -> list[np.ndarray]:
    """One keep mask per ``eps``: a row is kept unless ``similarity >= 1 - eps``."""
    return [~(similarity >= 1.0 - e) for e in eps]
