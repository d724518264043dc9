"""Images from Parquet cells: binary columns, Hugging Face image structs, or paths and URLs.

Every failure to get a decoded image out of a cell raises
:class:`~clipbeam.transforms.errors.RowError`
with a precise ``error_type``, so the row lands in ``errors/`` and the job goes on. What a row may
cost (bytes, pixels, fetch time, URL schemes) is bounded by
:class:`~clipbeam.transforms.limits.Limits`.
Only the raster formats of the web are decoded (:data:`WEB_IMAGE_FORMATS`), and every image comes
out in a pixel mode the image processors turn into RGB faithfully.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import posixpath
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from clipbeam.transforms.errors import RowError
from clipbeam.transforms.image_structure import check_structure
from clipbeam.transforms.limits import DEFAULT_LIMITS, Limits, read_limited
from clipbeam.transforms.redact import redact_url

if TYPE_CHECKING:
    from clipbeam.model.image_settings import ImageSettings

__all__ = [
    "WEB_IMAGE_FORMATS",
    "PreparedImage",
    "decode_image",
    "image_bytes",
    "load_image",
    "load_pixels",
    "open_image",
    "prepare_image",
    "read_image_bytes",
    "resolve_image_format",
]

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")

# Formats a job decodes: those of images published on the web. Pillow opens many more, but each
# decoder is attack surface for data nobody vetted, and one of them (EPS) runs Ghostscript, a
# PostScript interpreter, on the file: a row must never make a worker execute what it holds.
WEB_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO", "AVIF")

# What Pillow's parsers and decoders raise on malformed files besides OSError (truncated data,
# impossible header fields, broken chunk tables).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)

# Pixel modes the image processors convert to RGB faithfully (Pillow's convert, with alpha
# composited onto white); 16-bit, 32-bit and float modes would be clipped there, not scaled.
_RGB_READY_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
# Deep (16-bit, 32-bit, float) images are scaled to 8 bits this many pixels at a time.
_STRIP_PIXELS = 1 << 18


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


def decode_image(
    data: bytes | None, *, what: str = "image", limits: Limits = DEFAULT_LIMITS
) -> Image.Image:
    """Decodes encoded image bytes (JPEG, PNG, WebP, ...) into a fully loaded PIL image.

    Animated images give their first frame. 16-bit, 32-bit and float images are scaled to 8 bits,
    and modes such as LAB or HSV converted to RGB, so the image processors can take any result.

    Args:
        data: the encoded image.
        what: how messages name the image (its path or URL, say).
        limits: ``max_image_bytes`` and ``max_image_pixels`` apply; the pixel count is checked
            from the header, before any pixel is decoded.

    Raises:
        RowError: ``missing_image`` for ``None``, ``empty_image`` for zero bytes,
            ``image_too_large`` over a limit, ``image_too_complex`` for a structure that would
            stall the decoder (:mod:`~clipbeam.transforms.image_structure`), ``not_an_image``
            for another kind of file (HTML page, SVG, PDF, text...), ``corrupt_image`` when the
            bytes cannot be decoded.
    """
    return load_pixels(open_image(data, what=what, limits=limits), what)


def open_image(
    data: bytes | None, *, what: str = "image", limits: Limits = DEFAULT_LIMITS
) -> Image.Image:
    """Opens encoded image bytes and checks them against ``limits``, without decoding pixels.

    The first half of :func:`decode_image`: the header is parsed, the format allowed and the
    pixel count checked. :func:`load_pixels` is the second half; in between, a caller may ask
    for a reduced decoding (``model.image_transforms.draft_image``).

    Raises:
        RowError: as :func:`decode_image`, except for errors in the pixel data.
    """
    if data is None:
        raise RowError("missing_image", f"{what} is null")
    if len(data) == 0:
        raise RowError("empty_image", f"{what} has zero bytes")
    if len(data) > limits.max_image_bytes:
        raise RowError(
            "image_too_large",
            f"{what} has {len(data)} bytes, over --max-image-bytes {limits.max_image_bytes}; "
            "raise it if such files are real images",
        )
    # Before Pillow parses anything: its parsers loop over the chunks this counts.
    check_structure(data, what)
    try:
        image = Image.open(io.BytesIO(data), formats=_decodable_formats())
    except Image.DecompressionBombError as exc:
        # Pillow refuses twice its own threshold outright; the limit is never above that.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{claimed.group(1)} pixels" if claimed else "more pixels than Pillow opens"
        raise _too_many_pixels(what, pixels, limits) from None
    except UnidentifiedImageError:
        raise _unidentified(data, what) from None
    except _DECODE_ERRORS as exc:
        raise RowError(
            "corrupt_image",
            f"{what} ({len(data)} bytes): its header cannot be parsed ({exc}): the file is "
            "truncated or corrupt",
        ) from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise _too_many_pixels(
            what, f"{width}x{height} = {width * height} pixels ({image.format})", limits
        )
    return image


def load_pixels(image: Image.Image, what: str = "image") -> Image.Image:
    """Decodes the pixels of an image from :func:`open_image`, in a mode the processors take.

    Raises:
        RowError: ``corrupt_image`` when the pixel data cannot be decoded.
    """
    width, height = image.size
    try:
        image.load()  # decode now: truncated files fail here, not later in the processor
    except _DECODE_ERRORS as exc:
        raise RowError(
            "corrupt_image",
            f"{what} is a {width}x{height} {image.format} whose pixel data cannot be decoded "
            f"({exc}): the file is truncated or corrupt",
        ) from None
    return _rgb_ready(image, what)


@functools.cache
def _decodable_formats() -> tuple[str, ...]:
    """:data:`WEB_IMAGE_FORMATS` this Pillow build can open (AVIF needs libavif)."""
    Image.init()
    return tuple(f for f in WEB_IMAGE_FORMATS if f in Image.OPEN)


def _too_many_pixels(what: str, pixels: str, limits: Limits) -> RowError:
    return RowError(
        "image_too_large",
        f"{what} declares {pixels}, over --max-image-pixels {limits.max_image_pixels}: a "
        "decompression bomb, or a huge scan (raise the limit if such images are real)",
    )


def _rgb_ready(image: Image.Image, what: str) -> Image.Image:
    """``image`` in a mode the processors convert to RGB without clipping (see above)."""
    if image.mode in _RGB_READY_MODES:
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return _to_eight_bits(image)
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise RowError(
            "corrupt_image",
            f"{what} has pixel mode {image.mode}, which cannot be converted to RGB ({exc})",
        ) from None


def _to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image scaled to 8-bit greyscale (mode ``L``).

    16-bit pixels are divided by 257; floats in 0-1 multiplied by 255; other 32-bit and float
    pixels scaled by their range (to 16 bits, or to their largest value). Non-finite floats
    become 0. The work goes a strip of :data:`_STRIP_PIXELS` at a time, so its memory is the
    8-bit result plus one strip, not a float64 copy of the image (8 times the 8-bit result).
    """
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // max(1, width))
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        pixels = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64)
        if image.mode == "F":
            np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return pixels

    if image.mode.startswith("I;16"):
        scale = 255 / 65535
    else:
        largest = max((float(strip(*span).max()) for span in strips), default=0.0)
        if image.mode == "F" and largest <= 1.0:
            scale = 255.0  # 0-1 floats
        else:
            # 32-bit integers (Pillow's mode for some 16-bit files) and other floats: by range.
            scale = 255 / 65535 if 255 < largest <= 65535 else 1.0
            scale = 255 / largest if largest > 65535 else scale
    eight_bit = np.empty((height, width), dtype=np.uint8)
    for top, bottom in strips:
        pixels = strip(top, bottom)
        pixels *= scale
        np.rint(pixels, out=pixels)
        np.clip(pixels, 0, 255, out=pixels)
        eight_bit[top:bottom] = pixels
    return Image.fromarray(eight_bit, mode="L")


def _unidentified(data: bytes, what: str) -> RowError:
    """The error for bytes no allowed decoder accepts: what they are, if that can be told."""
    kind = _sniff(data)
    if kind is not None:
        return RowError("not_an_image", f"{what} ({len(data)} bytes) is {kind}, not an image")
    for magic, name in _MAGIC:
        if data.startswith(magic) and (name != "WebP" or data[8:12] == b"WEBP"):
            return RowError(
                "corrupt_image",
                f"{what} ({len(data)} bytes) starts like a {name} file, but its header is corrupt "
                "or truncated",
            )
    return RowError(
        "corrupt_image",
        f"{what} ({len(data)} bytes of binary data) is in none of the formats clipbeam decodes "
        f"({', '.join(WEB_IMAGE_FORMATS)}): a corrupt file, or another kind of file",
    )


# Signatures of the formats clipbeam decodes, to tell a damaged image from another kind of file.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"RIFF", "WebP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(data: bytes) -> str | None:
    """Names the common things saved in place of an image, so a person knows what went wrong.

    Only the kind is named, never any of the content: what comes back instead of an image is
    often a login page, an API's JSON reply or a local file (an OAuth token, a credentials
    file), and error rows are read by more people than the data's owner.
    """
    head = data[:4096]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"%pdf-"):
        return "a PDF document"
    if text.startswith(b"%!ps"):
        return "a PostScript (EPS) file, which is never rendered: that would run Ghostscript on it"
    if b"<svg" in text:
        return "an SVG drawing (vector graphics are not rasterized here; convert it to PNG)"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "an HTML page (a web server's error or login page saved as the image?)"
    if text.startswith(b"<?xml"):
        return "an XML document"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(data) == len(head) or exc.start < len(head) - 3:
            return None  # binary, not text
        decoded = head[: exc.start].decode("utf-8")  # the cut split a multi-byte character
    if decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return "a JSON document" if text.startswith((b"{", b"[")) else "plain text"
    return None


def read_image_bytes(
    location: str,
    *,
    timeout: float | None = None,
    base: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Reads an image file: a local path, ``gs://``, ``http(s)://`` and so on.

    Args:
        location: the path or URL; a relative path is taken relative to ``base``.
        timeout: seconds the read may take in all; overrides ``limits.fetch_timeout``.
        base: the folder relative paths start from (the Parquet file's folder).
        limits: the job's limits (see :func:`clipbeam.transforms.limits.read_limited`).

    Raises:
        RowError: ``missing_image`` if nothing is there, ``url_not_allowed``,
            ``image_too_large`` or ``unreadable_image`` otherwise.
    """
    if not location:
        raise RowError("missing_image", "image path is empty")
    url = location
    if base and not _URL.match(location) and not posixpath.isabs(location):
        url = posixpath.join(base, location)
    if timeout is not None:
        limits = dataclasses.replace(limits, fetch_timeout=timeout)
    return read_limited(url, limits)


def load_image(
    value: Any,
    image_format: str,
    *,
    timeout: float | None = None,
    base: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Image.Image:
    """Turns one image cell into a decoded PIL image.

    Args:
        value: the cell as Python (``bytes``, ``{"bytes": ..., "path": ...}`` or ``str``).
        image_format: ``"bytes"``, ``"hf-struct"`` or ``"path"`` (resolved, not ``"auto"``).
        timeout: seconds reading an image by URL may take; overrides ``limits.fetch_timeout``.
        base: the folder relative paths start from.
        limits: what one image may cost (:class:`~clipbeam.transforms.limits.Limits`).

    Raises:
        RowError: the image is missing, empty, too large, not an image, corrupt or unreadable.
    """
    if timeout is not None:
        limits = dataclasses.replace(limits, fetch_timeout=timeout)
    data, what = image_bytes(value, image_format, base=base, limits=limits)
    return decode_image(data, what=what, limits=limits)


def image_bytes(
    value: Any, image_format: str, *, base: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytes, str]:
    """The encoded image of one cell, read from its file or URL if need be, and how to name it.

    Args:
        value: the cell as Python (``bytes``, ``{"bytes": ..., "path": ...}`` or ``str``).
        image_format: ``"bytes"``, ``"hf-struct"`` or ``"path"`` (resolved, not ``"auto"``).
        base: the folder relative paths start from.
        limits: what one image may cost (:class:`~clipbeam.transforms.limits.Limits`).

    Returns:
        ``(data, what)``: the bytes, and the name messages use for them (a path, or "image").

    Raises:
        RowError: the cell is null or of the wrong type, or its file cannot be read.
    """
    if value is None:
        raise RowError("missing_image", "image cell is null")
    if image_format == "bytes":
        if not isinstance(value, bytes):
            raise RowError("invalid_value", f"expected bytes, got {type(value).__name__}")
        return value, "image"
    if image_format == "hf-struct":
        if not isinstance(value, dict):
            raise RowError(
                "invalid_value", f"expected a {{bytes, path}} struct, got {type(value).__name__}"
            )
        data, path = value.get("bytes"), value.get("path")
        # As in Hugging Face datasets: embedded bytes win; a path alone points to a file.
        if data is not None:
            return data, f"image {redact_url(path)!r}" if path else "image"
        if path:
            return read_image_bytes(path, base=base, limits=limits), redact_url(path)
        raise RowError("missing_image", "image struct has neither bytes nor path")
    if image_format == "path":
        if not isinstance(value, str):
            raise RowError("invalid_value", f"expected a path string, got {type(value).__name__}")
        return read_image_bytes(value, base=base, limits=limits), redact_url(value)
    raise ValueError(f"image_format must be bytes, hf-struct or path (got {image_format!r})")


@dataclass(frozen=True)
class PreparedImage:
    """One image cell made ready for the model.

    Attributes:
        pixels: ``(C, H, W)`` model input, from ``model.image_transforms.process_image``.
        size: ``(width, height)`` of the image as stored (before any reduced decoding).
    """

    pixels: np.ndarray
    size: tuple[int, int]


def prepare_image(
    value: Any,
    image_format: str,
    settings: ImageSettings,
    *,
    mode: str = "exact",
    base: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> PreparedImage:
    """Reads, decodes and preprocesses one image cell: all the per-image work before the model.

    Thread-safe, and most of its time is spent in Pillow's decoder and resampler, which release
    the GIL: :mod:`clipbeam.transforms.prefetch` runs it on a pool of threads.

    Args:
        value: the cell as Python (``bytes``, ``{"bytes": ..., "path": ...}`` or ``str``).
        image_format: ``"bytes"``, ``"hf-struct"`` or ``"path"`` (resolved, not ``"auto"``).
        settings: the model's resolved image settings
            (``CLIPImageProcessor.resolve_settings()``).
        mode: ``"exact"`` (transformers' values) or ``"fast"`` (JPEGs decoded at reduced scale,
            see ``model.image_transforms``).
        base: the folder relative paths start from.
        limits: what one image may cost (:class:`~clipbeam.transforms.limits.Limits`).

    Raises:
        RowError: the image is missing, empty, too large, not an image, corrupt or unreadable.
    """
    from clipbeam.model.image_transforms import draft_image, process_image

    data, what = image_bytes(value, image_format, base=base, limits=limits)
    image = open_image(data, what=what, limits=limits)
    size = image.size
    # Drafting only sets up the decoder; the pixels are decoded by load_pixels, whose errors
    # are the row's, unlike those of the preprocessing that follows.
    box = draft_image(image, settings) if mode == "fast" else None
    image = load_pixels(image, what)
    return PreparedImage(process_image(image, settings, mode=mode, box=box), size)
