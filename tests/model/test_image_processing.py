"""Image processors: parity with transformers' PIL processors, options, loading and saving.

The reference is ``CLIPImageProcessorPil`` / ``ChineseCLIPImageProcessorPil`` of transformers,
built from the same ``preprocessor_config.json`` as ours. Inputs are real photographs shipped in
scikit-image's wheel (read from its data folder, no download).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage
import torch
import transformers

from clipbeam import model
from clipbeam.model.hub import CheckpointNotFoundError
from clipbeam.model.image_processing import (
    ChineseCLIPFeatureExtractor,
    ChineseCLIPImageProcessor,
    CLIPFeatureExtractor,
    CLIPImageProcessor,
)
from clipbeam.model.image_transforms import center_crop, process_image, resize_output_size

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]

# The hub files, as published (old int layout) and as transformers >= 4.26 writes them (dicts).
CLIP_B32_OLD = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": MEAN,
    "image_std": STD,
    "resample": 3,
    "size": 224,
}
CLIP_B32_NEW = {
    **CLIP_B32_OLD,
    "crop_size": {"height": 224, "width": 224},
    "size": {"shortest_edge": 224},
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "image_processor_type": "CLIPImageProcessor",
}
CLIP_L336_OLD = {**CLIP_B32_OLD, "crop_size": 336, "size": 336}
CLIP_L336_NEW = {
    **CLIP_B32_NEW,
    "crop_size": {"height": 336, "width": 336},
    "size": {"shortest_edge": 336},
}
# OFA-Sys/chinese-clip-vit-base-patch16: straight to 224 x 224, no crop.
CHINESE_OLD = {
    "crop_size": 224,
    "do_center_crop": False,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ChineseCLIPFeatureExtractor",
    "image_mean": MEAN,
    "image_std": STD,
    "resample": 3,
    "size": {"height": 224, "width": 224},
}
CHINESE_NEW = {
    **CHINESE_OLD,
    "crop_size": {"height": 224, "width": 224},
    "do_convert_rgb": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "image_processor_type": "ChineseCLIPImageProcessor",
}
CONFIGS = {
    "clip-b32-old": (CLIPImageProcessor, CLIP_B32_OLD),
    "clip-b32-new": (CLIPImageProcessor, CLIP_B32_NEW),
    "clip-l336-old": (CLIPImageProcessor, CLIP_L336_OLD),
    "clip-l336-new": (CLIPImageProcessor, CLIP_L336_NEW),
    "chinese-old": (ChineseCLIPImageProcessor, CHINESE_OLD),
    "chinese-new": (ChineseCLIPImageProcessor, CHINESE_NEW),
}
REFERENCE_CLASSES = {
    CLIPImageProcessor: transformers.CLIPImageProcessorPil,
    ChineseCLIPImageProcessor: transformers.ChineseCLIPImageProcessorPil,
}


def photo(name: str) -> PIL.Image.Image:
    with PIL.Image.open(SKIMAGE_DATA / f"{name}.png") as image:
        image.load()
        return image


def png_roundtrip(image: PIL.Image.Image, **save_options) -> PIL.Image.Image:
    """Saves and reopens as PNG, so the image carries what a decoder really gives."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_options)
    buffer.seek(0)
    reopened = PIL.Image.open(buffer)
    reopened.load()
    return reopened


def with_partial_alpha(rgb: PIL.Image.Image) -> PIL.Image.Image:
    """RGBA whose alpha runs from transparent (left) to opaque (right)."""
    pixels = np.array(rgb.convert("RGB"))
    alpha = np.linspace(0, 255, pixels.shape[1]).astype(np.uint8)
    alpha = np.broadcast_to(alpha, pixels.shape[:2])[..., None]
    return PIL.Image.fromarray(np.concatenate([pixels, alpha], axis=-1), "RGBA")


def modes_of(rgb: PIL.Image.Image) -> dict[str, PIL.Image.Image]:
    gray16 = np.array(rgb.convert("L")).astype(np.uint16) * 257  # full 16-bit range
    rgba = with_partial_alpha(rgb)
    palette = rgb.quantize(64)
    # tRNS: the most frequent palette entry becomes transparent
    common = int(np.bincount(np.array(palette).ravel()).argmax())
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "LA": rgba.convert("LA"),
        "RGBA": rgba,
        "P": palette,
        "P-transparent": png_roundtrip(palette, transparency=common),
        "CMYK": rgb.convert("CMYK"),
        "I;16": png_roundtrip(PIL.Image.fromarray(gray16)),
        "I": PIL.Image.fromarray(gray16.astype(np.int32)),
        "1": rgb.convert("1"),
    }


@pytest.fixture(scope="module")
def photos() -> dict[str, PIL.Image.Image]:
    return {name: photo(name) for name in ("astronaut", "coffee", "chelsea", "camera")}


def build(key: str, tmp_path: Path):
    """(ours, reference) both loaded from a preprocessor_config.json on disk."""
    cls, config = CONFIGS[key]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    return cls.from_pretrained(tmp_path), REFERENCE_CLASSES[cls].from_pretrained(tmp_path)


def assert_same(ours_out, ref_out) -> None:
    ours_pixels, ref_pixels = ours_out["pixel_values"], ref_out["pixel_values"]
    assert type(ours_pixels) is type(ref_pixels)
    assert ours_pixels.shape == ref_pixels.shape
    assert ours_pixels.dtype == ref_pixels.dtype
    np.testing.assert_allclose(np.asarray(ours_pixels), np.asarray(ref_pixels), rtol=0, atol=1e-5)


# -- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_photos_in_every_mode_match_transformers(key, photos, tmp_path):
    ours, ref = build(key, tmp_path)
    for name, rgb in photos.items():
        for mode, image in modes_of(rgb.convert("RGB")).items():
            assert image.mode == mode.split("-")[0], (name, mode)
            got = ours(image, return_tensors="np")
            want = ref(image, return_tensors="np")
            assert_same(got, want)


@pytest.mark.parametrize("key", sorted(CONFIGS))
@pytest.mark.parametrize("size", [(3000, 20), (20, 3000), (3, 5), (5, 3), (223, 225)])
def test_extreme_aspect_ratios_match_transformers(key, size, photos, tmp_path):
    ours, ref = build(key, tmp_path)
    image = photos["coffee"].resize(size, PIL.Image.Resampling.BOX)
    assert_same(ours(image, return_tensors="np"), ref(image, return_tensors="np"))


def test_output_follows_the_config_not_the_family(photos, tmp_path):
    chinese, _ = build("chinese-new", tmp_path)
    clip = CLIPImageProcessor.from_dict(CLIP_L336_OLD)
    chelsea = photos["chelsea"]  # 451 x 300: not square
    assert chinese(chelsea, return_tensors="pt")["pixel_values"].shape == (1, 3, 224, 224)
    assert clip(chelsea, return_tensors="pt")["pixel_values"].shape == (1, 3, 336, 336)
    # No crop: the whole (squashed) image is kept, so the corners are real pixels, not padding.
    squashed = chinese(chelsea, return_tensors="np")["pixel_values"][0]
    expected = np.array(chelsea.resize((224, 224), PIL.Image.Resampling.BICUBIC))
    corner = (expected[0, 0] / 255 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(squashed[:, 0, 0], corner, atol=1e-5)


def _array_inputs(rgb: PIL.Image.Image) -> dict[str, object]:
    hwc = np.array(rgb)
    rgba = np.array(with_partial_alpha(rgb))
    return {
        "uint8 HWC": hwc,
        "uint8 CHW": hwc.transpose(2, 0, 1),
        "float64 0-1": hwc / 255.0,
        "float32 0-1 CHW": (hwc / 255.0).astype(np.float32).transpose(2, 0, 1),
        "float32 0-255": hwc.astype(np.float32),
        "uint8 RGBA HWC": rgba,
        "float32 RGBA 0-1": (rgba / 255.0).astype(np.float32),
        "uint8 gray HW1": hwc[..., :1],
        "torch uint8 CHW": torch.from_numpy(hwc.transpose(2, 0, 1).copy()),
        "torch float HWC": torch.from_numpy(hwc / 255.0),
        "numpy batch": np.stack([hwc, hwc[::-1]]),
        "torch batch": torch.from_numpy(np.stack([hwc, hwc[:, ::-1]]).copy()),
        "mixed list": [rgb, hwc.transpose(2, 0, 1), torch.from_numpy(hwc.copy())],
        "nested list": [[rgb], [hwc, rgb.convert("L")]],
    }


@pytest.mark.parametrize("key", ["clip-b32-new", "chinese-new"])
def test_numpy_and_torch_inputs_match_transformers(key, photos, tmp_path):
    ours, ref = build(key, tmp_path)
    rgb = photos["astronaut"].resize((160, 120))
    for name, images in _array_inputs(rgb).items():
        got = ours(images, return_tensors="pt")
        want = ref(images, return_tensors="pt")
        assert got["pixel_values"].dtype == want["pixel_values"].dtype == torch.float32, name
        torch.testing.assert_close(got["pixel_values"], want["pixel_values"], rtol=0, atol=1e-5)


OVERRIDES = [
    {"do_center_crop": False, "size": {"height": 64, "width": 96}},
    {"size": {"shortest_edge": 100}, "crop_size": {"height": 80, "width": 50}},
    {"size": 150, "crop_size": 99},  # old int layout in a call
    {"crop_size": {"height": 400, "width": 700}},  # larger than the resized image: zero padding
    {"do_resize": False, "crop_size": {"height": 301, "width": 453}},  # odd padding
    {"do_resize": False, "do_center_crop": False},
    {"resample": 0},
    {"resample": 1},
    {"resample": 2},
    {"resample": 4},
    {"resample": 5},
    {"do_normalize": False},
    {"do_rescale": False},
    {"do_rescale": False, "do_normalize": False},  # raw uint8 pixels come out
    {"rescale_factor": 1 / 127.5, "image_mean": 1.0, "image_std": 1.0},
    {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    {"do_convert_rgb": False},
]


@pytest.mark.parametrize(
    "overrides", OVERRIDES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_call_overrides_match_transformers(overrides, photos, tmp_path):
    ours, ref = build("clip-b32-new", tmp_path)
    for image in (photos["chelsea"], photos["coffee"].resize((40, 30))):
        assert_same(
            ours(image, return_tensors="np", **overrides),
            ref(image, return_tensors="np", **overrides),
        )
    # overrides apply to that call only
    assert ours.to_dict() == CLIPImageProcessor.from_dict(CLIP_B32_NEW).to_dict()


def test_return_tensors_none_gives_a_list_of_arrays(photos):
    processor = CLIPImageProcessor()
    out = processor([photos["camera"], photos["coffee"]])
    assert isinstance(out["pixel_values"], list) and len(out["pixel_values"]) == 2
    assert all(p.shape == (3, 224, 224) and p.dtype == np.float32 for p in out["pixel_values"])
    assert out.pixel_values is out["pixel_values"]


def test_preprocess_one_and_process_image_equal_the_batch(photos):
    processor = ChineseCLIPImageProcessor.from_dict(CHINESE_NEW)
    images = [photos["coffee"], np.array(photos["camera"])]
    batch = processor(images, return_tensors="np")["pixel_values"]
    settings = processor.resolve_settings()
    for i, image in enumerate(images):
        one = processor.preprocess_one(image)
        assert one.shape == (3, 224, 224) and one.dtype == np.float32
        assert one.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(one, batch[i])
        np.testing.assert_array_equal(process_image(image, settings), batch[i])


def test_two_dimensional_array_is_a_grayscale_image(photos):
    # transformers rejects (H, W) arrays; here they are read as one channel.
    gray = np.array(photos["camera"].resize((90, 70)))
    processor = CLIPImageProcessor()
    reference = transformers.CLIPImageProcessorPil()
    np.testing.assert_array_equal(
        processor(gray, return_tensors="np")["pixel_values"],
        reference(gray[..., None], return_tensors="np")["pixel_values"],
    )


# -- small functions ---------------------------------------------------------------------------


def test_resize_output_size_truncates_the_long_side():
    assert resize_output_size(300, 451, {"shortest_edge": 224}) == (224, 336)  # 336.74 -> 336
    assert resize_output_size(451, 300, {"shortest_edge": 224}) == (336, 224)
    assert resize_output_size(5, 3, {"shortest_edge": 224}) == (373, 224)
    assert resize_output_size(20, 3000, {"shortest_edge": 224}) == (224, 33600)
    assert resize_output_size(7, 9, {"height": 2, "width": 3}) == (2, 3)


def test_center_crop_pads_the_extra_row_first():
    pixels = np.arange(1, 7, dtype=np.uint8).reshape(2, 3, 1)
    cropped = center_crop(pixels, 5, 2)[..., 0]
    # rows: 2 -> 5 pads 2 before, 1 after; columns: 3 -> 2 crops from offset 0
    expected = np.zeros((5, 2), np.uint8)
    expected[2:4] = [[1, 2], [4, 5]]
    np.testing.assert_array_equal(cropped, expected)
    # a crop that fits is a view, not a copy
    assert np.shares_memory(center_crop(pixels, 2, 3), pixels)


# -- configuration, loading and saving ---------------------------------------------------------


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_to_dict_matches_transformers(key, tmp_path):
    ours, ref = build(key, tmp_path)
    assert ours.to_dict() == json.loads(ref.to_json_string())


def test_old_and_new_layouts_load_the_same():
    assert CLIPImageProcessor.from_dict(CLIP_B32_OLD) == CLIPImageProcessor.from_dict(CLIP_B32_NEW)
    assert CLIPImageProcessor.from_dict(CLIP_L336_OLD).size == {"shortest_edge": 336}
    chinese_old = ChineseCLIPImageProcessor.from_dict(CHINESE_OLD)
    assert chinese_old == ChineseCLIPImageProcessor.from_dict(CHINESE_NEW)


def test_default_to_square_reads_an_int_size_as_a_square():
    assert CLIPImageProcessor(size=100).size == {"shortest_edge": 100}
    assert CLIPImageProcessor(size=100, default_to_square=True).size == {
        "height": 100,
        "width": 100,
    }
    assert CLIPImageProcessor(size=(10, 20)).size == {"height": 10, "width": 20}
    settings = CLIPImageProcessor().resolve_settings(size=64, default_to_square=True)
    assert settings.size == {"height": 64, "width": 64}


def test_save_pretrained_round_trips_and_transformers_reads_it(photos, tmp_path):
    processor = ChineseCLIPImageProcessor.from_dict(CHINESE_OLD, crop_size=200, resample=2)
    [written] = processor.save_pretrained(tmp_path / "out")
    assert Path(written).name == "preprocessor_config.json"
    saved = json.loads(Path(written).read_text())
    assert saved["image_processor_type"] == "ChineseCLIPImageProcessor"
    assert saved["crop_size"] == {"height": 200, "width": 200} and saved["resample"] == 2
    assert ChineseCLIPImageProcessor.from_pretrained(tmp_path / "out") == processor
    assert ChineseCLIPImageProcessor.from_pretrained(written) == processor  # a JSON file path
    reference = transformers.ChineseCLIPImageProcessorPil.from_pretrained(tmp_path / "out")
    image = photos["coffee"]
    assert_same(processor(image, return_tensors="np"), reference(image, return_tensors="np"))


def test_from_pretrained_reads_transformers5_processor_config(tmp_path):
    nested = {"image_processor": CLIP_L336_NEW, "processor_class": "CLIPProcessor"}
    (tmp_path / "processor_config.json").write_text(json.dumps(nested))
    assert CLIPImageProcessor.from_pretrained(tmp_path).crop_size == {"height": 336, "width": 336}


def test_from_pretrained_overrides_and_errors(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_B32_OLD))
    assert (
        CLIPImageProcessor.from_pretrained(tmp_path, do_center_crop=False).do_center_crop is False
    )
    with pytest.raises(TypeError, match="do_centre_crop"):
        CLIPImageProcessor.from_pretrained(tmp_path, do_centre_crop=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match=r"preprocessor_config\.json"):
        CLIPImageProcessor.from_pretrained(empty)
    (empty / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(model.CheckpointError, match="not valid JSON"):
        CLIPImageProcessor.from_pretrained(empty)


def test_unknown_config_keys_are_kept_with_a_warning(caplog):
    config = {**CLIP_B32_NEW, "processor_class": "CLIPProcessor", "some_future_key": 3}
    with caplog.at_level(logging.WARNING, logger="clipbeam.model.image_processing"):
        processor = CLIPImageProcessor.from_dict(config)
    assert "some_future_key" in caplog.text
    assert processor.to_dict()["some_future_key"] == 3
    assert "processor_class" not in processor.to_dict()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"do_pad": True}, "do_pad"),
        ({"size": {"longest_edge": 224}}, "size must have the keys"),
        ({"crop_size": {"shortest_edge": 224}}, "crop_size must have the keys"),
        ({"size": {"shortest_edge": 0}}, "positive int"),
        ({"resample": 9}, "resample"),
        ({"image_mean": "imagenet"}, "image_mean"),
        ({"do_resize": "yes"}, "do_resize"),
    ],
)
def test_invalid_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        CLIPImageProcessor.from_dict({**CLIP_B32_OLD, **config})


def test_invalid_calls_say_what_is_wrong(photos):
    processor = CLIPImageProcessor()
    image = photos["coffee"]
    with pytest.raises(TypeError, match="unknown option"):
        processor(image, do_resise=False)
    with pytest.raises(ValueError, match="no images"):
        processor([])
    with pytest.raises(TypeError, match=r"PIL\.Image\.Image, a numpy array"):
        processor("photo.jpg")
    with pytest.raises(ValueError, match="different shapes"):
        processor([image, photos["camera"]], do_center_crop=False, return_tensors="pt")
    with pytest.raises(ValueError, match="channels"):
        processor(np.zeros((10, 12, 2), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        processor(np.zeros((10, 12, 2), np.uint8), input_data_format="channels_last")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(np.full((10, 12, 4), 2.5, np.float32))
    with pytest.raises(ValueError, match="8 bits"):
        processor(np.full((10, 12, 3), 1000, np.uint16), do_convert_rgb=False)
    with pytest.raises(ValueError, match="empty"):
        processor(np.zeros((0, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="input_data_format"):
        processor(np.zeros((10, 12, 3), np.uint8), input_data_format="hwc")


def test_explicit_input_data_format_resolves_ambiguous_shapes():
    # (3, 4, 3) could be CHW or HWC: transformers (and we) assume CHW unless told.
    pixels = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    processor = CLIPImageProcessor(size={"height": 4, "width": 4}, do_center_crop=False)
    as_hwc = processor(pixels, input_data_format="channels_last", return_tensors="np")
    expected = processor(pixels.transpose(2, 0, 1).copy(), return_tensors="np")
    np.testing.assert_array_equal(as_hwc["pixel_values"], expected["pixel_values"])


def test_names_aliases_and_pickling(photos):
    assert CLIPFeatureExtractor is CLIPImageProcessor
    assert ChineseCLIPFeatureExtractor is ChineseCLIPImageProcessor
    assert model.CLIPImageProcessor is CLIPImageProcessor
    assert model.ChineseCLIPFeatureExtractor is ChineseCLIPImageProcessor
    processor = ChineseCLIPImageProcessor.from_dict(CHINESE_NEW)
    clone = pickle.loads(pickle.dumps(processor))  # Beam pickles DoFns holding processors
    assert clone == processor
    np.testing.assert_array_equal(
        clone.preprocess_one(photos["camera"]), processor.preprocess_one(photos["camera"])
    )
    assert "ChineseCLIPImageProcessor" in repr(processor)


def test_raw_pixel_output_is_a_writable_array(photos):
    # without rescale/normalize the resized pixels come out as they are; Pillow's own buffer
    # is read-only, so they must be a copy
    processor = CLIPImageProcessor(do_convert_rgb=False, do_rescale=False, do_normalize=False)
    pixels = processor.preprocess_one(photos["camera"])
    assert pixels.shape == (1, 224, 224) and pixels.dtype == np.uint8
    assert pixels.flags.writeable
