"""The models' output dataclasses, and how a call asks for them (``return_dict``, flags).

As in transformers, an output gives its fields by attribute, ``["key"]`` and index, and
``return_dict=False`` returns its ``to_tuple()`` (:func:`as_requested`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = [
    "BaseModelOutputWithPooling",
    "CLIPOutput",
    "CLIPTextModelOutput",
    "CLIPVisionModelOutput",
    "ChineseCLIPOutput",
    "ModelOutput",
    "as_requested",
    "wants_output_object",
]


class ModelOutput:
    """Base of the output dataclasses: attribute, ``["key"]`` and index access, ``to_tuple()``.

    As in transformers, fields that are ``None`` are left out of ``keys()`` and ``to_tuple()``,
    so ``output[0]`` is the first field that has a value.
    """

    def keys(self) -> list[str]:
        """Names of the fields that are not ``None``."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        """Values of the fields that are not ``None``."""
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of the fields that are not ``None``."""
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-``None`` values in field order; nested outputs become tuples too."""
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no value for {key!r}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """What a tower returns.

    Attributes:
        last_hidden_state: ``[batch, seq, hidden]`` states after the last layer (and, for the
            CLIP text tower, ``final_layer_norm``).
        pooler_output: ``[batch, hidden]`` pooled state (EOS token for CLIP text, class token
            after ``post_layernorm`` for images, BERT pooler for Chinese-CLIP text; ``None`` for
            the text tower inside a full Chinese-CLIP model, which has no pooler).
        hidden_states: with ``output_hidden_states``: the encoder input, then each layer's
            output (``num_hidden_layers + 1`` tensors).
        attentions: with ``output_attentions``: each layer's ``[batch, heads, seq, seq]``
            attention probabilities.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPTextModelOutput(ModelOutput):
    """Output of :class:`~clipbeam.model.modeling_clip.CLIPTextModelWithProjection`;
    ``text_embeds`` is unnormalized."""

    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPVisionModelOutput(ModelOutput):
    """Output of :class:`~clipbeam.model.modeling_clip.CLIPVisionModelWithProjection`;
    ``image_embeds`` is unnormalized."""

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class CLIPOutput(ModelOutput):
    """Output of :class:`~clipbeam.model.modeling_clip.CLIPModel`.

    Attributes:
        loss: symmetric contrastive loss, with ``return_loss=True``.
        logits_per_image: ``[images, texts]`` scaled cosine similarities.
        logits_per_text: ``[texts, images]``, the transpose.
        text_embeds: ``[texts, projection_dim]`` L2-normalized text embeddings.
        image_embeds: ``[images, projection_dim]`` L2-normalized image embeddings.
        text_model_output: the text tower's output.
        vision_model_output: the image tower's output.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class ChineseCLIPOutput(ModelOutput):
    """Output of :class:`~clipbeam.model.modeling_chinese_clip.ChineseCLIPModel` (fields as
    :class:`CLIPOutput`)."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


# -- what a call asks for -----------------------------------------------------------------------


def _flag(value: bool | None, default: bool | None) -> bool | None:
    return default if value is None else value


def as_requested(output: ModelOutput, return_dict: bool | None, config: Any) -> Any:
    """``output``, or ``output.to_tuple()`` when ``return_dict`` is False (as in transformers).

    Unset, ``return_dict`` falls to the config's ``return_dict`` key (kept in
    ``config.extra`` when a ``config.json`` has one), else True.
    """
    if return_dict is None:
        return_dict = getattr(config, "return_dict", True)
    return output if return_dict else output.to_tuple()


def wants_output_object(
    output_attentions: bool | None,
    output_hidden_states: bool | None,
    return_dict: bool | None,
    config: Any = None,
) -> bool:
    """Whether ``get_*_features`` should return transformers 5's output object (or its tuple)
    rather than the features tensor: yes when any of these transformers 5 arguments asks for
    more than the tensor, or when ``config.return_dict`` is set to False (transformers 5 then
    returns the output's tuple)."""
    if return_dict is None and config is not None and not getattr(config, "return_dict", True):
        return True
    return bool(output_attentions or output_hidden_states) or return_dict is not None
