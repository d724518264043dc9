"""QueryHeaps (the per-unit heaps of clipbeam search) against a plain sort, with many exact ties."""

import numpy as np
import pytest

from clipbeam.transforms.search import QueryHeaps, SearchSpec, order_key, top_k_rows


def _spec(n, **kwargs):
    return SearchSpec(output="-", model="-", queries=tuple(f"q{i}" for i in range(n)), **kwargs)


@pytest.mark.parametrize(
    ("top_k", "floor"), [(5, None), (1, None), (40, None), (None, 0.0), (7, 0.25)]
)
def test_heaps_over_batches_equal_a_sort_of_all_rows(top_k, floor):
    rng = np.random.default_rng(3)
    dim, rows = 8, 700
    # Vectors on a coarse grid: similarities repeat exactly, so ties decide many places.
    x = rng.integers(-1, 2, size=(rows, dim)).astype(np.float32)
    x[np.abs(x).sum(axis=1) == 0, 0] = 1.0
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.integers(-1, 2, size=(300, dim)).astype(np.float32)  # > one block of 256 queries
    q[np.abs(q).sum(axis=1) == 0, 1] = 1.0
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [f"r{i:04d}" for i in rng.permutation(rows)]
    spec = _spec(len(q), top_k=top_k, min_similarity=floor, max_results_per_query=30)
    heaps = QueryHeaps(spec, q)
    for lo in range(0, rows, 97):
        heaps.add(ids[lo : lo + 97], x[lo : lo + 97])
    # The same float32 products: GEMM rounds by block shape, so by the same query blocks and
    # batches (the heaps' logic is under test here, not the arithmetic).
    s = np.concatenate(
        [
            np.concatenate([q[b : b + 256] @ x[lo : lo + 97].T for b in (0, 256)])
            for lo in range(0, rows, 97)
        ],
        axis=1,
    )
    for qi in range(len(q)):
        every = [
            (float(s[qi, j]), ids[j]) for j in range(rows) if floor is None or s[qi, j] >= floor
        ]
        want = sorted(every, key=order_key)[: spec.limit]
        assert heaps.best[qi] == want, qi
        if floor is not None:
            assert heaps.matches[qi] == len(every)


def test_top_k_rows_keeps_every_tie_of_the_kth_value_for_the_id_to_decide():
    s = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    assert top_k_rows(s, ["e", "d", "c", "b", "a"], 2) == [[1, 3]]
    assert top_k_rows(s, ["e", "d", "c", "b", "a"], 3, floor=0.6) == [[1]]
    assert top_k_rows(s, list("abcde"), 9, floor=0.95) == [[]]
