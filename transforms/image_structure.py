"""What decoding one image may cost, counted from its structure before any decoder sees it.

The byte and pixel limits (:class:`~clipbeam.transforms.limits.Limits`) do not bound decoding
time: a file's work grows with the number of pieces it is made of, and a few bytes make a piece.

- A progressive JPEG is decoded in scans, and each scan costs a pass over the whole image however
  few bytes it holds: 55 KB of empty scans kept a worker busy for minutes.
- Pillow reads PNG chunks and JPEG marker segments one Python call each: tens of megabytes of
  12-byte unknown chunks are millions of calls.
- Pillow joins a GIF's comment sub-blocks one at a time, which is quadratic in their number.
- Pillow makes a Python tile of every TIFF strip: a strip of one byte costs 10 microseconds.

:func:`check_structure` walks those pieces (a tight loop that stops one piece past the budget, so
the walk itself is bounded) and refuses the file with ``image_too_complex`` when it holds more
than real images do. The budgets are far above what encoders write (libjpeg's progressive script
has 10 scans, libpng writes 8 KiB IDAT chunks), so no real image is refused.
"""

from __future__ import annotations

import re

from clipbeam.transforms.errors import RowError

__all__ = [
    "BASE_PIECES",
    "BYTES_PER_PIECE",
    "GIF_MAX_EXTENSION_BLOCKS",
    "JPEG_MAX_SCANS",
    "JPEG_MAX_SEGMENTS",
    "TIFF_MAX_TAGS",
    "check_structure",
]

# libjpeg's progressive script writes 10 scans (6 for grayscale), mozjpeg's a few more; each scan
# costs a pass over the image, so this bounds a progressive decode to ~10 times a normal one.
JPEG_MAX_SCANS = 100
# Marker segments (APPn, COM, DQT, DHT, SOS...): an ICC profile split in 255 pieces is the most
# a real file needs.
JPEG_MAX_SEGMENTS = 4096
# PNG chunks and TIFF strips or tiles, each a Python call of Pillow's (about 10 microseconds):
# up to BASE_PIECES in any file (0.7 s), beyond that one per BYTES_PER_PIECE bytes, so their cost
# stays proportional to the file's size (libpng's IDAT chunks are 8 KiB; a TIFF has a strip per
# row at most).
BASE_PIECES = 65536
BYTES_PER_PIECE = 1024
# Extension sub-blocks before a GIF's first image (comments, XMP and its 258-byte trailer).
GIF_MAX_EXTENSION_BLOCKS = 4096
# Tags of a TIFF's first directory (real files have a few dozen).
TIFF_MAX_TAGS = 4096
_TIFF_PIECE_TAGS = (273, 279, 324, 325)  # StripOffsets, StripByteCounts, TileOffsets, -ByteCounts

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The end of a JPEG scan's entropy-coded data: 0xFF followed by anything but a stuffed zero or a
# restart marker (fill bytes 0xFF included; the walk skips them).
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def check_structure(data: bytes, what: str = "image") -> None:
    """Refuses encoded image bytes whose structure would make decoding them cost too much.

    JPEG, PNG, GIF and TIFF are walked (recognised by their signatures, as Pillow recognises them);
    other formats are decoded by C libraries whose loops are not per piece in Python. A file
    too broken to walk is left to the decoder, which reports it as corrupt.

    Args:
        data: the encoded image.
        what: how the message names the image.

    Raises:
        RowError: ``image_too_complex``, with the count found and the budget; the message
            describes the file, never quotes it.
    """
    if data.startswith(b"\xff\xd8\xff"):
        _check_jpeg(data, what)
    elif data.startswith(_PNG_SIGNATURE):
        _check_png(data, what)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(data, what)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        _check_tiff(data, what)


def _refuse(what: str, kind: str, found: str, budget: int, why: str) -> RowError:
    return RowError(
        "image_too_complex",
        f"{what} is a {kind} with {found} {budget}, {why}: a file crafted to stall the decoder, "
        "or a damaged one; re-encode it if it is a real image",
    )


def _piece_budget(size: int) -> int:
    return max(BASE_PIECES, size // BYTES_PER_PIECE)


def _check_jpeg(data: bytes, what: str) -> None:
    size = len(data)
    pos, segments, scans = 2, 0, 0
    while pos < size:
        while pos < size and data[pos] == 0xFF:  # a marker, after any fill bytes
            pos += 1
        if pos + 3 > size:
            return
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: what follows (an MPO's other pictures) is not decoded
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if marker == 0x00:
            return  # not a marker: broken, the decoder says so
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return
        pos += length
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            raise _refuse(
                what,
                "JPEG",
                "more marker segments than",
                JPEG_MAX_SEGMENTS,
                "the most real files hold",
            )
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next marker
            scans += 1
            if scans > JPEG_MAX_SCANS:
                raise _refuse(
                    what,
                    "JPEG",
                    "more scans than",
                    JPEG_MAX_SCANS,
                    "and each scan costs a pass "
                    "over the whole image (real progressive JPEGs have about 10)",
                )
            end = _JPEG_SCAN_END.search(data, pos)
            if end is None:
                return
            pos = end.start()


def _check_png(data: bytes, what: str) -> None:
    size = len(data)
    budget = _piece_budget(size)
    pos, chunks = len(_PNG_SIGNATURE), 0
    while pos + 8 <= size:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length  # length, type, data, CRC
        chunks += 1
        if chunks > budget:
            raise _refuse(
                what,
                f"{size}-byte PNG",
                "more chunks than",
                budget,
                f"{BASE_PIECES} or one per "
                f"{BYTES_PER_PIECE} bytes, and each chunk costs a call of the decoder",
            )
        if kind == b"IEND":
            return


def _check_gif(data: bytes, what: str) -> None:
    size = len(data)
    pos = 13  # header and logical screen descriptor
    if size < pos:
        return
    if data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 0x07) + 1)
    blocks = 0  # extension sub-blocks, and stray bytes (Pillow skips those one at a time)
    while pos < size and data[pos] not in (0x2C, 0x3B):  # up to the first image or the end
        if data[pos] == 0x21:  # '!': an extension (label, then sub-blocks up to an empty one)
            pos += 2
            while pos < size and data[pos]:
                pos += 1 + data[pos]
                blocks += 1
                if blocks > GIF_MAX_EXTENSION_BLOCKS:
                    break
            pos += 1
        else:
            pos += 1
            blocks += 1
        if blocks > GIF_MAX_EXTENSION_BLOCKS:
            raise _refuse(
                what,
                "GIF",
                "more extension sub-blocks or stray bytes than",
                GIF_MAX_EXTENSION_BLOCKS,
                "before its first image, and the decoder reads them one at a time",
            )


def _check_tiff(data: bytes, what: str) -> None:
    """The first image directory of a TIFF or BigTIFF (the only one decoded)."""
    order = "little" if data[:2] == b"II" else "big"
    big = data[2:4] in (b"+\x00", b"\x00+")

    def number(start: int, size: int) -> int:
        return int.from_bytes(data[start : start + size], order)

    # Offsets and value counts take 8 bytes in BigTIFF, 4 in TIFF; the tag count 8 or 2.
    offset_size, count_size, entry_size = (8, 8, 20) if big else (4, 2, 12)
    directory = number(8 if big else 4, offset_size)
    if directory + count_size > len(data):
        return
    tags = number(directory, count_size)
    if tags > TIFF_MAX_TAGS:
        raise _refuse(
            what,
            "TIFF",
            "more tags in its first directory than",
            TIFF_MAX_TAGS,
            "the most real files hold",
        )
    budget = _piece_budget(len(data))
    for i in range(tags):
        entry = directory + count_size + i * entry_size
        if entry + entry_size > len(data):
            return
        if number(entry, 2) in _TIFF_PIECE_TAGS and number(entry + 4, offset_size) > budget:
            raise _refuse(
                what,
                f"{len(data)}-byte TIFF",
                "more strips or tiles than",
                budget,
                f"{BASE_PIECES} or one per {BYTES_PER_PIECE} bytes, and each costs a "
                "call of the decoder",
            )
