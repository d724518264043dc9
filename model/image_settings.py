"""The options of image preprocessing: :class:`ImageSettings`, the modes, and their checks.

Every option is validated once, where it is set (a processor's constructor, or
:meth:`~clipbeam.model.image_processing.CLIPImageProcessor.resolve_settings` for one call), with a
message that says what was expected; :func:`clipbeam.model.image_transforms.process_image` then
reads resolved values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

__all__ = [
    "CHANNELS_FIRST",
    "CHANNELS_LAST",
    "MAX_IMAGE_SIDE",
    "PREPROCESS_MODES",
    "ImageSettings",
]

CHANNELS_FIRST = "channels_first"
CHANNELS_LAST = "channels_last"
_RESAMPLE_NAMES = {int(r): r.name for r in PIL.Image.Resampling}

# The largest resize or crop side a processor accepts: a 4096 x 4096 float32 RGB input is 192 MiB
# per image already, and a larger one in preprocessor_config.json can only be a mistake or a trap.
MAX_IMAGE_SIDE = 4096

# "exact": equal to transformers' PIL processors; "fast": reduced JPEG decoding and resizing.
PREPROCESS_MODES = ("exact", "fast")


@dataclass(frozen=True)
class ImageSettings:
    """Every option :func:`~clipbeam.model.image_transforms.process_image` reads, resolved and
    validated.

    Build it with
    :meth:`~clipbeam.model.image_processing.CLIPImageProcessor.resolve_settings`; the field
    names are the ``preprocessor_config.json`` keys.
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


# -- checks -------------------------------------------------------------------------------------


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
        if number > MAX_IMAGE_SIDE:
            shown = number if number < 10**12 else f"a {len(str(number))}-digit number"
            raise ValueError(
                f"{name}[{key!r}] is {shown}, above {MAX_IMAGE_SIDE} pixels: every preprocessed "
                f"image would take {_float_image_bytes(number)} (CLIP models take "
                "224-448 pixels); fix that key in preprocessor_config.json"
            )
    return size


def _float_image_bytes(side: int) -> str:
    """What a square float32 RGB image of ``side`` pixels takes, for messages."""
    size = 3 * 4 * side * side
    return f"at least {size / 2**30:.3g} GiB" if side < 10**12 else "more than any memory"


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
