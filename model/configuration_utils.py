"""What the config classes of :mod:`clipbeam.model.configuration` are built with.

* :func:`config_dataclass`, the dataclass decorator whose constructors keep keywords they have
  no field for (as transformers' configs do);
* the transformers 5 attributes every config answers (``return_dict``...);
* the field type checks, and :func:`read_config_dict`, which reads a ``config.json``.
"""

from __future__ import annotations

import functools
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from .hub import (
    CheckpointNotFoundError,
    CheckpointSource,
    read_json_object,
    resolve_source,
)

__all__ = ["config_dataclass", "read_config_dict"]

_T = TypeVar("_T")

# Attributes every transformers 5 config has, with its defaults: read (not written) when a config
# does not set them, so code that checks ``config.return_dict`` runs unchanged.
_TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "return_dict": True,
    "is_encoder_decoder": False,
    "chunk_size_feed_forward": 0,
    "problem_type": None,
    "id2label": {0: "LABEL_0", 1: "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    # Set by from_pretrained(attn_implementation=...); never saved.
    "_attn_implementation": "sdpa",
}


def config_dataclass(cls: type[_T]) -> type[_T]:
    """``@dataclass(kw_only=True)`` whose constructor also takes keywords it has no field for.

    As transformers' configs do, ``CLIPVisionConfig(dropout=0.1)`` keeps ``dropout`` as an
    attribute (in :attr:`BaseConfig.extra`), and :meth:`BaseConfig.to_dict` saves it.
    ``torch_dtype`` is read as ``dtype``, and a ``torch.dtype`` as its name.
    """
    cls = dataclass(kw_only=True)(cls)
    init = cls.__init__
    known = {f.name for f in fields(cls) if f.init}

    @functools.wraps(init)
    def __init__(self: Any, **kwargs: Any) -> None:
        extra = dict(kwargs.pop("extra", None) or {})
        torch_dtype = kwargs.pop("torch_dtype", None)
        if kwargs.get("dtype") is None and torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if kwargs.get("dtype") is not None:
            kwargs["dtype"] = str(kwargs["dtype"]).removeprefix("torch.")
        num_labels = kwargs.pop("num_labels", None)
        for key in [k for k in kwargs if k not in known]:
            extra[key] = kwargs.pop(key)
        if isinstance(extra.get("id2label"), Mapping):  # JSON wrote the int keys as strings
            extra["id2label"] = {int(k): v for k, v in extra["id2label"].items()}
        init(self, **kwargs, extra=extra)
        if num_labels is not None:
            self.num_labels = num_labels

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def _allowed_types(hint: Any) -> tuple[type, ...]:
    """``int | None`` -> ``(int, NoneType)``; ``list[str]`` -> ``(list,)``."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(m) or m for m in members)


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: only accept it where bool is asked
        return bool in allowed
    if isinstance(value, int) and float in allowed:  # JSON writes 0.0 as 0 now and then
        return True
    return isinstance(value, allowed)


def read_config_dict(
    source: str | os.PathLike | CheckpointSource, *, revision: str | None = None
) -> tuple[dict[str, Any], str]:
    """Reads the ``config.json`` of a checkpoint (or a given ``.json`` file) as a dict.

    Returns:
        The dict and a description of where it was read from, for error messages.

    Raises:
        CheckpointNotFoundError: there is no ``config.json``.
        CheckpointError: the file is not a JSON object.
    """
    if not isinstance(source, CheckpointSource) and Path(source).suffix == ".json":
        path = Path(source)
        if not path.is_file():
            raise CheckpointNotFoundError(f"config file {path} does not exist")
    else:
        if not isinstance(source, CheckpointSource):
            source = resolve_source(source, revision=revision)
        path = source.require("config.json", what="the model configuration")
    return read_json_object(path), str(path)
