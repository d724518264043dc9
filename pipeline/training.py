"""Contrastive training of CLIP and Chinese-CLIP models on image-text pairs read from Parquet.

The pairs (:func:`read_pairs`), the hyper-parameters (:class:`TrainingConfig`), CLIP's loss with
identical captions counted as matches (:func:`contrastive_loss`) and the seeded training loop
(:func:`train_contrastive`). ``clipbeam train`` (:mod:`clipbeam.pipeline.train`) fine-tunes a
checkpoint with it, and the demo recipes (:mod:`clipbeam.pipeline.demo.recipes`) train the bundled
demo models from scratch with it.

Training is deterministic: the seed fixes the batch order, and the thread count is fixed, so the
same run on the same torch build and CPU gives the same bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "PairData",
    "TrainingConfig",
    "contrastive_loss",
    "read_pairs",
    "tokenize_texts",
    "train_contrastive",
]

_log = logging.getLogger("clipbeam.train")

# Preprocessed pixels are kept in memory, instead of redone every step, up to this size.
_PIXEL_CACHE_BYTES = 1 << 30


# -- data -----------------------------------------------------------------------------------------


@dataclass
class PairData:
    """Image-text pairs read from Parquet, images still encoded.

    Attributes:
        images: one cell per row, as :func:`clipbeam.transforms.images.load_image` takes it.
        texts: the captions.
        image_format: ``"bytes"``, ``"hf-struct"`` or ``"path"``.
        files: the Parquet files read, in order.
    """

    images: list[Any]
    texts: list[str]
    image_format: str
    files: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def read_pairs(
    patterns: Sequence[str],
    *,
    image_column: str = "image",
    text_column: str = "text",
    image_format: str = "auto",
) -> PairData:
    """Reads image-text pairs from Parquet files (local or remote, globs allowed).

    Args:
        patterns: files or globs, e.g. ``["data/*.parquet", "gs://bucket/more.parquet"]``.
        image_column: the column holding images (bytes, ``{bytes, path}`` structs or paths).
        text_column: the column holding the captions.
        image_format: as ``--image-format`` of the jobs; ``"auto"`` decides from the type.

    Returns:
        The pairs of every file, in file then row order.

    Raises:
        FileNotFoundError: a pattern matches no file.
        ValueError: a column is missing or of the wrong type, or a caption is null.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbeam.transforms import storage
    from clipbeam.transforms.images import resolve_image_format

    files: list[str] = []
    for pattern in patterns:
        matched = storage.match(pattern)
        if not matched:
            raise FileNotFoundError(f"--data {pattern!r} matches no file")
        files.extend(matched)
    images: list[Any] = []
    texts: list[str] = []
    resolved = image_format
    for path in files:
        with storage.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = [c for c in (image_column, text_column) if c not in names]
            if missing:
                raise ValueError(
                    f"{path} has no column {missing[0]!r} (columns: {names}); "
                    "pass --image-column / --text-column"
                )
            table = parquet.read(columns=[image_column, text_column])
        resolved = resolve_image_format(
            image_column, table.schema.field(image_column).type, resolved
        )
        text_type = table.schema.field(text_column).type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise ValueError(f"{path}: text column {text_column!r} is {text_type}, not a string")
        column = table.column(text_column)
        if column.null_count:
            raise ValueError(
                f"{path}: text column {text_column!r} has {column.null_count} null captions; "
                "drop those rows first (training needs a caption for every image)"
            )
        images.extend(table.column(image_column).to_pylist())
        texts.extend(column.to_pylist())
    return PairData(images, texts, resolved, files)


class _Pixels:
    """Preprocessed pixel values of a PairData, computed once if they fit in memory."""

    def __init__(self, data: PairData, image_processor: Any) -> None:
        self._data = data
        self._processor = image_processor
        first = self._process([0])
        self._cache: torch.Tensor | None = None
        if first.element_size() * first.numel() * len(data) <= _PIXEL_CACHE_BYTES:
            self._cache = torch.cat(
                [self._process(range(i, min(i + 256, len(data)))) for i in range(0, len(data), 256)]
            )

    def _process(self, rows: Iterable[int]) -> torch.Tensor:
        from clipbeam.transforms.errors import RowError
        from clipbeam.transforms.images import load_image

        images = []
        for i in rows:
            try:
                images.append(load_image(self._data.images[i], self._data.image_format))
            except RowError as exc:
                raise ValueError(f"training row {i} has no usable image: {exc}") from exc
        return self._processor(images, return_tensors="pt")["pixel_values"]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[rows]
        return self._process(rows.tolist())


# -- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of :func:`train_contrastive`.

    Attributes:
        steps: optimizer steps.
        batch_size: pairs per step; every other pair of the batch is a negative.
        learning_rate: peak AdamW learning rate, reached after the warm-up.
        weight_decay: AdamW decay of matrices (biases, norms, the class token and the logit
            scale are not decayed).
        warmup_fraction: fraction of the steps with a linear warm-up; a cosine decay to zero
            follows.
        max_grad_norm: gradients are clipped to this global norm.
        seed: fixes the batch order (and, in recipes, the initial weights).
        threads: torch CPU threads; a fixed number keeps runs bit-identical.
        log_every: steps between progress lines.
    """

    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    log_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TrainingConfig.{name} must be at least 1 (got {getattr(self, name)})"
                )
        if self.batch_size < 2:
            raise ValueError(
                "TrainingConfig.batch_size must be at least 2: a contrastive batch needs negatives"
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"TrainingConfig.learning_rate must be positive (got {self.learning_rate})"
            )
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                f"TrainingConfig.warmup_fraction must be in [0, 1) (got {self.warmup_fraction})"
            )


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    texts: Sequence[str],
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss, with identical captions counted as matches.

    Plain InfoNCE treats every other pair of the batch as a negative. When two pairs carry the
    same caption (common in curated or generated data: "a red circle"), it would push an image
    away from a caption that describes it as well as its own. Here each image's target is spread
    evenly over every text in the batch equal to its own caption, and the same for each text
    (the images whose captions equal it). With all captions distinct it is CLIP's loss.

    Args:
        image_embeds: ``[batch, dim]`` L2-normalized image embeddings.
        text_embeds: ``[batch, dim]`` L2-normalized text embeddings, row i paired with image i.
        logit_scale: the model's learned log temperature (a scalar).
        texts: the batch's captions, for finding duplicates.

    Returns:
        The scalar loss.
    """
    logits = logit_scale.exp() * image_embeds @ text_embeds.t()  # [images, texts]
    index = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    group = torch.tensor([index[t] for t in texts], device=logits.device)
    same = (group[:, None] == group[None, :]).to(logits.dtype)
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
    image_loss = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    text_loss = -(targets * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


def train_contrastive(
    model: torch.nn.Module,
    processor: Any,
    data: PairData,
    config: TrainingConfig,
    *,
    on_log: Callable[[str], None] = _log.info,
) -> list[float]:
    """Trains a CLIP or Chinese-CLIP model on image-text pairs, in place, on the CPU.

    Every step draws ``batch_size`` pairs (a fresh seeded permutation each epoch), computes
    :func:`contrastive_loss`, and takes an AdamW step under a warm-up + cosine schedule. The
    logit scale is clipped at log(100), as in CLIP.

    Args:
        model: a ``CLIPModel`` or ``ChineseCLIPModel`` (from :mod:`clipbeam.model`).
        processor: the matching processor (its tokenizer and image processor prepare batches).
        data: the training pairs; at least ``batch_size`` of them.
        config: the hyper-parameters.
        on_log: receives a progress line every ``config.log_every`` steps.

    Returns:
        The loss of every step.

    Raises:
        ValueError: fewer pairs than one batch, or an image that cannot be decoded.
    """
    if len(data) < config.batch_size:
        raise ValueError(
            f"{len(data)} training pairs cannot fill one batch of {config.batch_size}; "
            "lower --batch-size or add data"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(model, processor, data, config, on_log)
    finally:
        torch.set_num_threads(threads)


def _train(
    model: torch.nn.Module,
    processor: Any,
    data: PairData,
    config: TrainingConfig,
    on_log: Callable[[str], None],
) -> list[float]:
    pixels = _Pixels(data, processor.image_processor)
    text_inputs = tokenize_texts(processor.tokenizer, data.texts)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    keep = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": keep, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, round(config.warmup_fraction * config.steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(data), generator=generator)
    cursor = 0
    losses: list[float] = []
    started = time.monotonic()
    model.train()
    for step in range(config.steps):
        if cursor + config.batch_size > len(data):
            order, cursor = torch.randperm(len(data), generator=generator), 0
        rows = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        batch = {k: v[rows] for k, v in text_inputs.items()}
        out = model(pixel_values=pixels[rows], **batch)
        texts = [data.texts[i] for i in rows.tolist()]
        loss = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale, texts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            recent = losses[-config.log_every :]
            on_log(
                f"step {step + 1}/{config.steps}: loss {sum(recent) / len(recent):.3f}, "
                f"logit scale {model.logit_scale.exp().item():.1f}, "
                f"{time.monotonic() - started:.0f}s"
            )
    model.eval()
    return losses


def tokenize_texts(tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every caption, padded to the longest, truncated to the model's context."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {
        k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
