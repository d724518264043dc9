"""Images from Parquet cells: binary columns, Hugging Face image structs, or paths and URLs.

Every failure to get a decoded image out of a cell raises :class:`~transforms.errors.RowError`
with a precise ``error_type``, so the row lands in ``errors/`` and the job goes on.
"""

from __future__ import annotations

import io
import posixpath
import re
from typing import Any

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from transforms.errors import RowError

__all__ = ["decode_image", "load_image", "read_image_bytes", "resolve_image_format"]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def resolve_image_format(column: str, arrow_type: pa.DataType, requested: str = "auto") -> str:
    """Checks that an image column's type suits ``requested`` and resolves ``"auto"``.

    Args:
        column: the column name (for messages).
        arrow_type: the column's Arrow type.
        requested: ``"auto"``, ``"bytes"``, ``"hf-struct"`` or ``"path"``.

    Returns:
        ``"bytes"``, ``"hf-struct"`` or ``"path"``.

    Raises:
        ValueError: the type cannot hold images in that format; the message says which
            types each format needs.
    """
    is_binary = pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
    is_binary = is_binary or pa.types.is_binary_view(arrow_type)
    is_string = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    is_string = is_string or pa.types.is_string_view(arrow_type)
    is_struct = pa.types.is_struct(arrow_type) and {"bytes", "path"} & {
        arrow_type.field(i).name for i in range(arrow_type.num_fields)
    }
    found = "bytes" if is_binary else "path" if is_string else "hf-struct" if is_struct else None
    if requested == "auto" and found is not None:
        return found
    if requested == found:
        return found
    needs = {
        "bytes": "binary",
        "hf-struct": "struct<bytes: binary, path: string>",
        "path": "string",
        "auto": "binary, string, or struct<bytes, path>",
    }
    if requested not in needs:
        raise ValueError(f"image format must be one of {list(needs)} (got {requested!r})")
    hint = f"; it looks like --image-format {found}" if found else ""
    raise ValueError(
        f"image column {column!r} has type {arrow_type}, but image format {requested!r} needs "
        f"{needs[requested]}{hint}. Pick the right --image-column / --image-format."
    )


def decode_image(data: bytes | None, *, what: str = "image") -> Image.Image:
    """Decodes encoded image bytes (JPEG, PNG, WebP, ...) into a fully loaded PIL image.

    Raises:
        RowError: ``missing_image`` for ``None``, ``empty_image`` for zero bytes,
            ``corrupt_image`` when no decoder accepts the bytes.
    """
    if data is None:
        raise RowError("missing_image", f"{what} is null")
    if len(data) == 0:
        raise RowError("empty_image", f"{what} has zero bytes")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: truncated files fail here, not later in the processor
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL signals bad data with all of these (SyntaxError for some broken headers).
        raise RowError(
            "corrupt_image", f"{what} ({len(data)} bytes) cannot be decoded: {exc}"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise RowError("corrupt_image", f"{what} is too large to decode safely: {exc}") from exc
    return image


def read_image_bytes(location: str, *, timeout: float, base: str | None = None) -> bytes:
    """Reads an image file through fsspec: a local path, ``gs://``, ``http(s)://`` and so on.

    Args:
        location: the path or URL; a relative path is taken relative to ``base``.
        timeout: seconds before an HTTP request gives up.
        base: the folder relative paths start from (the Parquet file's folder).

    Raises:
        RowError: ``missing_image`` if nothing is there, ``unreadable_image`` if reading fails.
    """
    from transforms import storage

    if not location:
        raise RowError("missing_image", "image path is empty")
    url = location
    if base and not _URL.match(location) and not posixpath.isabs(location):
        url = posixpath.join(base, location)
    try:
        return storage.read_bytes(url, timeout=timeout)
    except FileNotFoundError as exc:
        raise RowError("missing_image", f"no image at {url}") from exc
    except _read_errors() as exc:
        raise RowError("unreadable_image", f"reading {url} failed: {exc!r}") from exc


def _read_errors() -> tuple[type[Exception], ...]:
    """What a failed read raises: OSError and timeouts, and aiohttp's errors for HTTP statuses
    other than 404 (aiohttp.ClientError is not an OSError)."""
    errors: tuple[type[Exception], ...] = (OSError, TimeoutError, ValueError)
    try:
        import aiohttp
    except ImportError:  # no HTTP filesystem installed: nothing aiohttp-specific can be raised
        return errors
    return (*errors, aiohttp.ClientError)


def load_image(
    value: Any, image_format: str, *, timeout: float = 30.0, base: str | None = None
) -> Image.Image:
    """Turns one image cell into a decoded PIL image.

    Args:
        value: the cell as Python (``bytes``, ``{"bytes": ..., "path": ...}`` or ``str``).
        image_format: ``"bytes"``, ``"hf-struct"`` or ``"path"`` (resolved, not ``"auto"``).
        timeout: seconds before reading an image by URL gives up.
        base: the folder relative paths start from.

    Raises:
        RowError: the image is missing, empty, corrupt or unreadable.
    """
    if value is None:
        raise RowError("missing_image", "image cell is null")
    if image_format == "bytes":
        if not isinstance(value, bytes):
            raise RowError("invalid_value", f"expected bytes, got {type(value).__name__}")
        return decode_image(value)
    if image_format == "hf-struct":
        if not isinstance(value, dict):
            raise RowError("invalid_value", f"expected a {{bytes, path}} struct, got {value!r}")
        data, path = value.get("bytes"), value.get("path")
        # As in Hugging Face datasets: embedded bytes win; a path alone points to a file.
        if data is not None:
            return decode_image(data, what=f"image {path!r}" if path else "image")
        if path:
            return decode_image(read_image_bytes(path, timeout=timeout, base=base), what=path)
        raise RowError("missing_image", "image struct has neither bytes nor path")
    if image_format == "path":
        if not isinstance(value, str):
            raise RowError("invalid_value", f"expected a path string, got {type(value).__name__}")
        return decode_image(read_image_bytes(value, timeout=timeout, base=base), what=value)
    raise ValueError(f"image_format must be bytes, hf-struct or path (got {image_format!r})")
