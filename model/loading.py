"""Loading and saving model weights in the Hugging Face checkpoint layout.

Every model class derives from :class:`PreTrainedModel`, whose ``from_pretrained`` and
``save_pretrained`` live here. Loading is strict and safe:

* weights come from ``model.safetensors`` (or its sharded index), else ``pytorch_model.bin`` (or
  its index) read with ``torch.load(weights_only=True)``: no pickled code and no TorchScript runs;
* every missing, unexpected and mis-shaped tensor is reported together, in one error;
* the model is built on the ``meta`` device and the checkpoint tensors are assigned to it, so no
  random initialisation is computed only to be overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .configuration import BaseConfig, config_class_for, read_config_dict
from .hub import CheckpointError, CheckpointSource, resolve_source
from .modeling_utils import EmbeddingsMixin

__all__ = [
    "PreTrainedModel",
    "read_state_dict",
    "resolve_device",
    "resolve_dtype",
    "weight_files",
]

ModelT = TypeVar("ModelT", bound="PreTrainedModel")

# In the order transformers looks for them.
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"

# Older checkpoints saved these index buffers (persistent=True in transformers < 4.31); the models
# here compute them on the fly, so they are accepted and dropped.
_INDEX_BUFFERS = re.compile(r"(.+\.)?embeddings\.(position_ids|token_type_ids)")
_LIST_LIMIT = 10
_ATTN_IMPLEMENTATIONS = (None, "sdpa", "eager")


class PreTrainedModel(EmbeddingsMixin):
    """Base of every model: holds the config, loads and saves checkpoints.

    Subclasses set the class attributes below to say how checkpoint keys map to their own
    parameter names (which are the Hugging Face names, so most tensors load one to one).
    """

    config_class: ClassVar[type[BaseConfig]]
    # Prefix of this model's tensors inside a full two-tower checkpoint ("text_model." for a bare
    # text tower). Stripped when present, so a tower loads from either kind of checkpoint.
    checkpoint_prefix: ClassVar[str] = ""
    # Checkpoint tensors this class does not use and may skip (the other tower of a full model,
    # say); regular expressions matched against the whole key.
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = ()
    # The family's renaming table: (regular expression, replacement) for legacy key names.
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    # transformers' class attributes that code written for it reads: the input a model is
    # called with first, and the family's name for its base model.
    main_input_name: ClassVar[str] = "input_ids"
    base_model_prefix: ClassVar[str] = "clip"

    @classmethod
    def can_generate(cls) -> bool:
        """Whether the model generates text (``model.generate``): never, for these encoders."""
        return False

    @classmethod
    def explain_missing(cls, missing: list[str]) -> str:
        """A hint appended to the load error when these model tensors are missing (default none)."""
        return ""

    def __init__(self, config: BaseConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__} "
                f"(got {type(config).__name__})"
            )
        self.config = config

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the floating point parameters."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        source: str | os.PathLike | CheckpointSource | None = None,
        *,
        pretrained_model_name_or_path: str | os.PathLike | CheckpointSource | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        torch_dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ) -> ModelT | tuple[ModelT, dict[str, set[str] | list[str]]]:
        """Loads a checkpoint into a new model, in eval mode.

        Args:
            source: a checkpoint folder, an fsspec URL (``gs://bucket/model``) or a hub id.
            pretrained_model_name_or_path: transformers' name of ``source``, as a keyword.
            device: where to put the weights (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); default
                CPU. Asking for a device that is not there is an error, never a fallback.
            dtype: ``torch.float16``, ``"bfloat16"``..., ``"auto"`` for the checkpoint's own
                dtype, or ``None`` for float32.
            torch_dtype: the former name of ``dtype``.
            revision: hub branch, tag or commit.
            attn_implementation: ``"sdpa"`` (default) or ``"eager"``, recorded as the configs'
                ``_attn_implementation``. Both compute the same attention here (through
                ``scaled_dot_product_attention``, with the weights made explicit when
                ``output_attentions`` asks for them).
            output_loading_info: also return transformers' loading report: ``missing_keys``,
                ``unexpected_keys`` (checkpoint tensors this class does not use, such as the
                other tower), ``mismatched_keys`` and ``error_msgs``. Loading stays strict, so
                only ``unexpected_keys`` can be non-empty.
            **config_overrides: values of config attributes that replace those of
                ``config.json`` (``output_hidden_states=True``...), as transformers' keyword
                arguments do; a keyword that is no config attribute is a ``TypeError``.

        Returns:
            The model, with ``.eval()`` called; with ``output_loading_info``, ``(model, info)``.

        Raises:
            CheckpointNotFoundError: no checkpoint or no weights file was found.
            CheckpointError: the checkpoint is of another model, unreadable, unsafe, or its
                tensors do not fit the config.
            RuntimeError: ``device`` is not available.
        """
        if (source is None) == (pretrained_model_name_or_path is None):
            raise TypeError(
                f"{cls.__name__}.from_pretrained takes the checkpoint once: as the first argument "
                "or as pretrained_model_name_or_path= (got "
                f"{'both' if source is not None else 'neither'})"
            )
        model, unexpected = load_pretrained(
            cls,
            source if source is not None else pretrained_model_name_or_path,
            device=device,
            dtype=_one_dtype(dtype, torch_dtype),
            revision=revision,
            attn_implementation=attn_implementation,
            config_overrides=config_overrides,
        )
        if not output_loading_info:
            return model
        info: dict[str, set[str] | list[str]] = {
            "missing_keys": set(),
            "unexpected_keys": set(unexpected),
            "mismatched_keys": set(),
            "error_msgs": [],
        }
        return model, info

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``save_directory``.

        The files are what transformers writes, so ``transformers`` and :meth:`from_pretrained`
        both read them. Tied (memory-sharing) tensors are written under each of their names.

        Returns:
            The directory.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        dtype_name = str(self.dtype).removeprefix("torch.")
        config = dataclasses.replace(
            self.config, architectures=[type(self).__name__], dtype=dtype_name
        )
        config.save_pretrained(directory)
        tensors: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for name, tensor in self.state_dict().items():
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:
                # safetensors refuses tensors that share memory (tied weights). Write each name
                # in full so that strict loading finds every tensor it expects.
                tensor = tensor.clone()
            storages.add(storage)
            tensors[name] = tensor.detach().to("cpu").contiguous()
        # "format" is what transformers checks before it reads a safetensors file.
        save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
        return directory

    @classmethod
    def checkpoint_to_model_keys(cls, keys: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Maps checkpoint tensor names to this class's parameter names.

        Args:
            keys: the tensor names of a checkpoint.

        Returns:
            ``{checkpoint key: model key}`` for the tensors to load, and the checkpoint keys
            skipped on purpose (index buffers, the other tower of a full checkpoint).
        """
        ignored = re.compile("|".join(f"(?:{p})" for p in cls.ignored_checkpoint_keys) or "(?!)")
        renamed: dict[str, str] = {}
        skipped: list[str] = []
        for key in keys:
            name = key
            for pattern, replacement in cls.checkpoint_renames:
                name = re.sub(pattern, replacement, name)
            if _INDEX_BUFFERS.fullmatch(name) or ignored.fullmatch(name):
                skipped.append(key)
            else:
                renamed[key] = name
        prefix = cls.checkpoint_prefix
        if prefix and any(name.startswith(prefix) for name in renamed.values()):
            renamed = {k: v.removeprefix(prefix) for k, v in renamed.items()}
        return renamed, skipped


def load_pretrained(
    model_cls: type[ModelT],
    source: str | os.PathLike | CheckpointSource,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    attn_implementation: str | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[ModelT, list[str]]:
    """Implements :meth:`PreTrainedModel.from_pretrained` (see there).

    Returns:
        The model, and the checkpoint keys it did not use (index buffers aside).
    """
    if attn_implementation not in _ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {sorted(filter(None, _ATTN_IMPLEMENTATIONS))} "
            f"or None (got {attn_implementation!r}); clipbeam runs attention through "
            "torch's scaled_dot_product_attention"
        )
    target_device = resolve_device(device)
    src = (
        source
        if isinstance(source, CheckpointSource)
        else resolve_source(source, revision=revision)
    )
    config_dict, config_path = read_config_dict(src)
    _check_model_type(model_cls, config_dict.get("model_type"), config_path)
    config = model_cls.config_class.from_pretrained(src)
    if config_overrides:
        # As in transformers: a keyword updates the config only if the config has that
        # attribute; anything else is a mistake (a misspelled device=, say), not a new key.
        unknown = sorted(k for k in config_overrides if not hasattr(config, k))
        if unknown:
            raise TypeError(
                f"{model_cls.__name__}.from_pretrained got unexpected keyword argument(s) "
                f"{unknown}: neither loading options nor attributes of "
                f"{type(config).__name__}"
            )
        config = model_cls.config_class.from_pretrained(src, **config_overrides)
    set_attn_implementation(config, attn_implementation or "sdpa")

    state = read_state_dict(src)
    mapping, skipped = model_cls.checkpoint_to_model_keys(state)
    state = {mapping[k]: v for k, v in state.items() if k in mapping}
    with torch.device("meta"):
        model = model_cls(config)
    _check_state_dict(model, state, src, mapping)

    target_dtype = resolve_dtype(dtype, config, state.values())
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=target_device, dtype=target_dtype)
    config.dtype = str(target_dtype).removeprefix("torch.")  # as transformers: the loaded dtype
    unexpected = [key for key in skipped if not _INDEX_BUFFERS.fullmatch(key)]
    return model.eval(), unexpected


def set_attn_implementation(config: BaseConfig, name: str) -> None:
    """Records ``name`` as ``_attn_implementation`` of a config and of its sub-configs."""
    config._attn_implementation = name
    for sub in (getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if isinstance(sub, BaseConfig):
            sub._attn_implementation = name


def _check_model_type(model_cls: type[PreTrainedModel], model_type: Any, config_path: str) -> None:
    config_cls = model_cls.config_class
    accepted = {config_cls.model_type, config_cls.family}
    if model_type is None or model_type in accepted:
        return
    config_class_for(model_type)  # raises for model types of no supported family
    family = config_class_for(model_type).family
    suggestion = "CLIPModel" if family == "clip" else "ChineseCLIPModel"
    raise CheckpointError(
        f"{config_path} describes a {model_type!r} model, which {model_cls.__name__} cannot load "
        f"(it loads {' or '.join(sorted(map(repr, accepted)))}). Use {suggestion}, or "
        "model.load_model() which picks the class from config.json."
    )


def _check_state_dict(
    model: PreTrainedModel,
    state: dict[str, torch.Tensor],
    src: CheckpointSource,
    mapping: dict[str, str],
) -> None:
    """Raises one error listing every missing, unexpected and mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    back = {v: k for k, v in mapping.items()}
    unexpected = sorted(back[k] for k in set(state) - set(expected))
    mis_shaped = sorted(
        f"{back[k]}: checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    )
    # Weights must be floats where the model has floats: an integer or bool tensor would be
    # cast silently (its values are not weights), and NaN or infinite values would make every
    # output NaN, far from here, in a way that looks like a dtype problem.
    mistyped = sorted(
        f"{back[k]}: {str(v.dtype).removeprefix('torch.')}"
        for k, v in state.items()
        if k in expected and expected[k].dtype.is_floating_point and not v.is_floating_point()
    )
    if not (missing or unexpected or mis_shaped or mistyped):
        _check_finite(state, back, src)
        return
    problems = [
        _listing(missing, "missing tensor"),
        _listing(unexpected, "unexpected tensor"),
        _listing(mis_shaped, "tensor with the wrong shape", plural="tensors with the wrong shape"),
        _listing(
            mistyped,
            "tensor that is not floating point",
            plural="tensors that are not floating point",
        ),
    ]
    raise CheckpointError(
        f"the weights of {src.describe()} do not fit {type(model).__name__} built from its "
        "config.json:\n"
        + "\n".join(p for p in problems if p)
        + "\n"
        + (
            model.explain_missing(missing)
            or "config.json and the weights must describe the same architecture: re-download "
            "the checkpoint, or load it with the model class it was saved from."
        )
    )


def _check_finite(
    state: dict[str, torch.Tensor], back: dict[str, str], src: CheckpointSource
) -> None:
    """Raises one error naming the weights that hold NaN or infinite values."""
    broken = []
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            broken.append(f"{back[key]} ({bad} of {tensor.numel()} values)")
    if broken:
        raise CheckpointError(
            f"the weights of {src.describe()} hold NaN or infinite values:\n"
            + _listing(sorted(broken), "tensor")
            + "\nthe checkpoint is corrupt (or was saved after training diverged): re-download "
            "it, or use another checkpoint"
        )


def _listing(names: list[str], what: str, plural: str | None = None) -> str:
    if not names:
        return ""
    label = what if len(names) == 1 else (plural or what + "s")
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return f"  {len(names)} {label}: {shown}{more}"


# -- reading weights ----------------------------------------------------------------------------


def weight_files(source: CheckpointSource) -> list[Path]:
    """The local paths of a checkpoint's weight files, in the order transformers prefers.

    Raises:
        CheckpointNotFoundError: no weights file, or a shard named by the index is missing.
        CheckpointError: the index file is malformed.
    """
    if path := source.get(SAFETENSORS):
        return [path]
    for index_name in (SAFETENSORS_INDEX, PYTORCH_INDEX):
        if index := source.get(index_name):
            return [
                source.require(name, what=f"a shard listed in {index_name}")
                for name in _shards(index)
            ]
    if path := source.get(PYTORCH):
        return [path]
    raise source.missing(
        f"checkpoint {source.source!r} has no weights: none of {SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{PYTORCH} or {PYTORCH_INDEX} is in {source.describe()}. TensorFlow, Flax and ONNX "
        "weights are not read: convert with transformers' save_pretrained().",
        SAFETENSORS,
        SAFETENSORS_INDEX,
        PYTORCH,
        PYTORCH_INDEX,
    )


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{index} is not a valid shard index (expected a JSON object with a 'weight_map' of "
            f"tensor name -> file name): {exc!r}. Re-download the checkpoint."
        ) from exc
    for name in names:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(
                f"{index} names shard {name!r}, which is not a plain file name in the checkpoint "
                "folder; refusing to read it."
            )
    return names


def read_state_dict(source: CheckpointSource) -> dict[str, torch.Tensor]:
    """Reads all tensors of a checkpoint onto the CPU.

    Raises:
        CheckpointNotFoundError: no weights file.
        CheckpointError: a file is truncated or corrupt, is not a tensor dict, or would need
            unpickling of code; the message names the file.
    """
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(source):
        tensors = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
        duplicated = sorted(set(state) & set(tensors))
        if duplicated:
            raise CheckpointError(
                f"tensor {duplicated[0]!r} is stored in two shards (again in {path}); the shard "
                "index and its files do not match. Re-download the checkpoint."
            )
        state.update(tensors)
    return state


# The most a safetensors header (its JSON table of tensor names, dtypes and offsets) may take: a
# CLIP checkpoint's is about 100 KB (some 600 tensors). safetensors itself allows 100 MB, which
# takes minutes and gigabytes to parse and check.
MAX_SAFETENSORS_HEADER_BYTES = 8 * 1024 * 1024


def _check_safetensors_header(path: Path) -> None:
    """Refuses a header larger than :data:`MAX_SAFETENSORS_HEADER_BYTES`, or one that claims
    more bytes than the file has, from its 8-byte length prefix alone."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = os.fstat(f.fileno()).st_size
    if len(prefix) < 8:
        raise CheckpointError(
            f"cannot read {path}: {len(prefix)} bytes, shorter than a safetensors header. The file "
            "is truncated or corrupt (an interrupted download?); delete it and download it again."
        )
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_SAFETENSORS_HEADER_BYTES or length > size - 8:
        raise CheckpointError(
            f"refused {path}: its safetensors header claims {length} bytes (the file has {size}; "
            f"clipbeam reads headers of at most {MAX_SAFETENSORS_HEADER_BYTES} bytes, a CLIP "
            "checkpoint's is about 100 KB). The file is corrupt or not a checkpoint."
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}. The file is truncated or corrupt (an interrupted "
            "download?); delete it and download it again."
        ) from exc


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files carrying compiled code (``code/``, ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist()
        )


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    if _is_torchscript(path):
        raise CheckpointError(
            f"refused to load {path}: it is a TorchScript archive, which carries code. clipbeam "
            "never loads TorchScript; use a checkpoint saved as model.safetensors or as a "
            "state_dict with torch.save."
        )
    try:
        # weights_only=True: the unpickler accepts tensors and plain containers only, so a
        # malicious file cannot run code here.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: torch.load(weights_only=True) found objects other than "
            f"tensors in it ({_first_line(exc)}). Pickled code is never executed; convert the "
            "checkpoint to safetensors with a trusted tool, or use another checkpoint."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {_first_line(exc)}. The file is truncated or not a PyTorch "
            "checkpoint; delete it and download it again."
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{path} does not hold a flat dict of tensor name -> tensor (got "
            f"{type(state).__name__}); save the model's state_dict() instead."
        )
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- devices and dtypes -------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validates a device request; ``None`` means CPU.

    Raises:
        RuntimeError: the device type is not available here (no silent fallback to CPU).
        ValueError: ``device`` is not a device name.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device name ({exc})") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={device!r} was requested but no CUDA GPU is usable here "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run on a GPU "
                "machine with a CUDA build of torch, or pass device='cpu'."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise RuntimeError(f"device={device!r} was requested but only {count} GPU(s) exist")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={device!r} was requested but MPS is not available here")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype | None,
    config: BaseConfig,
    tensors: Iterable[torch.Tensor] = (),
) -> torch.dtype:
    """The dtype to load weights in.

    Args:
        dtype: a torch dtype or its name; ``"auto"`` takes ``config.dtype``, else the dtype of
            the first floating point tensor; ``None`` means float32.
        config: the model config.
        tensors: the checkpoint's tensors, for ``"auto"`` when the config names no dtype.

    Raises:
        ValueError: ``dtype`` is not a floating point dtype.
    """
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        if config.dtype is not None:
            return getattr(torch, config.dtype)
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
    else:
        resolved = dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(
            f"dtype must be a floating point torch dtype, its name ('float16', 'bfloat16'...), "
            f"'auto' or None (got {dtype!r})"
        )
    return resolved


def _one_dtype(
    dtype: str | torch.dtype | None, torch_dtype: str | torch.dtype | None
) -> str | torch.dtype | None:
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(
            f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; torch_dtype is the old "
            "name of dtype, pass only dtype"
        )
    return dtype if dtype is not None else torch_dtype
