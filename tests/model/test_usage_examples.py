"""The documented usage examples of CLIP and Chinese-CLIP, run with only the import line changed.

Each example is the text of the Hugging Face model documentation, with two unavoidable edits that
apply to both runs alike: the checkpoint id becomes a local folder of random weights (nothing can
be downloaded here), and the image comes from a local photograph instead of ``requests.get(url)``.
The example runs once importing from ``transformers`` and once importing from ``clipbeam.model``;
every variable it computes must agree within 1e-5.

transformers 5 changed ``get_image_features`` / ``get_text_features`` to return an output object,
so its run uses a two-line shim that restores the documented tensor return; ours must need none.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

CLIP_EXAMPLE = """
{import_line}

model = CLIPModel.from_pretrained(CHECKPOINT)
processor = CLIPProcessor.from_pretrained(CHECKPOINT)

image = load_image()

inputs = processor(
    text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True
)

outputs = model(**inputs)
logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
probs = logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities

# Feature extraction, as in the get_text_features / get_image_features docstrings.
text_inputs = processor(text=["a photo of a cat", "a photo of a dog"], padding=True,
                        return_tensors="pt")
text_features = model.get_text_features(**text_inputs)
image_inputs = processor(images=image, return_tensors="pt")
image_features = model.get_image_features(**image_inputs)
"""

CHINESE_CLIP_EXAMPLE = """
{import_line}

model = ChineseCLIPModel.from_pretrained(CHECKPOINT)
processor = ChineseCLIPProcessor.from_pretrained(CHECKPOINT)

image = load_image()
# Squirtle, Bulbasaur, Charmander, Pikachu in English
texts = ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"]

# compute image feature
inputs = processor(images=image, return_tensors="pt")
image_features = model.get_image_features(**inputs)
image_features = image_features / image_features.norm(p=2, dim=-1, keepdim=True)  # normalize

# compute text features
inputs = processor(text=texts, padding=True, return_tensors="pt")
text_features = model.get_text_features(**inputs)
text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)  # normalize

# compute image-text similarity scores
inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
outputs = model(**inputs)
logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
probs = logits_per_image.softmax(dim=1)  # probs: [[1.2686e-03, 5.4499e-02, 6.7968e-04, 9.4355e-01]]
"""

RESULTS = ("logits_per_image", "probs", "text_features", "image_features")


def _photo() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())  # a real photograph: 451 x 300 cat


class _DocumentedReference:
    """transformers 5's ``get_*_features`` return output objects; the documented API returns
    the projected tensor, which transformers 5 keeps in ``pooler_output``. A proxy (not a
    subclass: transformers' own forward calls these methods) restores the documented return."""

    def __init__(self, model):
        self._model = model

    @classmethod
    def of(cls, model_class: type) -> type:
        class Loader:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                return cls(model_class.from_pretrained(*args, **kwargs))

        return Loader

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def get_text_features(self, *args, **kwargs):
        return self._model.get_text_features(*args, **kwargs).pooler_output

    def get_image_features(self, *args, **kwargs):
        return self._model.get_image_features(*args, **kwargs).pooler_output


def _run(example: str, import_line: str, checkpoint, extra: dict | None = None) -> dict:
    namespace = {"CHECKPOINT": str(checkpoint), "load_image": _photo, **(extra or {})}
    with torch.no_grad():
        exec(example.format(import_line=import_line), namespace)
    return {name: namespace[name] for name in RESULTS}


def _assert_same(ours: dict, reference: dict) -> None:
    for name in RESULTS:
        assert isinstance(ours[name], torch.Tensor), f"{name} must be a tensor"
        assert ours[name].shape == reference[name].shape, name
        diff = (ours[name] - reference[name]).abs().max().item()
        assert diff <= 1e-5, f"{name}: max abs diff {diff:.3g} > 1e-5"
    # The example is not vacuous: the scores differ between captions.
    assert np.ptp(reference["logits_per_image"].numpy()) > 0


@pytest.mark.parametrize("example", ["clip", "chinese_clip"])
def test_documented_usage_example(example, clip_checkpoint, chinese_clip_checkpoint):
    import transformers

    if example == "clip":
        source, checkpoint, names = CLIP_EXAMPLE, clip_checkpoint, ("CLIPModel", "CLIPProcessor")
    else:
        source, checkpoint = CHINESE_CLIP_EXAMPLE, chinese_clip_checkpoint
        names = ("ChineseCLIPModel", "ChineseCLIPProcessor")
    model_name, processor_name = names

    shimmed = {
        model_name: _DocumentedReference.of(getattr(transformers, model_name)),
        processor_name: getattr(transformers, processor_name),
    }
    reference = _run(source, "", checkpoint, extra=shimmed)
    ours = _run(source, f"from clipbeam.model import {processor_name}, {model_name}", checkpoint)
    _assert_same(ours, reference)
