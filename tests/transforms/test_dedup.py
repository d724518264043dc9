"""The dedup building blocks: the embedding reader, k-means, SemDeDup in one cluster."""

import numpy as np
import pyarrow as pa
import pytest

from clipbeam.transforms.dedup import kmeans, semdedup
from clipbeam.transforms.embeddings import (
    EmbeddingTypeError,
    embedding_dim,
    embedding_matrix,
    l2_normalize,
)


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x):
    """All pairs, no blocks: each row's largest cosine to an earlier row, and which."""
    s = (x.astype(np.float64) @ x.T.astype(np.float64)).astype(np.float32)
    best = np.full(len(x), -np.inf, np.float32)
    arg = np.full(len(x), -1)
    for i in range(1, len(x)):
        arg[i] = int(np.argmax(s[i, :i]))
        best[i] = s[i, arg[i]]
    return best, arg


# -- the embedding reader ------------------------------------------------------------------------


@pytest.mark.parametrize("value_type", [pa.float32(), pa.float16()])
def test_embedding_dim_of_fixed_size_and_list_columns(value_type):
    fixed = pa.schema([("e", pa.list_(value_type, 8))])
    assert embedding_dim(fixed, "e", "f.parquet") == 8
    first = pa.array([None, [1.0, 2.0, 3.0]], type=pa.list_(value_type))
    listed = pa.schema([("e", pa.list_(value_type))])
    assert embedding_dim(listed, "e", "f.parquet", first) == 3


@pytest.mark.parametrize(
    "arrow_type",
    [pa.string(), pa.list_(pa.int32(), 4), pa.list_(pa.float64()), pa.float32()],
)
def test_embedding_dim_names_the_column_and_its_type(arrow_type):
    schema = pa.schema([("vec", arrow_type)])
    with pytest.raises(EmbeddingTypeError) as info:
        embedding_dim(schema, "vec", "data.parquet", pa.array([None], type=arrow_type))
    assert "'vec'" in str(info.value) and str(arrow_type) in str(info.value)
    assert "data.parquet" in str(info.value)


def test_embedding_dim_missing_column_lists_the_columns():
    with pytest.raises(EmbeddingTypeError, match=r"'emb' is not in f.parquet .*id, other"):
        embedding_dim(pa.schema([("id", pa.string()), ("other", pa.int8())]), "emb", "f.parquet")


def test_embedding_matrix_rejects_null_short_and_nonfinite_rows():
    values = pa.array(
        [[1.0, 0.0, 0.0], None, [1.0, 2.0], [float("nan"), 0.0, 1.0], [0.0, 3.0, 4.0]],
        type=pa.list_(pa.float32()),
    )
    matrix, rejected = embedding_matrix(values, 3)
    assert [(r.index, r.error_type) for r in rejected] == [
        (1, "NullEmbedding"),
        (2, "EmbeddingDimension"),
        (3, "NonFiniteEmbedding"),
    ]
    np.testing.assert_array_equal(matrix[[0, 4]], [[1, 0, 0], [0, 3, 4]])
    assert not matrix[[1, 2, 3]].any()


def test_embedding_matrix_reads_float16_fixed_size_lists():
    x = unit_rows(5, 4).astype(np.float16)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), type=pa.float16()), 4)
    matrix, rejected = embedding_matrix(pa.chunked_array([column]), 4)
    assert not rejected and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, x.astype(np.float32))


def test_l2_normalize_reports_unnormalized_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0]], dtype=np.float32)
    normalized, zero, renormalized = l2_normalize(x)
    np.testing.assert_allclose(normalized[:2], [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    assert zero.tolist() == [False, False, True]
    assert renormalized.tolist() == [True, False, False]


# -- SemDeDup in one cluster ---------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1000])
def test_blocked_max_similarity_equals_all_pairs(block):
    x = unit_rows(61, 8)
    x[40] = x[3]  # an exact copy, and near copies: ties and high similarities
    x[50] = x[7] + 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    best, arg = semdedup.max_similarity(x, block)
    want_best, want_arg = brute_force(x)
    np.testing.assert_allclose(best[1:], want_best[1:], atol=1e-6)
    assert best[0] == -np.inf and arg[0] == -1
    # Indices agree except where two earlier rows are equally similar (within float error).
    s = x @ x.T
    for i in range(1, len(x)):
        assert arg[i] == want_arg[i] or abs(s[i, arg[i]] - s[i, want_arg[i]]) < 1e-6


def test_rank_puts_the_farthest_first_and_breaks_ties_by_larger_id():
    distance = np.array([0.1, 0.5, 0.5, 0.2], dtype=np.float32)
    ids = ["a", "b", "c", "d"]
    assert [ids[i] for i in semdedup.rank(distance, ids)] == ["c", "b", "d", "a"]


def test_keep_masks_one_per_eps():
    similarity = np.array([-np.inf, 0.995, 0.975, 0.5], dtype=np.float32)
    masks = semdedup.keep_masks(similarity, [0.01, 0.03])
    assert masks[0].tolist() == [True, False, True, True]
    assert masks[1].tolist() == [True, False, False, True]


# -- k-means ---------------------------------------------------------------------------------------


def test_fit_is_deterministic_for_a_seed_and_assignment_is_exact():
    x = unit_rows(400, 16, seed=1)
    a = kmeans.fit(x, 8, seed=3)
    b = kmeans.fit(x, 8, seed=3)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.k == 8 and a.inertia == b.inertia and a.sample_rows == 400
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, rtol=1e-5)
    distance, nearest = kmeans.assign(x, a.centroids)
    sims = x @ a.centroids.T
    np.testing.assert_array_equal(nearest, sims.argmax(axis=1))
    np.testing.assert_allclose(distance, 1.0 - sims.max(axis=1), atol=1e-6)
    restored = kmeans.KMeansModel.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(restored.centroids, a.centroids)
    assert restored.inertia == a.inertia


def test_fit_uses_fewer_clusters_than_distinct_rows():
    x = np.repeat(unit_rows(3, 8), 4, axis=0)  # 12 rows, 3 distinct
    model = kmeans.fit(x, 10, seed=0)
    assert model.k == 3 and model.requested == 10


def test_fit_splits_divides_oversized_clusters():
    x = unit_rows(300, 8, seed=2)
    model = kmeans.fit(x, 2, seed=0)
    _, nearest = kmeans.assign(x, model.centroids)
    counts = np.bincount(nearest, minlength=2)
    bound = int(counts.max()) // 3 + 1
    splits = kmeans.fit_splits(model, x, counts, bound, seed=0)
    for c in range(2):
        parts = -(-int(counts[c]) // bound)
        if parts > 1:
            assert splits[c].shape == (parts, 8)
        else:
            assert c not in splits
