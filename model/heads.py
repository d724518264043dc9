"""Heads: small networks that read a CLIP image embedding and give one number per image.

A head is what LAION's aesthetic predictor, the CLIP-based NSFW detector and a team's own probes
are: a few linear layers on the image embedding. clipbeam reads three layouts, and never runs
anything stored in a file (safetensors, or ``torch.load(weights_only=True)``; TorchScript and
pickled objects are refused):

1. **clipbeam's own format** (format 1): a folder with ``head.json`` (see :class:`HeadConfig`)
   and ``head.safetensors`` (``layers.{i}.weight``/``layers.{i}.bias``, and
   ``standardize.mean``/``standardize.variance`` when the config standardizes its input).
2. **LAION's improved aesthetic predictor** (``sac+logos+ava1-l14-linearMSE.pth``, or its
   safetensors copy): ``layers.{0,2,4,6,7}.{weight,bias}``, Linear 768 -> 1024 -> 128 -> 64 ->
   16 -> 1 with dropout between the first four and no activation at all.
3. **NeMo Curator's port of LAION's NSFW detector**: ``norm.mean``/``norm.variance`` (the input
   is standardized as ``(x - mean) / sqrt(variance)``), then ``linear_1`` .. ``linear_4``,
   768 -> 64 -> 512 -> 256 -> 1, ReLU after the first three and a sigmoid at the end.

Layouts 2 and 3 are recognized by their tensor names (:func:`detect_layout`); :func:`save_head`
writes any head as format 1. Heads compute in float32 on the tower's device.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "HEAD_CONFIG",
    "HEAD_WEIGHTS",
    "MAX_HEAD_BYTES",
    "Head",
    "HeadConfig",
    "HeadError",
    "LayerConfig",
    "detect_layout",
    "load_head",
    "save_head",
]

HEAD_CONFIG = "head.json"
HEAD_WEIGHTS = "head.safetensors"
FORMAT = 1
# The largest head file read (the LAION aesthetic MLP is 3.7 MB): a head is small by nature.
MAX_HEAD_BYTES = 256 * 1024**2
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
OUTPUTS = ("identity", "sigmoid")
INPUT_NORMALIZATIONS = ("l2", "none")
# The model the published LAION heads were trained on (CLIP ViT-L/14 image embeddings).
_VIT_L14 = "openai/clip-vit-large-patch14"


class HeadError(ValueError):
    """A head that cannot be read or does not fit; the message says what was found."""


@dataclass(frozen=True)
class LayerConfig:
    """One linear layer of a head.

    Attributes:
        in_features: its input size.
        out_features: its output size.
        activation: applied after the layer: one of :data:`ACTIVATIONS` (``"none"``: none).
        dropout: the training dropout before the next layer; ignored at inference.
    """

    in_features: int
    out_features: int
    activation: str = "none"
    dropout: float = 0.0


@dataclass(frozen=True)
class HeadConfig:
    """``head.json``: what a head computes and what its output means.

    Attributes:
        layers: the linear layers, input first; the last one has one output.
        embedding_dim: the image embedding size the head reads (the first layer's input).
        input_normalization: ``"l2"``: the embedding is L2-normalized first (as clipbeam's
            embeddings are); ``"none"``: the projected features are used as they come.
        standardize: the input is then standardized, ``(x - mean) / sqrt(variance)`` with the
            ``standardize.mean`` and ``standardize.variance`` tensors.
        output: ``"identity"`` or ``"sigmoid"``, applied to the last layer's output.
        trained_on: the checkpoint whose embeddings the head was trained on, when known.
        meaning: what the output means, for people (``"LAION aesthetic score, 1-10"``).
        classes: a classifier's ``[negative, positive]`` classes (the output is the positive
            class's probability); empty for a regression.
        evaluation: held-out metrics recorded by ``clipbeam train-head``.
        source: where the weights came from (``clipbeam convert-head`` records the layout).
        format: the format version, 1.
    """

    layers: tuple[LayerConfig, ...]
    embedding_dim: int
    input_normalization: str = "l2"
    standardize: bool = False
    output: str = "identity"
    trained_on: str | None = None
    meaning: str = ""
    classes: tuple[str, ...] = ()
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    format: int = FORMAT

    def problems(self) -> list[str]:
        """Everything wrong with this config (empty when it is usable)."""
        p: list[str] = []
        if self.format != FORMAT:
            p.append(f"format is {self.format}, this clipbeam reads format {FORMAT}")
        if not self.layers:
            p.append("layers is empty")
        if self.input_normalization not in INPUT_NORMALIZATIONS:
            p.append(f"input_normalization must be one of {', '.join(INPUT_NORMALIZATIONS)}")
        if self.output not in OUTPUTS:
            p.append(f"output must be one of {', '.join(OUTPUTS)}")
        width = self.embedding_dim
        for i, layer in enumerate(self.layers):
            if layer.activation not in ACTIVATIONS:
                p.append(f"layers[{i}].activation must be one of {', '.join(ACTIVATIONS)}")
            if layer.in_features != width:
                p.append(f"layers[{i}] takes {layer.in_features} inputs, gets {width}")
            if layer.out_features < 1:
                p.append(f"layers[{i}] has {layer.out_features} outputs")
            width = layer.out_features
        if self.layers and width != 1:
            p.append(f"the last layer gives {width} outputs; a head gives one number per image")
        return p

    def to_dict(self) -> dict[str, Any]:
        """The config as ``head.json`` holds it."""
        data = asdict(self)
        data["layers"] = [asdict(layer) for layer in self.layers]
        data["classes"] = list(self.classes)
        data["evaluation"] = dict(self.evaluation)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> HeadConfig:
        """Reads ``head.json``'s content; unknown keys are refused (a typo must not pass)."""
        if not isinstance(data, dict):
            raise HeadError(f"{where}: head.json holds a {type(data).__name__}, not an object")
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise HeadError(
                f"{where}: head.json has {len(unknown)} unknown keys; known: {sorted(names)}"
            )
        try:
            layers = tuple(LayerConfig(**layer) for layer in data.get("layers") or ())
            config = cls(
                **{
                    **data,
                    "layers": layers,
                    "classes": tuple(data.get("classes") or ()),
                    "evaluation": dict(data.get("evaluation") or {}),
                }
            )
        except TypeError as exc:
            raise HeadError(f"{where}: head.json does not describe a head ({exc})") from None
        problems = config.problems()
        if problems:
            raise HeadError(f"{where}: head.json: {'; '.join(problems)}")
        return config


class Head(nn.Module):
    """A head as a module: ``float[N, embedding_dim] -> float32[N]``.

    Args:
        config: the head's config (checked).
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        problems = config.problems()
        if problems:
            raise HeadError("invalid head config: " + "; ".join(problems))
        self.config = config
        self.source = ""  # where it was loaded from
        self.sha256 = ""  # of the file(s) it was loaded from
        if config.standardize:
            self.standardize = _Standardize(config.embedding_dim)
        self.layers = nn.ModuleList(nn.Linear(c.in_features, c.out_features) for c in config.layers)
        self.activations = nn.ModuleList(
            (ACTIVATIONS[c.activation] or nn.Identity)() for c in config.layers
        )

    @property
    def embedding_dim(self) -> int:
        """The embedding size the head reads."""
        return self.config.embedding_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = embeddings.float()
        if self.config.input_normalization == "l2":
            x = nn.functional.normalize(x, dim=-1)
        if self.config.standardize:
            x = self.standardize(x)
        for layer, activation in zip(self.layers, self.activations, strict=True):
            x = activation(layer(x))
        if self.config.output == "sigmoid":
            x = torch.sigmoid(x)
        return x.squeeze(-1)  # N1 -> N


class _Standardize(nn.Module):
    """``(x - mean) / sqrt(variance)``, per embedding dimension (Curator's ``Normalization``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


# -- layouts ------------------------------------------------------------------------------------

_LAION_LINEAR = (0, 2, 4, 6, 7)
_LAION_DROPOUT = (0.2, 0.2, 0.1, 0.0, 0.0)
_CURATOR_KEYS = {"norm.mean", "norm.variance"} | {
    f"linear_{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")
}
_LAION_KEYS = {f"layers.{i}.{p}" for i in _LAION_LINEAR for p in ("weight", "bias")}


def detect_layout(state: Mapping[str, torch.Tensor], where: str) -> tuple[HeadConfig, dict]:
    """Recognizes a published head layout from its tensor names.

    Args:
        state: the tensors of a ``.pth`` or ``.safetensors`` file.
        where: the file, for messages.

    Returns:
        ``(config, tensors)``: the format-1 config and the tensors renamed to format 1.

    Raises:
        HeadError: the names are neither layout's; the message lists the names found.
    """
    keys = set(state)
    if keys == _LAION_KEYS:
        names = [f"layers.{i}" for i in _LAION_LINEAR]
        layers = _linear_layers(state, names, ["none"] * 5, _LAION_DROPOUT, where)
        renamed = _renamed(state, names)
        config = HeadConfig(
            layers=layers,
            embedding_dim=layers[0].in_features,
            trained_on=_VIT_L14 if layers[0].in_features == 768 else None,
            meaning="LAION improved aesthetic predictor score, about 1-10 (higher: more aesthetic)",
            source="laion-aesthetic",
        )
        return config, renamed
    if keys == _CURATOR_KEYS:
        names = [f"linear_{i}" for i in range(1, 5)]
        layers = _linear_layers(state, names, ["relu"] * 3 + ["none"], (0.0,) * 4, where)
        renamed = _renamed(state, names)
        dim = layers[0].in_features
        for part in ("mean", "variance"):
            tensor = state[f"norm.{part}"]
            if tuple(tensor.shape) != (dim,):
                raise HeadError(
                    f"{where}: norm.{part} has shape {list(tensor.shape)}, linear_1 reads {dim}"
                )
            renamed[f"standardize.{part}"] = tensor
        config = HeadConfig(
            layers=layers,
            embedding_dim=dim,
            standardize=True,
            output="sigmoid",
            trained_on=_VIT_L14 if dim == 768 else None,
            meaning="probability that the image is NSFW (LAION CLIP-based NSFW detector, NeMo "
            "Curator's PyTorch port)",
            source="curator-nsfw",
        )
        return config, renamed
    found = sorted(keys)
    shown = ", ".join(found[:12]) + (f" and {len(found) - 12} more" if len(found) > 12 else "")
    raise HeadError(
        f"{where}: unknown head layout; found {len(found)} tensors: {shown}. clipbeam reads its "
        f"own format (a folder with {HEAD_CONFIG} and {HEAD_WEIGHTS}), LAION's aesthetic "
        "predictor (layers.{0,2,4,6,7}.{weight,bias}) and NeMo Curator's NSFW detector "
        "(norm.mean, norm.variance, linear_1..linear_4)"
    )


def _linear_layers(
    state: Mapping[str, torch.Tensor],
    names: list[str],
    activations: list[str],
    dropouts: tuple[float, ...],
    where: str,
) -> tuple[LayerConfig, ...]:
    layers = []
    for name, activation, dropout in zip(names, activations, dropouts, strict=True):
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        if weight.dim() != 2 or tuple(bias.shape) != (weight.shape[0],):
            raise HeadError(
                f"{where}: {name}.weight has shape {list(weight.shape)} and {name}.bias "
                f"{list(bias.shape)}; a linear layer has [out, in] and [out]"
            )
        out_features, in_features = weight.shape
        layers.append(LayerConfig(int(in_features), int(out_features), activation, dropout))
    return tuple(layers)


def _renamed(state: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    return {
        f"layers.{i}.{part}": state[f"{name}.{part}"]
        for i, name in enumerate(names)
        for part in ("weight", "bias")
    }


# -- reading ------------------------------------------------------------------------------------


def load_head(source: str | Path) -> Head:
    """Loads a head from a local path or an fsspec URL (``gs://...``), in any layout above.

    Args:
        source: a format-1 folder, or a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file in a
            published layout.

    Raises:
        HeadError: nothing there, a file that is not a head, code in a file, or a layout this
            module does not know. The message names the file and what it held.
    """
    import fsspec

    text = str(source)
    try:
        fs, path = fsspec.core.url_to_fs(text)
        is_dir = fs.isdir(path)
        exists = is_dir or fs.isfile(path)
    except (ImportError, ValueError, OSError) as exc:
        raise HeadError(f"cannot open head {text}: {type(exc).__name__}: {exc}") from None
    if not exists:
        raise HeadError(
            f"head {text} does not exist: pass a folder with {HEAD_CONFIG} and {HEAD_WEIGHTS}, "
            "or a .pth / .safetensors file"
        )
    digest = hashlib.sha256()
    if is_dir:
        config_bytes = _read(fs, f"{path.rstrip('/')}/{HEAD_CONFIG}", text)
        weights = _read(fs, f"{path.rstrip('/')}/{HEAD_WEIGHTS}", text)
        digest.update(config_bytes)
        try:
            data = json.loads(config_bytes)
        except (UnicodeDecodeError, ValueError) as exc:
            raise HeadError(f"{text}: {HEAD_CONFIG} is not JSON ({exc})") from None
        config = HeadConfig.from_dict(data, text)
        tensors = _safetensors(weights, f"{text}/{HEAD_WEIGHTS}")
    else:
        weights = _read(fs, path, text)
        if text.endswith(".safetensors"):
            state = _safetensors(weights, text)
        else:
            state = _torch_state(weights, text)
        config, tensors = detect_layout(state, text)
    digest.update(weights)
    head = Head(config)
    _load_tensors(head, tensors, text)
    head.source = text
    head.sha256 = "sha256:" + digest.hexdigest()
    return head.eval()


def _read(fs: Any, path: str, where: str) -> bytes:
    try:
        size = fs.size(path)
        if size is not None and size > MAX_HEAD_BYTES:
            raise HeadError(
                f"{where}: {path.rsplit('/', 1)[-1]} is {size} bytes; a head file is at most "
                f"{MAX_HEAD_BYTES} bytes"
            )
        with fs.open(path, "rb") as f:
            return f.read(MAX_HEAD_BYTES + 1)
    except FileNotFoundError:
        raise HeadError(
            f"{where}: {path.rsplit('/', 1)[-1]} is missing; a head folder holds {HEAD_CONFIG} "
            f"and {HEAD_WEIGHTS}"
        ) from None
    except OSError as exc:
        raise HeadError(f"cannot read head {where}: {type(exc).__name__}: {exc}") from None


def _safetensors(data: bytes, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, OverflowError) as exc:
        raise HeadError(
            f"{where} is not a readable safetensors file ({len(data)} bytes): {_first_line(exc)}"
        ) from None
    return tensors


def _torch_state(data: bytes, where: str) -> dict[str, torch.Tensor]:
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise HeadError(
                f"refused {where}: it is a TorchScript archive, which carries code; clipbeam "
                "never loads TorchScript. Save the head's state_dict() instead."
            )
    buffer.seek(0)
    try:
        # weights_only=True: only tensors and plain containers are unpickled, never code.
        state = torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HeadError(
            f"refused {where}: torch.load(weights_only=True) found objects other than tensors "
            f"in it ({_first_line(exc)[:200]}). Pickled code is never executed; save the "
            "head's state_dict() or convert it to safetensors with a trusted tool."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise HeadError(
            f"{where} ({len(data)} bytes) is neither a PyTorch state dict nor a safetensors "
            f"file: {_first_line(exc)[:200]}"
        ) from None
    if isinstance(state, dict) and set(state) == {"state_dict"}:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise HeadError(
            f"{where} holds a {type(state).__name__}, not a dict of tensor name -> tensor; "
            "save the head's state_dict()"
        )
    return state


def _load_tensors(head: Head, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copies ``tensors`` into ``head``, reporting every missing, unexpected and mis-shaped one."""
    expected = head.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shaped = sorted(
        f"{k} {list(tensors[k].shape)} (expected {list(expected[k].shape)})"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape
    )
    typed = sorted(k for k, v in tensors.items() if k in expected and not v.is_floating_point())
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if shaped:
        problems.append(f"mis-shaped {', '.join(shaped)}")
    if typed:
        problems.append(f"not floating point: {', '.join(typed)}")
    if problems:
        raise HeadError(f"{where}: the weights do not fit head.json: {'; '.join(problems)}")
    with torch.no_grad():
        for key, value in expected.items():
            value.copy_(tensors[key].float())
    bad = [k for k, v in expected.items() if not torch.isfinite(v).all()]
    if bad:
        raise HeadError(f"{where}: tensors hold NaN or infinite values: {', '.join(sorted(bad))}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- writing ------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def save_head(head: Head, directory: str | Path) -> Path:
    """Writes ``head`` as format 1: ``directory/head.json`` and ``directory/head.safetensors``.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(tensors, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
    text = json.dumps(head.config.to_dict(), indent=2, sort_keys=True) + "\n"
    (folder / HEAD_CONFIG).write_text(text, encoding="utf-8")
    return folder


def is_head_name(name: str) -> bool:
    """Whether ``name`` can name a head's output column (a letter or _, then letters, digits, _)."""
    return bool(_NAME.match(name))
