"""Contrastive training of CLIP and Chinese-CLIP models on image-text Parquet.

Two uses:

* **Fine-tuning** a checkpoint on your own pairs; the result is a checkpoint folder that every
  clipbeam job (``--model DIR``) and :func:`clipbeam.model.load_model` read::

      python -m clipbeam.pipeline.train --data "pairs/*.parquet" --text-column caption \\
          --model demo-clip --out my-model --steps 500

* **Rebuilding the bundled demo models** from nothing but a seed: generated scenes
  (:mod:`clipbeam.pipeline.scenes`), tokenizer vocabularies learned from their captions, tiny towers
  trained from random initialisation, evaluated on held-out scenes and calibrated for the demo's
  filter::

      clipbeam train --recipe demo-clip --out model/pretrained/demo-clip
      clipbeam train --recipe demo-chinese-clip --out model/pretrained/demo-chinese-clip

Training is deterministic: the seed fixes the initial weights and the batch order, and the
thread count is fixed, so the same command on the same torch build and CPU gives the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CALIBRATION_FILE",
    "RECIPES",
    "Calibration",
    "PairData",
    "Recipe",
    "TrainingConfig",
    "build_clip_bpe",
    "build_recipe",
    "build_wordpiece_vocab",
    "calibrate_min_score",
    "contrastive_loss",
    "encode_images",
    "encode_texts",
    "evaluate_on_scenes",
    "fine_tune",
    "main",
    "read_pairs",
    "train_contrastive",
    "write_calibration",
    "zero_shot_accuracy",
]

_log = logging.getLogger("clipbeam.train")

# Written next to a demo checkpoint: the filter threshold that the demo job uses.
CALIBRATION_FILE = "clipbeam_calibration.json"
_WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Preprocessed pixels are kept in memory, instead of redone every step, up to this size.
_PIXEL_CACHE_BYTES = 1 << 30


# -- tokenizer vocabularies -----------------------------------------------------------------------


def build_clip_bpe(texts: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learns a byte-level BPE vocabulary in OpenAI CLIP's format from a corpus.

    Merges are learned with the ``tokenizers`` library under exactly the normalisation and word
    split of :class:`clipbeam.model.CLIPTokenizer`, until every word of the corpus is one token. The
    vocabulary is laid out like CLIP's: the 256 byte symbols, the same with the ``</w>``
    end-of-word suffix, one token per merge in merge order, then ``<|startoftext|>`` and
    ``<|endoftext|>``. So any text still tokenizes (into bytes, outside the corpus), and
    ``<|endoftext|>`` has the largest id, as CLIP's pooling by ``argmax`` of the ids expects.

    Args:
        texts: the corpus, e.g. every caption of the training set.

    Returns:
        ``(vocab, merges)``: token -> id, and the merges in priority order.
    """
    from tokenizers import Tokenizer, trainers
    from tokenizers.models import BPE

    from clipbeam.model.tokenization_clip import CLIPTokenizer, bytes_to_unicode

    specials = ("<|startoftext|>", "<|endoftext|>")
    # A throwaway tokenizer lends its normalizer and word split: one definition of both.
    reference = CLIPTokenizer({s: i for i, s in enumerate(specials)}, []).backend_tokenizer
    tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    tokenizer.normalizer = reference.normalizer
    tokenizer.pre_tokenizer = reference.pre_tokenizer
    texts = list(texts)
    words = {
        word
        for text in texts
        for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(
            tokenizer.normalizer.normalize_str(text)
        )
    }
    trainer = trainers.BpeTrainer(
        # Room for every merge (a word of n symbols needs at most n - 1) and no minimum count,
        # so merging stops when every word is one token. The size is preallocated: keep it tight.
        vocab_size=512 + sum(len(word) for word in words),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=sorted(bytes_to_unicode().values()),
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
    )
    tokenizer.train_from_iterator(texts, trainer)
    learned = json.loads(tokenizer.to_str())["model"]["merges"]
    # tokenizers writes merges as ["a", "b"] pairs (versions before 0.20 as "a b" strings).
    merges = [(m[0], m[1]) if isinstance(m, list) else tuple(m.split(" ")) for m in learned]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), *specials]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("the learned BPE merges repeat a token; this is a bug, please report")
    return vocab, merges


def build_wordpiece_vocab(texts: Iterable[str]) -> list[str]:
    """A BERT WordPiece vocabulary covering every character of a corpus.

    BERT's basic tokenizer cuts CJK text into single characters and punctuation into single
    marks before WordPiece runs, so for Chinese captions the vocabulary needed is exactly the set
    of characters used: BERT's five special tokens, then those characters (lower-cased, as a
    ``do_lower_case`` tokenizer sees them) in code point order.

    Args:
        texts: the corpus.

    Returns:
        The tokens in id order (``[PAD]`` is 0), i.e. the lines of ``vocab.txt``.
    """
    chars = sorted({c for text in texts for c in text.lower() if not c.isspace()})
    return [*_WORDPIECE_SPECIALS, *chars]


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
    text_inputs = _tokenize(processor.tokenizer, data.texts)
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


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every caption, padded to the longest, truncated to the model's context."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {
        k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }


# -- evaluation -----------------------------------------------------------------------------------


@torch.no_grad()
def encode_images(
    model: Any, processor: Any, images: Sequence[Any], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalized image embeddings ``[len(images), projection_dim]`` (PIL images in)."""
    out = []
    for i in range(0, len(images), batch_size):
        pixels = processor.image_processor(list(images[i : i + batch_size]), return_tensors="pt")
        out.append(F.normalize(model.get_image_features(pixels["pixel_values"]), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def encode_texts(
    model: Any, processor: Any, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalized text embeddings ``[len(texts), projection_dim]``."""
    out = []
    for i in range(0, len(texts), batch_size):
        inputs = _tokenize(processor.tokenizer, texts[i : i + batch_size])
        out.append(F.normalize(model.get_text_features(**inputs), dim=-1))
    return torch.cat(out)


def zero_shot_accuracy(
    model: Any, processor: Any, images: Sequence[Any], labels: Sequence[int], prompts: Sequence[str]
) -> float:
    """Fraction of images whose most similar prompt is their label's.

    Args:
        model: a CLIP or Chinese-CLIP model.
        processor: its processor.
        images: PIL images.
        labels: for each image, the index of its true prompt.
        prompts: one prompt per class.
    """
    similarity = (
        encode_images(model, processor, images) @ encode_texts(model, processor, prompts).t()
    )
    predicted = similarity.argmax(dim=1)
    return float((predicted == torch.tensor(list(labels))).float().mean())


@dataclass(frozen=True)
class Calibration:
    """A ``--min-score`` threshold chosen on held-out pairs, and how it did there.

    Attributes:
        min_score: pairs scoring below this are rejected.
        caught: fraction of the mismatched pairs rejected.
        good_rejected: fraction of the matching pairs rejected.
        mismatched: number of mismatched pairs it was chosen on.
        good: number of matching pairs it was chosen on.
    """

    min_score: float
    caught: float
    good_rejected: float
    mismatched: int
    good: int


def calibrate_min_score(scores: Sequence[float], is_mismatched: Sequence[bool]) -> Calibration:
    """Picks the score threshold that best separates mismatched from matching pairs.

    The threshold maximizes (mismatches caught) - (good pairs rejected), each as a fraction of
    its own class (Youden's J), so it does not depend on how many mismatches the data has. It
    sits halfway between the two scores it falls between.

    Args:
        scores: a ``clip_score`` per pair.
        is_mismatched: whether each pair is a planted mismatch; both kinds must occur.

    Raises:
        ValueError: no mismatched or no matching pair.
    """
    s = np.asarray(scores, dtype=np.float64)
    bad = np.asarray(is_mismatched, dtype=bool)
    if bad.all() or not bad.any():
        raise ValueError("calibration needs both mismatched and matching pairs")
    order = np.argsort(s, kind="stable")
    # Rejecting the k lowest scores, for every k: how many of each kind that rejects.
    caught = np.concatenate([[0], np.cumsum(bad[order])]) / bad.sum()
    rejected = np.concatenate([[0], np.cumsum(~bad[order])]) / (~bad).sum()
    k = int(np.argmax(caught - rejected))
    sorted_scores = s[order]
    if k == 0:
        threshold = sorted_scores[0]
    elif k == len(s):
        threshold = np.nextafter(sorted_scores[-1], np.inf)
    else:
        threshold = (sorted_scores[k - 1] + sorted_scores[k]) / 2
    # A threshold people can type; the rates are those of the rounded value, under the
    # filter's rule (a pair is rejected when its score is below min_score).
    min_score = round(float(threshold), 4)
    rejects = s < min_score
    return Calibration(
        min_score=min_score,
        caught=float(rejects[bad].mean()),
        good_rejected=float(rejects[~bad].mean()),
        mismatched=int(bad.sum()),
        good=int((~bad).sum()),
    )


# -- the demo recipes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that makes one bundled demo model, from a seed.

    Attributes:
        name: the bundled name (``--model NAME`` in the jobs).
        model_type: ``"clip"`` or ``"chinese_clip"``.
        language: caption language of the generated scenes (``"en"`` or ``"zh"``).
        train_rows: generated training scenes (no mismatched captions).
        data_seed: seed of the training scenes; held-out sets use other seeds.
        image_size: side of the model's input, in pixels.
        patch_size: side of a ViT patch.
        width: hidden size of both towers.
        vision_layers: transformer layers of the image tower.
        text_layers: transformer layers of the text tower.
        heads: attention heads per layer.
        projection_dim: size of the shared embedding space.
        max_length: text context (positions); generated captions need at most 26 tokens.
        training: the optimisation settings.
        eval_rows: held-out single-object scenes for the zero-shot shape x colour accuracy.
        calibration_rows: held-out scenes, 10% mismatched, to choose the filter threshold.
    """

    name: str
    model_type: str
    language: str
    train_rows: int = 12_000
    data_seed: int = 1
    image_size: int = 64
    patch_size: int = 8
    width: int = 96
    vision_layers: int = 4
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    max_length: int = 32
    training: TrainingConfig = TrainingConfig(
        steps=3000, batch_size=128, learning_rate=3e-3, warmup_fraction=0.05, seed=0, threads=1
    )
    eval_rows: int = 480
    calibration_rows: int = 1000

    @property
    def text_column(self) -> str:
        """The scenes column holding captions in this recipe's language."""
        return f"caption_{self.language}"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="demo-clip", model_type="clip", language="en"),
        Recipe(name="demo-chinese-clip", model_type="chinese_clip", language="zh"),
    )
}
_EVAL_SEED = 2
_CALIBRATION_SEED = 3
_CALIBRATION_MISMATCH = 0.1


def _new_model(recipe: Recipe, processor: Any) -> torch.nn.Module:
    """A randomly initialised model of the recipe's size, for the processor's vocabulary."""
    vision = {
        "hidden_size": recipe.width,
        "intermediate_size": 4 * recipe.width,
        "num_hidden_layers": recipe.vision_layers,
        "num_attention_heads": recipe.heads,
        "image_size": recipe.image_size,
        "patch_size": recipe.patch_size,
        "projection_dim": recipe.projection_dim,
    }
    text = {
        "vocab_size": len(processor.tokenizer),
        "hidden_size": recipe.width,
        "intermediate_size": 4 * recipe.width,
        "num_hidden_layers": recipe.text_layers,
        "num_attention_heads": recipe.heads,
        "max_position_embeddings": recipe.max_length,
    }
    tokenizer = processor.tokenizer
    model = _new_dual_model(recipe, text, vision, tokenizer)
    grid = recipe.image_size // recipe.patch_size
    _sincos_positions(model.vision_model.embeddings.position_embedding.weight, grid)
    return model


def _sincos_positions(table: torch.Tensor, grid: int, amplitude: float = 0.3) -> None:
    """Starts a ViT's position embeddings as a 2-D sine-cosine table (the class token at zero).

    With random positions, a ViT trained from scratch must first discover which patches are
    neighbours; a 2-D sin-cos start (as in MAE) gives it that for free and speeds up early
    training. The table stays trainable, and the checkpoint format is unchanged. The amplitude
    matches the scale of the initial patch embeddings.
    """
    rows, width = table.shape
    if rows != grid * grid + 1 or width % 4:
        raise ValueError(
            f"position table {tuple(table.shape)} does not fit a {grid}x{grid} grid plus class "
            "token with a width divisible by 4"
        )
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (ys, xs):
        angles = coordinate.reshape(-1, 1).double() * frequencies  # [patches, width / 4]
        parts += [angles.sin(), angles.cos()]
    with torch.no_grad():
        table[0] = 0
        table[1:] = (amplitude * torch.cat(parts, dim=1)).to(table.dtype)


def _new_dual_model(recipe: Recipe, text: dict, vision: dict, tokenizer: Any) -> torch.nn.Module:
    from clipbeam.model import ChineseCLIPConfig, ChineseCLIPModel, CLIPConfig, CLIPModel

    if recipe.model_type == "clip":
        text.update(
            projection_dim=recipe.projection_dim,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config = CLIPConfig.from_dict(
            {"text_config": text, "vision_config": vision, "projection_dim": recipe.projection_dim}
        )
        return CLIPModel(config)
    # No dropout: the generated data is plentiful, and the steps are few.
    text.update(
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = ChineseCLIPConfig.from_dict(
        {"text_config": text, "vision_config": vision, "projection_dim": recipe.projection_dim}
    )
    return ChineseCLIPModel(config)


def _new_processor(recipe: Recipe, captions: Sequence[str]) -> Any:
    """Tokenizer learned from the captions, and an image processor at the recipe's size."""
    from clipbeam.model import (
        BertTokenizer,
        ChineseCLIPImageProcessor,
        ChineseCLIPProcessor,
        CLIPImageProcessor,
        CLIPProcessor,
        CLIPTokenizer,
    )

    if recipe.model_type == "clip":
        vocab, merges = build_clip_bpe(captions)
        tokenizer = CLIPTokenizer(vocab, merges, model_max_length=recipe.max_length)
        # CLIP's preprocessing: shortest edge to the input size, centre crop.
        images = CLIPImageProcessor(
            size={"shortest_edge": recipe.image_size}, crop_size=recipe.image_size
        )
        return CLIPProcessor(images, tokenizer)
    words = build_wordpiece_vocab(captions)
    tokenizer = BertTokenizer(
        {w: i for i, w in enumerate(words)}, model_max_length=recipe.max_length
    )
    # Chinese-CLIP's preprocessing: straight resize to a square, no crop.
    images = ChineseCLIPImageProcessor(
        size={"height": recipe.image_size, "width": recipe.image_size}, do_center_crop=False
    )
    return ChineseCLIPProcessor(images, tokenizer)


def _scene_images(table: Any) -> list[Any]:
    from clipbeam.transforms.images import decode_image

    return [decode_image(b) for b in table.column("image").to_pylist()]


def evaluate_on_scenes(model: Any, processor: Any, recipe: Recipe) -> dict[str, Any]:
    """Zero-shot accuracy and filter calibration of a demo model on held-out scenes.

    Returns:
        ``{"zero_shot_accuracy": ..., "calibration": Calibration}``, measured on scenes of
        seeds the training data does not use.
    """
    from clipbeam.pipeline.scenes import class_labels, class_prompt, generate_scenes

    held_out = generate_scenes(recipe.eval_rows, seed=_EVAL_SEED, two_object_fraction=0.0)
    labels = class_labels()
    truth = [
        labels.index((shapes[0], colors[0]))
        for shapes, colors in zip(
            held_out.column("shapes").to_pylist(),
            held_out.column("colors").to_pylist(),
            strict=True,
        )
    ]
    prompts = [class_prompt(shape, color, recipe.language) for shape, color in labels]
    accuracy = zero_shot_accuracy(model, processor, _scene_images(held_out), truth, prompts)

    pairs = generate_scenes(
        recipe.calibration_rows, seed=_CALIBRATION_SEED, mismatch_fraction=_CALIBRATION_MISMATCH
    )
    image_embeds = encode_images(model, processor, _scene_images(pairs))
    text_embeds = encode_texts(model, processor, pairs.column(recipe.text_column).to_pylist())
    scores = (image_embeds * text_embeds).sum(dim=1).tolist()
    calibration = calibrate_min_score(scores, pairs.column("is_mismatched").to_pylist())
    return {"zero_shot_accuracy": accuracy, "calibration": calibration}


def build_recipe(
    name: str,
    out: str | Path,
    *,
    work_dir: str | Path | None = None,
    on_log: Callable[[str], None] = _log.info,
) -> dict[str, Any]:
    """Builds a bundled demo model from scratch and writes its checkpoint folder.

    Generates the training scenes, learns the tokenizer vocabulary from their captions, trains
    the model, saves it (weights in float16, to keep the package small), reloads what was saved
    and measures it on held-out scenes: zero-shot shape x colour accuracy, and the ``min_score``
    that best separates mismatched captions, written to :data:`CALIBRATION_FILE` for the demo.

    Args:
        name: a key of :data:`RECIPES`.
        out: the checkpoint folder to write (created; existing files are overwritten).
        work_dir: where to put the generated training Parquet (a temporary folder by default).
        on_log: receives progress lines.

    Returns:
        The metrics also written to :data:`CALIBRATION_FILE`.
    """
    from clipbeam.pipeline.scenes import write_scenes

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clipbeam-train-") as tmp:
        data_path = Path(work_dir or tmp) / f"{name}-train.parquet"
        on_log(f"{name}: generating {recipe.train_rows} training scenes -> {data_path}")
        write_scenes(data_path, recipe.train_rows, seed=recipe.data_seed)
        data = read_pairs([str(data_path)], image_column="image", text_column=recipe.text_column)
        processor = _new_processor(recipe, data.texts)
        torch.manual_seed(recipe.training.seed)
        model = _new_model(recipe, processor)
        params = sum(p.numel() for p in model.parameters())
        on_log(f"{name}: {params:,} parameters, vocabulary of {len(processor.tokenizer)}")
        train_contrastive(model, processor, data, recipe.training, on_log=on_log)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    processor.save_pretrained(out)
    on_log(f"{name}: trained and saved in {time.monotonic() - started:.0f}s")
    return write_calibration(out, name, on_log=on_log)


def write_calibration(
    checkpoint: str | Path, name: str, *, on_log: Callable[[str], None] = _log.info
) -> dict[str, Any]:
    """Measures a demo checkpoint on held-out scenes and writes :data:`CALIBRATION_FILE`.

    The last step of :func:`build_recipe`; on its own, it re-measures a checkpoint after a change
    to the evaluation without training again. The record holds no timing or path, so the same
    weights always give the same file.

    Returns:
        The record written.
    """
    from clipbeam.model import load_model, load_processor

    recipe = RECIPES[name]
    out = Path(checkpoint)
    # Measure what was written, not what was in memory: float16 weights as a job loads them.
    model, processor = load_model(out), load_processor(out)
    metrics = evaluate_on_scenes(model, processor, recipe)
    calibration: Calibration = metrics["calibration"]
    record = {
        "recipe": name,
        "command": f"python -m clipbeam.pipeline.train --recipe {name} --out DIR",
        "text_column": recipe.text_column,
        "min_score": calibration.min_score,
        "held_out": {
            "zero_shot_accuracy": metrics["zero_shot_accuracy"],
            "zero_shot_scenes": recipe.eval_rows,
            "calibration": dataclasses.asdict(calibration),
        },
        "recipe_settings": dataclasses.asdict(recipe),
    }
    (out / CALIBRATION_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    # Package data must be readable by every user of an installation (safetensors writes 0600).
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)
    on_log(
        f"{name}: zero-shot accuracy {metrics['zero_shot_accuracy']:.1%} on {recipe.eval_rows} "
        f"held-out scenes; min_score {calibration.min_score:.4f} catches {calibration.caught:.1%} "
        f"of mismatches, rejects {calibration.good_rejected:.1%} of good pairs; wrote {out}"
    )
    return record


# -- command line ---------------------------------------------------------------------------------


def fine_tune(
    source: str,
    patterns: Sequence[str],
    out: str | Path,
    config: TrainingConfig,
    *,
    image_column: str = "image",
    text_column: str = "text",
    image_format: str = "auto",
    on_log: Callable[[str], None] = _log.info,
) -> Path:
    """Fine-tunes a checkpoint on image-text Parquet and writes the result as a checkpoint.

    Args:
        source: the starting checkpoint (folder, URL, hub id or bundled name).
        patterns: Parquet files or globs with the training pairs.
        out: the folder to write (``config.json``, ``model.safetensors``, tokenizer and
            preprocessor files), readable by every job's ``--model``.
        config: the hyper-parameters.
        image_column, text_column, image_format: where the pairs are in the files.
        on_log: receives progress lines.

    Returns:
        ``out`` as a path.
    """
    from clipbeam.model import load_model, load_processor

    data = read_pairs(
        patterns, image_column=image_column, text_column=text_column, image_format=image_format
    )
    on_log(f"{len(data)} pairs from {len(data.files)} files; starting from {source}")
    model, processor = load_model(source), load_processor(source)
    train_contrastive(model, processor, data, config, on_log=on_log)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    on_log(f"wrote {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam train``: fine-tune a checkpoint, or rebuild a bundled demo model."""
    parser = argparse.ArgumentParser(
        prog="python -m clipbeam.pipeline.train",
        description="Contrastive training on image-text Parquet. Either --recipe NAME (rebuild "
        "a bundled demo model from a seed) or --data + --model (fine-tune a checkpoint).",
    )
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="rebuild a bundled demo model")
    parser.add_argument("--work-dir", help="keep the recipe's generated training data here")
    parser.add_argument("--data", nargs="+", metavar="PATTERN", help="training Parquet files")
    parser.add_argument("--model", help="checkpoint to start from (folder, URL, hub id, name)")
    parser.add_argument("--image-column", default="image", help="column of images (image)")
    parser.add_argument("--text-column", default="text", help="column of captions (text)")
    parser.add_argument(
        "--image-format", default="auto", choices=("auto", "bytes", "hf-struct", "path")
    )
    defaults = TrainingConfig()
    for field in dataclasses.fields(TrainingConfig):
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
            help=f"(fine-tuning) default {getattr(defaults, field.name)}",
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.recipe:
        if args.data or args.model:
            parser.error("--recipe builds from generated data: drop --data / --model")
        build_recipe(args.recipe, args.out, work_dir=args.work_dir)
        return 0
    if not (args.data and args.model):
        parser.error("give --recipe NAME, or both --data PATTERN and --model SOURCE")
    try:
        config = TrainingConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingConfig)}
        )
    except ValueError as exc:
        parser.error(str(exc))
    fine_tune(
        args.model,
        args.data,
        args.out,
        config,
        image_column=args.image_column,
        text_column=args.text_column,
        image_format=args.image_format,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
