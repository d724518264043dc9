"""Picking the model class from a checkpoint's ``config.json``, and fingerprinting its weights."""

from __future__ import annotations

import hashlib
import os

import torch

from .configuration import read_config_dict
from .hub import CheckpointError, CheckpointSource, resolve_source
from .loading import weight_files
from .modeling_chinese_clip import ChineseCLIPModel
from .modeling_clip import CLIPModel

__all__ = ["load_model", "model_type_of", "weights_fingerprint"]

_CHUNK = 1 << 20


def model_type_of(
    source: str | os.PathLike | CheckpointSource, *, revision: str | None = None
) -> str:
    """The ``model_type`` of a full checkpoint: ``"clip"`` or ``"chinese_clip"``.

    Raises:
        CheckpointNotFoundError: there is no ``config.json``.
        CheckpointError: the config names no model type, or one that is not a full CLIP or
            Chinese-CLIP model (a lone tower, or another architecture).
    """
    config_dict, where = read_config_dict(source, revision=revision)
    model_type = config_dict.get("model_type")
    if model_type in ("clip", "chinese_clip"):
        return model_type
    if model_type is None:
        raise CheckpointError(
            f"{where} has no 'model_type', so the model family is unknown; add "
            '"model_type": "clip" or "chinese_clip" to it, or load CLIPModel / ChineseCLIPModel '
            "directly"
        )
    raise CheckpointError(
        f"{where} has model_type {model_type!r}; load_model() needs a full two-tower checkpoint "
        "with model_type 'clip' or 'chinese_clip'. A single tower loads with its own class "
        "(CLIPTextModel, CLIPVisionModel, ...)."
    )


def load_model(
    source: str | os.PathLike | CheckpointSource,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
) -> CLIPModel | ChineseCLIPModel:
    """Loads a full CLIP or Chinese-CLIP model, whichever ``config.json`` says it is.

    Args:
        source: a checkpoint folder, an fsspec URL or a hub id.
        device: where to put the weights; default CPU, never a silent fallback.
        dtype: weights dtype, ``"auto"`` for the checkpoint's, ``None`` for float32.
        revision: hub branch, tag or commit.

    Returns:
        A :class:`~clipbeam.model.modeling_clip.CLIPModel` or
        :class:`~clipbeam.model.modeling_chinese_clip.ChineseCLIPModel` in eval mode.

    Raises:
        CheckpointNotFoundError: the checkpoint or one of its files is missing.
        CheckpointError: unsupported ``model_type``, or unusable weights.
    """
    src = source
    if not isinstance(src, CheckpointSource):
        src = resolve_source(src, revision=revision)
    model_cls = CLIPModel if model_type_of(src) == "clip" else ChineseCLIPModel
    return model_cls.from_pretrained(src, device=device, dtype=dtype)


def weights_fingerprint(
    source: str | os.PathLike | CheckpointSource, *, revision: str | None = None
) -> str:
    """A stable hash of a checkpoint's weight files, to record which weights made an output.

    It is the SHA-256 over each weight file's name and bytes, in name order (the files that
    ``from_pretrained`` reads: ``model.safetensors``, its shards, or ``pytorch_model.bin``).
    The same files give the same fingerprint wherever they are stored; re-saving the weights
    in another format or sharding gives another one. ``config.json`` is not included.

    Returns:
        ``"sha256:<64 hex digits>"``.

    Raises:
        CheckpointNotFoundError: the checkpoint has no weight files.
    """
    src = source
    if not isinstance(src, CheckpointSource):
        src = resolve_source(src, revision=revision)
    digest = hashlib.sha256()
    for path in sorted(weight_files(src), key=lambda p: p.name):
        name = path.name.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
