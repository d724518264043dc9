"""Image processors for CLIP and Chinese-CLIP: RGB, resize, center crop, rescale, normalize.

The numbers match transformers' PIL processors (``CLIPImageProcessorPil``,
``ChineseCLIPImageProcessorPil``) exactly: resampling is done by Pillow on 8-bit pixels, the
shortest-edge target size is truncated like torchvision's ``Resize``, a crop larger than the image
pads with zeros (one more row or column before than after), rescaling multiplies in float64 and
stores float32, and normalization runs in float32.

The work is split in two layers so that callers can parallelize it:

* :func:`process_image` turns ONE image into a channels-first array, given resolved
  :class:`ImageSettings`. It holds no state, so a pipeline can run it in worker threads or
  processes and stack the results itself (:meth:`CLIPImageProcessor.preprocess_one` wraps it).
* :class:`CLIPImageProcessor` keeps the options read from ``preprocessor_config.json``, resolves
  per-call overrides, maps :func:`process_image` over a batch and returns a
  :class:`~clipbeam.model.batch.BatchFeature` with ``pixel_values``.

Internally each image is kept channels-last (Pillow's layout), and moved to channels-first at the
end; every step is element-wise or a slice, so the layout does not change any value.

Two modes (:data:`PREPROCESS_MODES`):

* ``"exact"`` (the default) gives the reference's values bit for bit, with less work: an 8-bit
  PIL image is resized by Pillow as it is, without the two full-resolution copies through numpy
  the reference makes, and rescale + normalize become one lookup in a 256-entry table per channel
  (computed with the very same float operations, so every value is identical).
* ``"fast"`` trades exactness for speed where the work is: a JPEG that is not decoded yet is
  decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``Image.draft``), never below the
  resize target, and resizing first shrinks by whole factors with a box filter (Pillow's
  ``reducing_gap``) before the final resampling. Outputs keep the exact mode's shapes; values
  differ by about 1-2 levels of 255 (the benchmarks state the effect on image features).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .batch import BatchFeature
from .hub import CheckpointError, resolve_source

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PREPROCESS_MODES",
    "PREPROCESS_OPTIONS",
    "CLIPFeatureExtractor",
    "CLIPImageProcessor",
    "ChineseCLIPFeatureExtractor",
    "ChineseCLIPImageProcessor",
    "ImageSettings",
    "center_crop",
    "convert_array_to_rgb",
    "convert_pil_to_rgb",
    "draft_image",
    "normalize",
    "process_image",
    "rescale",
    "resize",
    "resize_output_size",
    "to_channels_last",
]

logger = logging.getLogger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# transformers >= 5 saves processors as processor_config.json with the image options nested.
PROCESSOR_CONFIG = "processor_config.json"

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
_CHANNEL_COUNTS = (1, 3, 4)
_RESAMPLE_NAMES = {int(r): r.name for r in PIL.Image.Resampling}

# "exact": equal to transformers' PIL processors; "fast": reduced JPEG decoding and resizing.
PREPROCESS_MODES = ("exact", "fast")
# Fast mode's last resampling step shrinks by at most this much; larger factors are first
# taken by box-filter reduction (Pillow's `thumbnail` uses the same value).
FAST_REDUCING_GAP = 2.0
# PIL modes whose pixels numpy and Pillow hold identically (what Image.fromarray gives back for
# uint8 arrays of 1, 3 and 4 channels): such images are resized by Pillow directly.
_PIL_LANE_MODES = frozenset({"L", "RGB", "RGBA"})

# Keys that configs carry as metadata; they do not change preprocessing.
_METADATA_KEYS = frozenset(
    {"image_processor_type", "feature_extractor_type", "processor_class", "auto_map"}
)
# Options of other transformers processors that would change the output if enabled: refuse them
# rather than ignore them.
_UNSUPPORTED_WHEN_TRUE = ("do_pad", "use_square_size")


# -- per-image steps ---------------------------------------------------------------------------


def convert_pil_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Converts a PIL image of any mode to RGB, compositing transparency onto white.

    Images with an alpha band (RGBA, LA, PA...) or a ``transparency`` entry (palette or tRNS
    colour key) are converted to RGBA first and alpha-composited over an opaque white background,
    so transparent pixels become white instead of whatever colour they hide. Other modes (L, P,
    CMYK, I;16, I, F, 1...) go through Pillow's own ``convert("RGB")``.
    """
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def convert_array_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Converts channels-last pixels with 1, 3 or 4 channels to 3 channels.

    One channel is repeated three times. Four channels are read as RGBA and composited onto
    white: integer arrays as 0-255 values (rounded back to their dtype), float arrays as 0-1
    values (which they must lie in).

    Raises:
        ValueError: the array has another channel count, or float RGBA values outside [0, 1].
    """
    channels = pixels.shape[-1]
    if channels == 3:
        return pixels
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels != 4:
        raise ValueError(
            f"cannot convert an image with {channels} channels to RGB: expected 1 (grayscale), "
            "3 (RGB) or 4 (RGBA). Convert it yourself or pass do_convert_rgb=False."
        )
    if np.issubdtype(pixels.dtype, np.floating) and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise ValueError(
            "a float RGBA image must hold values in [0, 1] to be composited onto white, got "
            f"[{pixels.min()}, {pixels.max()}]. Scale it to [0, 1] or pass uint8 pixels."
        )
    integer = np.issubdtype(pixels.dtype, np.integer)
    white = 255 if integer else 1.0
    alpha = pixels[..., 3:4] / white
    blended = alpha * pixels[..., :3] + (1 - alpha) * white
    return np.round(blended).astype(pixels.dtype) if integer else blended.astype(pixels.dtype)


def infer_channel_layout(shape: tuple[int, ...]) -> str:
    """Guesses whether a 3-D image array is ``channels_first`` or ``channels_last``.

    An axis of length 1, 3 or 4 is taken as the channel axis, the first one winning when both
    qualify (as transformers does; a warning names the shape).

    Raises:
        ValueError: neither the first nor the last axis has 1, 3 or 4 entries.
    """
    first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
    if first and last:
        logger.warning(
            "image array of shape %s could be channels-first or channels-last; assuming "
            "channels-first. Pass input_data_format='channels_last' if that is wrong.",
            shape,
        )
    if first:
        return CHANNELS_FIRST
    if last:
        return CHANNELS_LAST
    raise ValueError(
        f"cannot tell which axis of an image array of shape {shape} holds the channels: expected "
        "1, 3 or 4 channels first (C, H, W) or last (H, W, C). Pass "
        "input_data_format='channels_first' or 'channels_last'."
    )


def to_channels_last(
    image: ImageInput, *, do_convert_rgb: bool = True, input_data_format: str | None = None
) -> np.ndarray:
    """Turns one input image into a channels-last (H, W, C) numpy array.

    Args:
        image: a PIL image, or a numpy array / torch tensor of shape (H, W), (C, H, W) or
            (H, W, C) with 1, 3 or 4 channels, of any numeric dtype.
        do_convert_rgb: convert to 3 channels (:func:`convert_pil_to_rgb` for PIL images, which
            knows the mode; :func:`convert_array_to_rgb` for arrays).
        input_data_format: ``"channels_first"`` or ``"channels_last"`` for 3-D arrays; inferred
            from the shape when ``None``. Ignored for PIL images and 2-D arrays.

    Returns:
        The pixels, channels last. PIL images converted to RGB give uint8; otherwise the dtype of
        the input is kept (``np.array`` of the PIL image for unconverted PIL input).

    Raises:
        TypeError: the input is not an image.
        ValueError: the shape or channel layout is unusable, or the image is empty.
    """
    if isinstance(image, PIL.Image.Image):
        pixels = np.array(convert_pil_to_rgb(image) if do_convert_rgb else image)
        layout = CHANNELS_LAST
    else:
        if isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
            image = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(
                "an image must be a PIL.Image.Image, a numpy array or a torch tensor, got "
                f"{type(image).__module__}.{type(image).__qualname__}"
            )
        pixels = image
        if pixels.ndim == 2:
            layout = CHANNELS_LAST
        elif pixels.ndim == 3:
            layout = _check_layout(input_data_format) or infer_channel_layout(pixels.shape)
        else:
            raise ValueError(
                f"an image array must have 2 (H, W) or 3 (C, H, W or H, W, C) dimensions, got "
                f"shape {pixels.shape}; pass a batch as a list or a 4-D array to preprocess()"
            )
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif layout == CHANNELS_FIRST:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"the image is empty: height {pixels.shape[0]}, width {pixels.shape[1]}")
    if do_convert_rgb and not isinstance(image, PIL.Image.Image):
        pixels = convert_array_to_rgb(pixels)
    return pixels


def resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """The (height, width) an image of ``height`` x ``width`` is resized to.

    ``{"height": h, "width": w}`` is taken as is. ``{"shortest_edge": s}`` keeps the aspect ratio:
    the short side becomes ``s`` and the long side ``int(s * long / short)``, truncated (not
    rounded) like torchvision's ``Resize`` and the OpenAI CLIP preprocessing.
    """
    if "shortest_edge" in size:
        target = size["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(target * long / short)
        return (new_long, target) if width <= height else (target, new_long)
    return size["height"], size["width"]


def _needs_255_scaling(pixels: np.ndarray) -> bool:
    """Whether pixels must be multiplied by 255 to fit 8 bits (floats in [0, 1]).

    Raises:
        ValueError: the values fit neither 0-255 integers nor 0-1 floats.
    """
    if pixels.dtype == np.uint8:
        return False
    if np.allclose(pixels, pixels.astype(int)):
        if np.all(pixels >= 0) and np.all(pixels <= 255):
            return False
        raise ValueError(
            f"cannot resize an image with integer values in [{pixels.min()}, {pixels.max()}]: "
            "resizing runs on 8-bit pixels, so values must lie in [0, 255]. Convert 16- or 32-bit "
            "images to 8 bits first, or pass a PIL image with do_convert_rgb=True."
        )
    if np.all(pixels >= 0) and np.all(pixels <= 1):
        return True
    raise ValueError(
        f"cannot resize a float image with values in [{pixels.min()}, {pixels.max()}]: expected "
        "0-1 floats or whole numbers in [0, 255]"
    )


def resize(
    pixels: np.ndarray,
    size: tuple[int, int],
    resample: int,
    *,
    reducing_gap: float | None = None,
) -> np.ndarray:
    """Resizes channels-last pixels to ``size`` = (height, width) with Pillow.

    Pillow resamples 8-bit images, so pixels are converted to uint8 first: 0-1 floats are scaled
    by 255 (and truncated), then scaled back to 0-1 float32 after resizing. 4-channel images are
    resized as RGBA (Pillow weights colours by alpha).

    Args:
        pixels: (H, W, C) array with 1 to 4 channels.
        size: target (height, width).
        resample: a Pillow filter code (0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic, 4 box,
            5 Hamming).
        reducing_gap: ``None`` for one exact resampling step; a number lets Pillow first shrink
            by a whole factor with a box filter, so that the last step shrinks by at most this
            much (faster on large images, slightly different values).

    Returns:
        (height, width, C) array: uint8, or float32 when the input was 0-1 floats.
    """
    height, width = size
    plane = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    scaled = _needs_255_scaling(plane)
    if scaled:
        plane = rescale(plane, 255)
    image = PIL.Image.fromarray(plane.astype(np.uint8, copy=False))
    # np.array, not np.asarray: a view of Pillow's buffer is read-only.
    resized = np.array(image.resize((width, height), resample=resample, reducing_gap=reducing_gap))
    if resized.ndim == 2:
        resized = resized[..., None]
    return rescale(resized, 1 / 255) if scaled else resized


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crops the center ``height`` x ``width`` of channels-last pixels, zero-padding if smaller.

    Along each axis, a larger image is cropped from offset ``(size - crop) // 2``; a smaller one is
    placed at offset ``ceil((crop - size) / 2)`` in zeros (so odd padding puts the extra row or
    column first, as transformers' PIL processors do).
    """
    rows = _center_span(pixels.shape[0], height)
    cols = _center_span(pixels.shape[1], width)
    (src_top, dst_top, n_rows), (src_left, dst_left, n_cols) = rows, cols
    window = pixels[src_top : src_top + n_rows, src_left : src_left + n_cols]
    if n_rows == height and n_cols == width:
        return window
    out = np.zeros((height, width, *pixels.shape[2:]), dtype=pixels.dtype)
    out[dst_top : dst_top + n_rows, dst_left : dst_left + n_cols] = window
    return out


def _center_span(size: int, crop: int) -> tuple[int, int, int]:
    """(source start, destination start, length) of a centered crop along one axis."""
    if size >= crop:
        return (size - crop) // 2, 0, crop
    return 0, (crop - size + 1) // 2, size


def rescale(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Multiplies pixels by ``factor`` in float64 and returns float32."""
    return (pixels.astype(np.float64) * factor).astype(np.float32)


def normalize(
    pixels: np.ndarray, mean: float | Sequence[float], std: float | Sequence[float]
) -> np.ndarray:
    """Returns ``(pixels - mean) / std`` per channel of channels-last pixels.

    Integer pixels are computed in float32; float pixels keep their dtype, and so do mean and std
    (they are cast to it), as in transformers.

    Raises:
        ValueError: ``mean`` or ``std`` has a length other than the channel count.
    """
    if not np.issubdtype(pixels.dtype, np.floating):
        pixels = pixels.astype(np.float32)
    channels = pixels.shape[-1]
    stats = []
    for name, value in (("image_mean", mean), ("image_std", std)):
        values = list(value) if isinstance(value, Sequence) else [value] * channels
        if len(values) != channels:
            raise ValueError(
                f"{name} has {len(values)} values but the image has {channels} channels; "
                "use do_convert_rgb=True for non-RGB images or give one value per channel"
            )
        stats.append(np.array(values, dtype=pixels.dtype))
    return (pixels - stats[0]) / stats[1]


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSettings:
    """Every option :func:`process_image` reads, resolved and validated.

    Build it with :meth:`CLIPImageProcessor.resolve_settings`; the field names are the
    ``preprocessor_config.json`` keys.
    """

    do_convert_rgb: bool
    do_resize: bool
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int]
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: float | tuple[float, ...]
    image_std: float | tuple[float, ...]
    input_data_format: str | None = None


def process_image(
    image: ImageInput,
    settings: ImageSettings,
    *,
    mode: str = "exact",
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Preprocesses one image: RGB conversion, resize, center crop, rescale, normalize.

    Stateless and thread-safe (Pillow releases the GIL while decoding and resampling), so batches
    can be spread over a pool of threads and stacked with ``np.stack``.

    Args:
        image: a PIL image, or a numpy array / torch tensor (H, W), (C, H, W) or (H, W, C). A PIL
            image may be opened and not yet loaded (``PIL.Image.open`` without ``load()``); it is
            decoded here. In fast mode such a JPEG is decoded at reduced scale, which changes the
            image object in place (as ``Image.draft`` does).
        settings: resolved options (see :meth:`CLIPImageProcessor.resolve_settings`).
        mode: ``"exact"`` (the reference's values, bit for bit) or ``"fast"`` (see the module
            docstring).
        box: fast mode, for an image already drafted and loaded: what :func:`draft_image`
            returned for it, so that the output covers the whole picture as exact mode's does.

    Returns:
        A channels-first (C, H, W) array; float32 whenever rescaling or normalizing is on.

    Raises:
        ValueError: the mode is unknown, a box was given in exact mode, or the image is
            unusable.
        OSError: the data of an image that was not loaded yet cannot be decoded (from Pillow).
    """
    fast = _check_mode(mode) == "fast"
    if box is not None and not (fast and _in_pil_lane(image, settings)):
        raise ValueError(
            "box is for fast mode and a PIL image to resize (what draft_image returned for it); "
            f"got mode {mode!r}, a {type(image).__name__}, do_resize={settings.do_resize}"
        )
    if _in_pil_lane(image, settings):
        pixels = _resize_pil(image, settings, fast=fast, box=box)  # type: ignore[arg-type]
    else:
        pixels = to_channels_last(
            image,
            do_convert_rgb=settings.do_convert_rgb,
            input_data_format=settings.input_data_format,
        )
        if settings.do_resize:
            target = resize_output_size(pixels.shape[0], pixels.shape[1], settings.size)
            gap = FAST_REDUCING_GAP if fast else None
            pixels = resize(pixels, target, settings.resample, reducing_gap=gap)
    if settings.do_center_crop:
        pixels = center_crop(pixels, settings.crop_size["height"], settings.crop_size["width"])
    if pixels.dtype == np.uint8 and (settings.do_rescale or settings.do_normalize):
        table = _value_table(
            pixels.shape[-1],
            settings.do_rescale,
            settings.rescale_factor,
            settings.do_normalize,
            settings.image_mean,
            settings.image_std,
        )
        return _look_up(pixels, table)
    if settings.do_rescale:
        pixels = rescale(pixels, settings.rescale_factor)
    if settings.do_normalize:
        pixels = normalize(pixels, settings.image_mean, settings.image_std)
    return np.ascontiguousarray(np.moveaxis(pixels, -1, 0))  # HWC -> CHW


def _in_pil_lane(image: ImageInput, settings: ImageSettings) -> bool:
    """Whether Pillow can resize the image as it is: an 8-bit L, RGB or RGBA image after the RGB
    conversion, whose pixels are exactly the array the numpy path would hand back to Pillow."""
    if not isinstance(image, PIL.Image.Image) or not settings.do_resize:
        return False
    return settings.do_convert_rgb or image.mode in _PIL_LANE_MODES


def draft_image(
    image: PIL.Image.Image, settings: ImageSettings
) -> tuple[float, float, float, float] | None:
    """Makes Pillow decode a JPEG at reduced scale: fast mode's first step, done before loading.

    A JPEG that is opened but not loaded yet is set to decode at 1/2, 1/4 or 1/8 scale in the
    DCT domain, the smallest that still covers the resize target, which skips most of the
    decoding work. The image object changes in place (its ``size`` becomes the reduced one).
    Other formats, loaded images and settings without a resize are left alone.

    Returns:
        Where the whole picture lies in the reduced image, ``(0, 0, width / s, height / s)``
        (the reduced size is rounded up), to pass to :func:`process_image` as ``box``; ``None``
        when nothing changed.
    """
    if not _in_pil_lane(image, settings):
        return None
    width, height = image.size
    if width == 0 or height == 0:
        return None
    target_height, target_width = resize_output_size(height, width, settings.size)
    drafted = image.draft(None, (target_width, target_height))
    return drafted[1] if drafted is not None else None


def _resize_pil(
    image: PIL.Image.Image,
    settings: ImageSettings,
    *,
    fast: bool,
    box: tuple[float, float, float, float] | None,
) -> np.ndarray:
    """Resizes a PIL image with Pillow directly; channels-last uint8 out.

    In exact mode this gives what :func:`to_channels_last` + :func:`resize` give (Pillow receives
    the same pixels in the same mode) without copying the full-size image to numpy and back.
    """
    gap = None
    if fast:
        if box is None:
            box = draft_image(image, settings)
        gap = FAST_REDUCING_GAP
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"the image is empty: height {height}, width {width}")
    if box is not None:
        # The target follows the whole picture's proportions; dividing both sides by the same
        # power of two leaves their ratio, and so the truncated size, exactly as it was.
        width, height = box[2] - box[0], box[3] - box[1]
    target_height, target_width = resize_output_size(height, width, settings.size)
    if settings.do_convert_rgb:
        image = _as_rgb(image)
    resized = image.resize(
        (target_width, target_height), resample=settings.resample, box=box, reducing_gap=gap
    )
    pixels = np.array(resized)  # np.array, not np.asarray: a view of Pillow's buffer is read-only
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _as_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """:func:`convert_pil_to_rgb`, without its copy when the image is plain RGB already."""
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    return convert_pil_to_rgb(image)


@functools.lru_cache(maxsize=64)
def _value_table(
    channels: int,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: float | tuple[float, ...],
    image_std: float | tuple[float, ...],
) -> np.ndarray:
    """What rescaling and normalizing make of each 8-bit value: ``[channels, 256]``, read-only.

    The table is computed by :func:`rescale` and :func:`normalize` themselves, applied to an image
    holding the 256 possible values; both are element-wise, so looking a pixel up gives exactly
    the value the arithmetic on the whole image gives, for a fraction of the work.
    """
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], channels, axis=2)
    values: np.ndarray = levels  # an image of 256 rows, 1 column
    if do_rescale:
        values = rescale(values, rescale_factor)
    if do_normalize:
        values = normalize(values, image_mean, image_std)
    table = np.ascontiguousarray(values[:, 0, :].T)
    table.flags.writeable = False
    return table


def _look_up(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Channels-last uint8 pixels mapped through ``table``, channels first."""
    out = np.empty((pixels.shape[-1], *pixels.shape[:2]), dtype=table.dtype)
    for channel in range(pixels.shape[-1]):
        # uint8 indices are always in range; "clip" spares numpy's bounds-checking buffer.
        np.take(table[channel], pixels[..., channel], out=out[channel], mode="clip")
    return out


def _check_mode(mode: str) -> str:
    if mode not in PREPROCESS_MODES:
        raise ValueError(
            f"preprocessing mode must be 'exact' (the reference's values) or 'fast' (reduced "
            f"JPEG decoding and resizing), got {mode!r}"
        )
    return mode


def _check_layout(value: str | None) -> str | None:
    if value is None:
        return None
    # transformers' ChannelDimension is a str enum; its value is what we compare.
    text = str(getattr(value, "value", value))
    if text not in (CHANNELS_FIRST, CHANNELS_LAST):
        raise ValueError(
            f"input_data_format must be 'channels_first', 'channels_last' or None, got {value!r}"
        )
    return text


def _size_dict(value: Any, *, default_to_square: bool, name: str) -> dict[str, int]:
    """Normalizes a size option: a dict, or the old int / (height, width) layouts.

    An int means ``{"shortest_edge": n}``, or ``{"height": n, "width": n}`` when
    ``default_to_square`` is true (always the case for ``crop_size``).
    """
    if isinstance(value, Mapping):
        size = dict(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        size = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        size = {"height": value[0], "width": value[1]}
    else:
        raise ValueError(f"{name} must be a dict, an int or a (height, width) pair, got {value!r}")
    allowed = (
        [{"height", "width"}] if name == "crop_size" else [{"shortest_edge"}, {"height", "width"}]
    )
    if set(size) not in allowed:
        expected = " or ".join(str(sorted(keys)) for keys in allowed)
        raise ValueError(
            f"{name} must have the keys {expected}, got {size!r}. Other layouts (longest_edge, "
            "max_height...) belong to other model families and are not supported here."
        )
    for key, number in size.items():
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            raise ValueError(f"{name}[{key!r}] must be a positive int, got {number!r}")
    return size


def _check_resample(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or int(value) not in _RESAMPLE_NAMES:
        raise ValueError(
            f"resample must be a Pillow filter code {sorted(_RESAMPLE_NAMES.items())}, "
            f"got {value!r}"
        )
    return int(value)


def _check_factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"rescale_factor must be a number, got {value!r}")
    return float(value)


def _check_stat(value: Any, name: str) -> float | tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return tuple(float(v) for v in value)
    raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# -- processors --------------------------------------------------------------------------------

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
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
