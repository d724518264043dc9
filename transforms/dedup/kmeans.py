"""k-means for SemDeDup: a spherical faiss fit on a sample, exact nearest-centroid assignment.

The fit runs on one worker over at most ``fit_rows`` sampled rows (faiss-cpu, as DataComp and
autofaiss use; ``pip install clipbeam[dedup]``): spherical k-means (centroids re-normalized after
each step, so cosine is the metric), ``niter`` iterations, seeded by ``seed``. faiss's own
subsampling is turned off so the sample this job drew is the one fitted. Assignment is exact: the
largest cosine to any centroid, computed with NumPy in blocks of rows.

A cluster with more rows than the job's bound is split by a second k-means on the sample's rows of
that cluster (:func:`fit_splits`); the split is part of the fitted :class:`KMeansModel`.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KMeansModel", "assign", "fit", "fit_splits"]

# Rows per block of the assignment matmul: (block x k) floats in memory at once.
_ASSIGN_BLOCK = 4096


@dataclass
class KMeansModel:
    """Fitted centroids, and the second-level centroids of the clusters that were split.

    Attributes:
        centroids: ``(k, d)`` float32, unit norm.
        inertia: the fit's objective on its sample (sum of squared L2 distances to the nearest
            centroid; for unit vectors ``2 - 2 cos``).
        fit_seconds: time the fit took.
        sample_rows: rows the fit saw.
        requested: the ``--clusters`` asked for (``k`` is smaller when the sample had fewer
            rows).
        splits: cluster -> ``(k2, d)`` sub-centroids of a split cluster.
    """

    centroids: np.ndarray
    inertia: float
    fit_seconds: float
    sample_rows: int
    requested: int
    splits: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def to_bytes(self) -> bytes:
        arrays = {"centroids": self.centroids}
        for c, sub in self.splits.items():
            arrays[f"split_{c}"] = sub
        meta = np.array(
            [self.inertia, self.fit_seconds, self.sample_rows, self.requested], dtype=np.float64
        )
        buffer = io.BytesIO()
        np.savez(buffer, meta=meta, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KMeansModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = arrays["meta"]
            splits = {
                int(name.removeprefix("split_")): arrays[name]
                for name in arrays.files
                if name.startswith("split_")
            }
            return cls(
                centroids=arrays["centroids"],
                inertia=float(meta[0]),
                fit_seconds=float(meta[1]),
                sample_rows=int(meta[2]),
                requested=int(meta[3]),
                splits=splits,
            )


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "clipbeam dedup fits k-means with faiss-cpu: pip install 'clipbeam[dedup]' "
            "(or faiss-cpu) on the launcher and the workers"
        ) from None
    return faiss


def _fit_centroids(x: np.ndarray, k: int, seed: int, niter: int) -> tuple[np.ndarray, float]:
    """Spherical k-means of the rows of ``x`` (unit vectors): ``(centroids, inertia)``."""
    faiss = _faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k == 1:
        mean = x.mean(axis=0)
        centroid = (mean / max(float(np.linalg.norm(mean)), 1e-12))[None, :].astype(np.float32)
        return centroid, float(((x - centroid) ** 2).sum())
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=max(256, math.ceil(len(x) / k) + 1),
        min_points_per_centroid=1,
        verbose=False,
    )
    kmeans.train(x)
    centroids = np.asarray(kmeans.centroids, dtype=np.float32).reshape(k, -1)
    # faiss reports the objective it maximized for spherical k-means; state it as L2 inertia.
    _, nearest = assign(x, centroids)
    inertia = float(((x - centroids[nearest]) ** 2).sum())
    return centroids, inertia


def fit(sample: np.ndarray, clusters: int, *, seed: int, niter: int = 20) -> KMeansModel:
    """Fits ``clusters`` centroids to ``sample`` (unit rows); fewer when it has fewer rows.

    Duplicate rows count once towards how many centroids a sample can have: k-means cannot give
    two centroids to one point.
    """
    started = time.perf_counter()
    distinct = len(np.unique(sample, axis=0)) if len(sample) else 0
    k = max(1, min(clusters, distinct))
    if len(sample) == 0:
        raise ValueError("k-means needs at least one row; the sample is empty")
    centroids, inertia = _fit_centroids(sample, k, seed, niter)
    return KMeansModel(
        centroids=centroids,
        inertia=inertia,
        fit_seconds=time.perf_counter() - started,
        sample_rows=len(sample),
        requested=clusters,
    )


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row by cosine: ``(cosine distance, centroid index)``.

    Ties go to the lower index (``argmax``), so assignment is deterministic.
    """
    n = len(x)
    distance = np.empty(n, dtype=np.float32)
    nearest = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ASSIGN_BLOCK):
        block = x[start : start + _ASSIGN_BLOCK] @ centroids.T  # (b, d) @ (d, k) -> (b, k)
        best = block.argmax(axis=1)
        nearest[start : start + len(block)] = best
        distance[start : start + len(block)] = 1.0 - block[np.arange(len(block)), best]
    return distance, nearest


def fit_splits(
    model: KMeansModel,
    sample: np.ndarray,
    counts: np.ndarray,
    bound: int,
    *,
    seed: int,
    niter: int = 20,
) -> dict[int, np.ndarray]:
    """Second-level centroids for every cluster holding more than ``bound`` rows.

    A cluster of ``n`` rows is split in ``ceil(n / bound)`` parts by k-means on the sample's rows
    of that cluster (fewer parts when the sample holds fewer distinct rows of it; a cluster of
    one repeated vector cannot be split and stays whole).
    """
    _, nearest = assign(sample, model.centroids) if len(sample) else (None, np.zeros(0, int))
    splits: dict[int, np.ndarray] = {}
    for c in np.flatnonzero(counts > bound):
        rows = sample[nearest == c]
        parts = math.ceil(int(counts[c]) / bound)
        distinct = len(np.unique(rows, axis=0)) if len(rows) else 0
        parts = min(parts, distinct)
        if parts < 2:
            continue
        splits[int(c)], _ = _fit_centroids(rows, parts, seed + int(c) + 1, niter)
    return splits
