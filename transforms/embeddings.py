"""Embeddings as input: one reader for every job that takes vectors (dedup, search).

Accepted is ``clipbeam embed`` output (``image_embedding``) or any Parquet with an embedding
column of type ``fixed_size_list<float16|float32>`` or ``list<float16|float32>``. The launcher
checks the column's type with :func:`embedding_dim`, which also learns the dimension (from the
type, or from the first row of a ``list`` column); workers turn each batch into a float32 matrix
with :func:`embedding_matrix` and L2-normalize it with :func:`l2_normalize`, which also counts
the rows that were not normalized, so a job can say so.

Rows whose embedding is null, of another length, not finite or all zeros cannot be used: they are
reported per row (:class:`Rejected`) for the job's ``errors/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NORM_TOLERANCE",
    "EmbeddingTypeError",
    "Rejected",
    "embedding_dim",
    "embedding_matrix",
    "l2_normalize",
]

# A row whose L2 norm differs from 1 by more than this was not normalized (float16 storage
# rounds a normalized 1024-d vector's norm by about 1e-3 at most).
NORM_TOLERANCE = 2e-3

_FLOATS = (pa.float16(), pa.float32())


class EmbeddingTypeError(ValueError):
    """The embedding column is missing or of a type that does not hold one vector per row."""


@dataclass(frozen=True)
class Rejected:
    """Why one row's embedding cannot be used (an ``errors/`` row)."""

    index: int
    error_type: str
    message: str


def _describe(arrow_type: pa.DataType) -> str:
    return str(arrow_type)


def embedding_dim(schema: pa.Schema, column: str, path: str, first: pa.Array | None = None) -> int:
    """Checks that ``column`` holds embeddings and returns their dimension.

    Args:
        schema: the file's Arrow schema.
        column: the embedding column's name.
        path: the file (named in messages).
        first: for a ``list`` column, some of its values (the first non-null one sets the
            dimension); not needed for ``fixed_size_list``.

    Raises:
        EmbeddingTypeError: the column is missing, not a list of float16/float32, or (a ``list``
            column) has no non-null row to learn the dimension from.
    """
    if column not in schema.names:
        raise EmbeddingTypeError(
            f"embedding column {column!r} is not in {path} (its columns: "
            f"{', '.join(schema.names)}); name it with --embedding-column"
        )
    arrow_type = schema.field(column).type
    is_list = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    if not (pa.types.is_fixed_size_list(arrow_type) or is_list) or (
        arrow_type.value_type not in _FLOATS
    ):
        raise EmbeddingTypeError(
            f"embedding column {column!r} of {path} is {_describe(arrow_type)}; expected "
            "fixed_size_list<float32> or list<float32> (or float16), one vector per row"
        )
    if pa.types.is_fixed_size_list(arrow_type):
        if arrow_type.list_size < 1:
            raise EmbeddingTypeError(f"embedding column {column!r} of {path} has size 0")
        return int(arrow_type.list_size)
    lengths = pc.drop_null(pc.list_value_length(first)) if first is not None else pa.array([])
    lengths = lengths.filter(pc.greater(lengths, 0)) if len(lengths) else lengths
    if not len(lengths):
        raise EmbeddingTypeError(
            f"embedding column {column!r} of {path} is {_describe(arrow_type)} and its first rows "
            "hold no vector to learn the dimension from"
        )
    return int(lengths[0].as_py())


def embedding_matrix(values: pa.Array | pa.ChunkedArray, dim: int) -> tuple[np.ndarray, list]:
    """The rows of an embedding column as a float32 ``(n, dim)`` matrix.

    Args:
        values: the column (``fixed_size_list`` or ``list`` of float16/float32).
        dim: the dimension every row must have.

    Returns:
        ``(matrix, rejected)``: the matrix has a row for every input row (zeros where a row was
        rejected); ``rejected`` lists :class:`Rejected` rows (null, wrong length, not finite).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    matrix = np.zeros((n, dim), dtype=np.float32)
    rejected: list[Rejected] = []
    if n == 0:
        return matrix, rejected
    if pa.types.is_fixed_size_list(values.type):
        lengths = np.full(n, values.type.list_size, dtype=np.int64)
    else:
        lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy().astype(np.int64)
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    good = valid & (lengths == dim)
    if good.any():
        rows = values.filter(pa.array(good))
        flat = rows.flatten().to_numpy(zero_copy_only=False)
        # (n_good * dim) -> (n_good, dim); nulls inside a vector became NaN via float conversion
        matrix[good] = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    finite = np.isfinite(matrix).all(axis=1)
    for i in np.flatnonzero(~good | ~finite):
        if not valid[i]:
            rejected.append(Rejected(int(i), "NullEmbedding", "the embedding is null"))
        elif lengths[i] != dim:
            rejected.append(
                Rejected(
                    int(i),
                    "EmbeddingDimension",
                    f"the embedding has {int(lengths[i])} values; the job's dimension is {dim}",
                )
            )
        else:
            rejected.append(
                Rejected(int(i), "NonFiniteEmbedding", "the embedding holds NaN or infinity")
            )
    bad = ~good | ~finite
    matrix[bad] = 0.0
    return matrix, rejected


def l2_normalize(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalizes the rows of ``matrix`` (float32, in place on a copy).

    Returns:
        ``(normalized, zero, renormalized)``: the matrix; a mask of all-zero rows (left zero,
        they have no direction: a caller reports them); a mask of the rows whose norm was off 1
        by more than :data:`NORM_TOLERANCE` (the input was not normalized).
    """
    x = np.asarray(matrix, dtype=np.float32)
    # float64 norms: float32 squares of float16-stored vectors lose the digits the check needs
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    zero = norms == 0.0
    renormalized = ~zero & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    scale = np.where(zero, 1.0, norms).astype(np.float32)
    return x / scale[:, None], zero, renormalized
