"""A look at the first rows at launch: is the image column really images?

A column of the right Arrow type can still be the wrong column: ``--image-column caption`` is a
string column, read as file paths, and every row would go to ``errors/``. :func:`check_sample`
reads the first :data:`SAMPLE_ROWS` cells of the image column of the first work unit and fails
the launch when they are strings none of which looks like a path or URL; bytes none of which is
an image get a warning (errors/ describes each, and ``--max-error-fraction`` fails a job where
nearly every row fails). One usable cell is enough; bad rows among good ones are what
``errors/`` is for.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any

from clipbeam.pipeline.options import LaunchError
from clipbeam.transforms.spec import JobSpec
from clipbeam.transforms.units import WorkUnit

__all__ = ["SAMPLE_ROWS", "check_sample", "looks_like_image", "looks_like_location"]

SAMPLE_ROWS = 32

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{2,5}$")


def looks_like_location(value: str) -> bool:
    """Whether a string can be a file path or URL: a scheme, a folder separator or an extension.

    Captions have spaces and end in words or punctuation; a bare file name has an extension.
    """
    value = value.strip()
    if not value or "\n" in value:
        return False
    return bool(_SCHEME.match(value) or "/" in value or "\\" in value or _EXTENSION.search(value))


def looks_like_image(data: bytes) -> bool:
    """Whether Pillow recognizes ``data`` as an image (from its header; nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Image.DecompressionBombError:
        return True  # an image, too large: the row's limits deal with it
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _usable(value: Any, image_format: str) -> bool | None:
    """Whether one cell looks usable; ``None`` for a null cell (not evidence either way)."""
    if image_format == "hf-struct" and isinstance(value, dict):
        if value.get("bytes") is not None:
            return looks_like_image(value["bytes"])
        value, image_format = value.get("path"), "path"
    if value is None:
        return None
    if image_format == "path":
        return isinstance(value, str) and looks_like_location(value)
    return isinstance(value, bytes) and looks_like_image(value)


def check_sample(spec: JobSpec, unit: WorkUnit, image_format: str | None) -> None:
    """Fails when none of the first non-null image cells of ``unit`` is usable.

    Args:
        spec: the job.
        unit: the first work unit (its file's first rows are read).
        image_format: the image column's resolved format (``None``: the job reads no images).

    Raises:
        LaunchError: every sampled non-null cell is a string that is no path or URL.
    """
    if spec.image_column is None or image_format is None:
        return
    import pyarrow.parquet as pq

    from clipbeam.transforms import storage

    with storage.open_input(unit.path) as f:
        batches = pq.ParquetFile(f).iter_batches(
            batch_size=SAMPLE_ROWS, row_groups=[unit.row_group], columns=[spec.image_column]
        )
        batch = next(batches, None)
    values = [] if batch is None else batch.column(0).to_pylist()
    verdicts = [v for v in (_usable(value, image_format) for value in values) if v is not None]
    if not verdicts or any(verdicts):
        return
    where = f"--image-column {spec.image_column!r}: the first {len(verdicts)} non-null values"
    if image_format != "path":
        # Bytes that are no image are described row by row in errors/ (a JSON reply, an HTML
        # page...), and --max-error-fraction fails the job if nearly all are: warn only.
        logging.getLogger("clipbeam").warning(
            "%s of %s are bytes, none of which is an image Pillow recognizes; they will go to "
            "errors/. Is it the column that holds encoded images (JPEG, PNG, WebP...)?",
            where,
            unit.path,
        )
        return
    raise LaunchError(
        f"{where} of {unit.path} are strings, none of which looks like a file path or URL (no "
        "scheme, folder separator or file extension); every row would go to errors/. Is it a "
        "caption column? Pass the column that holds image paths or image bytes."
    )
