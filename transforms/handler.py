"""A ``ModelHandler`` for Beam's ``RunInference``: CLIP / Chinese-CLIP embeddings and scores.

For people who build their own pipelines::

    handler = ClipModelHandler("gs://bucket/clip-vit-base-patch16", max_batch_size=64)
    main, failed = (
        examples  # dicts {"image": bytes | PIL.Image.Image, "text": str}, either key optional
        | beam.Map(prepare_example)  # optional: decode early (see below)
        | RunInference(handler).with_exception_handling()
    )

Each output is a ``PredictionResult`` whose ``inference`` is a dict with ``image_embedding`` and
``text_embedding`` (L2-normalized ``float32`` arrays, ``None`` for a missing side) and
``clip_score`` (their cosine, ``None`` unless both sides are given), and one float per learned
head given as ``heads={"aesthetic": "gs://bucket/heads/aesthetic"}`` (``None`` without an image);
the heads run on the image features in the same batch as the image tower.

A bad image makes ``run_inference`` raise, which fails the whole batch (Beam's contract:
``with_exception_handling`` routes the batch to ``failed_inferences``). To reject bad images one
by one instead, decode them before batching: ``handler.with_preprocess_fn(prepare_example)``, and
failures land in ``failed_preprocessing`` per element. With ids, put the preprocessing function on
the outer handler, ``KeyedModelHandler(handler).with_preprocess_fn(fn)`` with ``fn`` taking and
returning ``(key, example)`` (Beam refuses to key a handler that has one already); README.md's
"Python API" section has the whole example.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from clipbeam.transforms.encoder import Encoder
from clipbeam.transforms.images import decode_image

__all__ = ["ClipModelHandler", "Example", "prepare_example"]

Example = Mapping[str, Any]


def prepare_example(example: Example) -> dict[str, Any]:
    """Checks an example and decodes its image: use before ``RunInference`` (or as the handler's
    preprocess function) so each bad element fails on its own.

    Raises:
        RowError: the image is missing, empty or corrupt.
        ValueError: the example has neither ``image`` nor ``text``, or values of the wrong type.
    """
    if not isinstance(example, Mapping):
        raise ValueError(f"an example is a dict with 'image' and/or 'text', got {example!r}")
    unknown = set(example) - {"image", "text"}
    if unknown:
        raise ValueError(f"example has unknown keys {sorted(unknown)}; expected image and/or text")
    image, text = example.get("image"), example.get("text")
    if image is None and text is None:
        raise ValueError("example has neither 'image' nor 'text'")
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = decode_image(bytes(image))
    elif image is not None and not isinstance(image, Image.Image):
        raise ValueError(f"'image' must be encoded bytes or a PIL image, got {type(image)}")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"'text' must be a str, got {type(text).__name__}")
    return {"image": image, "text": text}


class ClipModelHandler(ModelHandler[Example, PredictionResult, Encoder]):
    """Runs a CLIP or Chinese-CLIP checkpoint over image/text examples.

    Args:
        model: checkpoint source: a local folder, an fsspec URL or a hub id.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``. Asking for CUDA on a worker without a GPU
            fails ``load_model``; there is no silent fallback to CPU.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the model's computation.
        min_batch_size: smallest batch ``BatchElements`` forms.
        max_batch_size: largest batch, and the most rows per model call.
        max_batch_duration_secs: longest a streaming batch is buffered.
        large_model: load one model per machine and share it across processes.
        model_copies: how many models to load per machine (implies sharing).
        heads: learned heads on the image embedding, output name -> source (see
            ``model.heads``); each adds its output to every inference dict.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "float32",
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        max_batch_duration_secs: int | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        heads: Mapping[str, str] | None = None,
    ):
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                "need 1 <= min_batch_size <= max_batch_size "
                f"(got {min_batch_size} and {max_batch_size})"
            )
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=large_model,
            model_copies=model_copies,
        )
        self._model_source = model
        self._device = device
        self._dtype = dtype
        self._max_batch_size = max_batch_size
        self._heads = tuple((str(k), str(v)) for k, v in (heads or {}).items())

    def load_model(self) -> Encoder:
        """Loads the model and processor (once per process or per machine; Beam decides)."""
        return Encoder.load(
            self._model_source,
            device=self._device,
            dtype=self._dtype,
            batch_size=self._max_batch_size,
            heads=self._heads,
        )

    def run_inference(
        self,
        batch: Sequence[Example],
        model: Encoder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Embeds every image and text in ``batch`` and scores the complete pairs."""
        prepared = [prepare_example(e) for e in batch]
        with_image = [i for i, e in enumerate(prepared) if e["image"] is not None]
        with_text = [i for i, e in enumerate(prepared) if e["text"] is not None]
        images: dict[int, np.ndarray] = {}
        texts: dict[int, np.ndarray] = {}
        heads: dict[int, np.ndarray] = {}
        if with_image:
            embedded = model.encode_images([prepared[i]["image"] for i in with_image])
            images = dict(zip(with_image, embedded, strict=True))
            if model.heads:
                heads = dict(zip(with_image, model.apply_heads(embedded), strict=True))
        if with_text:
            embedded = model.encode_texts([prepared[i]["text"] for i in with_text])
            texts = dict(zip(with_text, embedded, strict=True))
        results = []
        for i, example in enumerate(batch):
            image, text = images.get(i), texts.get(i)
            score = None
            if image is not None and text is not None:
                score = float(np.dot(image, text))
            inference = {"image_embedding": image, "text_embedding": text, "clip_score": score}
            for j, name in enumerate(model.heads):
                inference[name] = float(heads[i][j]) if i in heads else None
            results.append(PredictionResult(example, inference, self._model_source))
        return results

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """This handler takes no inference arguments."""
        if inference_args:
            raise ValueError(
                f"ClipModelHandler takes no inference_args (got {sorted(inference_args)})"
            )

    def get_num_bytes(self, batch: Sequence[Example]) -> int:
        """Approximate payload size: encoded image bytes (or pixels) plus text bytes."""
        total = 0
        for example in batch:
            image, text = example.get("image"), example.get("text")
            if isinstance(image, Image.Image):
                total += image.width * image.height * len(image.getbands())
            elif image is not None:
                total += len(image)
            if text is not None:
                total += len(text.encode("utf-8"))
        return total

    def get_metrics_namespace(self) -> str:
        """Namespace of the metrics RunInference reports for this handler."""
        return "clipbeam"
