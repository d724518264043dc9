"""A corpus of the broken and unusual inputs that web-scraped image-text data holds, as Parquet.

:func:`build_corpus` writes one small dataset in which every row is a different case: corrupt and
truncated JPEG, PNG and WebP; zero and random bytes; HTML error pages, SVG, PDF and PostScript
saved as images; decompression bombs; images over the byte limit; huge EXIF; animated GIF and
WebP; 16-bit, CMYK and palette-with-transparency images; 1x1 and 1x2000 images; null, empty,
blank, 100 KB, NUL-laden and right-to-left captions; captions in a binary column with invalid
UTF-8; and in the path layout: missing files, empty files, folders, devices, and URLs that answer
404 or 500, hang, stream forever, trickle, redirect to a local file, use a scheme that is not
allowed, or carry credentials. A zero-row Parquet file sits next to the others.

Each case records what a job must do with its row: process it (``error=None``) or write it to
``errors/`` with an ``error_type`` and a message holding ``message`` (something a person can act
on). Cases whose fault is in the caption say so (``text_fault``): a job that reads no captions
(classify) processes those rows.

The files use the job options :data:`JOB_OPTIONS` (a 1 MiB byte limit, a 1 s URL timeout).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.reliability.conftest import PASSWORD, USER, ImageServer

__all__ = ["JOB_OPTIONS", "SIGNATURE", "Case", "Corpus", "build_corpus"]

# What every corpus job runs with: limits small enough that the cases cost little.
JOB_OPTIONS = ("--id-column", "id", "--batch-size", "4", "--max-image-bytes", "1MiB")
JOB_OPTIONS += ("--http-timeout", "1")
MAX_IMAGE_BYTES = 1024 * 1024
SIGNATURE = "c0ffee5ignature9d1"

_HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@dataclass(frozen=True)
class Case:
    """One row of the corpus.

    Attributes:
        id: the row's id (also the case's name).
        file: the Parquet file holding it: ``"bytes"``, ``"paths"``, ``"struct"`` or
            ``"binary-text"``.
        image: the image cell.
        text: the caption cell.
        error: the ``error_type`` expected when images and captions are read, or ``None``.
        message: a fragment the error message must hold.
        text_fault: the fault is in the caption.
    """

    id: str
    file: str
    image: object
    text: object
    error: str | None = None
    message: str = ""
    text_fault: bool = False

    def expected(self, reads_text: bool) -> str | None:
        """The error_type a job expects for this row (``None``: an output row)."""
        if self.text_fault and not reads_text:
            return None
        return self.error


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote."""

    folder: Path
    pattern: str
    cases: list[Case]

    def by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}


# -- images --------------------------------------------------------------------------------------


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    data = random.Random(seed).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, data)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` encoded as ``fmt`` (a Pillow format name)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking grayscale PNG of a few hundred bytes whose header claims width x height."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # four rows; the rest never comes
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)


def sixteen_bit_png(seed: int = 5) -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG spanning the whole 0-65535 range, and its pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 65536, size=(24, 32), dtype=np.uint16)
    return encode(Image.fromarray(pixels), "PNG"), pixels


def animated(fmt: str) -> bytes:
    """Three frames, red then green then blue."""
    frames = [Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    return encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=80, loop=0, **lossless
    )


def _palette_with_transparency() -> bytes:
    image = Image.frombytes("P", (20, 20), bytes(i % 4 for i in range(400)))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    return encode(image, "PNG", transparency=0)


def _exif(size: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * size  # ImageDescription
    return exif.tobytes()


def _png_with_exif(size: int) -> bytes:
    return encode(_noise((20, 20), 8), "PNG", exif=_exif(size))


HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
    b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
)
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
    b'width="64" height="64"><circle cx="32" cy="32" r="30" fill="red"/></svg>\n'
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
# PostScript that would create a file if anything ran it (Pillow renders EPS with Ghostscript).
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
    b"(/tmp/clipbeam-eps-ran) (w) file closefile\nshowpage\n%%EOF\n"
)


# -- the cases -------------------------------------------------------------------------------------


def _byte_cases() -> list[Case]:
    jpeg = encode(_noise((48, 40), 1), "JPEG", quality=90)
    png = encode(_noise((40, 48), 2), "PNG")
    webp = encode(_noise((40, 40), 3), "WEBP", quality=80)
    rng = random.Random(4)

    def case(name: str, image: bytes | None, error: str | None = None, message: str = "") -> Case:
        return Case(name, "bytes", image, f"a photo for case {name}", error, message)

    return [
        case("jpeg", jpeg),
        case("png", png),
        case("webp", webp),
        case("jpeg-corrupt", jpeg[:3] + rng.randbytes(200), "corrupt_image", "corrupt"),
        case("jpeg-truncated", jpeg[: len(jpeg) // 2], "corrupt_image", "truncated"),
        case("png-corrupt", png[:8] + rng.randbytes(200), "corrupt_image", "starts like a PNG"),
        case("png-truncated", png[: len(png) // 2], "corrupt_image", "truncated"),
        case("webp-corrupt", webp[:16] + rng.randbytes(100), "corrupt_image", "corrupt"),
        case("webp-truncated", webp[: len(webp) // 2], "corrupt_image", "truncated"),
        case("zero-bytes", b"", "empty_image", "zero bytes"),
        case("random-bytes", rng.randbytes(3000), "corrupt_image", "none of the formats"),
        case("html-error-page", HTML_PAGE, "not_an_image", "is an HTML page"),
        case("svg", SVG, "not_an_image", "SVG drawing"),
        case("pdf", PDF, "not_an_image", "PDF document"),
        case("postscript", EPS, "not_an_image", "never rendered"),
        case("bomb-30000x30000", bomb_png(30000, 30000), "image_too_large", "--max-image-pixels"),
        case("bomb-10000x10000", bomb_png(10000, 10000), "image_too_large", "10000x10000"),
        case(
            "over-byte-limit",
            encode(_noise((700, 700), 6), "PNG"),
            "image_too_large",
            "--max-image-bytes",
        ),
        case("jpeg-huge-exif", encode(_noise((32, 32), 7), "JPEG", exif=_exif(60_000))),
        case("png-huge-exif", _png_with_exif(800_000)),
        case("gif-animated", animated("GIF")),
        case("webp-animated", animated("WEBP")),
        case("png-16-bit", sixteen_bit_png()[0]),
        case("jpeg-cmyk", encode(_noise((30, 20), 9, "CMYK"), "JPEG")),
        case("png-palette-transparency", _palette_with_transparency()),
        case("1x1", encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG")),
        case("1x2000", encode(_noise((1, 2000), 10), "PNG")),
        case("null-image", None, "missing_image", "null"),
    ]


def _caption_cases() -> list[Case]:
    image = encode(_noise((32, 32), 11), "PNG")

    def case(name: str, text: object, error: str | None = None, message: str = "") -> Case:
        return Case(name, "bytes", image, text, error, message, text_fault=error is not None)

    return [
        case("caption-null", None, "null_text", "is null"),
        case("caption-empty", ""),
        case("caption-blank", " \t\n  "),
        case("caption-100kb", "word " * 20_480, "text_too_long", "--max-text-chars"),
        case("caption-nul", "a cat\x00 on a mat\x00\x00"),
        case("caption-rtl", "\u202eقطة على سجادة حمراء \u05e9\u05dc\u05d5\u05dd"),
    ]


def _path_cases(folder: Path, server: ImageServer) -> list[Case]:
    images = folder / "images"
    images.mkdir(parents=True)
    png = encode(_noise((36, 28), 12), "PNG")
    (images / "ok.png").write_bytes(png)
    (images / "empty.jpg").write_bytes(b"")
    (images / "a-folder.jpg").mkdir()
    server.files["ok.png"] = png
    server.files["page.jpg"] = HTML_PAGE
    url = server.url
    credentials = url.replace("http://", f"http://{USER}:{PASSWORD}@")

    def case(name: str, path: str | None, error: str | None = None, message: str = "") -> Case:
        return Case(name, "paths", path, f"a photo for case {name}", error, message)

    return [
        case("path-absolute", str(images / "ok.png")),
        case("path-relative", "images/ok.png"),
        case("path-missing", str(images / "gone.png"), "missing_image", "no image at"),
        case("path-empty-file", str(images / "empty.jpg"), "empty_image", "zero bytes"),
        case("path-folder", str(images / "a-folder.jpg"), "unreadable_image", "not a regular"),
        case("path-device", "/dev/zero", "unreadable_image", "not a regular file"),
        case("path-empty-string", "", "missing_image", "empty"),
        case("path-null", None, "missing_image", "null"),
        case("url", f"{url}/img/ok.png"),
        case("url-404", f"{url}/img/gone.jpg", "missing_image", "HTTP 404"),
        case("url-500", f"{url}/status/500", "unreadable_image", "HTTP 500"),
        case("url-hangs", f"{url}/hang", "unreadable_image", "--http-timeout 1 s"),
        case("url-streams-forever", f"{url}/forever", "image_too_large", "stopped reading"),
        case("url-trickles", f"{url}/trickle", "unreadable_image", "--http-timeout 1 s"),
        case("url-html-page", f"{url}/img/page.jpg", "not_an_image", "HTML page"),
        case("url-redirect", f"{url}/redirect/ok.png"),
        case("url-redirect-to-file", f"{url}/redirect/file", "url_not_allowed", "to file:"),
        case("url-ftp", "ftp://example.com/cat.jpg", "url_not_allowed", "--allowed-url-schemes"),
        case("url-with-credentials", f"{credentials}/private/ok.png"),
        case(
            "url-with-credentials-404",
            f"{credentials}/private/gone.jpg",
            "missing_image",
            "http://REDACTED@127.0.0.1",
        ),
        case(
            "url-signed-404",
            f"{url}/img/gone.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=svc%40p"
            f"&X-Goog-Expires=600&X-Goog-Signature={SIGNATURE}",
            "missing_image",
            "X-Goog-Signature=REDACTED",
        ),
    ]


def _struct_cases(folder: Path) -> list[Case]:
    png = encode(_noise((30, 30), 13), "PNG")
    (folder / "struct-image.png").write_bytes(png)

    def case(name: str, cell: object, error: str | None = None, message: str = "") -> Case:
        return Case(name, "struct", cell, f"a photo for case {name}", error, message)

    return [
        case("struct-bytes", {"bytes": png, "path": "cat.png"}),
        case("struct-path-only", {"bytes": None, "path": "struct-image.png"}),
        case("struct-empty", {"bytes": None, "path": None}, "missing_image", "neither bytes"),
        case("struct-html", {"bytes": HTML_PAGE, "path": "a.jpg"}, "not_an_image", "'a.jpg'"),
    ]


def _binary_text_cases() -> list[Case]:
    image = encode(_noise((32, 32), 14), "JPEG")

    def case(name: str, text: bytes | None, error: str | None = None, message: str = "") -> Case:
        return Case(name, "binary-text", image, text, error, message, text_fault=error is not None)

    return [
        case("binary-caption", "a red bicycle 自行车".encode()),
        case("binary-caption-invalid-utf8", b"a red \xff\xfe bicycle", "invalid_value", "UTF-8"),
        case("binary-caption-null", None, "null_text", "is null"),
    ]


_FILES = {
    # name: (Parquet file, image column type, text column type)
    "bytes": ("a-bytes.parquet", pa.binary(), pa.string()),
    "paths": ("b-paths.parquet", pa.string(), pa.string()),
    "struct": ("c-struct.parquet", _HF_IMAGE, pa.string()),
    "binary-text": ("d-binary-text.parquet", pa.binary(), pa.binary()),
}


def build_corpus(folder: Path, server: ImageServer) -> Corpus:
    """Writes the corpus into ``folder`` (Parquet files, and image files for the path cases).

    Args:
        folder: an empty or missing local folder.
        server: the loopback image server the URL cases point to.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cases = [
        *_byte_cases(),
        *_caption_cases(),
        *_path_cases(folder, server),
        *_struct_cases(folder),
        *_binary_text_cases(),
    ]
    assert len({c.id for c in cases}) == len(cases), "case ids must be unique"
    for name, (filename, image_type, text_type) in _FILES.items():
        rows = [c for c in cases if c.file == name]
        table = pa.table(
            {
                "id": pa.array([c.id for c in rows], pa.string()),
                "image": pa.array([c.image for c in rows], image_type),
                "text": pa.array([c.text for c in rows], text_type),
            }
        )
        pq.write_table(table, folder / filename, row_group_size=8)
    # A shard without rows: it adds no work unit and no output row.
    empty = {"id": pa.string(), "image": pa.binary(), "text": pa.string()}
    pq.write_table(pa.schema(empty).empty_table(), folder / "e-empty.parquet")
    return Corpus(folder=folder, pattern=str(folder / "*.parquet"), cases=cases)
