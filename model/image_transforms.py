"""What happens to one image: RGB, channel layout, resize, center crop, rescale, normalize, and
:func:`process_image`, which chains them into a model input.

The numbers match transformers' PIL processors (``CLIPImageProcessorPil``,
``ChineseCLIPImageProcessorPil``) exactly: resampling is done by Pillow on 8-bit pixels, the
shortest-edge target size is truncated like torchvision's ``Resize``, a crop larger than the image
pads with zeros (one more row or column before than after), rescaling multiplies in float64 and
stores float32, and normalization runs in float32.

Internally each image is kept channels-last (Pillow's layout), and moved to channels-first at the
end; every step is element-wise or a slice, so the layout does not change any value.

Two modes (:data:`~clipbeam.model.image_settings.PREPROCESS_MODES`):

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
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import torch

from .image_settings import CHANNELS_FIRST, CHANNELS_LAST, ImageSettings, _check_layout, _check_mode

__all__ = [
    "FAST_REDUCING_GAP",
    "ImageInput",
    "center_crop",
    "convert_array_to_rgb",
    "convert_pil_to_rgb",
    "draft_image",
    "infer_channel_layout",
    "normalize",
    "process_image",
    "rescale",
    "resize",
    "resize_output_size",
    "to_channels_last",
]

logger = logging.getLogger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor

_CHANNEL_COUNTS = (1, 3, 4)
# Fast mode's last resampling step shrinks by at most this much; larger factors are first
# taken by box-filter reduction (Pillow's `thumbnail` uses the same value).
FAST_REDUCING_GAP = 2.0
# PIL modes whose pixels numpy and Pillow hold identically (what Image.fromarray gives back for
# uint8 arrays of 1, 3 and 4 channels): such images are resized by Pillow directly.
_PIL_LANE_MODES = frozenset({"L", "RGB", "RGBA"})


# -- per-image steps ----------------------------------------------------------------------------


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
    # Integer arrays are whole numbers already: their range is read without an int64 or float64
    # copy of the image (a 16-bit photo would cost 4-8 times its own size in temporaries).
    if np.issubdtype(pixels.dtype, np.integer) or np.allclose(pixels, pixels.astype(int)):
        low, high = pixels.min(), pixels.max()
        if low >= 0 and high <= 255:
            return False
        raise ValueError(
            f"cannot resize an image with integer values in [{low}, {high}]: "
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


# -- one image, start to end --------------------------------------------------------------------


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
        settings: resolved options (see
            :meth:`~clipbeam.model.image_processing.CLIPImageProcessor.resolve_settings`).
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
