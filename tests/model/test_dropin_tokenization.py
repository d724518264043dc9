"""Code written for transformers' tokenizers and processors runs on clipbeam's (issue 19, 5-8).

Every test runs the same calls on transformers and on clipbeam, loaded from the same files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

import clipbeam.model as cm

FAMILIES = [
    ("clip_checkpoint", "CLIPTokenizer", "CLIPTokenizer", "CLIPProcessor"),
    ("chinese_clip_checkpoint", "BertTokenizer", "BertTokenizer", "ChineseCLIPProcessor"),
]
TEXTS = ["a photo of a cat", "two dogs playing in the snow, far away", ""]


def _pair(request, fixture, ours_name, ref_name, **kwargs):
    path = request.getfixturevalue(fixture)
    transformers.logging.set_verbosity_error()
    ref = getattr(transformers, ref_name).from_pretrained(path, **kwargs)
    ours = getattr(cm, ours_name).from_pretrained(path, **kwargs)
    return path, ref, ours


@pytest.fixture(params=FAMILIES, ids=["clip", "chinese_clip"])
def family(request):
    return request.param


def _same(ours, ref):
    assert dict(ours) == {k: ref[k] for k in ours}
    assert set(ours) == set(ref)


def test_init_kwargs_and_call_defaults_reach_the_processor(request, family, tmp_path):
    fixture, ours_name, ref_name, processor_name = family
    path, ref, ours = _pair(
        request, fixture, ours_name, ref_name, max_length=8, padding="max_length"
    )
    for key in ("max_length", "padding", "model_max_length"):
        assert ours.init_kwargs[key] == ref.init_kwargs[key]
    assert ours.init_inputs == ref.init_inputs == ()
    ref_proc = getattr(transformers, processor_name).from_pretrained(path, tokenizer=ref)
    our_proc = getattr(cm, processor_name).from_pretrained(path, tokenizer=ours)
    _same(our_proc(text=TEXTS[:2]), ref_proc(text=TEXTS[:2]))
    # An explicit option still wins over the tokenizer's default.
    _same(our_proc(text=TEXTS[:2], padding=True), ref_proc(text=TEXTS[:2], padding=True))
    if fixture != "clip_checkpoint":
        return  # the tiny BERT vocabulary has holes that vocab.txt cannot be written with
    # The kept options are saved and read back.
    ours.save_pretrained(tmp_path)
    again = getattr(cm, ours_name).from_pretrained(tmp_path)
    assert again.init_kwargs["max_length"] == 8
    assert getattr(transformers, ref_name).from_pretrained(tmp_path).init_kwargs["max_length"] == 8


def test_unknown_constructor_keywords_are_kept(request, family):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name, do_lower_case=True, errors="x")
    assert ours.init_kwargs["errors"] == ref.init_kwargs["errors"] == "x"
    assert ours.init_kwargs["do_lower_case"] is ref.init_kwargs["do_lower_case"] is True


def test_add_tokens_and_special_tokens(request, family):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    counts = [
        (
            tok.add_tokens(["<cat-toy>", "photo", "<cat-toy>"]),
            tok.add_tokens("<sparkle>", special_tokens=True),
            tok.add_special_tokens({"additional_special_tokens": ["<extra_a>"]}),
        )
        for tok in (ref, ours)
    ]
    assert counts[0] == counts[1]
    assert counts[1][1:] == (1, 1)
    assert len(ours) == len(ref)
    assert ours.added_tokens_encoder == ref.added_tokens_encoder
    assert list(ours.extra_special_tokens) == list(ref.extra_special_tokens)
    text = "a <cat-toy> photo <sparkle> of <extra_a>"
    _same(ours(text), ref(text))
    ids = ref(text)["input_ids"]
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_add_special_tokens_sets_a_new_pad_token(request, family):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    assert ours.add_special_tokens({"pad_token": "<my-pad>"}) == ref.add_special_tokens(
        {"pad_token": "<my-pad>"}
    )
    assert ours.pad_token_id == ref.pad_token_id
    _same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))
    with pytest.raises(ValueError, match="add_special_tokens got the key"):
        ours.add_special_tokens({"not_a_token": "x"})


def test_special_token_set_to_none(request, family):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    ref.pad_token = None
    ours.pad_token = None
    assert ours.pad_token is ref.pad_token is None
    assert ours.pad_token_id is ref.pad_token_id is None
    _same(ours(TEXTS[0]), ref(TEXTS[0]))


@pytest.mark.parametrize("return_tensors", [None, "pt"])
def test_pad(request, family, return_tensors):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    rows = [ref(t, return_special_tokens_mask=True) for t in TEXTS]
    as_lists = [{k: list(v) for k, v in row.items()} for row in rows]
    for options in ({}, {"padding": "max_length", "max_length": 16}, {"pad_to_multiple_of": 8}):
        expected = ref.pad(as_lists, return_tensors=return_tensors, **options)
        got = ours.pad(as_lists, return_tensors=return_tensors, **options)
        assert set(got) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))
    # A dict of lists, left padding.
    batch = ref(TEXTS)
    expected = ref.pad(batch, padding_side="left")
    got = ours.pad(dict(batch), padding_side="left")
    assert dict(got) == dict(expected)
    with pytest.raises(ValueError, match="needs input_ids"):
        ours.pad({"attention_mask": [[1]]})


def test_pair_tuples_and_pretokenized_input(request, family):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    pairs = [("a cat", "on a mat"), ("a dog", "")]
    _same(ours(pairs, padding=True), ref(pairs, padding=True))
    words = ["a", "photo", "of", "Cats"]
    _same(ours(words, is_split_into_words=True), ref(words, is_split_into_words=True))
    batch = [words, ["two", "dogs"]]
    _same(
        ours(batch, is_split_into_words=True, padding=True),
        ref(batch, is_split_into_words=True, padding=True),
    )
    with pytest.raises(TypeError, match="is_split_into_words"):
        ours([["a", 1]], is_split_into_words=True)


def test_processor_component_replaced_and_serialised(request, family, tmp_path):
    fixture, _, _, processor_name = family
    path = request.getfixturevalue(fixture)
    transformers.logging.set_verbosity_error()
    ours_ip = getattr(cm, processor_name).image_processor_class(do_center_crop=False)
    ours = getattr(cm, processor_name).from_pretrained(path, image_processor=ours_ip)
    assert ours.image_processor is ours_ip
    ref = getattr(transformers, processor_name).from_pretrained(path)
    got, expected = json.loads(ours.to_json_string()), json.loads(ref.to_json_string())
    assert got["processor_class"] == expected["processor_class"]
    assert set(got) == set(expected)
    default = getattr(cm, processor_name).from_pretrained(path)
    assert json.loads(default.to_json_string())["image_processor"] == {
        k: v for k, v in expected["image_processor"].items() if k in got["image_processor"]
    }
    target = tmp_path / "preprocessor_config.json"
    default.image_processor.to_json_file(target)
    again = type(default.image_processor).from_pretrained(tmp_path)
    assert again.to_dict() == default.image_processor.to_dict()
    ref_again = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert ref_again.crop_size.height == default.image_processor.crop_size["height"]
    # from_json_file reads what either library's to_json_file wrote
    ours_file = type(default.image_processor).from_json_file(target)
    assert ours_file.to_dict() == default.image_processor.to_dict()
    ref.image_processor.to_json_file(tmp_path / "theirs.json")
    theirs = type(default.image_processor).from_json_file(tmp_path / "theirs.json")
    assert theirs.to_dict() == default.image_processor.to_dict()


def test_four_channel_images_match_transformers():
    """RGBA with do_convert_rgb: alpha composited onto white; without it: 4-value stats only."""
    transformers.logging.set_verbosity_error()
    rgba = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    ref, ours = transformers.CLIPImageProcessor(), cm.CLIPImageProcessor()
    for options in ({}, {"do_convert_rgb": False, "image_mean": [0.0] * 4, "image_std": [1.0] * 4}):
        expected = ref(rgba, return_tensors="pt", **options)["pixel_values"]
        got = ours(rgba, return_tensors="pt", **options)["pixel_values"]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # transformers (5.24, its PIL backend) refuses 3-value stats on 4 channels; so does clipbeam.
    with pytest.raises(ValueError):
        ref(rgba, do_convert_rgb=False)
    with pytest.raises(ValueError, match="image_mean has 3 values but the image has 4"):
        ours(rgba, do_convert_rgb=False)


LONG = "a photo of a cat sitting on the red mat in the sun near a big tree"


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((LONG,), {"max_length": 8, "stride": 2}),
        (([LONG, "short one"],), {"max_length": 8, "stride": 1, "padding": True}),
        ((LONG, "a second text"), {"max_length": 10, "stride": 1}),
        ((LONG,), {"max_length": 8, "stride": 2, "padding": True, "return_tensors": "pt"}),
    ],
)
def test_return_overflowing_tokens_with_stride(request, family, args, options):
    fixture, ours_name, ref_name, _ = family
    _, ref, ours = _pair(request, fixture, ours_name, ref_name)
    expected = ref(*args, truncation=True, return_overflowing_tokens=True, **options)
    got = ours(*args, truncation=True, return_overflowing_tokens=True, **options)
    assert set(got) == set(expected)
    texts = len(args[0]) if isinstance(args[0], list) else 1
    assert len(got["input_ids"]) > texts  # the overflow made more rows than texts
    for key in expected:
        assert _as_list(got[key]) == _as_list(expected[key]), key


def _as_list(value):
    return value.tolist() if hasattr(value, "tolist") else value


def test_built_from_vocab_and_merges_objects(clip_checkpoint, chinese_clip_checkpoint):
    """As transformers 5 builds a tokenizer from a converter's (vocab dict, merges tuples)."""
    transformers.logging.set_verbosity_error()
    vocab = json.loads((clip_checkpoint / "vocab.json").read_text(encoding="utf-8"))
    lines = (clip_checkpoint / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    ref = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    ours = cm.CLIPTokenizer(vocab=vocab, merges=merges)
    _same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))
    words = (chinese_clip_checkpoint / "vocab.txt").read_text(encoding="utf-8").splitlines()
    bert_vocab = {word: i for i, word in enumerate(words)}
    ref, ours = transformers.BertTokenizer(vocab=bert_vocab), cm.BertTokenizer(vocab=bert_vocab)
    _same(ours(TEXTS, padding=True), ref(TEXTS, padding=True))
