"""ClipModelHandler in a user's own pipeline with RunInference (issue item 5)."""

import random

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from clipbeam.transforms.encoder import Encoder
from clipbeam.transforms.errors import RowError
from clipbeam.transforms.handler import ClipModelHandler, prepare_example
from tests.datasets import encode_image, make_caption, make_image

CORRUPT = b"\xff\xd8\xff\xe0" + bytes(range(64))


@pytest.fixture(scope="module")
def examples():
    rng = random.Random(11)
    images = [make_image(rng) for _ in range(4)]
    return [
        {"image": encode_image(images[0], "jpeg"), "text": make_caption(rng)},
        {"image": encode_image(images[1], "png"), "text": make_caption(rng, long=True)},
        {"image": images[2]},  # a PIL image, no caption
        {"text": "一只猫"},  # a caption only
        {"image": encode_image(images[3], "png"), "text": ""},
    ]


def expected_for(encoder: Encoder, example: dict) -> dict:
    prepared = prepare_example(example)
    image = text = score = None
    if prepared["image"] is not None:
        image = encoder.encode_images([prepared["image"]])[0]
    if prepared["text"] is not None:
        text = encoder.encode_texts([prepared["text"]])[0]
    if image is not None and text is not None:
        score = float(np.dot(image, text))
    return {"image_embedding": image, "text_embedding": text, "clip_score": score}


def close(got: dict, want: dict) -> bool:
    for key in ("image_embedding", "text_embedding"):
        if (got[key] is None) != (want[key] is None):
            return False
        if got[key] is not None and not np.allclose(got[key], want[key], atol=1e-5):
            return False
    if want["clip_score"] is None:
        return got["clip_score"] is None
    return abs(got["clip_score"] - want["clip_score"]) <= 1e-5


@pytest.mark.parametrize("family", ["clip", "chinese_clip"])
def test_run_inference_gives_what_the_model_gives(family, examples, request):
    source = str(request.getfixturevalue(f"{family}_checkpoint"))
    reference = Encoder.load(source, device="cpu")
    want = [expected_for(reference, e) for e in examples]
    handler = ClipModelHandler(source, device="cpu", min_batch_size=2, max_batch_size=3)

    def check(results):
        assert len(results) == len(examples)
        for result in results:
            index = next(
                i for i, e in enumerate(examples) if e is result.example or e == result.example
            )
            assert close(result.inference, want[index]), index
            assert result.model_id == source

    with BeamTestPipeline() as p:
        results = p | beam.Create(examples) | RunInference(handler)
        assert_that(results, check)


def test_with_exception_handling_routes_bad_elements(clip_checkpoint, examples):
    handler = ClipModelHandler(str(clip_checkpoint), device="cpu", max_batch_size=4)
    bad = [{"image": CORRUPT, "text": "x"}, {"image": b""}]

    with BeamTestPipeline() as p:
        main, other = (
            p
            | beam.Create(examples + bad)
            | RunInference(handler.with_preprocess_fn(prepare_example)).with_exception_handling()
        )
        assert_that(
            main | beam.Map(lambda r: r.inference["clip_score"] is None),
            equal_to([False, False, True, True, False]),
            label="good",
        )
        # Beam reports each failure as (element, (exception type, repr, traceback lines)).
        failed = other.failed_preprocessing[0] | beam.MapTuple(
            lambda example, error: (example["image"], error[0], error[1].split(":")[0])
        )
        assert_that(
            failed,
            equal_to(
                [
                    (CORRUPT, RowError, "RowError('corrupt_image"),
                    (b"", RowError, "RowError('empty_image"),
                ]
            ),
            label="failed",
        )


def test_without_preprocessing_a_bad_image_fails_its_batch_only(clip_checkpoint, examples):
    handler = ClipModelHandler(str(clip_checkpoint), device="cpu", max_batch_size=1)

    def one_failed_batch(failures):
        assert len(failures) == 1
        batch, (error_type, message, _) = failures[0]
        assert batch == [{"image": CORRUPT}]
        assert error_type is RowError and "corrupt_image" in message

    with BeamTestPipeline() as p:
        main, other = (
            p
            | beam.Create([*examples[:2], {"image": CORRUPT}])
            | RunInference(handler).with_exception_handling()
        )
        assert_that(main | beam.combiners.Count.Globally(), equal_to([2]), label="good")
        assert_that(other.failed_inferences, one_failed_batch, label="failed")


def test_examples_are_checked():
    with pytest.raises(ValueError, match="neither 'image' nor 'text'"):
        prepare_example({})
    with pytest.raises(ValueError, match="unknown keys"):
        prepare_example({"img": b"x"})
    with pytest.raises(ValueError, match="'text' must be a str"):
        prepare_example({"text": 3})
    with pytest.raises(RowError):
        prepare_example({"image": CORRUPT})


def test_batch_bounds_and_no_gpu_fallback(clip_checkpoint):
    handler = ClipModelHandler(str(clip_checkpoint), min_batch_size=2, max_batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    with pytest.raises(ValueError, match="min_batch_size <= max_batch_size"):
        ClipModelHandler("m", min_batch_size=9, max_batch_size=8)
    with pytest.raises(ValueError, match="no inference_args"):
        handler.validate_inference_args({"x": 1})
    assert handler.get_num_bytes([{"image": b"abc", "text": "de"}]) == 5
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            ClipModelHandler(str(clip_checkpoint), device="cuda").load_model()


def test_run_inference_with_heads(clip_checkpoint, examples, tmp_path):
    from tests.model.test_heads import random_curator, random_laion

    laion, curator = random_laion(16), random_curator(16)
    torch.save(laion.state_dict(), tmp_path / "a.pth")
    torch.save(curator.state_dict(), tmp_path / "n.pth")
    heads = {"aesthetic": str(tmp_path / "a.pth"), "nsfw": str(tmp_path / "n.pth")}
    source = str(clip_checkpoint)
    reference = Encoder.load(source, device="cpu")
    handler = ClipModelHandler(source, device="cpu", max_batch_size=3, heads=heads)

    def check(results):
        assert len(results) == len(examples)
        for result in results:
            image = result.example.get("image")
            got = result.inference
            if image is None:
                assert got["aesthetic"] is None and got["nsfw"] is None
                continue
            embedding = reference.encode_images([prepare_example(result.example)["image"]])
            x = torch.from_numpy(embedding)
            with torch.no_grad():
                assert abs(got["aesthetic"] - float(laion(x))) <= 1e-5
                assert abs(got["nsfw"] - float(curator(x))) <= 1e-5

    with BeamTestPipeline() as p:
        assert_that(p | beam.Create(examples) | RunInference(handler), check)
