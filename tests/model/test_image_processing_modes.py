"""Preprocessing modes: exact mode equals transformers bit for bit; fast mode stays close.

The photographs are scikit-image's (shipped in its wheel), upscaled to 1600 x 1200 and saved as
JPEG like camera photos, so that fast mode's reduced JPEG decoding actually happens.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage
import torch
import transformers

from clipbeam.model.image_processing import ChineseCLIPImageProcessor, CLIPImageProcessor
from clipbeam.model.image_settings import PREPROCESS_MODES
from clipbeam.model.image_transforms import FAST_REDUCING_GAP, draft_image, process_image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


def jpeg(image: PIL.Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def camera_size(name: str, size: tuple[int, int] = (1600, 1200)) -> PIL.Image.Image:
    """A photo cropped to 4:3 and upscaled to ``size``."""
    with PIL.Image.open(SKIMAGE_DATA / name) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    crop_w, crop_h = (
        (height * 4 // 3, height) if width * 3 > height * 4 else (width, width * 3 // 4)
    )
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    cropped = rgb.crop((left, top, left + crop_w, top + crop_h))
    return cropped.resize(size, PIL.Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def photo_jpegs() -> list[bytes]:
    return [jpeg(camera_size(name)) for name in PHOTOS]


def opened(data: bytes) -> PIL.Image.Image:
    """Opened, not loaded: what a pipeline hands over straight after reading the bytes."""
    return PIL.Image.open(io.BytesIO(data))


PROCESSORS = {
    "clip-224": (CLIPImageProcessor, {}),
    "clip-336": (CLIPImageProcessor, {"size": {"shortest_edge": 336}, "crop_size": 336}),
    "chinese-224": (
        ChineseCLIPImageProcessor,
        {"size": {"height": 224, "width": 224}, "do_center_crop": False},
    ),
}
REFERENCE = {
    CLIPImageProcessor: transformers.CLIPImageProcessorPil,
    ChineseCLIPImageProcessor: transformers.ChineseCLIPImageProcessorPil,
}


def pair(key: str):
    cls, options = PROCESSORS[key]
    crop = options.get("crop_size")
    ref_options = {**options, "crop_size": {"height": crop, "width": crop}} if crop else options
    return cls(**options), REFERENCE[cls](**ref_options)


# -- exact mode: the reference's values, bit for bit -------------------------------------------


@pytest.mark.parametrize("key", sorted(PROCESSORS))
def test_exact_mode_equals_transformers_bit_for_bit_on_jpeg_photos(key, photo_jpegs):
    ours, ref = pair(key)
    for data in photo_jpegs:
        want = ref(opened(data), return_tensors="np")["pixel_values"]
        for image in (opened(data), PIL.Image.open(io.BytesIO(data)).convert("RGB")):
            got = ours(image, return_tensors="np")["pixel_values"]
            assert got.dtype == want.dtype and got.shape == want.shape
            assert np.array_equal(got, want)


@pytest.mark.parametrize(
    "overrides",
    [
        {"do_normalize": False},
        {"do_rescale": False},
        {"do_rescale": False, "do_normalize": False},
        {"rescale_factor": 1 / 127.5, "image_mean": 0.5, "image_std": 0.5},
        {"do_convert_rgb": False, "do_normalize": False},
        {"resample": 2},
    ],
)
def test_exact_mode_equals_transformers_bit_for_bit_with_other_options(overrides):
    ours, ref = CLIPImageProcessor(), transformers.CLIPImageProcessorPil()
    rgb = camera_size("coffee.png", (480, 360))
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P")):
        got = ours(image, return_tensors="np", **overrides)["pixel_values"]
        want = ref(image, return_tensors="np", **overrides)["pixel_values"]
        assert got.dtype == want.dtype and got.shape == want.shape, image.mode
        assert np.array_equal(got, want), image.mode


def test_exact_mode_does_not_copy_or_change_the_caller_s_image(photo_jpegs):
    image = opened(photo_jpegs[0])
    process_image(image, CLIPImageProcessor().resolve_settings())
    assert image.size == (1600, 1200)


# -- fast mode ---------------------------------------------------------------------------------


def test_fast_mode_decodes_jpegs_at_reduced_scale_with_the_exact_geometry(photo_jpegs):
    settings = CLIPImageProcessor().resolve_settings()
    image = opened(photo_jpegs[0])
    fast = process_image(image, settings, mode="fast")
    # 1600 x 1200 -> at least 298 x 224: a 1/4 scale DCT decode, 400 x 300.
    assert image.size == (400, 300)
    exact = process_image(opened(photo_jpegs[0]), settings)
    assert fast.shape == exact.shape and fast.dtype == exact.dtype
    # Values in units of the 0-255 input scale: off by about a level, with no offset.
    diff = (fast - exact) * np.asarray(settings.image_std, np.float32)[:, None, None] * 255
    assert np.abs(diff).mean() < 2.0
    assert abs(diff.mean()) < 0.25


def test_fast_mode_odd_sizes_cover_the_same_picture():
    """A 1601 x 1203 JPEG decodes to 401 x 301 at 1/4 scale; the output still spans the whole
    picture (Pillow's draft box), so it lines up with exact mode instead of shifting."""
    rgb = camera_size("astronaut.png", (1601, 1203))
    data = jpeg(rgb, quality=95)
    settings = ChineseCLIPImageProcessor(
        size={"height": 224, "width": 224}, do_center_crop=False
    ).resolve_settings()
    exact = process_image(opened(data), settings)
    fast = process_image(opened(data), settings, mode="fast")
    # Shifting the fast output by one pixel in either direction makes it further from exact.
    aligned = np.abs(fast - exact).mean()
    for axis in (1, 2):
        for shift in (-1, 1):
            assert aligned < np.abs(np.roll(fast, shift, axis=axis) - exact).mean()


def test_draft_then_load_then_process_with_the_box_equals_fast_mode_in_one_call():
    """A pipeline drafts and loads itself (to report decoding errors as such), then hands the
    box over: the result is the same as letting process_image do all of it."""
    data = jpeg(camera_size("chelsea.png", (1601, 1203)))
    settings = CLIPImageProcessor().resolve_settings()
    image = opened(data)
    box = draft_image(image, settings)
    assert box == (0, 0, 1601 / 4, 1203 / 4) and image.size == (401, 301)
    image.load()
    assert draft_image(image, settings) is None  # loaded: nothing left to draft
    got = process_image(image, settings, mode="fast", box=box)
    assert np.array_equal(got, process_image(opened(data), settings, mode="fast"))
    with pytest.raises(ValueError, match="box is for fast mode"):
        process_image(image, settings, box=box)
    png = io.BytesIO()
    camera_size("chelsea.png", (800, 600)).save(png, "PNG")
    assert draft_image(PIL.Image.open(png), settings) is None  # only JPEGs decode reduced


def test_fast_mode_on_loaded_images_and_arrays_reduces_before_resampling(photo_jpegs):
    settings = CLIPImageProcessor().resolve_settings()
    loaded = PIL.Image.open(io.BytesIO(photo_jpegs[1]))
    loaded.load()
    pixels = np.array(loaded)
    fast = process_image(loaded, settings, mode="fast")
    assert loaded.size == (1600, 1200)  # already decoded: nothing to draft
    # 1200 / 224 = 5.4: a box reduction by 2 (leaving 2.7 >= FAST_REDUCING_GAP), then bicubic.
    reduced = loaded.resize((298, 224), 3, reducing_gap=FAST_REDUCING_GAP)
    want = process_image(reduced, settings)
    assert np.array_equal(fast, want)
    assert np.array_equal(process_image(pixels, settings, mode="fast"), want)
    assert not np.array_equal(fast, process_image(loaded, settings))


def test_fast_mode_through_the_processor_and_unknown_modes(photo_jpegs):
    processor = CLIPImageProcessor()
    images = [opened(data) for data in photo_jpegs[:2]]
    batch = processor(images, return_tensors="pt", mode="fast")["pixel_values"]
    assert batch.shape == (2, 3, 224, 224)
    one = processor.preprocess_one(opened(photo_jpegs[0]), mode="fast")
    assert np.array_equal(one, batch[0].numpy())
    assert PREPROCESS_MODES == ("exact", "fast")
    with pytest.raises(ValueError, match=r"'exact'.*'fast'.*got 'quick'"):
        processor(images, mode="quick")


def vision_features(pixels: np.ndarray) -> torch.Tensor:
    """Normalized image features of a small random ViT, sensitive to the pixels.

    Random towers at the usual initialization barely react to their input (every image gets
    nearly the same features), which would make any threshold pass. Larger initial weights make
    the features depend on the pixels; the test below checks that this model tells a known-bad
    preprocessing (nearest-neighbour resizing, which aliases) from a good one.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=224,
        patch_size=32,
        projection_dim=32,
        initializer_factor=3.0,
    )
    tower = CLIPVisionModelWithProjection(config).eval()
    with torch.inference_mode():
        features = tower(pixel_values=torch.from_numpy(pixels)).image_embeds
    return torch.nn.functional.normalize(features, dim=-1)


def test_fast_mode_image_features_stay_within_0_995_cosine_of_exact_mode(photo_jpegs):
    settings = CLIPImageProcessor().resolve_settings()
    nearest = CLIPImageProcessor().resolve_settings(resample=PIL.Image.Resampling.NEAREST)
    batches = {
        "exact": [process_image(opened(d), settings) for d in photo_jpegs],
        "fast": [process_image(opened(d), settings, mode="fast") for d in photo_jpegs],
        "nearest": [process_image(opened(d), nearest) for d in photo_jpegs],
    }
    features = vision_features(np.stack([p for b in batches.values() for p in b]))
    exact, fast, bad = features.split(len(photo_jpegs))
    assert (exact * fast).sum(-1).min() >= 0.995
    # The same measure rejects a preprocessing known to be wrong: the check has teeth.
    assert (exact * bad).sum(-1).min() < 0.995
