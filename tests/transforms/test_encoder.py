"""Encoder: parity with transformers, length-bucketed texts, truncation, OOM backoff, devices."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipbeam.transforms.encoder import (
    Encoder,
    acquire_encoder,
    resolve_device,
    weights_fingerprint,
)
from tests.datasets import make_caption, make_image


def features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.fixture(scope="module")
def samples():
    import random

    rng = random.Random(3)
    images = [make_image(rng) for _ in range(5)]  # RGB, grayscale and RGBA, varied sizes
    texts = ["a", "", "一只猫坐在红色的沙发上", make_caption(rng, long=True)]
    texts += [make_caption(rng) for _ in range(4)]
    return images, texts


@pytest.fixture(scope="module")
def encoders(clip_checkpoint, chinese_clip_checkpoint):
    return {
        "clip": Encoder.load(str(clip_checkpoint), device="cpu", batch_size=3),
        "chinese_clip": Encoder.load(str(chinese_clip_checkpoint), device="cpu", batch_size=3),
    }


@pytest.mark.parametrize("family", ["clip", "chinese_clip"])
def test_embeddings_match_transformers(family, encoders, samples, request):
    import transformers

    path = request.getfixturevalue(f"{family}_checkpoint")
    encoder = encoders[family]
    reference = transformers.AutoModel.from_pretrained(path).eval()
    processor = transformers.AutoProcessor.from_pretrained(path)
    images, texts = samples
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected_images = features(reference.get_image_features(pixel_values=pixels))
        expected_texts = []
        for text in texts:  # one at a time: no padding at all in the reference
            tokens = processor.tokenizer(
                [text], truncation=True, max_length=encoder.context_length, return_tensors="pt"
            )
            expected_texts.append(features(reference.get_text_features(**tokens))[0])
    norm = torch.nn.functional.normalize
    np.testing.assert_allclose(
        encoder.encode_images(images), norm(expected_images, dim=-1).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        encoder.encode_texts(texts), norm(torch.stack(expected_texts), dim=-1).numpy(), atol=1e-5
    )
    assert encoder.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert encoder.family == family


@pytest.mark.parametrize("family", ["clip", "chinese_clip"])
def test_texts_are_bucketed_by_length_and_padded_to_the_longest_of_each_batch(
    family, encoders, samples, monkeypatch
):
    encoder = encoders[family]
    _, texts = samples
    alone = np.stack([encoder.encode_texts([t])[0] for t in texts])
    widths = []
    original = encoder.model.get_text_features

    def spy(**inputs):
        widths.append((inputs["input_ids"].shape, inputs["attention_mask"].sum(dim=1).tolist()))
        return original(**inputs)

    monkeypatch.setattr(encoder.model, "get_text_features", spy)
    together = encoder.encode_texts(texts)
    np.testing.assert_allclose(together, alone, atol=1e-6)  # order and values kept
    lengths = [len(t["input_ids"]) for t in encoder.tokenize(texts)]
    assert max(lengths) == encoder.context_length  # the long caption is truncated, not rejected
    assert [shape[0] for shape, _ in widths] == [3, 3, 2]  # batch_size 3
    for shape, row_lengths in widths:
        assert shape[1] == max(row_lengths)  # padded to the longest in the batch only
    assert sorted(n for _, rows in widths for n in rows) == sorted(lengths)
    assert widths[0][0][1] < widths[-1][0][1]  # short texts were batched together


def test_out_of_memory_halves_the_batch_and_retries(encoders, samples, monkeypatch):
    encoder = Encoder(
        encoders["clip"].model,
        encoders["clip"].processor,
        device=torch.device("cpu"),
        batch_size=4,
    )
    images, _ = samples
    expected = encoder.encode_images(images)
    original = encoder.model.get_image_features
    sizes = []

    def small_gpu(pixel_values):
        sizes.append(len(pixel_values))
        if len(pixel_values) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(pixel_values=pixel_values)

    monkeypatch.setattr(encoder.model, "get_image_features", small_gpu)
    np.testing.assert_allclose(encoder.encode_images(images), expected, atol=1e-6)
    assert sizes[:3] == [4, 2, 1] and set(sizes[3:]) == {1}
    assert encoder._limits["image"] == 1  # stays small for later batches

    def no_memory(pixel_values):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(encoder.model, "get_image_features", no_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        encoder.encode_images(images[:1])  # one row that does not fit is an error, not a loop


def test_prompt_embeddings_average_normalized_templates(encoders):
    encoder = encoders["clip"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    got = encoder.prompt_embeddings(["cat", "dog"], templates)
    each = encoder.encode_texts(["a photo of a cat.", "a drawing of a cat."])
    mean = each.mean(axis=0)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_metadata_describes_the_model(encoders, clip_checkpoint):
    md = encoders["clip"].metadata()
    assert md["clipbeam.model"] == str(clip_checkpoint)
    assert md["clipbeam.projection_dim"] == "16"
    assert md["clipbeam.model_sha256"] == weights_fingerprint(str(clip_checkpoint))
    assert '"text_context_length": 77' in md["clipbeam.preprocessing"]


def test_weights_fingerprint_tells_checkpoints_apart(tmp_path, clip_checkpoint):
    from tests.checkpoints import build_clip_checkpoint

    other = build_clip_checkpoint(tmp_path / "other", seed=1)
    assert weights_fingerprint(str(clip_checkpoint)).startswith("sha256:")
    assert weights_fingerprint(str(other)) != weights_fingerprint(str(clip_checkpoint))


def test_acquire_encoder_loads_once_per_process(clip_checkpoint):
    a = acquire_encoder(str(clip_checkpoint), device="cpu", dtype="float32", batch_size=2)
    b = acquire_encoder(str(clip_checkpoint), device="cpu", dtype="float32", batch_size=2)
    assert a is b


def test_reduced_precision_runs_and_stays_close(clip_checkpoint, encoders, samples):
    images, _ = samples
    half = Encoder.load(str(clip_checkpoint), device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    got = half.encode_images(images)
    assert got.dtype == np.float32  # computed in bfloat16, normalized in float32
    np.testing.assert_allclose(got, encoders["clip"].encode_images(images), atol=0.05)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error_not_a_fallback(clip_checkpoint):
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        Encoder.load(str(clip_checkpoint), device="cuda")


def test_images_in_any_mode(encoders):
    encoder = encoders["chinese_clip"]
    modes = [Image.new(m, (9, 13)) for m in ("RGB", "L", "RGBA", "P")]
    assert encoder.encode_images(modes).shape == (4, 16)
