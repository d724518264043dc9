"""Processors: same outputs as transformers' CLIPProcessor / ChineseCLIPProcessor.

Each checkpoint folder gets the tokenizer files written by our tokenizers (OpenAI's BPE, the
Chinese RoBERTa-wwm-ext vocabulary), a hub ``preprocessor_config.json`` and a ``config.json``;
the reference processor is built by transformers from the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import skimage
import torch
import transformers

from clipbeam import model
from clipbeam.model.batch import BatchFeature
from clipbeam.model.hub import CheckpointError, CheckpointNotFoundError
from clipbeam.model.image_processing import ChineseCLIPImageProcessor, CLIPImageProcessor
from clipbeam.model.processing import ChineseCLIPProcessor, CLIPProcessor, load_processor
from clipbeam.model.tokenization_bert import BertTokenizer
from clipbeam.model.tokenization_clip import CLIPTokenizer

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_PREPROCESSOR = {
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
CHINESE_PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": False,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": MEAN,
    "image_std": STD,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}


def photo(name: str) -> PIL.Image.Image:
    with PIL.Image.open(SKIMAGE_DATA / f"{name}.png") as image:
        image.load()
        return image


@pytest.fixture(scope="module")
def images() -> list[PIL.Image.Image]:
    return [photo("chelsea"), photo("camera").resize((200, 120)), photo("coffee")]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    CLIPTokenizer.from_openai_bpe().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    return folder


@pytest.fixture(scope="module")
def chinese_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chinese")
    BertTokenizer.from_chinese_roberta_wwm_ext().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CHINESE_PREPROCESSOR))
    (folder / "config.json").write_text(json.dumps({"model_type": "chinese_clip"}))
    return folder


def reference(folder: Path, chinese: bool):
    if chinese:
        return transformers.ChineseCLIPProcessor(
            image_processor=transformers.ChineseCLIPImageProcessorPil.from_pretrained(folder),
            tokenizer=transformers.BertTokenizer.from_pretrained(folder),
        )
    return transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessorPil.from_pretrained(folder),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder),
    )


def assert_same(ours: BatchFeature, ref) -> None:
    assert isinstance(ours, BatchFeature)
    assert sorted(ours.keys()) == sorted(ref.keys())
    for key in ref:
        got, want = ours[key], ref[key]
        assert type(got) is type(want), key
        if key == "pixel_values":
            if isinstance(want, list):
                assert len(got) == len(want)
                for a, b in zip(got, want, strict=True):
                    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
            else:
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
        elif isinstance(want, torch.Tensor):
            assert got.dtype == want.dtype
            assert torch.equal(got, want), key
        elif isinstance(want, np.ndarray):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        else:
            assert got == want, key


CLIP_TEXTS = ["a photo of a cat", "A DOG on the beach, at sunset!", ""]
CHINESE_TEXTS = ["一张猫的照片", "海滩上的狗，日落时分！", "a photo 混合 text"]
CALLS = [
    {"padding": True, "return_tensors": "pt"},
    {"padding": "max_length", "max_length": 12, "truncation": True, "return_tensors": "np"},
    {},
    {
        "padding": True,
        "return_tensors": "pt",
        "do_center_crop": False,
        "size": {"height": 64, "width": 48},
    },
]


@pytest.mark.parametrize("chinese", [False, True], ids=["clip", "chinese_clip"])
@pytest.mark.parametrize("options", CALLS, ids=["pt", "np-max_length", "lists", "image-options"])
def test_text_and_images_match_transformers(chinese, options, images, clip_dir, chinese_dir):
    folder = chinese_dir if chinese else clip_dir
    texts = CHINESE_TEXTS if chinese else CLIP_TEXTS
    ours = load_processor(folder)
    ref = reference(folder, chinese)
    assert_same(
        ours(text=texts, images=images, **options), ref(text=texts, images=images, **options)
    )
    assert_same(ours(text=texts, **options), ref(text=texts, **options))
    assert_same(ours(images=images, **options), ref(images=images, **options))
    assert_same(ours(text=texts[0], images=images[0]), ref(text=texts[0], images=images[0]))


def test_load_processor_dispatches_on_model_type(clip_dir, chinese_dir):
    clip = load_processor(clip_dir)
    chinese = load_processor(chinese_dir)
    assert type(clip) is CLIPProcessor and type(chinese) is ChineseCLIPProcessor
    assert (
        type(clip.tokenizer) is CLIPTokenizer and type(clip.image_processor) is CLIPImageProcessor
    )
    assert type(chinese.tokenizer) is BertTokenizer
    assert type(chinese.image_processor) is ChineseCLIPImageProcessor
    assert chinese.image_processor.do_center_crop is False  # from the file, not the defaults
    assert model.load_processor is load_processor and model.CLIPProcessor is CLIPProcessor
    assert clip.model_input_names == ["input_ids", "attention_mask", "pixel_values"]
    assert chinese.model_input_names == [
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "pixel_values",
    ]


def test_load_processor_errors(tmp_path, clip_dir):
    with pytest.raises(CheckpointNotFoundError, match="config"):
        load_processor(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(CheckpointError, match=r"'siglip'.*\['chinese_clip', 'clip'\]"):
        load_processor(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CheckpointNotFoundError, match="preprocessor_config"):
        load_processor(tmp_path)


def test_from_pretrained_splits_options(clip_dir):
    processor = CLIPProcessor.from_pretrained(clip_dir, crop_size=100, model_max_length=20)
    assert processor.image_processor.crop_size == {"height": 100, "width": 100}
    assert processor.tokenizer.model_max_length == 20


def test_save_pretrained_round_trips_and_transformers_reads_it(tmp_path, chinese_dir, images):
    processor = ChineseCLIPProcessor.from_pretrained(chinese_dir)
    written = processor.save_pretrained(tmp_path)
    assert "preprocessor_config.json" in {Path(p).name for p in written}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chinese_clip"}))
    reloaded = load_processor(tmp_path)
    assert reloaded.image_processor == processor.image_processor
    call = {"text": CHINESE_TEXTS, "images": images, "padding": True, "return_tensors": "pt"}
    assert_same(reloaded(**call), reference(chinese_dir, chinese=True)(**call))
    assert_same(processor(**call), reference(tmp_path, chinese=True)(**call))


def test_decode_and_batch_decode_match_transformers(clip_dir):
    ours, ref = load_processor(clip_dir), reference(clip_dir, chinese=False)
    ids = ours(text=CLIP_TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(
        ids, skip_special_tokens=True
    )
    assert ours.decode(ids[0]) == ref.decode(ids[0])


def test_invalid_calls(clip_dir, chinese_dir, images):
    processor = load_processor(clip_dir)
    with pytest.raises(ValueError, match="needs text, images or both"):
        processor()
    with pytest.raises(TypeError, match="images were passed as text"):
        processor(images[0])  # transformers 5 takes images first; here text comes first
    with pytest.raises(TypeError, match="images were passed as text"):
        processor([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match="string or a list of strings"):
        processor(text=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['do_centre_crop'\]"):
        processor(images=images, do_centre_crop=False)
    # options of an absent modality are accepted, as in transformers
    assert "input_ids" in processor(text="a cat", do_center_crop=False)
    assert "pixel_values" in processor(images=images, pad_to_multiple_of=8)
    chinese = load_processor(chinese_dir)
    with pytest.raises(TypeError, match="needs a BertTokenizer"):
        ChineseCLIPProcessor(chinese.image_processor, processor.tokenizer)
    with pytest.raises(TypeError, match="image_processor"):
        CLIPProcessor(None, processor.tokenizer)
