"""Raw images embedded in the reading step of dedup and search (``--model``), and the images of
dedup's reference set (``--against-image-column``).

The reader (:class:`clipbeam.transforms.dedup.read.ReadUnit`) takes either a column of
embeddings or a column of images. With images, every record batch goes through the same
validation, decoding and model as ``clipbeam embed``
(:func:`clipbeam.transforms.rows.encode_window`, one model per worker process through
:func:`clipbeam.transforms.encoder.acquire_encoder`); a row whose image fails becomes an
``errors/`` row with the embed job's ``error_type`` and message.
"""

from __future__ import annotations

import dataclasses
import posixpath

import numpy as np
import pyarrow as pa

from clipbeam.transforms.dedup.spec import DedupSpec
from clipbeam.transforms.embeddings import Rejected
from clipbeam.transforms.encoder import Encoder, acquire_encoder
from clipbeam.transforms.images import resolve_image_format
from clipbeam.transforms.rows import encode_window
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.units import WorkUnit, plain_batch

__all__ = ["acquire", "embed_record", "image_job", "reference_image_job"]


def image_job(spec: DedupSpec) -> JobSpec:
    """The embed job whose image handling the reader applies: same model, device, dtype,
    batch size and image column, no captions."""
    if spec.model is None or spec.image_column is None:
        raise ValueError("embedding raw images needs a model and an image column")
    return JobSpec(
        kind="embed",
        model=spec.model,
        output=spec.output,
        image_column=spec.image_column,
        text_column=None,
        id_column=spec.id_column,
        batch_size=spec.batch_size,
        device=spec.device,
        dtype=spec.dtype,
    )


def reference_image_job(spec: DedupSpec) -> JobSpec:
    """The embed job of the reference set's images (``--against-image-column``): the input's
    model and settings, the reference set's image and id columns."""
    if spec.against_image_column is None:
        raise ValueError("the reference set holds embeddings, not images")
    return dataclasses.replace(
        image_job(spec), image_column=spec.against_image_column, id_column=spec.against_id_column
    )


def acquire(spec: DedupSpec) -> Encoder:
    """The worker process's encoder of ``spec.model`` (loaded on first use, then shared)."""
    return acquire_encoder(
        spec.model, device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size
    )


def embed_record(
    record: pa.RecordBatch, job: JobSpec, encoder: Encoder, unit: WorkUnit
) -> tuple[np.ndarray, list[Rejected]]:
    """One record batch's images -> ``(float32[n, D] embeddings, rejected rows)``.

    A rejected row's line of the matrix is zeros; the caller drops it.
    """
    record = plain_batch(record)
    column = job.image_column
    image_format = resolve_image_format(column, record.schema.field(column).type, "auto")
    window = encode_window(record, job, encoder, image_format, posixpath.dirname(unit.path))
    matrix = np.zeros((record.num_rows, encoder.projection_dim), dtype=np.float32)
    if window.good:
        matrix[window.good] = window.image_embeddings
    rejected = [Rejected(i, error.error_type, error.message) for i, error in window.errors]
    return matrix, rejected
