"""Image processors for CLIP and Chinese-CLIP: ``preprocessor_config.json`` options, per-call
overrides, and batches of images to a :class:`~clipbeam.model.batch.BatchFeature`.

The work is split in two layers so that callers can parallelize it:

* :func:`~clipbeam.model.image_transforms.process_image` turns ONE image into a channels-first
  array, given resolved :class:`~clipbeam.model.image_settings.ImageSettings`. It holds no state,
  so a pipeline can run it in worker threads or processes and stack the results itself
  (:meth:`CLIPImageProcessor.preprocess_one` wraps it). The steps (RGB, resize, center crop,
  rescale, normalize) and the exact and fast modes are :mod:`clipbeam.model.image_transforms`.
* :class:`CLIPImageProcessor` (here) keeps the options read from ``preprocessor_config.json``,
  resolves per-call overrides, maps :func:`process_image` over a batch and returns a
  :class:`~clipbeam.model.batch.BatchFeature` with ``pixel_values``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .batch import BatchFeature
from .hub import read_json_object, resolve_source
from .image_settings import (
    ImageSettings,
    _check_bool,
    _check_factor,
    _check_layout,
    _check_resample,
    _check_stat,
    _size_dict,
)
from .image_transforms import ImageInput, process_image

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESS_OPTIONS",
    "CLIPFeatureExtractor",
    "CLIPImageProcessor",
    "ChineseCLIPFeatureExtractor",
    "ChineseCLIPImageProcessor",
]

logger = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers >= 5 saves processors as processor_config.json with the image options nested.
PROCESSOR_CONFIG = "processor_config.json"

# Keys that configs carry as metadata; they do not change preprocessing.
_METADATA_KEYS = frozenset(
    {"image_processor_type", "feature_extractor_type", "processor_class", "auto_map"}
)
# Options of other transformers processors that would change the output if enabled: refuse them
# rather than ignore them.
_UNSUPPORTED_WHEN_TRUE = ("do_pad", "use_square_size")

# The options of the constructors and of preprocess(), named as in preprocessor_config.json.
PREPROCESS_OPTIONS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


class CLIPImageProcessor:
    """Prepares images for a CLIP vision tower, as transformers' ``CLIPImageProcessor`` does.

    The defaults are OpenAI CLIP's: RGB, bicubic resize of the shortest edge to 224, center crop
    224 x 224, scale to [0, 1], normalize with the OpenAI mean and std. Checkpoints override them
    through ``preprocessor_config.json`` (:meth:`from_pretrained`); every option can also be
    overridden per call.

    Args:
        do_convert_rgb: convert every image to 3-channel RGB (alpha composited onto white).
        do_resize: resize to ``size``.
        size: ``{"shortest_edge": n}`` (keep aspect ratio) or ``{"height": h, "width": w}``; an
            int means ``{"shortest_edge": n}`` (or a square when ``default_to_square``).
        resample: Pillow filter code; 3 (bicubic) by default.
        do_center_crop: center-crop to ``crop_size`` (zero-padding smaller images).
        crop_size: ``{"height": h, "width": w}``, or an int for a square.
        do_rescale: multiply pixel values by ``rescale_factor``.
        rescale_factor: 1/255 by default.
        do_normalize: subtract ``image_mean`` and divide by ``image_std`` per channel.
        image_mean: a number or one number per channel.
        image_std: a number or one number per channel.
        default_to_square: read an int ``size`` as a square instead of a shortest edge.

    Example::

        processor = CLIPImageProcessor.from_pretrained("openai/clip-vit-base-patch32")
        pixel_values = processor(images, return_tensors="pt").pixel_values  # (N, 3, 224, 224)
    """

    model_input_names = ("pixel_values",)
    default_to_square = False

    def __init__(
        self,
        *,
        do_convert_rgb: bool = True,
        do_resize: bool = True,
        size: dict[str, int] | int | Sequence[int] | None = None,
        resample: int = PIL.Image.Resampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: dict[str, int] | int | Sequence[int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        default_to_square: bool | None = None,
    ) -> None:
        square = self.default_to_square if default_to_square is None else default_to_square
        self.do_convert_rgb = _check_bool(do_convert_rgb, "do_convert_rgb")
        self.do_resize = _check_bool(do_resize, "do_resize")
        size = {"shortest_edge": 224} if size is None else size
        self.size = _size_dict(size, default_to_square=square, name="size")
        self.resample = _check_resample(resample)
        self.do_center_crop = _check_bool(do_center_crop, "do_center_crop")
        crop_size = {"height": 224, "width": 224} if crop_size is None else crop_size
        self.crop_size = _size_dict(crop_size, default_to_square=True, name="crop_size")
        self.do_rescale = _check_bool(do_rescale, "do_rescale")
        self.rescale_factor = _check_factor(rescale_factor)
        self.do_normalize = _check_bool(do_normalize, "do_normalize")
        self.image_mean = _check_stat(
            OPENAI_CLIP_MEAN if image_mean is None else image_mean, "image_mean"
        )
        self.image_std = _check_stat(
            OPENAI_CLIP_STD if image_std is None else image_std, "image_std"
        )
        # Config keys this class does not use, kept so that save_pretrained writes them back.
        self.extra_config: dict[str, Any] = {}

    # -- options -------------------------------------------------------------------------------

    def resolve_settings(
        self,
        *,
        input_data_format: str | None = None,
        default_to_square: bool | None = None,
        **overrides: Any,
    ) -> ImageSettings:
        """This processor's options with ``overrides`` applied, validated for one call.

        Args:
            input_data_format: channel layout of 3-D array inputs (inferred when ``None``).
            default_to_square: how to read an int ``size`` override.
            **overrides: any constructor option (``size``, ``do_center_crop``...); ``None``
                values keep the processor's own.

        Raises:
            TypeError: an override is not an option of this processor.
            ValueError: an override has an invalid value.
        """
        unknown = sorted(set(overrides) - set(PREPROCESS_OPTIONS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}; valid options are "
                f"{list(PREPROCESS_OPTIONS)} plus input_data_format and default_to_square"
            )
        values = {name: getattr(self, name) for name in PREPROCESS_OPTIONS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        square = self.default_to_square if default_to_square is None else default_to_square
        return ImageSettings(
            do_convert_rgb=_check_bool(values["do_convert_rgb"], "do_convert_rgb"),
            do_resize=_check_bool(values["do_resize"], "do_resize"),
            size=_size_dict(values["size"], default_to_square=square, name="size"),
            resample=_check_resample(values["resample"]),
            do_center_crop=_check_bool(values["do_center_crop"], "do_center_crop"),
            crop_size=_size_dict(values["crop_size"], default_to_square=True, name="crop_size"),
            do_rescale=_check_bool(values["do_rescale"], "do_rescale"),
            rescale_factor=_check_factor(values["rescale_factor"]),
            do_normalize=_check_bool(values["do_normalize"], "do_normalize"),
            image_mean=_check_stat(values["image_mean"], "image_mean"),
            image_std=_check_stat(values["image_std"], "image_std"),
            input_data_format=_check_layout(input_data_format),
        )

    # -- preprocessing -------------------------------------------------------------------------

    def __call__(
        self,
        images: ImageInput | Sequence[Any],
        return_tensors: str | None = None,
        *,
        mode: str = "exact",
        **overrides: Any,
    ) -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors, mode=mode, **overrides)

    def preprocess(
        self,
        images: ImageInput | Sequence[Any],
        return_tensors: str | None = None,
        *,
        mode: str = "exact",
        **overrides: Any,
    ) -> BatchFeature:
        """Preprocesses an image or a batch of images.

        Args:
            images: one image (PIL, numpy or torch; arrays (H, W), (C, H, W) or (H, W, C)), a
                4-D array or tensor holding a batch, or a (nested) list of those.
            return_tensors: ``"pt"`` for a torch tensor, ``"np"`` for a numpy array, ``None``
                for a list of (C, H, W) numpy arrays.
            mode: ``"exact"`` for transformers' values bit for bit, ``"fast"`` for reduced JPEG
                decoding and resizing (see :func:`process_image`).
            **overrides: options for this call only (see :meth:`resolve_settings`).

        Returns:
            A :class:`~clipbeam.model.batch.BatchFeature` with ``pixel_values`` of shape (N, C, H,
            W).

        Raises:
            ValueError: no images, an unusable image, or images of different output sizes
                (possible without a center crop) when a tensor is requested.
        """
        settings = self.resolve_settings(**overrides)
        batch = [process_image(image, settings, mode=mode) for image in _flatten_images(images)]
        if return_tensors is not None and len({p.shape for p in batch}) > 1:
            shapes = sorted({p.shape for p in batch})
            raise ValueError(
                f"the preprocessed images have different shapes {shapes} and cannot be stacked "
                "into one tensor. Enable do_center_crop, use size={'height': h, 'width': w}, or "
                "pass return_tensors=None to get a list."
            )
        return BatchFeature({"pixel_values": batch}, tensor_type=return_tensors)

    def preprocess_one(
        self, image: ImageInput, *, mode: str = "exact", **overrides: Any
    ) -> np.ndarray:
        """Preprocesses a single image into a (C, H, W) array (float32 with the usual options).

        For pipelines that preprocess images one by one in parallel and stack them; resolving
        the settings once with :meth:`resolve_settings` and calling :func:`process_image` saves
        the validation per image.
        """
        return process_image(image, self.resolve_settings(**overrides), mode=mode)

    # -- serialization -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> CLIPImageProcessor:
        """Builds a processor from a ``preprocessor_config.json`` dict.

        Both layouts are accepted: the old one (``"size": 224``, ``"crop_size": 224``) and the
        dict one (``{"shortest_edge": 224}``, ``{"height": 224, "width": 224}``). Metadata keys
        (``image_processor_type``...) are dropped; other unknown keys are kept in
        :attr:`extra_config` and written back by :meth:`to_dict`, with a warning.

        Args:
            config: the parsed JSON.
            **overrides: option values replacing the config's.

        Raises:
            TypeError: an override is not an option.
            ValueError: a value is invalid, or the config enables a feature this class lacks.
        """
        unknown = sorted(set(overrides) - set(PREPROCESS_OPTIONS) - {"default_to_square"})
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_dict got unknown option(s) {unknown}; valid options are "
                f"{list(PREPROCESS_OPTIONS)} and default_to_square"
            )
        merged = {**config, **overrides}
        for key in _UNSUPPORTED_WHEN_TRUE:
            if merged.get(key):
                raise ValueError(
                    f"the image processor config sets {key}={merged[key]!r}, which clipbeam's "
                    f"{cls.__name__} does not implement (it is not used by CLIP checkpoints). "
                    f"Remove it or set it to false."
                )
        known = {
            k: v for k, v in merged.items() if k in PREPROCESS_OPTIONS or k == "default_to_square"
        }
        extra = {k: v for k, v in merged.items() if k not in known and k not in _METADATA_KEYS}
        processor = cls(**known)
        if extra:
            logger.warning(
                "%s ignores these preprocessor config keys: %s", cls.__name__, sorted(extra)
            )
            processor.extra_config = extra
        return processor

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, *, revision: str | None = None, **overrides: Any
    ) -> CLIPImageProcessor:
        """Loads the processor of a checkpoint.

        Reads ``preprocessor_config.json``, or else the ``image_processor`` entry of
        ``processor_config.json`` (what transformers 5 saves).

        Args:
            source: a checkpoint folder, fsspec URL or hub id (see
                :func:`clipbeam.model.hub.resolve_source`), or the path of a JSON config file.
            revision: hub branch, tag or commit.
            **overrides: option values replacing the config's.

        Raises:
            CheckpointNotFoundError: no checkpoint, or it has no image processor config.
            CheckpointError: the config file is not valid JSON.
        """
        path = Path(os.fspath(source)).expanduser()
        if path.suffix == ".json" and path.is_file():
            return cls.from_dict(_read_json(path), **overrides)
        checkpoint = resolve_source(source, revision=revision)
        config_path = checkpoint.get(PREPROCESSOR_CONFIG)
        if config_path is not None:
            return cls.from_dict(_read_json(config_path), **overrides)
        processor_path = checkpoint.get(PROCESSOR_CONFIG)
        if processor_path is not None:
            nested = _read_json(processor_path).get("image_processor")
            if isinstance(nested, dict):
                return cls.from_dict(nested, **overrides)
        raise checkpoint.missing(
            f"checkpoint {checkpoint.source!r} has no {PREPROCESSOR_CONFIG} (nor an "
            f"'image_processor' entry in {PROCESSOR_CONFIG}); looked in {checkpoint.describe()}. "
            f"Add the file, or build the processor with {cls.__name__}(...) explicitly.",
            PREPROCESSOR_CONFIG,
            PROCESSOR_CONFIG,
        )

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> CLIPImageProcessor:
        """Builds a processor from a JSON file of options (what :meth:`to_json_file` or
        transformers' ``to_json_file`` writes)."""
        return cls.from_dict(_read_json(Path(json_file)))

    def to_dict(self) -> dict[str, Any]:
        """The options as a ``preprocessor_config.json`` dict (dict layout for sizes)."""
        out: dict[str, Any] = dict(self.extra_config)
        for name in PREPROCESS_OPTIONS:
            value = getattr(self, name)
            if isinstance(value, dict):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        out["image_processor_type"] = type(self).__name__
        return out

    def to_json_string(self) -> str:
        """:meth:`to_dict` as indented, key-sorted JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Writes :meth:`to_json_string` to ``json_file_path``."""
        Path(json_file_path).write_text(self.to_json_string(), encoding="utf-8")

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Writes ``preprocessor_config.json`` into ``save_directory`` (created if missing).

        Returns:
            The paths written.
        """
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_pretrained needs a directory, {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / PREPROCESSOR_CONFIG
        target.write_text(self.to_json_string(), encoding="utf-8")
        return [str(target)]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable options: not hashable, like a dict


class ChineseCLIPImageProcessor(CLIPImageProcessor):
    """Prepares images for a Chinese-CLIP vision tower.

    Same steps and class defaults as :class:`CLIPImageProcessor`. The OFA-Sys checkpoints' config
    files differ: they resize straight to ``{"height": 224, "width": 224}`` with
    ``do_center_crop`` false, so load them with :meth:`from_pretrained` rather than relying on
    the defaults.
    """


# transformers' old names for the same classes, kept so code written against them runs.
CLIPFeatureExtractor = CLIPImageProcessor
ChineseCLIPFeatureExtractor = ChineseCLIPImageProcessor


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path)


def _flatten_images(images: Any) -> list[ImageInput]:
    """A flat list of single images from an image, a 4-D batch, or (nested) lists of them."""
    flat = _flatten(images)
    if not flat:
        raise ValueError("no images were given (an empty list)")
    return flat


def _flatten(images: Any) -> list[ImageInput]:
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise ValueError(
            f"an image array must have 2 or 3 dimensions, or 4 for a batch; got shape "
            f"{tuple(images.shape)}"
        )
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten(item)]
    raise TypeError(
        "images must be a PIL.Image.Image, a numpy array, a torch tensor or a list of them, got "
        f"{type(images).__module__}.{type(images).__qualname__}"
    )
