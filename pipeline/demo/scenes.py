"""Synthetic image-text data: simple scenes of coloured shapes with English and Chinese captions.

Every row is one scene: one or two shapes, each with a colour, a size and a position, on a plain,
gradient or noisy background, encoded as JPEG. The captions describe the scene in English and in
Chinese; a chosen fraction of rows get captions that contradict their image (another shape and/or
colour for every object), with the truth kept in the other columns. This is the data the demo
models are trained on and the demo job filters, and it gives tests a dataset whose right answers
are known.

Generation is deterministic: row ``i`` of seed ``s`` is the same image and caption whatever the
number of rows, so a small file is a prefix of a large one (only the choice of mismatched rows
depends on the row count)::

    python -m clipbeam.pipeline.demo.scenes --rows 2000 --mismatch-fraction 0.1 --out scenes.parquet
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "POSITIONS",
    "SCHEMA",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "caption",
    "class_labels",
    "class_prompt",
    "generate_scenes",
    "iter_scene_batches",
    "main",
    "render",
    "sample_scene",
    "write_scenes",
]

Rgb = tuple[int, int, int]


class Color(NamedTuple):
    """An object colour: its English name (the value stored in Parquet), RGB and Chinese name."""

    name: str
    rgb: Rgb
    zh: str


# Shapes chosen to stay distinct at 8 px across: no hexagon (reads as a circle) and the diamond
# is taller than wide, so it never looks like a slightly rotated square.
SHAPES: dict[str, str] = {
    "circle": "圆形",
    "square": "正方形",
    "triangle": "三角形",
    "star": "星形",
    "cross": "十字形",
    "diamond": "菱形",
}
# Saturated or extreme colours, far from each other and from the neutral backgrounds below.
COLORS: dict[str, Color] = {
    c.name: c
    for c in (
        Color("red", (215, 30, 35), "红色"),
        Color("orange", (245, 135, 20), "橙色"),
        Color("yellow", (240, 215, 30), "黄色"),
        Color("green", (35, 165, 55), "绿色"),
        Color("blue", (30, 75, 215), "蓝色"),
        Color("purple", (135, 45, 185), "紫色"),
        Color("white", (245, 245, 245), "白色"),
        Color("black", (20, 20, 20), "黑色"),
    )
}
# Size name -> (Chinese, range of the shape's radius as a fraction of the image side).
SIZES: dict[str, tuple[str, tuple[float, float]]] = {
    "small": ("小", (0.12, 0.135)),
    "large": ("大", (0.18, 0.195)),
}
# Position name -> (English phrase, Chinese word, centre as fractions of width and height).
POSITIONS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "left": ("on the left", "左边", (0.26, 0.5)),
    "right": ("on the right", "右边", (0.74, 0.5)),
    "top": ("at the top", "上方", (0.5, 0.26)),
    "bottom": ("at the bottom", "下方", (0.5, 0.74)),
    "center": ("in the center", "中间", (0.5, 0.5)),
}
# Two objects always sit on opposite sides; with the sizes, outlines and jitter in this file
# even two large shapes never touch, nor does any shape cross the image border.
_POSITION_PAIRS = (("left", "right"), ("top", "bottom"))
BACKGROUNDS = ("plain", "gradient", "noise")
# Mid-luminance, low-saturation tones: every object colour, black and white included, contrasts.
_NEUTRALS: tuple[Rgb, ...] = (
    (128, 128, 128),
    (100, 106, 114),
    (150, 142, 126),
    (116, 124, 106),
    (164, 160, 156),
    (122, 112, 130),
)
_SUPERSAMPLE = 2  # shapes are drawn at twice the size and reduced: smooth edges without blur

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("caption_en", pa.string(), nullable=False),
        pa.field("caption_zh", pa.string(), nullable=False),
        pa.field("is_mismatched", pa.bool_(), nullable=False),
        pa.field("true_caption_en", pa.string(), nullable=False),
        pa.field("true_caption_zh", pa.string(), nullable=False),
        pa.field("num_objects", pa.int8(), nullable=False),
        pa.field("shapes", pa.list_(pa.string()), nullable=False),
        pa.field("colors", pa.list_(pa.string()), nullable=False),
        pa.field("sizes", pa.list_(pa.string()), nullable=False),
        pa.field("positions", pa.list_(pa.string()), nullable=False),
        pa.field("background", pa.string(), nullable=False),
    ],
    metadata={"clipbeam.scenes.description": "synthetic shape scenes, see pipeline/demo/scenes.py"},
)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. Attribute values are keys of SHAPES, COLORS, SIZES, POSITIONS."""

    shape: str
    color: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """What an image shows, and the drawing details (jitter, background) that make it unique.

    Attributes:
        objects: one or two shapes.
        background: one of BACKGROUNDS.
        template: which caption template describes the scene (an index, taken modulo the
            number of templates for the object count and language).
        seed: seeds the pixel-level randomness of :func:`render`.
    """

    objects: tuple[SceneObject, ...]
    background: str
    template: int
    seed: int


# -- sampling ---------------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, *, two_object_fraction: float = 0.3) -> Scene:
    """Draws a random scene.

    Args:
        rng: the source of randomness; the scene depends on nothing else.
        two_object_fraction: probability that the scene holds two shapes instead of one.

    Returns:
        The scene. Two shapes never share both shape and colour, so each caption names them
        unambiguously.
    """
    if rng.random() < two_object_fraction:
        positions: tuple[str, ...] = _POSITION_PAIRS[rng.integers(len(_POSITION_PAIRS))]
        if rng.random() < 0.5:
            positions = positions[::-1]
    else:
        positions = (_choice(rng, list(POSITIONS)),)
    pairs = _distinct_pairs(rng, len(positions), exclude=())
    objects = tuple(
        SceneObject(shape, color, _choice(rng, list(SIZES)), position)
        for (shape, color), position in zip(pairs, positions, strict=True)
    )
    return Scene(
        objects=objects,
        background=_choice(rng, list(BACKGROUNDS)),
        template=int(rng.integers(1 << 16)),
        seed=int(rng.integers(1 << 31)),
    )


def contradict(scene: Scene, rng: np.random.Generator) -> Scene:
    """Returns the scene with every object's shape and/or colour replaced.

    The replacement (shape, colour) pairs are drawn from those that appear nowhere in the real
    scene, so a contradicting caption cannot be true of the image by swapping its objects around.
    Sizes, positions and the caption template are kept: only what the caption claims changes.
    """
    real = tuple((o.shape, o.color) for o in scene.objects)
    pairs = _distinct_pairs(rng, len(real), exclude=real)
    objects = tuple(
        SceneObject(shape, color, o.size, o.position)
        for (shape, color), o in zip(pairs, scene.objects, strict=True)
    )
    return Scene(objects, scene.background, scene.template, scene.seed)


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _distinct_pairs(
    rng: np.random.Generator, count: int, *, exclude: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Draws ``count`` different (shape, colour) pairs, none of them in ``exclude``."""
    taken = set(exclude)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < count:
        pair = (_choice(rng, list(SHAPES)), _choice(rng, list(COLORS)))
        if pair not in taken:
            taken.add(pair)
            pairs.append(pair)
    return pairs


# -- captions ---------------------------------------------------------------------------------

# Templates per language and object count; the same index says the same thing in both languages.
# Fields: {a} the article for the phrase after it
# ("a"/"an"), {size} {color} {shape} {where} for one object, suffixed 1 and 2 for two.
_TEMPLATES: dict[str, dict[int, tuple[str, ...]]] = {
    "en": {
        1: (
            "{a} {size} {color} {shape} {where}",
            "{a} {color} {shape} {where}",
            "{a} {size} {color} {shape}",
            "{a} {color} {shape}",
            "a picture of {a} {size} {color} {shape} {where}",
            "there is {a} {color} {shape} {where}",
        ),
        2: (
            "{a1} {size1} {color1} {shape1} {where1} and {a2} {size2} {color2} {shape2} {where2}",
            "{a1} {color1} {shape1} and {a2} {color2} {shape2}",
            "{a1} {color1} {shape1} {where1} and {a2} {color2} {shape2} {where2}",
            "two shapes: {a1} {size1} {color1} {shape1} and {a2} {size2} {color2} {shape2}",
        ),
    },
    "zh": {
        1: (
            "{where}一个{size}的{color}{shape}",
            "{where}有一个{color}{shape}",
            "一个{size}的{color}{shape}",
            "一个{color}的{shape}",
            "图片{where}是一个{size}的{color}{shape}",
            "{color}的{shape}在{where}",
        ),
        2: (
            "{where1}一个{size1}的{color1}{shape1}，{where2}一个{size2}的{color2}{shape2}",
            "一个{color1}的{shape1}和一个{color2}的{shape2}",
            "{where1}是{color1}{shape1}，{where2}是{color2}{shape2}",
            "两个图形：一个{size1}的{color1}{shape1}和一个{size2}的{color2}{shape2}",
        ),
    },
}
LANGUAGES = tuple(_TEMPLATES)


def caption(scene: Scene, language: str) -> str:
    """Describes a scene in ``"en"`` (English) or ``"zh"`` (Chinese) with the scene's template."""
    templates = _templates(language, len(scene.objects))
    fields: dict[str, str] = {}
    for i, obj in enumerate(scene.objects, start=1):
        suffix = str(i) if len(scene.objects) > 1 else ""
        fields.update({f"{k}{suffix}": v for k, v in _words(obj, language).items()})
    text = templates[scene.template % len(templates)].format(**fields)
    return _fix_articles(text) if language == "en" else text


def class_labels() -> list[tuple[str, str]]:
    """Every (shape, colour) class, in a fixed order: the labels of zero-shot evaluation."""
    return [(shape, color) for shape in SHAPES for color in COLORS]


def class_prompt(shape: str, color: str, language: str) -> str:
    """The zero-shot prompt for a class, e.g. "an orange circle" or "一个橙色的圆形"."""
    return caption(Scene((SceneObject(shape, color, "small", "center"),), "plain", 3, 0), language)


def _templates(language: str, count: int) -> tuple[str, ...]:
    if language not in _TEMPLATES:
        raise ValueError(f"unknown caption language {language!r}; expected one of {LANGUAGES}")
    return _TEMPLATES[language][count]


def _words(obj: SceneObject, language: str) -> dict[str, str]:
    if language == "en":
        return {
            "a": "a",
            "size": obj.size,
            "color": obj.color,
            "shape": obj.shape,
            "where": POSITIONS[obj.position][0],
        }
    return {
        "size": SIZES[obj.size][0],
        "color": COLORS[obj.color].zh,
        "shape": SHAPES[obj.shape],
        "where": POSITIONS[obj.position][1],
    }


def _fix_articles(text: str) -> str:
    """Turns "a" into "an" before a vowel sound ("an orange star"); every word used is regular."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return " ".join(words)


# -- rendering --------------------------------------------------------------------------------


def render(scene: Scene, image_size: int = 128) -> Image.Image:
    """Draws a scene as an RGB image of ``image_size`` x ``image_size`` pixels.

    Colours, sizes and positions are jittered a little (seeded by ``scene.seed``) so no two
    renderings of the same description are identical.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels to draw shapes, got {image_size}")
    rng = np.random.default_rng(scene.seed)
    side = image_size * _SUPERSAMPLE
    image = _background(scene.background, side, rng)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        low, high = SIZES[obj.size][1]
        radius = rng.uniform(low, high) * side
        fx, fy = POSITIONS[obj.position][2]
        cx = (fx + rng.uniform(-0.02, 0.02)) * side
        cy = (fy + rng.uniform(-0.02, 0.02)) * side
        rgb = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLORS[obj.color].rgb)
        # A slight rotation only: 45 degrees would turn a square into a diamond.
        angle = rng.uniform(-0.1, 0.1)
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=rgb)
        else:
            points = [_rotate(x, y, angle) for x, y in _OUTLINES[obj.shape]]
            draw.polygon([(cx + x * radius, cy + y * radius) for x, y in points], fill=rgb)
    return image.reduce(_SUPERSAMPLE)


def _rotate(x: float, y: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x - s * y, s * x + c * y


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        theta = -math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(theta), r * math.sin(theta)))
    return out


# Outlines in units of the object's radius, centred on (0, 0), y pointing down. Sizes are tuned
# so the shapes cover similar areas: "large" means the same thing for all of them.
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.88, -0.88), (0.88, -0.88), (0.88, 0.88), (-0.88, 0.88)],
    "triangle": [(0.0, -1.1), (1.05, 0.8), (-1.05, 0.8)],
    "star": _star(5, 1.15, 0.48),
    "cross": [
        (-0.34, -1.0),
        (0.34, -1.0),
        (0.34, -0.34),
        (1.0, -0.34),
        (1.0, 0.34),
        (0.34, 0.34),
        (0.34, 1.0),
        (-0.34, 1.0),
        (-0.34, 0.34),
        (-1.0, 0.34),
        (-1.0, -0.34),
        (-0.34, -0.34),
    ],
    "diamond": [(0.0, -1.1), (0.75, 0.0), (0.0, 1.1), (-0.75, 0.0)],
}


def _background(kind: str, side: int, rng: np.random.Generator) -> Image.Image:
    base = np.array(_NEUTRALS[rng.integers(len(_NEUTRALS))], dtype=np.float32)
    base += rng.uniform(-12, 12)
    if kind == "plain":
        pixels = np.broadcast_to(base, (side, side, 3))
    elif kind == "gradient":
        other = np.array(_NEUTRALS[rng.integers(len(_NEUTRALS))], dtype=np.float32)
        other += rng.choice([-30.0, 30.0])
        theta = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:side, 0:side] / (side - 1) - 0.5
        t = np.clip(0.5 + (xs * math.cos(theta) + ys * math.sin(theta)), 0, 1)[..., None]
        pixels = base * (1 - t) + other * t
    elif kind == "noise":
        # Blotchy noise, drawn coarse and enlarged, so it survives the reduction to image size.
        # Mostly in brightness: strongly coloured speckles would blur what "red" means.
        coarse = rng.normal(0.0, 22.0, size=(side // 8, side // 8, 1))
        coarse = (coarse + rng.normal(0.0, 6.0, size=(side // 8, side // 8, 3))).astype(np.float32)
        blotches = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
        noise = np.asarray(blotches.resize((side, side), Image.Resampling.BILINEAR), np.float32)
        fine = rng.normal(0.0, 8.0, size=(side, side, 1)).astype(np.float32)
        pixels = base + (noise - 128) + fine
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# -- datasets ---------------------------------------------------------------------------------


def iter_scene_batches(
    rows: int,
    *,
    seed: int = 0,
    mismatch_fraction: float = 0.0,
    two_object_fraction: float = 0.3,
    image_size: int = 128,
    jpeg_quality: int = 90,
    batch_size: int = 250,
) -> Iterator[pa.RecordBatch]:
    """Generates a scene dataset in record batches of :data:`SCHEMA`.

    Args:
        rows: how many scenes.
        seed: the dataset seed; equal arguments give byte-identical batches.
        mismatch_fraction: the fraction of rows whose captions contradict their image; exactly
            ``round(rows * mismatch_fraction)`` rows, chosen at random, get one.
        two_object_fraction: probability that a scene holds two shapes instead of one.
        image_size: the side of the square JPEG images, in pixels.
        jpeg_quality: JPEG quality, 1 to 95.
        batch_size: rows per record batch (and per Parquet row group in :func:`write_scenes`).

    Yields:
        Record batches, in row order.

    Raises:
        ValueError: an argument is out of range.
    """
    _check_range("rows", rows, 0, None)
    _check_range("mismatch_fraction", mismatch_fraction, 0.0, 1.0)
    _check_range("two_object_fraction", two_object_fraction, 0.0, 1.0)
    _check_range("jpeg_quality", jpeg_quality, 1, 95)
    _check_range("batch_size", batch_size, 1, None)
    # Independent streams per row and purpose, so row i never depends on how many rows exist.
    pick = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    mismatched = set(pick.choice(rows, round(rows * mismatch_fraction), replace=False).tolist())
    for start in range(0, rows, batch_size):
        records = []
        for i in range(start, min(start + batch_size, rows)):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i)))
            scene = sample_scene(rng, two_object_fraction=two_object_fraction)
            shown = scene
            if i in mismatched:
                lie = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, i)))
                shown = contradict(scene, lie)
            buffer = io.BytesIO()
            render(scene, image_size).save(buffer, "JPEG", quality=jpeg_quality)
            records.append(
                {
                    "id": f"scene-{i:06d}",
                    "image": buffer.getvalue(),
                    "caption_en": caption(shown, "en"),
                    "caption_zh": caption(shown, "zh"),
                    "is_mismatched": i in mismatched,
                    "true_caption_en": caption(scene, "en"),
                    "true_caption_zh": caption(scene, "zh"),
                    "num_objects": len(scene.objects),
                    "shapes": [o.shape for o in scene.objects],
                    "colors": [o.color for o in scene.objects],
                    "sizes": [o.size for o in scene.objects],
                    "positions": [o.position for o in scene.objects],
                    "background": scene.background,
                }
            )
        yield pa.RecordBatch.from_pylist(records, schema=SCHEMA)


def generate_scenes(rows: int, **options: float | int) -> pa.Table:
    """Generates a scene dataset as one table; options as for :func:`iter_scene_batches`."""
    return pa.Table.from_batches(list(iter_scene_batches(rows, **options)), schema=SCHEMA)


def write_scenes(
    out: str | Path,
    rows: int,
    *,
    seed: int = 0,
    mismatch_fraction: float = 0.0,
    two_object_fraction: float = 0.3,
    image_size: int = 128,
    jpeg_quality: int = 90,
    row_group_size: int = 250,
) -> str:
    """Writes a scene dataset to a Parquet file, local or remote (``gs://...``, via fsspec).

    The generator's arguments are stored in the file's key-value metadata under
    ``clipbeam.scenes``, so a file says how to make it again.

    Args:
        out: the Parquet file to write; parent directories are created.
        rows: how many scenes.
        seed, mismatch_fraction, two_object_fraction, image_size, jpeg_quality: as for
            :func:`iter_scene_batches`.
        row_group_size: rows per Parquet row group (the unit of parallel work in the jobs).

    Returns:
        ``out``, as a string.
    """
    import fsspec
    import pyarrow.parquet as pq

    options = {
        "rows": rows,
        "seed": seed,
        "mismatch_fraction": mismatch_fraction,
        "two_object_fraction": two_object_fraction,
        "image_size": image_size,
        "jpeg_quality": jpeg_quality,
    }
    schema = SCHEMA.with_metadata({**SCHEMA.metadata, b"clipbeam.scenes": json.dumps(options)})
    out = str(out)
    fs, path = fsspec.core.url_to_fs(out)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    batches = iter_scene_batches(
        rows,
        seed=seed,
        mismatch_fraction=mismatch_fraction,
        two_object_fraction=two_object_fraction,
        image_size=image_size,
        jpeg_quality=jpeg_quality,
        batch_size=row_group_size,
    )
    with fs.open(path, "wb") as sink, pq.ParquetWriter(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch, row_group_size=row_group_size)
    return out


def _check_range(name: str, value: float, low: float, high: float | None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m clipbeam.pipeline.demo.scenes --rows N --out FILE.parquet``."""
    parser = argparse.ArgumentParser(
        prog="python -m clipbeam.pipeline.demo.scenes",
        description="Write a Parquet dataset of synthetic shape scenes with English and Chinese "
        "captions, some deliberately mismatched (truth kept in the columns).",
    )
    parser.add_argument("--rows", type=int, required=True, help="number of scenes")
    parser.add_argument("--out", required=True, help="Parquet file to write (local or gs://)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument(
        "--mismatch-fraction",
        type=float,
        default=0.0,
        help="fraction of rows with a caption that contradicts the image (default 0)",
    )
    parser.add_argument(
        "--two-object-fraction",
        type=float,
        default=0.3,
        help="fraction of scenes with two shapes instead of one (default 0.3)",
    )
    parser.add_argument("--image-size", type=int, default=128, help="image side in px (128)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (90)")
    parser.add_argument("--row-group-size", type=int, default=250, help="rows per row group")
    args = parser.parse_args(argv)
    try:
        out = write_scenes(
            args.out,
            args.rows,
            seed=args.seed,
            mismatch_fraction=args.mismatch_fraction,
            two_object_fraction=args.two_object_fraction,
            image_size=args.image_size,
            jpeg_quality=args.jpeg_quality,
            row_group_size=args.row_group_size,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {args.rows} scenes to {out}")


if __name__ == "__main__":
    main()
