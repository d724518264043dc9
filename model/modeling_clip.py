"""CLIP (Radford et al. 2021) in plain PyTorch, loading Hugging Face checkpoints one to one.

Module attribute names are the checkpoint keys (``text_model.embeddings.token_embedding``,
``vision_model.pre_layrnorm``, ``encoder.layers.N.self_attn.q_proj``, ``visual_projection``...).
The transformer layers are :mod:`clipbeam.model.layers`, their attention
:mod:`clipbeam.model.attention`, the outputs :mod:`clipbeam.model.modeling_outputs`.

For speed (``benchmarks/bench_model.py``): ``get_text_features`` / ``get_image_features`` run
each tower's last layer at the pooled position only (``pooled_only``); and there a padded text
batch runs its products on its real tokens alone
(:class:`~clipbeam.model.attention.TokenPacking`).

The image tower and the two-tower scoring here are shared with Chinese-CLIP
(:mod:`clipbeam.model.modeling_chinese_clip`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .attention import TokenPacking, mask_to_bias, take_rows
from .configuration import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from .kernels import linear
from .layers import CLIPEncoder
from .loading import PreTrainedModel
from .modeling_outputs import (
    BaseModelOutputWithPooling,
    CLIPOutput,
    CLIPTextModelOutput,
    CLIPVisionModelOutput,
    _flag,
    as_requested,
    wants_output_object,
)
from .pooling import class_token_pool, eos_positions

__all__ = [
    "CLIPModel",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "contrastive_loss",
]


# -- similarity and loss ------------------------------------------------------------------------


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy; the i-th text matches the i-th image."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    text_loss = F.cross_entropy(logits_per_text, targets)
    image_loss = F.cross_entropy(logits_per_text.t(), targets)
    return (text_loss + image_loss) / 2


# -- text tower ---------------------------------------------------------------------------------


class CLIPTextEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        std = 0.02 * config.initializer_factor
        nn.init.normal_(self.token_embedding.weight, std=std)
        nn.init.normal_(self.position_embedding.weight, std=std)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        seq = input_ids.shape[-1]
        if position_ids is None:
            positions = self.position_embedding.weight[:seq]
        else:
            positions = self.position_embedding(position_ids)
        return self.token_embedding(input_ids) + positions


class CLIPTextModel(PreTrainedModel):
    """CLIP's causal text transformer, pooled at the end-of-text token (no projection)."""

    config_class = CLIPTextConfig
    checkpoint_prefix = "text_model."
    input_embeddings_name = "embeddings.token_embedding"
    ignored_checkpoint_keys = (
        r"vision_model\..*",
        r"(visual|text)_projection\.weight",
        "logit_scale",
    )

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        pooled_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes token ids.

        Args:
            input_ids: ``[batch, seq]`` token ids, ``seq <= max_position_embeddings``.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[batch, seq]`` positions; default ``0..seq-1``.
            output_attentions: return every layer's attention probabilities
                (default: ``config.output_attentions``).
            output_hidden_states: return every layer's hidden states
                (default: ``config.output_hidden_states``).
            return_dict: False returns ``to_tuple()`` of the output (see :func:`as_requested`).
            pooled_only: compute only what ``pooler_output`` needs: the last layer runs at the
                EOS position alone, and ``last_hidden_state`` is that position's ``[batch, 1,
                hidden]`` state.

        Returns:
            ``last_hidden_state`` after ``final_layer_norm`` and ``pooler_output`` at the EOS
            token (see :func:`eos_pool`).
        """
        _check_input_ids(input_ids, self.config.max_position_embeddings)
        hidden_states = self.embeddings(input_ids, position_ids)
        seq = input_ids.shape[1]
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=hidden_states.device).tril()
        allowed = allowed[None, None]  # causal: [1, 1, seq, seq]
        if attention_mask is not None:
            padding = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
            allowed = allowed & padding[:, None, None, :]  # and no padded key: [B, 1, S, S]
        eos = eos_positions(input_ids, self.config.eos_token_id, hidden_states.device)
        bias = mask_to_bias(allowed, hidden_states.dtype)
        rows, packing = eos if pooled_only else None, None
        if pooled_only and attention_mask is not None:
            packing = TokenPacking.of(padding, eos)
        if packing is not None:
            hidden_states, rows = packing.pack(hidden_states), packing.packed_rows
        out = self.encoder(
            hidden_states,
            bias,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            rows,
            packing,
        )
        out.last_hidden_state = self.final_layer_norm(out.last_hidden_state)
        pooled = out.last_hidden_state if pooled_only else take_rows(out.last_hidden_state, eos)
        out.pooler_output = pooled[:, 0]
        return as_requested(out, return_dict, self.config)


def _check_input_ids(input_ids: torch.Tensor, max_positions: int) -> None:
    if input_ids.ndim != 2:
        raise ValueError(
            f"input_ids must be [batch, seq] (got shape {list(input_ids.shape)}); "
            "add a batch dimension with input_ids[None]"
        )
    if input_ids.shape[1] > max_positions:
        raise ValueError(
            f"input_ids has {input_ids.shape[1]} tokens but the model has "
            f"{max_positions} positions; tokenize with truncation=True, max_length={max_positions}"
        )


# -- image tower --------------------------------------------------------------------------------


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (a strided convolution), class token and absolute positions."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )
        self.position_embedding = nn.Embedding(config.num_positions, config.hidden_size)
        factor = config.initializer_factor
        nn.init.normal_(self.class_embedding, std=config.hidden_size**-0.5 * factor)
        nn.init.normal_(self.patch_embedding.weight, std=config.initializer_range * factor)
        nn.init.normal_(self.position_embedding.weight, std=config.initializer_range * factor)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Embeds ``[B, C, H, W]`` pixels as ``[B, 1 + patches, D]``.

        ``H`` and ``W`` must be ``image_size``, unless ``interpolate_pos_encoding``: then any size
        of at least one patch goes, with the position table resized to its patch grid
        (:meth:`resized_positions`); pixels beyond a whole number of patches are ignored.
        """
        size, patch = self.image_size, self.patch_size
        if pixel_values.ndim != 4 or (
            not interpolate_pos_encoding and pixel_values.shape[-2:] != (size, size)
        ):
            raise ValueError(
                f"pixel_values must be [batch, channels, {size}, {size}] for this model (got "
                f"{list(pixel_values.shape)}); preprocess images with the checkpoint's image "
                "processor, or pass interpolate_pos_encoding=True to run at another resolution"
            )
        height, width = pixel_values.shape[-2:]
        if height < patch or width < patch:
            raise ValueError(
                f"pixel_values of {height}x{width} px hold no whole {patch}x{patch} patch; "
                "images must be at least one patch wide and high"
            )
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(dtype=weight.dtype))  # [B, D, h, w]
        patches = patches.flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        positions = self.position_embedding.weight
        if interpolate_pos_encoding:
            positions = self.resized_positions(height // patch, width // patch)
        return torch.cat([cls, patches], dim=1) + positions

    def resized_positions(self, rows: int, cols: int) -> torch.Tensor:
        """The position table for a ``rows x cols`` patch grid.

        The patch positions, seen as a ``D``-channel image of the training grid, are resized
        bicubically (``align_corners=False``, the numbers of transformers'
        ``interpolate_pos_encoding``); the class position is kept. At the training grid the
        table is returned as it is. ``[1 + g*g, D] -> [1 + rows*cols, D]``.
        """
        table = self.position_embedding.weight
        grid = self.image_size // self.patch_size
        if (rows, cols) == (grid, grid):
            return table
        dim = table.shape[-1]
        image = table[1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)  # -> [1, D, g, g]
        image = F.interpolate(image, size=(rows, cols), mode="bicubic", align_corners=False)
        resized = image.permute(0, 2, 3, 1).reshape(rows * cols, dim)  # [1, D, r, c] -> [r*c, D]
        return torch.cat([table[:1], resized])


class CLIPVisionModel(PreTrainedModel):
    """The ViT image tower, pooled at the class token after ``post_layernorm``."""

    main_input_name: ClassVar[str] = "pixel_values"

    config_class = CLIPVisionConfig
    checkpoint_prefix = "vision_model."
    input_embeddings_name = "embeddings.patch_embedding"
    ignored_checkpoint_keys = (
        r"text_model\..*",
        r"(visual|text)_projection\.weight",
        "logit_scale",
    )

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        *,
        pooled_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes images.

        Args:
            pixel_values: ``[batch, channels, image_size, image_size]`` normalized pixels.
            output_attentions: return every layer's attention probabilities.
            output_hidden_states: return every layer's hidden states.
            interpolate_pos_encoding: accept other image sizes, resizing the position
                embeddings to the patch grid (:meth:`CLIPVisionEmbeddings.resized_positions`).
            return_dict: False returns ``to_tuple()`` of the output (see :func:`as_requested`).
            pooled_only: compute only what ``pooler_output`` needs: the last layer runs at the
                class token alone, and ``last_hidden_state`` is its ``[batch, 1, hidden]`` state.

        Returns:
            ``last_hidden_state`` and ``pooler_output`` (class token after ``post_layernorm``).
        """
        embeddings = self.embeddings(pixel_values, interpolate_pos_encoding)
        hidden_states = self.pre_layrnorm(embeddings)
        out = self.encoder(
            hidden_states,
            None,
            _flag(output_attentions, self.config.output_attentions),
            _flag(output_hidden_states, self.config.output_hidden_states),
            0 if pooled_only else None,
        )
        out.pooler_output = self.post_layernorm(class_token_pool(out.last_hidden_state))
        return as_requested(out, return_dict, self.config)


# -- towers with projection ---------------------------------------------------------------------


class CLIPTextModelWithProjection(PreTrainedModel):
    """The text tower plus ``text_projection``: unnormalized text embeddings."""

    base_model_prefix: ClassVar[str] = "text_model"

    config_class = CLIPTextConfig
    embeddings_owner = "text_model"
    ignored_checkpoint_keys = (r"vision_model\..*", r"visual_projection\.weight", "logit_scale")

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextModel(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        std = config.hidden_size**-0.5 * config.initializer_factor
        nn.init.normal_(self.text_projection.weight, std=std)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CLIPTextModelOutput | tuple:
        """Encodes token ids (arguments as :meth:`CLIPTextModel.forward`) and projects them."""
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            output_attentions,
            output_hidden_states,
            return_dict=True,
        )
        embeds = CLIPTextModelOutput(
            text_embeds=linear(out.pooler_output, self.text_projection.weight),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return as_requested(embeds, return_dict, self.config)


class CLIPVisionModelWithProjection(PreTrainedModel):
    """The image tower plus ``visual_projection``: unnormalized image embeddings."""

    main_input_name: ClassVar[str] = "pixel_values"
    base_model_prefix: ClassVar[str] = "vision_model"

    config_class = CLIPVisionConfig
    embeddings_owner = "vision_model"
    ignored_checkpoint_keys = (r"text_model\..*", r"text_projection\.weight", "logit_scale")

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        std = config.hidden_size**-0.5 * config.initializer_factor
        nn.init.normal_(self.visual_projection.weight, std=std)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> CLIPVisionModelOutput | tuple:
        """Encodes images (arguments as :meth:`CLIPVisionModel.forward`) and projects them."""
        out = self.vision_model(
            pixel_values,
            output_attentions,
            output_hidden_states,
            interpolate_pos_encoding,
            return_dict=True,
        )
        embeds = CLIPVisionModelOutput(
            image_embeds=linear(out.pooler_output, self.visual_projection.weight),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return as_requested(embeds, return_dict, self.config)


# -- the full model -----------------------------------------------------------------------------


class CLIPModel(PreTrainedModel):
    """Text and image towers, their projections into one space, and the learned logit scale."""

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.text_model = CLIPTextModel(text)
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        factor = config.initializer_factor
        nn.init.normal_(self.visual_projection.weight, std=vision.hidden_size**-0.5 * factor)
        nn.init.normal_(self.text_projection.weight, std=text.hidden_size**-0.5 * factor)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor | BaseModelOutputWithPooling | tuple:
        """Projected, unnormalized text embeddings ``[batch, projection_dim]``.

        With none of the keyword arguments this returns the tensor (the transformers 4 API,
        computed with the fast pooled-only last layer). Any of them, set, asks for transformers
        5's result: the text tower's output with ``pooler_output`` replaced by the projected
        embeddings (a tuple with ``return_dict=False``).

        Args:
            input_ids: ``[batch, seq]`` token ids.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[batch, seq]`` positions; default ``0..seq-1``.
            output_attentions: include every layer's attention probabilities.
            output_hidden_states: include every layer's hidden states.
            return_dict: return the output object (True) or its tuple (False).
        """
        detailed = wants_output_object(
            output_attentions, output_hidden_states, return_dict, self.config
        )
        out = self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            output_attentions if detailed else False,
            output_hidden_states if detailed else False,
            return_dict=True,
            pooled_only=not detailed,
        )
        features = linear(out.pooler_output, self.text_projection.weight)
        if not detailed:
            return features
        out.pooler_output = features
        return as_requested(out, return_dict, self.config)

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        *,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor | BaseModelOutputWithPooling | tuple:
        """Projected, unnormalized image embeddings ``[batch, projection_dim]``.

        Returns the tensor, or transformers 5's output object as :meth:`get_text_features`
        explains.

        Args:
            pixel_values: ``[batch, channels, image_size, image_size]`` normalized pixels.
            interpolate_pos_encoding: accept other image sizes (see :class:`CLIPVisionModel`).
            output_attentions: include every layer's attention probabilities.
            output_hidden_states: include every layer's hidden states.
            return_dict: return the output object (True) or its tuple (False).
        """
        detailed = wants_output_object(
            output_attentions, output_hidden_states, return_dict, self.config
        )
        out = self.vision_model(
            pixel_values,
            output_attentions if detailed else False,
            output_hidden_states if detailed else False,
            interpolate_pos_encoding,
            return_dict=True,
            pooled_only=not detailed,
        )
        features = linear(out.pooler_output, self.visual_projection.weight)
        if not detailed:
            return features
        out.pooler_output = features
        return as_requested(out, return_dict, self.config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> CLIPOutput | tuple:
        """Scores every text against every image.

        Args:
            input_ids: ``[texts, seq]`` token ids.
            pixel_values: ``[images, channels, size, size]`` normalized pixels.
            attention_mask: ``[texts, seq]``, 1 for tokens and 0 for padding.
            position_ids: ``[texts, seq]`` positions.
            return_loss: also compute the contrastive loss (needs as many texts as images).
            output_attentions: return attention probabilities in the tower outputs.
            output_hidden_states: return hidden states in the tower outputs.
            interpolate_pos_encoding: accept other image sizes (see :class:`CLIPVisionModel`).
            return_dict: False returns ``to_tuple()`` of the output, tower outputs included.

        Returns:
            Normalized embeddings, ``logits_per_image`` / ``logits_per_text`` and the tower
            outputs (whose ``pooler_output`` is the tower's, before projection).
        """
        _require_both(input_ids, pixel_values)
        # Unset flags fall to this config's defaults if they are on, else to each tower's own.
        attentions = _flag(output_attentions, self.config.output_attentions or None)
        states = _flag(output_hidden_states, self.config.output_hidden_states or None)
        vision_out = self.vision_model(
            pixel_values, attentions, states, interpolate_pos_encoding, return_dict=True
        )
        text_out = self.text_model(
            input_ids, attention_mask, position_ids, attentions, states, return_dict=True
        )
        image_embeds = _normalize(linear(vision_out.pooler_output, self.visual_projection.weight))
        text_embeds = _normalize(linear(text_out.pooler_output, self.text_projection.weight))
        out = _dual_output(
            CLIPOutput,
            self.logit_scale,
            text_embeds,
            image_embeds,
            text_out,
            vision_out,
            return_loss,
        )
        return as_requested(out, return_dict, self.config)


def _require_both(input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None) -> None:
    missing = [
        n for n, v in (("input_ids", input_ids), ("pixel_values", pixel_values)) if v is None
    ]
    if missing:
        raise ValueError(
            f"the full model needs both input_ids and pixel_values (missing: {', '.join(missing)});"
            " use get_text_features() / get_image_features() for one modality"
        )


def _dual_output(
    output_cls: type[Any],
    logit_scale: torch.Tensor,
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_out: BaseModelOutputWithPooling,
    vision_out: BaseModelOutputWithPooling,
    return_loss: bool | None,
) -> Any:
    """Similarity logits (and loss) of normalized embeddings, packed into ``output_cls``."""
    logits_per_text = text_embeds @ image_embeds.t().to(text_embeds.device)
    logits_per_text = logits_per_text * logit_scale.exp().to(text_embeds.device)
    return output_cls(
        loss=contrastive_loss(logits_per_text) if return_loss else None,
        logits_per_image=logits_per_text.t(),
        logits_per_text=logits_per_text,
        text_embeds=text_embeds,
        image_embeds=image_embeds,
        text_model_output=text_out,
        vision_model_output=vision_out,
    )
