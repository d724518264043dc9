"""Tests for the synthetic scene generator."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipbeam.pipeline.demo import scenes
from clipbeam.pipeline.demo.scenes import (
    COLORS,
    POSITIONS,
    SCHEMA,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    class_labels,
    class_prompt,
    contradict,
    generate_scenes,
    render,
    sample_scene,
    write_scenes,
)


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    a = generate_scenes(12, seed=3, mismatch_fraction=0.25)
    b = generate_scenes(12, seed=3, mismatch_fraction=0.25)
    c = generate_scenes(12, seed=4, mismatch_fraction=0.25)
    assert a.schema == SCHEMA
    assert a.equals(b)
    assert a.column("image").to_pylist() != c.column("image").to_pylist()


def test_rows_do_not_depend_on_row_count() -> None:
    small = generate_scenes(5, seed=1)
    large = generate_scenes(20, seed=1, batch_size=7)
    assert large.slice(0, 5).equals(small)


def test_mismatched_rows_are_exact_in_number_and_contradict_the_truth() -> None:
    table = generate_scenes(40, seed=2, mismatch_fraction=0.25).to_pylist()
    mismatched = [r for r in table if r["is_mismatched"]]
    assert len(mismatched) == 10
    for row in table:
        for lang in ("en", "zh"):
            changed = row[f"caption_{lang}"] != row[f"true_caption_{lang}"]
            assert changed == row["is_mismatched"], row
    for row in mismatched:
        # The false caption names no (shape, colour) pair that the image shows.
        for shape, color in zip(row["shapes"], row["colors"], strict=True):
            assert f"{color} {shape}" not in row["caption_en"]
            assert f"{COLORS[color].zh}{SHAPES[shape]}" not in row["caption_zh"].replace("的", "")


def test_contradict_keeps_layout_and_replaces_every_pair() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng, two_object_fraction=0.5)
        lie = contradict(scene, rng)
        real = {(o.shape, o.color) for o in scene.objects}
        claimed = {(o.shape, o.color) for o in lie.objects}
        assert not real & claimed
        assert len(claimed) == len(lie.objects)
        assert [(o.size, o.position) for o in lie.objects] == [
            (o.size, o.position) for o in scene.objects
        ]
        assert (lie.template, lie.background, lie.seed) == (
            scene.template,
            scene.background,
            scene.seed,
        )


def test_two_object_scenes_use_opposite_positions() -> None:
    table = generate_scenes(60, seed=5, two_object_fraction=0.5).to_pylist()
    pairs = {tuple(sorted(r["positions"])) for r in table if r["num_objects"] == 2}
    assert pairs == {("left", "right"), ("bottom", "top")}
    assert all(
        len(set(zip(r["shapes"], r["colors"], strict=True))) == r["num_objects"] for r in table
    )


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("color", ["red", "blue", "white", "black"])
def test_the_image_shows_the_described_colour_where_the_caption_says(
    shape: str, color: str
) -> None:
    for position, (_, _, (fx, fy)) in POSITIONS.items():
        scene = Scene((SceneObject(shape, color, "small", position),), "plain", 0, seed=11)
        buffer = io.BytesIO()
        render(scene, 128).save(buffer, "JPEG", quality=90)
        image = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.int32)
        centre = image[round(fy * 127), round(fx * 127)]
        # Colour jitter is at most 18 per channel; JPEG adds a little more.
        assert np.abs(centre - np.array(COLORS[color].rgb)).max() <= 40, (position, centre)
        # Opposite corner regions show background, not the object.
        corner = image[:8, :8].reshape(-1, 3).mean(axis=0)
        assert np.abs(corner - np.array(COLORS[color].rgb)).max() > 40


def test_large_shapes_cover_more_pixels_than_small_ones() -> None:
    def covered(size: str) -> int:
        scene = Scene((SceneObject("star", "red", size, "center"),), "plain", 0, seed=3)
        pixels = np.asarray(render(scene, 64), dtype=np.int32)
        return int((np.abs(pixels - np.array(COLORS["red"].rgb)).max(axis=-1) < 40).sum())

    assert covered("large") > 2 * covered("small") > 0


def test_captions_in_both_languages() -> None:
    obj = SceneObject("circle", "orange", "large", "left")
    two = Scene((obj, SceneObject("star", "blue", "small", "right")), "noise", 0, seed=0)
    assert caption(Scene((obj,), "plain", 0, 0), "en") == "a large orange circle on the left"
    assert caption(Scene((obj,), "plain", 0, 0), "zh") == "左边一个大的橙色圆形"
    assert caption(two, "en") == (
        "a large orange circle on the left and a small blue star on the right"
    )
    assert caption(two, "zh") == "左边一个大的橙色圆形，右边一个小的蓝色星形"
    assert class_prompt("circle", "orange", "en") == "an orange circle"
    assert class_prompt("circle", "orange", "zh") == "一个橙色的圆形"
    with pytest.raises(ValueError, match="unknown caption language 'fr'"):
        caption(two, "fr")


def test_class_labels_and_prompts_are_distinct() -> None:
    labels = class_labels()
    assert len(labels) == len(SHAPES) * len(COLORS) == len(set(labels))
    for lang in ("en", "zh"):
        assert len({class_prompt(s, c, lang) for s, c in labels}) == len(labels)


def test_write_scenes_row_groups_metadata_and_images(tmp_path) -> None:
    out = write_scenes(
        tmp_path / "sub" / "s.parquet", 25, seed=7, mismatch_fraction=0.2, row_group_size=10
    )
    file = pq.ParquetFile(out)
    assert file.metadata.num_rows == 25
    assert [file.metadata.row_group(i).num_rows for i in range(3)] == [10, 10, 5]
    options = json.loads(file.schema_arrow.metadata[b"clipbeam.scenes"])
    assert options["seed"] == 7 and options["mismatch_fraction"] == 0.2
    table = file.read()
    assert table.equals(
        generate_scenes(25, seed=7, mismatch_fraction=0.2).replace_schema_metadata(
            table.schema.metadata
        )
    )
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()))
    assert (image.format, image.size, image.mode) == ("JPEG", (128, 128), "RGB")


def test_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "cli.parquet"
    scenes.main(["--rows", "6", "--out", str(out), "--image-size", "32", "--seed", "9"])
    assert "wrote 6 scenes" in capsys.readouterr().out
    image = Image.open(io.BytesIO(pq.read_table(out).column("image")[0].as_py()))
    assert image.size == (32, 32)
    with pytest.raises(SystemExit):
        scenes.main(["--rows", "6", "--out", str(out), "--mismatch-fraction", "1.5"])
    assert "mismatch_fraction must be between 0.0 and 1.0, got 1.5" in capsys.readouterr().err


def test_two_large_shapes_never_touch_and_stay_inside_the_image() -> None:
    rng = np.random.default_rng(8)
    for _ in range(150):
        scene = sample_scene(rng, two_object_fraction=1.0)
        objects = tuple(
            SceneObject(o.shape, color, "large", o.position)
            for o, color in zip(scene.objects, ("red", "blue"), strict=True)
        )
        pixels = np.asarray(render(Scene(objects, "plain", 0, scene.seed), 128), dtype=np.int32)
        red = np.abs(pixels - np.array(COLORS["red"].rgb)).max(axis=-1) < 60
        blue = np.abs(pixels - np.array(COLORS["blue"].rgb)).max(axis=-1) < 60
        grown = red.copy()  # red grown by one pixel in the four directions
        grown[1:] |= red[:-1]
        grown[:-1] |= red[1:]
        grown[:, 1:] |= red[:, :-1]
        grown[:, :-1] |= red[:, 1:]
        assert not (grown & blue).any(), scene
        shapes = red | blue
        assert not (
            shapes[0].any() or shapes[-1].any() or shapes[:, 0].any() or shapes[:, -1].any()
        )
