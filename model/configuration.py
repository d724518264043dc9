"""Configurations of CLIP and Chinese-CLIP, read from and written to Hugging Face ``config.json``.

Each config is a dataclass whose field names are the ``config.json`` keys, with the defaults that
the Hugging Face documentation gives. Keys a class does not know (generation settings written by
old transformers versions, ``id2label``, ``pooler_type``...) are kept in :attr:`BaseConfig.extra`
and written back by :meth:`BaseConfig.to_dict`, so a config survives a round trip unchanged.

Every layout found on the Hub is read:

* the current one: ``text_config`` / ``vision_config`` sub-dicts;
* the one written by transformers < 4.25: ``text_config_dict`` / ``vision_config_dict``, alone or
  next to a ``text_config`` (merged exactly as transformers merges them);
* ``torch_dtype`` (old) or ``dtype`` (new); missing keys take the defaults.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .config_size import check_fits, text_bytes, vision_bytes
from .configuration_utils import (
    _TRANSFORMERS_DEFAULTS,
    _allowed_types,
    _is_instance,
    config_dataclass,
    read_config_dict,
)
from .hub import CheckpointError, CheckpointSource

__all__ = [
    "BaseConfig",
    "CLIPConfig",
    "CLIPTextConfig",
    "CLIPVisionConfig",
    "ChineseCLIPConfig",
    "ChineseCLIPTextConfig",
    "ChineseCLIPVisionConfig",
    "config_class_for",
    "read_config_dict",
]

ConfigT = TypeVar("ConfigT", bound="BaseConfig")

# Written by whatever saved the file; they describe that writer, not the model, so they are not
# kept (a config saved by clipbeam must not claim to come from some transformers version).
_PROVENANCE_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "model_type")
_DTYPES = ("float32", "float16", "bfloat16", "float64")


@config_dataclass
class BaseConfig:
    """Fields and (de)serialisation shared by all configs.

    Build one from keywords or from a ``config.json`` dict with :meth:`from_dict`; keywords without
    a field are kept in :attr:`extra`. :meth:`to_dict` gives back a dict that :meth:`from_dict`
    reads unchanged.
    """

    model_type: ClassVar[str] = ""
    # Key of this config inside its two-tower parent ("text_config"), empty for a full config.
    base_config_key: ClassVar[str] = ""
    # The model_type of the full two-tower config of the same family.
    family: ClassVar[str] = ""

    architectures: list[str] | None = None
    # Storage dtype of the weights ("float32", "float16"...); read from torch_dtype in old files.
    dtype: str | None = None
    # Defaults for the models' output_hidden_states / output_attentions arguments.
    output_hidden_states: bool = False
    output_attentions: bool = False
    # config.json keys this class has no field for, kept so that saving writes them back.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._check_types()
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(
                f"{type(self).__name__}.dtype must be one of {_DTYPES} or None (got {self.dtype!r})"
            )

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose kept unknown keys as attributes, like
        # transformers does (config.pooler_type on a Chinese-CLIP text config, say).
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        if name in _TRANSFORMERS_DEFAULTS:
            return _TRANSFORMERS_DEFAULTS[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __iter__(self) -> Iterator[str]:
        """The config's attribute names (``for key in config``, ``"key" in config``), as
        transformers iterates a config: its fields, the kept unknown keys, and the attributes
        every transformers config has (``return_dict``, ``id2label``...)."""
        names = [f.name for f in fields(self) if f.name != "extra"]
        yield from dict.fromkeys([*names, *self.extra, *_TRANSFORMERS_DEFAULTS])

    def __contains__(self, name: object) -> bool:
        return name in set(self)

    @property
    def num_labels(self) -> int:
        """``len(id2label)``; setting it makes ``LABEL_<i>`` labels, as transformers does."""
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TypeError(f"num_labels must be an int >= 0 (got {type(value).__name__})")
        self.extra["id2label"] = {i: f"LABEL_{i}" for i in range(value)}
        self.extra["label2id"] = {f"LABEL_{i}": i for i in range(value)}

    def __setattr__(self, name: str, value: Any) -> None:
        # Setting an attribute there is no field for keeps it in `extra`, so that it is saved
        # (config.return_dict = False, as transformers writes it). Private names stay plain.
        if (
            name.startswith("_")
            or isinstance(getattr(type(self), name, None), property)
            or name in self.__dataclass_fields__
            or "extra" not in self.__dict__
        ):
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value

    @property
    def use_return_dict(self) -> bool:
        """``return_dict`` (transformers' deprecated name for it)."""
        return bool(self.return_dict)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls: type[ConfigT], config_dict: Mapping[str, Any], **overrides: Any) -> ConfigT:
        """Builds a config from a ``config.json`` dict.

        Args:
            config_dict: the parsed JSON. Unknown keys are kept in :attr:`extra`; missing keys
                take the defaults.
            **overrides: values that replace those of ``config_dict``.

        Returns:
            The config.

        Raises:
            ValueError: a value has the wrong type or breaks an invariant (the message names it),
                or ``model_type`` belongs to another model.
        """
        data = {**config_dict, **overrides}
        model_type = data.get("model_type")
        if model_type not in (None, cls.model_type):
            other = _CONFIG_CLASSES.get(model_type)
            use = other.__name__ if other else "the config class of that model"
            raise ValueError(
                f"cannot build {cls.__name__} (model_type {cls.model_type!r}) from a config of "
                f"model_type {model_type!r}; use {use} instead"
            )
        for key in _PROVENANCE_KEYS:
            data.pop(key, None)
        # transformers renamed torch_dtype to dtype; when a file has both, dtype wins as there.
        torch_dtype = data.pop("torch_dtype", None)
        if data.get("dtype") is None and torch_dtype is not None:
            data["dtype"] = torch_dtype
        if data.get("dtype") is not None:  # also accepts a torch.dtype given as an override
            data["dtype"] = str(data["dtype"]).removeprefix("torch.")
        data = cls._prepare(data)
        known = {f.name for f in fields(cls) if f.init and f.name != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook for layout conversions before the fields are assigned."""
        return data

    @classmethod
    def from_pretrained(
        cls: type[ConfigT],
        source: str | os.PathLike | CheckpointSource,
        *,
        revision: str | None = None,
        **overrides: Any,
    ) -> ConfigT:
        """Reads ``config.json`` of a checkpoint.

        A tower config (``CLIPTextConfig``...) read from a full two-tower checkpoint is that
        checkpoint's sub-config, as in transformers, except that its ``projection_dim`` is the
        full model's (the size of the projections stored in that checkpoint).

        Args:
            source: a checkpoint folder, fsspec URL or hub id (see
                :func:`clipbeam.model.hub.resolve_source`), a resolved
                :class:`~clipbeam.model.hub.CheckpointSource`,
                or a ``.json`` file.
            revision: hub revision (branch, tag or commit).
            **overrides: values that replace those of the file.

        Returns:
            The config.

        Raises:
            CheckpointNotFoundError: there is no ``config.json``.
            CheckpointError: the file is not valid JSON, is for another model family, or holds
                an invalid value.
        """
        config_dict, where = read_config_dict(source, revision=revision)
        model_type = config_dict.get("model_type")
        try:
            if cls.base_config_key and model_type == cls.family:
                parent = config_class_for(cls.family).from_dict(config_dict)
                sub = getattr(parent, cls.base_config_key).to_dict()
                if "projection_dim" in sub:
                    # The full model's projection_dim sized the projections stored with it; the
                    # tower's own field is often a stale default (transformers ignores it there).
                    sub["projection_dim"] = parent.projection_dim
                return cls.from_dict(sub, **overrides)
            return cls.from_dict(config_dict, **overrides)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc}") from exc

    # -- serialisation --------------------------------------------------------------------------

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> Any:
        """The text tower's config: ``text_config`` of a two-tower config, else this config (as
        transformers' ``get_text_config``; ``decoder`` / ``encoder`` are accepted, and change
        nothing for these encoder-only models)."""
        text = self.__dict__.get("text_config")
        return text if isinstance(text, BaseConfig) else self

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: every field, the kept unknown keys and ``model_type``."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, BaseConfig) else value
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        """:meth:`to_dict` as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Writes :meth:`to_json_string` to ``json_file_path``.

        ``use_diff`` is accepted for transformers' signature: the whole config is always written.
        """
        del use_diff
        Path(json_file_path).write_text(self.to_json_string(), encoding="utf-8")

    @classmethod
    def from_json_file(cls: type[ConfigT], json_file: str | os.PathLike) -> ConfigT:
        """Reads a config from a JSON file (a ``config.json`` of this class's model)."""
        return cls.from_pretrained(Path(json_file))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes ``config.json`` into ``save_directory`` (created if needed).

        Returns:
            The path of the written file.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        path.write_text(self.to_json_string(), encoding="utf-8")
        return path

    # -- validation -----------------------------------------------------------------------------

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = _allowed_types(hints[f.name])
            if not _is_instance(value, allowed):
                names = " or ".join(sorted({t.__name__ for t in allowed}))
                raise TypeError(
                    f"{type(self).__name__}.{f.name} must be {names} (got {value!r}); "
                    "fix that key in config.json"
                )

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be > 0 (got {value})")

    def _check_heads(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{type(self).__name__}: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )


# -- the image tower (identical in both families) ---------------------------------------------


# The fields that size a tower's memory (model.config_size).
_ENCODER_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_VISION_SIZES = (*_ENCODER_SIZES, "num_channels", "image_size", "patch_size", "projection_dim")
_TEXT_SIZES = (*_ENCODER_SIZES, "vocab_size", "max_position_embeddings")


@config_dataclass
class _VisionConfig(BaseConfig):
    hidden_size: int = 768
    intermediate_size: int = 3072
    # Output size of visual_projection in CLIPVisionModelWithProjection (a full model uses the
    # top-level projection_dim instead).
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "num_channels",
            "image_size",
            "patch_size",
            "layer_norm_eps",
        )
        self._check_heads()
        if self.patch_size > self.image_size:
            raise ValueError(
                f"{type(self).__name__}: patch_size ({self.patch_size}) must not exceed "
                f"image_size ({self.image_size})"
            )
        check_fits(self, vision_bytes, _VISION_SIZES)

    @property
    def num_positions(self) -> int:
        """Patches per image plus the class token: the rows of the position embedding."""
        return (self.image_size // self.patch_size) ** 2 + 1


# -- CLIP ---------------------------------------------------------------------------------------


@config_dataclass
class CLIPTextConfig(BaseConfig):
    """The causal text transformer of CLIP (defaults: openai/clip-vit-base-patch32)."""

    model_type: ClassVar[str] = "clip_text_model"
    base_config_key: ClassVar[str] = "text_config"
    family: ClassVar[str] = "clip"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    # Output size of text_projection in CLIPTextModelWithProjection.
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    # Pooling reads the hidden state at this token. The value 2 marks configs written before
    # transformers#24773, whose pooling takes the position of the largest token id instead.
    eos_token_id: int = 49407

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "projection_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "layer_norm_eps",
        )
        self._check_heads()
        check_fits(self, text_bytes, (*_TEXT_SIZES, "projection_dim"))


@config_dataclass
class CLIPVisionConfig(_VisionConfig):
    """The ViT image tower of CLIP (defaults: openai/clip-vit-base-patch32)."""

    model_type: ClassVar[str] = "clip_vision_model"
    base_config_key: ClassVar[str] = "vision_config"
    family: ClassVar[str] = "clip"


@config_dataclass
class _DualConfig(BaseConfig):
    """A full two-tower config: its sub-configs plus the joint embedding settings."""

    text_config_class: ClassVar[type[BaseConfig]]
    vision_config_class: ClassVar[type[BaseConfig]]

    text_config: Any = None
    vision_config: Any = None
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        self.text_config = _as_config(self.text_config, self.text_config_class, "text_config")
        self.vision_config = _as_config(
            self.vision_config, self.vision_config_class, "vision_config"
        )
        super().__post_init__()
        self._check_positive("projection_dim")

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        for key, sub_cls in (
            ("text_config", cls.text_config_class),
            ("vision_config", cls.vision_config_class),
        ):
            legacy = data.pop(f"{key}_dict", None)
            if legacy is None:
                continue
            # Files written by transformers < 4.25 carry `text_config_dict` (sometimes next to a
            # `text_config`). transformers updates `text_config` with *every* field of a config
            # built from the legacy dict, defaults included; do the same so both read the file
            # identically.
            merged = dict(data.get(key) or {})
            merged.update(sub_cls.from_dict(legacy).to_dict())
            data[key] = merged
        return data

    @classmethod
    def from_text_vision_configs(
        cls: type[ConfigT], text_config: BaseConfig, vision_config: BaseConfig, **kwargs: Any
    ) -> ConfigT:
        """Builds a full config from a text and a vision config.

        Args:
            text_config: the text tower's config.
            vision_config: the image tower's config.
            **kwargs: other fields (``projection_dim``, ``logit_scale_init_value``...).
        """
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)


def _as_config(value: Any, config_cls: type[BaseConfig], name: str) -> BaseConfig:
    if value is None:
        return config_cls()
    if isinstance(value, config_cls):
        return value
    if isinstance(value, Mapping):
        return config_cls.from_dict(value)
    raise TypeError(
        f"{name} must be a {config_cls.__name__}, a dict or None (got {type(value).__name__})"
    )


@config_dataclass
class CLIPConfig(_DualConfig):
    """A full CLIP model: text and vision sub-configs, projection size and logit scale."""

    model_type: ClassVar[str] = "clip"
    family: ClassVar[str] = "clip"
    text_config_class: ClassVar[type[BaseConfig]] = CLIPTextConfig
    vision_config_class: ClassVar[type[BaseConfig]] = CLIPVisionConfig

    text_config: CLIPTextConfig | None = None
    vision_config: CLIPVisionConfig | None = None


# -- Chinese-CLIP -------------------------------------------------------------------------------


@config_dataclass
class ChineseCLIPTextConfig(BaseConfig):
    """The BERT (RoBERTa-wwm-ext) text tower of Chinese-CLIP (HF documented defaults)."""

    model_type: ClassVar[str] = "chinese_clip_text_model"
    base_config_key: ClassVar[str] = "text_config"
    family: ClassVar[str] = "chinese_clip"

    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 0
    eos_token_id: int | None = None
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "layer_norm_eps",
            "type_vocab_size",
        )
        self._check_heads()
        check_fits(self, text_bytes, (*_TEXT_SIZES, "type_vocab_size"))
        # BERT configs of old transformers name the position scheme; only absolute exists here.
        scheme = self.extra.get("position_embedding_type", "absolute")
        if scheme != "absolute":
            raise ValueError(
                f"ChineseCLIPTextConfig.position_embedding_type {scheme!r} is not supported; "
                "Chinese-CLIP checkpoints use 'absolute' position embeddings"
            )


@config_dataclass
class ChineseCLIPVisionConfig(_VisionConfig):
    """The ViT image tower of Chinese-CLIP (HF documented defaults: patch 32, quick_gelu)."""

    model_type: ClassVar[str] = "chinese_clip_vision_model"
    base_config_key: ClassVar[str] = "vision_config"
    family: ClassVar[str] = "chinese_clip"


@config_dataclass
class ChineseCLIPConfig(_DualConfig):
    """A full Chinese-CLIP model: text and vision sub-configs, projection size, logit scale."""

    model_type: ClassVar[str] = "chinese_clip"
    family: ClassVar[str] = "chinese_clip"
    text_config_class: ClassVar[type[BaseConfig]] = ChineseCLIPTextConfig
    vision_config_class: ClassVar[type[BaseConfig]] = ChineseCLIPVisionConfig

    text_config: ChineseCLIPTextConfig | None = None
    vision_config: ChineseCLIPVisionConfig | None = None
    initializer_range: float = 0.02


_CONFIG_CLASSES: dict[str, type[BaseConfig]] = {
    c.model_type: c
    for c in (
        CLIPConfig,
        CLIPTextConfig,
        CLIPVisionConfig,
        ChineseCLIPConfig,
        ChineseCLIPTextConfig,
        ChineseCLIPVisionConfig,
    )
}


def config_class_for(model_type: str) -> type[BaseConfig]:
    """The config class of a ``config.json`` ``model_type``.

    Raises:
        CheckpointError: the model type is not one of CLIP or Chinese-CLIP.
    """
    try:
        return _CONFIG_CLASSES[model_type]
    except KeyError:
        raise CheckpointError(
            f"unsupported model_type {model_type!r}; clipbeam runs "
            f"{', '.join(sorted(_CONFIG_CLASSES))} checkpoints"
        ) from None
