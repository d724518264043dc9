"""Chinese-CLIP (Yang et al. 2022) in plain PyTorch, loading Hugging Face checkpoints one to one.

The image tower is CLIP's (:class:`clipbeam.model.modeling_clip.CLIPVisionModel`). The text
tower is a BERT / RoBERTa-wwm-ext encoder: post-LayerNorm blocks, ``token_type_ids``, and the
checkpoint names of BERT (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``,
``attention.output.dense``, ``intermediate.dense``, ``output.LayerNorm``, ``pooler.dense``). Its
layers run the attention and layer loop shared with CLIP (:mod:`clipbeam.model.attention`,
:func:`clipbeam.model.layers.run_layers`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .attention import TokenPacking, mask_to_bias, self_attention, take_rows
from .configuration import ChineseCLIPConfig, ChineseCLIPTextConfig, ChineseCLIPVisionConfig
from .kernels import get_activation, linear
from .layers import run_layers
from .loading import PreTrainedModel
from .modeling_clip import (
    CLIPModel,
    CLIPVisionModel,
    _dual_output,
    _normalize,
    _require_both,
)
from .modeling_outputs import (
    BaseModelOutputWithPooling,
    ChineseCLIPOutput,
    _flag,
    as_requested,
    wants_output_object,
)
from .pooling import cls_pool

__all__ = [
    "ChineseCLIPModel",
    "ChineseCLIPTextModel",
    "ChineseCLIPVisionModel",
]

# The family's renaming table: BERT checkpoints converted from TensorFlow name the LayerNorm
# parameters gamma / beta.
_RENAMES = (
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
)


def _init_bert_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)


class ChineseCLIPTextEmbeddings(nn.Module):
    """Word + position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        for embedding in (
            self.word_embeddings,
            self.position_embeddings,
            self.token_type_embeddings,
        ):
            nn.init.normal_(embedding.weight, std=config.initializer_range)
        if config.pad_token_id is not None:
            nn.init.zeros_(self.word_embeddings.weight[config.pad_token_id])

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seq = input_ids.shape[1]
        if position_ids is None:
            positions = self.position_embeddings.weight[:seq]
        else:
            positions = self.position_embeddings(position_ids)
        if token_type_ids is None:
            token_types = self.token_type_embeddings.weight[0]  # every token is segment 0
        else:
            token_types = self.token_type_embeddings(token_type_ids)
        embeddings = self.word_embeddings(input_ids) + token_types + positions
        return self.dropout(self.LayerNorm(embeddings))


class ChineseCLIPTextSelfAttention(nn.Module):
    """BERT's query / key / value projections (computed as one product, see
    :func:`clipbeam.model.attention.fused_projection`) and the attention itself."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_probs_dropout_prob
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        for proj in (self.query, self.key, self.value):
            _init_bert_linear(proj, config.initializer_range)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        need_weights: bool,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attends from every position, or only from ``rows``; ``hidden_states`` are packed
        tokens when ``packing`` is given."""
        return self_attention(
            hidden_states,
            bias,
            (self.query, self.key, self.value),
            self.num_heads,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            rows=rows,
            packing=packing,
        )


class ChineseCLIPTextSelfOutput(nn.Module):
    """Output projection, dropout, residual, LayerNorm (post-LN); reused after the MLP."""

    def __init__(self, config: ChineseCLIPTextConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        _init_bert_linear(self.dense, config.initializer_range)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        projected = linear(hidden_states, self.dense.weight, self.dense.bias)
        return self.LayerNorm(self.dropout(projected) + residual)


class ChineseCLIPTextAttention(nn.Module):
    """``attention.self`` then ``attention.output``."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.self = ChineseCLIPTextSelfAttention(config)
        self.output = ChineseCLIPTextSelfOutput(config, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        need_weights: bool,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.self(hidden_states, bias, need_weights, rows, packing)
        residual = hidden_states if rows is None else take_rows(hidden_states, rows)
        return self.output(attn, residual), weights


class ChineseCLIPTextIntermediate(nn.Module):
    """The first half of the feed-forward block: dense and activation."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.hidden_act = config.hidden_act
        self.intermediate_act_fn = get_activation(config.hidden_act)
        _init_bert_linear(self.dense, config.initializer_range)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return linear(hidden_states, self.dense.weight, self.dense.bias, self.hidden_act)


class ChineseCLIPTextLayer(nn.Module):
    """A post-LayerNorm BERT block."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.attention = ChineseCLIPTextAttention(config)
        self.intermediate = ChineseCLIPTextIntermediate(config)
        self.output = ChineseCLIPTextSelfOutput(config, config.intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        need_weights: bool = False,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output at every position, or at ``rows`` only (``[B, 1, D]``); on
        packed tokens when ``packing`` is given."""
        attended, weights = self.attention(hidden_states, bias, need_weights, rows, packing)
        return self.output(self.intermediate(attended), attended), weights


class ChineseCLIPTextEncoder(nn.Module):
    """The stack of :class:`ChineseCLIPTextLayer` (``encoder.layer.N`` in checkpoints)."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            ChineseCLIPTextLayer(config) for _ in range(config.num_hidden_layers)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        bias: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
        rows: torch.Tensor | int | None = None,
        packing: TokenPacking | None = None,
    ) -> BaseModelOutputWithPooling:
        return run_layers(
            self.layer, hidden_states, bias, output_attentions, output_hidden_states, rows, packing
        )


class ChineseCLIPTextPooler(nn.Module):
    """BERT's pooler: dense + tanh over the [CLS] state."""

    def __init__(self, config: ChineseCLIPTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()
        _init_bert_linear(self.dense, config.initializer_range)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(linear(cls_pool(hidden_states), self.dense.weight, self.dense.bias))


class ChineseCLIPTextModel(PreTrainedModel):
    """The BERT text tower of Chinese-CLIP, without projection."""

    base_model_prefix: ClassVar[str] = "chinese_clip"

    config_class = ChineseCLIPTextConfig
    checkpoint_prefix = "text_model."
    input_embeddings_name = "embeddings.word_embeddings"
    ignored_checkpoint_keys = (
        r"vision_model\..*",
        r"(visual|text)_projection\.weight",
        "logit_scale",
    )
    checkpoint_renames = _RENAMES

    @classmethod
    def explain_missing(cls, missing: list[str]) -> str:
        """Explains a missing pooler: full checkpoints saved by transformers have none."""
        if missing and all(name.startswith("pooler.") for name in missing):
            return (
                "The checkpoint has no BERT pooler: it is a full ChineseCLIPModel saved without "
                "one. Load ChineseCLIPModel and call get_text_features() (which pools [CLS] "
                "without the pooler), or use a checkpoint that includes text_model.pooler."
            )
        return ""

    def __init__(self, config: ChineseCLIPTextConfig, add_pooling_layer: bool = True) -> None:
        """Builds the tower with random weights.

        Args:
            config: the text config.
            add_pooling_layer: include BERT's ``pooler`` (the full model has none).
        """
        super().__init__(config)
        self.embeddings = ChineseCLIPTextEmbeddings(config)
        self.encoder = ChineseCLIPTextEncoder(config)
        self.pooler = ChineseCLIPTextPooler(config) if add_pooling_layer else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        *,
        pooled_only: bool = False,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes token ids.

        Args:
            input_ids: ``[batch, seq]`` WordPiece ids, ``seq <= max_position_embeddings``.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            token_type_ids: ``[batch, seq]`` segment ids; default all 0.
            position_ids: ``[batch, seq]`` positions; default ``0..seq-1``.
            output_attentions: return every layer's attention probabilities
                (default: ``config.output_attentions``).
            output_hidden_states: return the embeddings and every layer's output
                (default: ``config.output_hidden_states``).
            return_dict: False returns ``to_tuple()`` of the output (see
                :func:`clipbeam.model.modeling_outputs.as_requested`).
            pooled_only: compute only the [CLS] position on the last layer (all that pooling
                needs); ``last_hidden_state`` is then its ``[batch, 1, hidden]`` state.

        Returns:
            ``last_hidden_state`` and ``pooler_output`` (BERT pooler over [CLS]; ``None``
            without the pooling layer).
        """
        if input_ids.ndim != 2:
            raise ValueError(
                f"input_ids must be [batch, seq] (got shape {list(input_ids.shape)}); "
                "add a batch dimension with input_ids[None]"
            )
        limit = self.config.max_position_embeddings
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens but the model has {limit} positions; "
                f"tokenize with truncation=True, max_length={limit} (52 for Chinese-CLIP)"
            )
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids)
        bias, rows, packing = None, 0 if pooled_only else None, None
        if attention_mask is not None:
            keep = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
            bias = mask_to_bias(keep[:, None, None, :], hidden_states.dtype)  # [B, 1, 1, S]
            if pooled_only:
                packing = TokenPacking.of(keep, 0)
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
        if self.pooler is not None:
            out.pooler_output = self.pooler(out.last_hidden_state)
        return as_requested(out, return_dict, self.config)


class ChineseCLIPVisionModel(CLIPVisionModel):
    """The ViT image tower of Chinese-CLIP: CLIP's, with its own config class."""

    base_model_prefix: ClassVar[str] = "chinese_clip"

    config_class = ChineseCLIPVisionConfig


class ChineseCLIPModel(PreTrainedModel):
    """BERT text tower and ViT image tower projected into one space, with a logit scale."""

    base_model_prefix: ClassVar[str] = "chinese_clip"

    config_class = ChineseCLIPConfig
    # Hub checkpoints carry the BERT pooler the original training code had; this model pools
    # [CLS] without it (as transformers does), so those tensors are expected and skipped.
    ignored_checkpoint_keys = (r"text_model\.pooler\..*",)
    checkpoint_renames = _RENAMES

    def __init__(self, config: ChineseCLIPConfig) -> None:
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.text_model = ChineseCLIPTextModel(text, add_pooling_layer=False)
        self.vision_model = ChineseCLIPVisionModel(vision)
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
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> torch.Tensor | BaseModelOutputWithPooling | tuple:
        """Projected, unnormalized text embeddings ``[batch, projection_dim]``.

        With none of the keyword arguments this returns the tensor (the transformers 4 API,
        computed with the fast pooled-only last layer). Any of them, set, asks for transformers
        5's result: the text tower's output with ``pooler_output`` set to the projected
        embeddings (with ``return_dict=False`` a tuple, in transformers' order: the embeddings
        last).

        Args:
            input_ids: ``[batch, seq]`` WordPiece ids.
            attention_mask: ``[batch, seq]``, 1 for tokens and 0 for padding.
            token_type_ids: ``[batch, seq]`` segment ids; default all 0.
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
            token_type_ids,
            position_ids,
            output_attentions if detailed else False,
            output_hidden_states if detailed else False,
            return_dict=True,
            pooled_only=not detailed,
        )
        features = linear(cls_pool(out.last_hidden_state), self.text_projection.weight)
        if not detailed:
            return features
        flat = as_requested(out, return_dict, self.config)
        if isinstance(flat, tuple):
            # transformers 5 sets pooler_output on a tower output made without one, and its
            # outputs order fields by when they were first set: the features come last.
            return (*flat, features)
        out.pooler_output = features
        return out

    # The image tower, its projection and their names are CLIP's: so is this method.
    get_image_features = CLIPModel.get_image_features

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> ChineseCLIPOutput | tuple:
        """Scores every text against every image.

        Args:
            input_ids: ``[texts, seq]`` WordPiece ids.
            pixel_values: ``[images, channels, size, size]`` normalized pixels.
            attention_mask: ``[texts, seq]``, 1 for tokens and 0 for padding.
            token_type_ids: ``[texts, seq]`` segment ids; default all 0.
            position_ids: ``[texts, seq]`` positions.
            return_loss: also compute the contrastive loss (needs as many texts as images).
            output_attentions: return attention probabilities in the tower outputs.
            output_hidden_states: return hidden states in the tower outputs.
            interpolate_pos_encoding: accept other image sizes (see
                :class:`clipbeam.model.modeling_clip.CLIPVisionModel`).
            return_dict: False returns ``to_tuple()`` of the output, tower outputs included.

        Returns:
            Normalized embeddings, ``logits_per_image`` / ``logits_per_text`` and the tower
            outputs (the text tower's ``pooler_output`` is ``None``: it has no pooler).
        """
        _require_both(input_ids, pixel_values)
        # Unset flags fall to this config's defaults if they are on, else to each tower's own.
        attentions = _flag(output_attentions, self.config.output_attentions or None)
        states = _flag(output_hidden_states, self.config.output_hidden_states or None)
        vision_out = self.vision_model(
            pixel_values, attentions, states, interpolate_pos_encoding, return_dict=True
        )
        text_out = self.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            attentions,
            states,
            return_dict=True,
        )
        image_embeds = _normalize(linear(vision_out.pooler_output, self.visual_projection.weight))
        text_embeds = _normalize(
            linear(cls_pool(text_out.last_hidden_state), self.text_projection.weight)
        )
        out = _dual_output(
            ChineseCLIPOutput,
            self.logit_scale,
            text_embeds,
            image_embeds,
            text_out,
            vision_out,
            return_loss,
        )
        return as_requested(out, return_dict, self.config)
