"""The queries of ``clipbeam search``, read and embedded once on the launcher.

Text queries come from ``--queries`` or ``--queries-file`` (one UTF-8 query per line) and are
embedded with the model's text tower (``--template`` as classify has it). Image queries come from
``--query-images PATTERN``: Parquet files (an image column, ``--query-image-column``, of bytes or
``{bytes, path}`` structs, and an id column, ``--query-id-column``) or image files (any other
file; the query is named by its file name). They are embedded with the image tower, in the
``exact`` preprocessing mode. A query image that cannot be decoded is left out and written to
``errors/queries.parquet`` with the reason (never its bytes); the other queries are answered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms import storage

__all__ = [
    "QUERY_ERRORS_FILE",
    "QueryImage",
    "embed_images",
    "embed_texts",
    "query_error_table",
    "read_query_images",
    "read_text_queries",
]

QUERY_ERRORS_FILE = "queries.parquet"


def read_text_queries(path: str) -> list[str]:
    """The queries of ``--queries-file``: its non-blank lines, stripped.

    Raises:
        LaunchError: the file is missing, unreadable, not UTF-8, or holds NUL bytes (binary).
            Messages give sizes and offsets, never the file's content.
    """
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise LaunchError(f"--queries-file {path} does not exist") from None
    except OSError as exc:
        raise LaunchError(f"cannot read --queries-file {path}: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LaunchError(
            f"--queries-file {path} is not UTF-8 text ({exc.reason} at byte {exc.start} of "
            f"{len(data)})"
        ) from None
    if "\x00" in text:
        raise LaunchError(
            f"--queries-file {path} is not text: it holds NUL bytes ({len(data)} bytes); "
            "expected one query per line"
        )
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclasses.dataclass
class QueryImage:
    """One query image as read: its label (id or file name), where it came from, its bytes."""

    label: str
    source: str
    row: int
    data: bytes | None


def _is_parquet(path: str) -> bool:
    if path.lower().endswith(".parquet"):
        return True
    with storage.open_input(path) as f:
        return f.read(4) == b"PAR1"


def _parquet_images(path: str, image_column: str, id_column: str | None) -> list[QueryImage]:
    import pyarrow.parquet as pq

    with storage.open_input(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if image_column not in names:
            raise LaunchError(
                f"--query-images {path} has no column {image_column!r} (columns: "
                f"{', '.join(names[:12])}); pass --query-image-column"
            )
        t = parquet.schema_arrow.field(image_column).type
        is_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if not (pa.types.is_binary(t) or pa.types.is_large_binary(t) or is_struct):
            raise LaunchError(
                f"--query-image-column {image_column!r} of {path} is {t}; expected image bytes "
                "(binary, or a struct with a bytes field)"
            )
        use_id = id_column if id_column in names else None
        table = parquet.read(columns=[c for c in (use_id, image_column) if c is not None])
    images = table.column(image_column)
    if is_struct:
        images = pa.chunked_array([chunk.field("bytes") for chunk in images.chunks], t[0].type)
    data = images.to_pylist()
    name = path.rstrip("/").rsplit("/", 1)[-1]
    labels = (
        [str(i) for i in table.column(use_id).to_pylist()]
        if use_id
        else [f"{name}:{row}" for row in range(len(data))]
    )
    return [
        QueryImage(label, path, row, b)
        for row, (label, b) in enumerate(zip(labels, data, strict=True))
    ]


def read_query_images(
    patterns: Sequence[str], image_column: str, id_column: str | None
) -> list[QueryImage]:
    """Every query image the patterns name, in order (files sorted per pattern, rows in order).

    Raises:
        LaunchError: a pattern matches nothing, or a Parquet file lacks a usable image column.
    """
    found = []
    for pattern in patterns:
        try:
            paths = storage.match(pattern)
        except (OSError, ValueError) as exc:
            raise LaunchError(f"cannot list --query-images {pattern}: {exc}") from None
        if not paths:
            raise LaunchError(f"--query-images {pattern} matches no file")
        for path in paths:
            if _is_parquet(path):
                found += _parquet_images(path, image_column, id_column)
            else:
                name = path.rstrip("/").rsplit("/", 1)[-1]
                found.append(QueryImage(name, path, 0, storage.read_bytes(path)))
    if not found:
        raise LaunchError(f"--query-images {', '.join(patterns)} holds no image (empty files)")
    return found


def _load(model: str) -> Any:
    from clipbeam.transforms.encoder import Encoder

    try:
        return Encoder.load(model, device="cpu")
    except (OSError, ValueError) as exc:
        raise LaunchError(f"--model {model} cannot be loaded: {exc}") from None


def embed_texts(model: str, queries: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """The queries' unit vectors from the model's text tower, ``(queries, projection_dim)``."""
    encoder = _load(model)
    return encoder.prompt_embeddings(list(queries), list(templates)).astype(np.float32)


def embed_images(
    model: str, images: Sequence[QueryImage]
) -> tuple[list[str], np.ndarray, list[tuple[QueryImage, str, str]]]:
    """Decodes and embeds query images with the model's image tower.

    Returns:
        ``(labels, vectors, failures)``: the labels and ``(n, projection_dim)`` unit vectors of
        the images that decoded, and ``(image, error type, message)`` for the others.

    Raises:
        LaunchError: no query image decodes.
    """
    from clipbeam.transforms.errors import RowError
    from clipbeam.transforms.images import decode_image

    decoded, labels, failures = [], [], []
    for image in images:
        what = f"query image {image.label}"
        try:
            decoded.append(decode_image(image.data, what=what))
        except RowError as exc:
            failures.append((image, exc.error_type, exc.message))
            continue
        labels.append(image.label)
    if not decoded:
        reasons = sorted({kind for _, kind, _ in failures})
        raise LaunchError(
            f"none of the {len(images)} --query-images decodes ({', '.join(reasons)}); "
            "pass image files or Parquet with image bytes"
        )
    vectors = _load(model).encode_images(decoded, mode="exact").astype(np.float32)
    return labels, vectors, failures


def query_error_table(
    failures: Sequence[tuple[QueryImage, str, str]], schema: pa.Schema
) -> pa.Table:
    """The failed query images as ``errors/`` rows (``schema``: the input's id field and the error
    fields). The id is the query's label where the id column holds strings, else null."""
    id_type = schema.field(0).type
    textual = pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
    columns = [
        pa.array([f[0].label if textual else None for f in failures], type=id_type),
        pa.array([f[0].source for f in failures], type=pa.string()),
        pa.array([f[0].row for f in failures], type=pa.int64()),
        pa.array([f[1] for f in failures], type=pa.string()),
        pa.array([f[2] for f in failures], type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)
