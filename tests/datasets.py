"""Builders of small, realistic image-text Parquet datasets for the transforms and pipeline tests.

A dataset is several Parquet files with several row groups each (the last group of a file is
shorter), holding real JPEG and PNG bytes cut from scikit-image's bundled photos (colour,
grayscale and RGBA; varied sizes and aspect ratios), captions of varied length (one longer than
any text context, to exercise truncation), string ids that are shuffled so that id order never
matches row order, and passthrough columns. Bad rows can be planted on request.

The builder returns a :class:`Dataset` that records, row by row, what was written: tests compute
their expected values from it (e.g. by calling ``model/`` directly on ``row.image_bytes`` and
``row.text``) instead of re-reading the files they are testing.

Datasets can be written to a local folder or to any fsspec URL (``gs://bucket/dir`` against the
storage emulator), in three image layouts, matching clipbeam's ``--image-format``:

- ``"bytes"``: a binary column holding the encoded image.
- ``"hf-struct"``: the Hugging Face ``datasets`` Image feature, a ``struct<bytes, path>``.
- ``"path"``: a string column with the location of an image file written next to the Parquet
  files (a local path, or a URL of the same scheme as the dataset's folder).

Planted faults (``plant={"corrupt_image": 1, ...}``), one row each, at seeded positions:

- ``"corrupt_image"``: bytes that no decoder accepts (a JPEG header followed by garbage).
- ``"empty_image"``: zero bytes (for ``"path"``: an empty file).
- ``"missing_image"``: no image: a null cell for ``"bytes"`` and ``"hf-struct"``; for ``"path"``
  a path to a file that does not exist (the dead-link case).
- ``"null_text"``: a null caption.
"""

from __future__ import annotations

import functools
import io
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "FAULTS",
    "Dataset",
    "Row",
    "build_dataset",
    "encode_image",
    "make_caption",
    "make_image",
]

ImageFormat = Literal["bytes", "hf-struct", "path"]
Fault = Literal["corrupt_image", "empty_image", "missing_image", "null_text"]
FAULTS: tuple[str, ...] = ("corrupt_image", "empty_image", "missing_image", "null_text")

# Photos bundled with scikit-image (no download needed): colour, grayscale and RGBA.
_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",  # grayscale
    "immunohistochemistry",
    "coins",  # grayscale
    "logo",  # RGBA
    "colorwheel",
)

_EN_WORDS: tuple[str, ...] = (
    "a photo of a cat on a red sofa in the afternoon light",
    "an astronaut",
    "two cups of coffee on a wooden table",
    "a rocket standing on the launch pad under a clear sky",
    "black and white portrait of a man with a camera",
    "coins",
    "a colourful logo",
    "microscope image of stained tissue",
    "the colour wheel",
    "close up of a tabby cat looking at the viewer",
)

_ZH_PHRASES: tuple[str, ...] = (
    "一只猫",
    "坐在红色的沙发上",
    "宇航员",
    "桌子上有两杯咖啡",
    "火箭在发射台上",
    "黑白照片",
    "一些硬币",
    "彩色的标志",
    "显微镜下的组织切片",
    "色轮",
)

# Sides and aspect ratios drawn for images: small enough for tiny checkpoints, varied enough to
# exercise resize/crop and the size filters (the smallest side is 12 px, the most elongated 4:1).
_SIDES: tuple[int, ...] = (12, 20, 32, 48, 64)
_ASPECTS: tuple[float, ...] = (1.0, 1.0, 0.75, 1.333, 0.5, 2.0, 4.0)


@dataclass(frozen=True)
class Row:
    """One row as written.

    Attributes:
        id: the value of the id column (``None`` when the dataset has no id column).
        file: where the row's Parquet file was written (local path or URL).
        file_index: position of ``file`` in the sorted file list.
        row: row number within its file (0-based, across row groups).
        row_group: the row group holding the row.
        text: the caption (``None`` for a null caption or a dataset without a text column).
        image_bytes: the encoded image as the model should see it (``None`` when the image is
            missing, empty or corrupt, or the dataset has no image column).
        image_format: ``"jpeg"`` or ``"png"`` (``None`` with no image).
        size: ``(width, height)`` of the image (``None`` with no decodable image).
        fault: the planted fault, or ``None`` for a good row.
        extra: the passthrough columns' values.
    """

    id: str | None
    file: str
    file_index: int
    row: int
    row_group: int
    text: str | None
    image_bytes: bytes | None
    image_format: str | None
    size: tuple[int, int] | None
    fault: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        """The decoded image (raises ``ValueError`` for a row without a usable image)."""
        if self.image_bytes is None:
            raise ValueError(f"row {self.file}:{self.row} has no usable image ({self.fault})")
        image = Image.open(io.BytesIO(self.image_bytes))
        image.load()
        return image


@dataclass
class Dataset:
    """What :func:`build_dataset` wrote.

    Attributes:
        root: the folder (local path or URL) holding the dataset.
        files: the Parquet files, sorted (the order clipbeam's planner sees them in).
        pattern: a glob that matches exactly ``files`` (pass it as ``--input``).
        rows: every row, in file then row order.
        image_column: name of the image column, ``None`` for a text-only dataset.
        text_column: name of the text column, ``None`` for an image-only dataset.
        id_column: name of the id column, ``None`` when ids are not written.
        image_format: the image layout (``"bytes"``, ``"hf-struct"`` or ``"path"``).
        extra_columns: names of the passthrough columns.
        row_group_size: rows per row group (the last group of a file may be shorter).
    """

    root: str
    files: list[str]
    pattern: str
    rows: list[Row]
    image_column: str | None
    text_column: str | None
    id_column: str | None
    image_format: str
    extra_columns: tuple[str, ...]
    row_group_size: int

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def good_rows(self) -> list[Row]:
        """Rows without a planted fault."""
        return [r for r in self.rows if r.fault is None]

    @property
    def bad_rows(self) -> list[Row]:
        """Rows with a planted fault."""
        return [r for r in self.rows if r.fault is not None]

    def by_id(self) -> dict[str, Row]:
        """Rows keyed by id (needs an id column)."""
        if self.id_column is None:
            raise ValueError("this dataset was built without an id column (ids=False)")
        return {r.id: r for r in self.rows if r.id is not None}

    def num_row_groups(self) -> int:
        """Total number of row groups over all files (clipbeam's work units)."""
        return len({(r.file_index, r.row_group) for r in self.rows})


@functools.cache
def _photo(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array)


def make_image(rng: random.Random, *, photo: str | None = None) -> Image.Image:
    """Cuts a random crop of a bundled photo and resizes it to a small random size.

    Args:
        rng: the source of randomness (seeded by the caller for reproducibility).
        photo: a scikit-image photo name; random when ``None``.

    Returns:
        A PIL image in the photo's own mode (``RGB``, ``L`` or ``RGBA``).
    """
    source = _photo(photo or rng.choice(_PHOTOS))
    aspect = rng.choice(_ASPECTS)
    short = rng.choice(_SIDES)
    width, height = (
        (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    )
    # Crop a region of the target aspect ratio first so the photo is not distorted.
    sw, sh = source.size
    crop_w = min(sw, round(sh * width / height))
    crop_h = min(sh, round(crop_w * height / width))
    left = rng.randrange(0, sw - crop_w + 1)
    top = rng.randrange(0, sh - crop_h + 1)
    crop = source.crop((left, top, left + crop_w, top + crop_h))
    return crop.resize((width, height), Image.Resampling.BICUBIC)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    """Encodes ``image`` as ``"jpeg"`` or ``"png"`` bytes (JPEG drops alpha, as encoders do)."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        image.save(buffer, format="JPEG", quality=90)
    elif image_format == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    return buffer.getvalue()


def make_caption(rng: random.Random, *, language: str = "en", long: bool = False) -> str:
    """A caption of random length; ``long=True`` gives one longer than any text context (>100
    tokens for both CLIP's BPE and Chinese-CLIP's WordPiece)."""
    if language == "en":
        parts, sep = _EN_WORDS, " "
    elif language == "zh":
        parts, sep = _ZH_PHRASES, "，"
    else:
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    count = rng.randint(20, 25) if long else rng.randint(1, 4)
    text = sep.join(rng.choice(parts) for _ in range(count))
    if language == "en" and not long:
        # Vary length below the phrase level too: drop trailing words at random.
        words = text.split()
        text = " ".join(words[: rng.randint(1, len(words))])
    return text


def build_dataset(
    directory: str | os.PathLike[str],
    *,
    num_files: int = 3,
    rows_per_file: int = 10,
    row_group_size: int = 4,
    image_format: ImageFormat = "bytes",
    image_column: str | None = "image",
    text_column: str | None = "text",
    id_column: str | None = "id",
    language: str = "en",
    plant: Mapping[str, int] | None = None,
    long_captions: int = 1,
    extra_columns: bool = True,
    seed: int = 0,
) -> Dataset:
    """Writes a dataset of ``num_files`` Parquet files and returns what was written.

    Args:
        directory: a local folder or an fsspec URL (created if needed). Parquet files go to
            ``part-XXX.parquet`` directly in it; image files of the ``"path"`` layout go to
            ``images/`` under it.
        num_files: number of Parquet files.
        rows_per_file: rows in each file.
        row_group_size: rows per row group; pick one that does not divide ``rows_per_file`` to
            get a short last group.
        image_format: image layout, ``"bytes"``, ``"hf-struct"`` or ``"path"``.
        image_column: name of the image column; ``None`` for a text-only dataset.
        text_column: name of the text column; ``None`` for an image-only dataset.
        id_column: name of the (string) id column; ``None`` to write no ids.
        language: ``"en"`` captions (CLIP) or ``"zh"`` captions (Chinese-CLIP).
        plant: how many rows get each fault of :data:`FAULTS`; faults land on distinct rows at
            seeded random positions.
        long_captions: how many good rows get a caption longer than any text context.
        extra_columns: also write the passthrough columns ``source`` (string) and ``rank`` (int64).
        seed: seed of every random choice; the same arguments give byte-identical datasets.

    Returns:
        The :class:`Dataset` describing every row.

    Raises:
        ValueError: inconsistent arguments (an unknown fault, a fault that needs a column the
            dataset does not have, more faults than rows...).
    """
    if image_format not in ("bytes", "hf-struct", "path"):
        raise ValueError(f"image_format must be bytes, hf-struct or path, got {image_format!r}")
    if image_column is None and text_column is None:
        raise ValueError("a dataset needs an image column, a text column, or both")
    if num_files < 1 or rows_per_file < 1 or row_group_size < 1:
        raise ValueError("num_files, rows_per_file and row_group_size must all be >= 1")
    plant = dict(plant or {})
    unknown = set(plant) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; expected some of {FAULTS}")
    if any(plant.get(f, 0) for f in FAULTS if f != "null_text") and image_column is None:
        raise ValueError("image faults need an image column")
    if plant.get("null_text", 0) and text_column is None:
        raise ValueError("null_text needs a text column")

    import fsspec

    rng = random.Random(seed)
    total = num_files * rows_per_file
    root = os.fspath(directory).rstrip("/")
    if "://" not in root:
        root = str(Path(root).resolve())  # path-layout images are stored as absolute paths
    fs, fs_root = fsspec.core.url_to_fs(root)
    fs.makedirs(fs_root, exist_ok=True)

    positions = list(range(total))
    rng.shuffle(positions)
    faults: dict[int, str] = {}
    for fault in FAULTS:
        for _ in range(plant.get(fault, 0)):
            if not positions:
                raise ValueError(f"cannot plant {sum(plant.values())} faults in {total} rows")
            faults[positions.pop()] = fault
    long_rows = set(positions[:long_captions]) if text_column is not None else set()

    # Shuffled ids: id order never follows row order, and ids differ in length.
    numbers = list(range(total))
    rng.shuffle(numbers)
    ids = [f"img-{n * 7919 % 100003:x}" for n in numbers]

    width = max(3, len(str(num_files - 1)))
    files = [_join(root, f"part-{i:0{width}d}.parquet") for i in range(num_files)]
    if image_format == "path" and image_column is not None:
        fs.makedirs(fs.sep.join([fs_root, "images"]), exist_ok=True)

    rows: list[Row] = []
    for file_index, file in enumerate(files):
        columns: dict[str, list[object]] = {}
        for r in range(rows_per_file):
            position = file_index * rows_per_file + r
            fault = faults.get(position)
            row_id = ids[position] if id_column is not None else None
            text: str | None = None
            if text_column is not None and fault != "null_text":
                text = make_caption(rng, language=language, long=position in long_rows)

            image_bytes = fmt = size = None
            cell: object = None
            if image_column is not None:
                fmt = "png" if rng.random() < 0.5 else "jpeg"
                image = make_image(rng)
                encoded = encode_image(image, fmt)
                stored = _faulty_bytes(fault, encoded, rng)
                name = f"{file_index:0{width}d}-{r:04d}.{'jpg' if fmt == 'jpeg' else fmt}"
                cell = _image_cell(fs, fs_root, root, image_format, stored, name)
                if fault in ("corrupt_image", "empty_image", "missing_image"):
                    fmt = None
                else:
                    image_bytes, size = encoded, image.size

            extra: dict[str, object] = {}
            if extra_columns:
                extra = {"source": f"https://example.com/{position}.jpg", "rank": total - position}
            rows.append(
                Row(
                    id=row_id,
                    file=file,
                    file_index=file_index,
                    row=r,
                    row_group=r // row_group_size,
                    text=text,
                    image_bytes=image_bytes,
                    image_format=fmt,
                    size=size,
                    fault=fault,
                    extra=extra,
                )
            )
            if id_column is not None:
                columns.setdefault(id_column, []).append(row_id)
            if image_column is not None:
                columns.setdefault(image_column, []).append(cell)
            if text_column is not None:
                columns.setdefault(text_column, []).append(text)
            for name, value in extra.items():
                columns.setdefault(name, []).append(value)

        table = pa.table(
            {
                name: pa.array(values, type=_column_type(name, image_column, image_format))
                for name, values in columns.items()
            }
        )
        with fs.open(fs.sep.join([fs_root, file.rsplit("/", 1)[-1]]), "wb") as out:
            pq.write_table(table, out, row_group_size=row_group_size)

    return Dataset(
        root=root,
        files=files,
        pattern=_join(root, "part-*.parquet"),
        rows=rows,
        image_column=image_column,
        text_column=text_column,
        id_column=id_column,
        image_format=image_format,
        extra_columns=("source", "rank") if extra_columns else (),
        row_group_size=row_group_size,
    )


_HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _column_type(name: str, image_column: str | None, image_format: str) -> pa.DataType:
    if name == image_column:
        return {"bytes": pa.binary(), "hf-struct": _HF_IMAGE, "path": pa.string()}[image_format]
    if name == "rank":
        return pa.int64()
    return pa.string()


def _faulty_bytes(fault: str | None, encoded: bytes, rng: random.Random) -> bytes | None:
    """The bytes stored for a row: the encoded image, or its planted replacement."""
    if fault == "corrupt_image":
        # Starts like a JPEG so format sniffing passes and the decoder itself must fail.
        return b"\xff\xd8\xff\xe0" + bytes(rng.randrange(256) for _ in range(64))
    if fault == "empty_image":
        return b""
    if fault == "missing_image":
        return None
    return encoded


def _image_cell(
    fs: AbstractFileSystem,
    fs_root: str,
    root: str,
    image_format: str,
    data: bytes | None,
    name: str,
) -> object:
    """The value written to the image column for ``data`` in the given layout."""
    if image_format == "bytes":
        return data
    if image_format == "hf-struct":
        # Hugging Face writes the original file name next to the bytes; keep that shape.
        return None if data is None else {"bytes": data, "path": name}
    # "path": write the file (none for a missing image: a dead link) and store its location.
    if data is not None:
        with fs.open(fs.sep.join([fs_root, "images", name]), "wb") as out:
            out.write(data)
    return _join(root, "images", name)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])
