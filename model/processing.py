"""Processors: one object that prepares both texts and images for CLIP or Chinese-CLIP.

A processor pairs the family's tokenizer with its image processor, as transformers' processors
do: ``processor(text=..., images=..., return_tensors="pt")`` returns ``input_ids``,
``attention_mask`` (and ``token_type_ids`` for Chinese-CLIP) and ``pixel_values`` in one
:class:`~clipbeam.model.batch.BatchFeature`. :func:`load_processor` picks the class from the
checkpoint's ``config.json``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch

from .batch import BatchFeature
from .configuration import read_config_dict
from .hub import CheckpointError
from .image_processing import PREPROCESS_OPTIONS, ChineseCLIPImageProcessor, CLIPImageProcessor
from .tokenization_bert import BertTokenizer
from .tokenization_clip import CLIPTokenizer

__all__ = ["CLIPProcessor", "ChineseCLIPProcessor", "load_processor"]

# Call options that go to the image processor; every other keyword goes to the tokenizer.
_IMAGE_KWARGS = frozenset({*PREPROCESS_OPTIONS, "input_data_format", "default_to_square"})
# The same for from_pretrained: options of the image processor's constructor.
_IMAGE_INIT_KWARGS = frozenset({*PREPROCESS_OPTIONS, "default_to_square"})


def _split_kwargs(
    kwargs: dict[str, Any], image_keys: frozenset[str] = _IMAGE_KWARGS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(image processor options, tokenizer options) of a keyword dict."""
    image = {k: v for k, v in kwargs.items() if k in image_keys}
    text = {k: v for k, v in kwargs.items() if k not in image_keys}
    return image, text


def _check_text(text: Any) -> None:
    """Fails early, with a hint, on the common mix-up of passing images as ``text``."""
    if isinstance(text, str):
        return
    if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        return
    if isinstance(text, (PIL.Image.Image, np.ndarray, torch.Tensor)) or (
        isinstance(text, (list, tuple))
        and any(isinstance(t, (PIL.Image.Image, np.ndarray, torch.Tensor)) for t in text)
    ):
        raise TypeError(
            "text must be a string or a list of strings, but images were passed as text. "
            "The first positional argument of a processor is text: call processor(images=...)."
        )
    raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")


class CLIPProcessor:
    """CLIP's tokenizer and image processor behind one call.

    Args:
        image_processor: prepares ``pixel_values``.
        tokenizer: prepares ``input_ids`` and ``attention_mask``.

    Example::

        processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")
        inputs = processor(text=["a cat", "a dog"], images=image, padding=True, return_tensors="pt")
    """

    image_processor_class: ClassVar[type[CLIPImageProcessor]] = CLIPImageProcessor
    tokenizer_class: ClassVar[type] = CLIPTokenizer

    def __init__(self, image_processor: CLIPImageProcessor, tokenizer: Any) -> None:
        name = type(self).__name__
        if not isinstance(image_processor, CLIPImageProcessor):
            raise TypeError(
                f"{name} needs a CLIPImageProcessor or ChineseCLIPImageProcessor as "
                f"image_processor, got {type(image_processor).__name__}"
            )
        if not isinstance(tokenizer, self.tokenizer_class):
            raise TypeError(
                f"{name} needs a {self.tokenizer_class.__name__} as tokenizer, got "
                f"{type(tokenizer).__name__}: the text tower was trained on that vocabulary"
            )
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        *,
        padding: bool | str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Tokenizes ``text`` and preprocesses ``images``; either may be left out.

        Args:
            text: a string or a list of strings.
            images: what :meth:`CLIPImageProcessor.preprocess` takes (PIL images, arrays,
                tensors, or lists of them).
            padding: tokenizer padding (``True``/``"longest"``, ``"max_length"``, ``False``).
                Unset tokenizer options take the call options the tokenizer was built with
                (``CLIPTokenizer.from_pretrained(path, padding="max_length")``, kept in its
                ``init_kwargs``), as transformers 5's processors do; else no padding.
            truncation: tokenizer truncation (``True`` cuts to the model's context).
            max_length: length limit for truncation and ``padding="max_length"``.
            return_tensors: ``"pt"``, ``"np"`` or ``None``, for both outputs.
            **kwargs: image processor options (``do_center_crop``, ``size``...) go to it, the
                tokenizer's other options (``pad_to_multiple_of``...) to the tokenizer. Options
                of a modality absent from this call are accepted and unused.

        Returns:
            A :class:`~clipbeam.model.batch.BatchFeature` with the tokenizer's keys and/or
            ``pixel_values``.

        Raises:
            ValueError: neither text nor images were given.
            TypeError: ``text`` is not text (images passed positionally, for instance), or an
                option is unknown to both the image processor and the tokenizer.
        """
        if text is None and images is None:
            raise ValueError(
                f"{type(self).__name__} needs text, images or both; got neither "
                "(call processor(text=[...], images=[...]))"
            )
        image_kwargs, text_kwargs = _split_kwargs(kwargs)
        accepted = inspect.signature(self.tokenizer.__call__).parameters
        given = {"padding": padding, "truncation": truncation, "max_length": max_length}
        defaults = {
            k: v
            for k, v in getattr(self.tokenizer, "init_kwargs", {}).items()
            if k in accepted and k not in ("text", "text_pair", "return_tensors")
        }
        for key, value in defaults.items():
            if key in given and given[key] is None:
                given[key] = value
            elif key not in given:
                text_kwargs.setdefault(key, value)
        padding, truncation, max_length = given["padding"], given["truncation"], given["max_length"]
        # Options of a modality that is absent this call are allowed (a loop may pass the same
        # options for text-only and image-only batches), but misspelled names never are.
        unknown = sorted(k for k in text_kwargs if k not in accepted)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}: neither image processor "
                f"options ({sorted(_IMAGE_KWARGS)}) nor {type(self.tokenizer).__name__} options"
            )
        data: dict[str, Any] = {}
        if text is not None:
            _check_text(text)
            encoding = self.tokenizer(
                text,
                padding=False if padding is None else padding,
                truncation=truncation,
                max_length=max_length,
                return_tensors=return_tensors,
                **text_kwargs,
            )
            data.update(encoding.data)
        if images is not None:
            pixels = self.image_processor(images, return_tensors=return_tensors, **image_kwargs)
            data.update(pixels.data)
        return BatchFeature(data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """The tokenizer's ``batch_decode``: a batch of ids back to texts."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str | list[str]:
        """The tokenizer's ``decode``: ids back to text."""
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        """The keys this processor can return, tokenizer's first."""
        names = list(self.tokenizer.model_input_names)
        return names + [n for n in self.image_processor.model_input_names if n not in names]

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        revision: str | None = None,
        image_processor: CLIPImageProcessor | None = None,
        tokenizer: Any = None,
        **kwargs: Any,
    ) -> CLIPProcessor:
        """Loads the tokenizer and image processor of a checkpoint.

        Args:
            source: a checkpoint folder, fsspec URL or hub id (see
                :func:`clipbeam.model.hub.resolve_source`).
            revision: hub branch, tag or commit.
            image_processor: use this one instead of loading the checkpoint's (as
                transformers' ``from_pretrained(path, image_processor=...)``).
            tokenizer: use this one instead of loading the checkpoint's.
            **kwargs: image processor options override ``preprocessor_config.json``; other
                keywords are tokenizer constructor options.

        Raises:
            CheckpointNotFoundError: the checkpoint lacks the image processor config or the
                tokenizer's vocabulary.
        """
        image_kwargs, text_kwargs = _split_kwargs(kwargs, _IMAGE_INIT_KWARGS)
        if image_processor is None:
            image_processor = cls.image_processor_class.from_pretrained(
                source, revision=revision, **image_kwargs
            )
        if tokenizer is None:
            tokenizer = cls.tokenizer_class.from_pretrained(
                source, revision=revision, **text_kwargs
            )
        return cls(image_processor, tokenizer)

    def to_dict(self) -> dict[str, Any]:
        """The processor's settings, as transformers 5's ``ProcessorMixin.to_dict``: the image
        processor's dict under ``image_processor`` and ``processor_class`` (the tokenizer is
        saved in its own files, so it is left out, as there)."""
        return {
            "image_processor": self.image_processor.to_dict(),
            "processor_class": type(self).__name__,
        }

    def to_json_string(self) -> str:
        """:meth:`to_dict` as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Writes ``preprocessor_config.json`` and the tokenizer files into a folder.

        The folder loads back with :meth:`from_pretrained`, and with transformers.

        Returns:
            The paths written.
        """
        paths = list(self.image_processor.save_pretrained(save_directory))
        paths += [str(p) for p in self.tokenizer.save_pretrained(save_directory)]
        return paths

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_processor={self.image_processor!r}, "
            f"tokenizer={self.tokenizer!r})"
        )


class ChineseCLIPProcessor(CLIPProcessor):
    """Chinese-CLIP's BERT tokenizer and image processor behind one call.

    The tokenizer adds ``token_type_ids``. Load hub checkpoints with :meth:`from_pretrained`:
    their ``preprocessor_config.json`` resizes straight to 224 x 224 without a crop.
    """

    image_processor_class: ClassVar[type[CLIPImageProcessor]] = ChineseCLIPImageProcessor
    tokenizer_class: ClassVar[type] = BertTokenizer


_PROCESSORS: dict[str, type[CLIPProcessor]] = {
    "clip": CLIPProcessor,
    "chinese_clip": ChineseCLIPProcessor,
}


def load_processor(
    source: str | os.PathLike, *, revision: str | None = None, **kwargs: Any
) -> CLIPProcessor:
    """Loads the processor a checkpoint's ``config.json`` ``model_type`` calls for.

    Args:
        source: a checkpoint folder, fsspec URL or hub id.
        revision: hub branch, tag or commit.
        **kwargs: passed to the processor's ``from_pretrained``.

    Returns:
        A :class:`CLIPProcessor` for ``"clip"``, a :class:`ChineseCLIPProcessor` for
        ``"chinese_clip"``.

    Raises:
        CheckpointNotFoundError: the checkpoint or its ``config.json`` is missing.
        CheckpointError: the model type is not CLIP or Chinese-CLIP.
    """
    config, where = read_config_dict(source, revision=revision)
    model_type = config.get("model_type")
    processor_cls = _PROCESSORS.get(model_type) if isinstance(model_type, str) else None
    if processor_cls is None:
        raise CheckpointError(
            f"cannot pick a processor for model_type {model_type!r} (read from {where}); "
            f"clipbeam has processors for {sorted(_PROCESSORS)}. Point at a full CLIP or "
            "Chinese-CLIP checkpoint, or build CLIPProcessor(image_processor, tokenizer) yourself."
        )
    return processor_cls.from_pretrained(source, revision=revision, **kwargs)
