"""The recipes of the bundled demo models: each rebuilt from nothing but a seed.

A recipe (:class:`Recipe`) names everything that makes one demo model: generated scenes
(:mod:`clipbeam.pipeline.demo.scenes`), tokenizer vocabularies learned from their captions
(:mod:`clipbeam.pipeline.demo.vocabularies`), tiny towers trained from random initialisation
(:mod:`clipbeam.pipeline.training`), evaluated on held-out scenes and calibrated for the demo's
filter (:data:`CALIBRATION_FILE`)::

    clipbeam train --recipe demo-clip --out model/pretrained/demo-clip
    clipbeam train --recipe demo-chinese-clip --out model/pretrained/demo-chinese-clip

The seed fixes the initial weights and the batch order, and the thread count is fixed, so the
same command on the same torch build and CPU gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipbeam.pipeline.demo.vocabularies import build_clip_bpe, build_wordpiece_vocab
from clipbeam.pipeline.evaluation import (
    Calibration,
    calibrate_min_score,
    encode_images,
    encode_texts,
    zero_shot_accuracy,
)
from clipbeam.pipeline.training import TrainingConfig, read_pairs, train_contrastive

__all__ = [
    "CALIBRATION_FILE",
    "RECIPES",
    "Recipe",
    "build_recipe",
    "evaluate_on_scenes",
    "write_calibration",
]

_log = logging.getLogger("clipbeam.train")

# Written next to a demo checkpoint: the filter threshold that the demo job uses.
CALIBRATION_FILE = "clipbeam_calibration.json"


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
    from clipbeam.pipeline.demo.scenes import class_labels, class_prompt, generate_scenes

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
    from clipbeam.pipeline.demo.scenes import write_scenes

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
