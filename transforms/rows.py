"""From a window of input rows to model outputs: validation, decoding, and error rows.

:func:`encode_window` takes one record batch of a unit, sorts its rows into good rows (with their
normalized embeddings, image sizes and captions) and error rows (with a :class:`RowError`), and
never raises for a bad cell. Images are decoded and preprocessed on a thread pool a batch ahead of
the model (:mod:`clipbeam.transforms.prefetch`) and dropped once embedded, so memory holds at most
two batches of preprocessed images whatever the window size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from clipbeam.transforms.encoder import Encoder
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.images import PreparedImage, prepare_image
from clipbeam.transforms.limits import check_caption
from clipbeam.transforms.prefetch import prefetch
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.units import WorkUnit

__all__ = [
    "ERROR_FIELDS",
    "EncodedWindow",
    "encode_window",
    "error_schema",
    "error_table",
    "id_array",
    "id_field",
]


@dataclass
class EncodedWindow:
    """The outcome of one window of rows.

    Attributes:
        batch: the input rows as read.
        good: indices (into ``batch``) of rows that were processed, ascending.
        image_embeddings: ``float32[len(good), D]`` normalized, or ``None`` without images.
        text_embeddings: ``float32[len(good), D]`` normalized, or ``None`` without texts.
        sizes: ``(width, height)`` of each good row's image (empty without images).
        texts: each good row's caption (empty without texts).
        errors: ``(index into batch, error)`` for every row that failed, ascending.
        head_outputs: ``float32[len(good), H]``, the heads' outputs (``spec.heads`` order), or
            ``None`` without images.
    """

    batch: pa.RecordBatch
    good: list[int]
    image_embeddings: np.ndarray | None
    text_embeddings: np.ndarray | None
    sizes: list[tuple[int, int]]
    texts: list[str]
    errors: list[tuple[int, RowError]]
    head_outputs: np.ndarray | None = None


def encode_window(
    batch: pa.RecordBatch, spec: JobSpec, encoder: Encoder, image_format: str, base: str
) -> EncodedWindow:
    """Validates, decodes and embeds one window of rows.

    Args:
        batch: the rows (with at least the image and text columns the spec names).
        spec: the job.
        encoder: the loaded model.
        image_format: the image column's resolved format (``"bytes"``, ``"hf-struct"``, ``"path"``).
        base: folder that relative image paths are resolved against (the input file's folder).
    """
    n = batch.num_rows
    failed: dict[int, RowError] = {}

    texts: list[str | None] = [None] * n
    if spec.text_column is not None:
        for i, value in enumerate(batch.column(spec.text_column).to_pylist()):
            try:
                texts[i] = check_caption(value, spec.limits, column=spec.text_column)
            except RowError as exc:
                failed[i] = exc

    # Images are read, decoded and preprocessed on a thread pool, a batch ahead of the model;
    # the first batches start now, so they decode while the texts are embedded.
    todo = [i for i in range(n) if i not in failed]
    batches = iter(())
    if spec.image_column is not None:
        cells = batch.column(spec.image_column)
        settings, limits = encoder.image_settings, spec.limits

        def prepare(i: int) -> PreparedImage:
            cell = cells[i].as_py()
            return prepare_image(
                cell, image_format, settings, mode=spec.preprocess, base=base, limits=limits
            )

        batches = prefetch(todo, prepare, spec.batch_size)

    # Texts of rows whose image fails are embedded too (and dropped): the model is busy while
    # the images decode, instead of waiting for them.
    text_rows = todo if spec.text_column is not None else []
    text_embedded = encoder.encode_texts([texts[i] for i in text_rows]) if text_rows else None

    image_rows: list[int] = []
    image_chunks: list[np.ndarray] = []
    head_chunks: list[np.ndarray] = []
    sizes: dict[int, tuple[int, int]] = {}
    for start, results in zip(range(0, len(todo), spec.batch_size), batches, strict=False):
        chunk, pixels = [], []
        for i, result in zip(todo[start : start + spec.batch_size], results, strict=True):
            if isinstance(result, RowError):
                failed[i] = result
                continue
            chunk.append(i)
            pixels.append(result.pixels)
            sizes[i] = result.size
        if pixels:
            embeddings, heads = encoder.embed_pixels(np.stack(pixels))
            image_chunks.append(embeddings)
            head_chunks.append(heads)
            image_rows.extend(chunk)
        del pixels, results  # preprocessed pixels are the big objects: free them before the next

    good = [i for i in range(n) if i not in failed]
    image_embeddings = head_outputs = None
    if spec.image_column is not None:
        embedded = dict(zip(image_rows, _rows(image_chunks, encoder.projection_dim), strict=True))
        image_embeddings = _stack([embedded[i] for i in good], encoder.projection_dim)
        scored = dict(zip(image_rows, _rows(head_chunks, len(encoder.heads)), strict=True))
        head_outputs = _stack([scored[i] for i in good], len(encoder.heads))
    text_embeddings = None
    good_texts: list[str] = []
    if spec.text_column is not None:
        good_texts = [texts[i] for i in good]  # type: ignore[misc]  # nulls are in `failed`
        if text_embedded is not None:
            position = {row: k for k, row in enumerate(text_rows)}
            text_embeddings = text_embedded[[position[i] for i in good]]
        else:
            text_embeddings = np.empty((0, encoder.projection_dim), dtype=np.float32)
    return EncodedWindow(
        batch=batch,
        good=good,
        image_embeddings=image_embeddings,
        text_embeddings=text_embeddings,
        sizes=[sizes[i] for i in good] if spec.image_column is not None else [],
        texts=good_texts,
        errors=sorted(failed.items()),
        head_outputs=head_outputs,
    )


def _rows(chunks: list[np.ndarray], width: int) -> np.ndarray:
    if not chunks:
        return np.empty((0, width), dtype=np.float32)
    return np.concatenate(chunks)


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows) if rows else np.empty((0, dim), dtype=np.float32)


def id_field(spec: JobSpec, schema: pa.Schema) -> pa.Field:
    """The id column every output carries: the input's id column, or ``id: string``."""
    if spec.id_column is None:
        return pa.field("id", pa.string(), nullable=False)
    return schema.field(spec.id_column)


def id_array(
    spec: JobSpec, unit: WorkUnit, batch: pa.RecordBatch, start: int, indices: list[int]
) -> pa.Array:
    """The ids of ``indices`` (rows of ``batch``, which starts at row ``start`` of the unit)."""
    if spec.id_column is not None:
        return batch.column(spec.id_column).take(pa.array(indices, type=pa.int64()))
    return pa.array([unit.row_id(start + i) for i in indices], type=pa.string())


ERROR_FIELDS = (
    pa.field("source_file", pa.string()),
    pa.field("row_number", pa.int64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
)


def error_schema(spec: JobSpec, input_schema: pa.Schema) -> pa.Schema:
    """Schema of ``errors/`` files: the id column, then where and why."""
    return pa.schema([id_field(spec, input_schema), *ERROR_FIELDS])


def error_table(
    spec: JobSpec,
    unit: WorkUnit,
    window: EncodedWindow,
    start: int,
    schema: pa.Schema,
) -> pa.Table:
    """The error rows of one window, in ``schema`` (see :func:`error_schema`)."""
    indices = [i for i, _ in window.errors]
    columns = [
        id_array(spec, unit, window.batch, start, indices),
        pa.array([unit.path] * len(indices), type=pa.string()),
        pa.array([unit.row_offset + start + i for i in indices], type=pa.int64()),
        pa.array([e.error_type for _, e in window.errors], type=pa.string()),
        pa.array([e.message for _, e in window.errors], type=pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)
