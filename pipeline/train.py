"""``clipbeam train``: fine-tune a checkpoint on image-text Parquet, or rebuild a demo model.

Fine-tuning (:func:`fine_tune`) starts from a checkpoint and writes a checkpoint folder that
every clipbeam job (``--model DIR``) and :func:`clipbeam.model.load_model` read::

    python -m clipbeam.pipeline.train --data "pairs/*.parquet" --text-column caption \\
        --model demo-clip --out my-model --steps 500

``--recipe NAME`` rebuilds a bundled demo model from a seed instead
(:mod:`clipbeam.pipeline.demo.recipes`)::

    clipbeam train --recipe demo-clip --out model/pretrained/demo-clip

The training loop itself is :mod:`clipbeam.pipeline.training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from clipbeam.pipeline.demo.recipes import RECIPES, build_recipe
from clipbeam.pipeline.training import TrainingConfig, read_pairs, train_contrastive

__all__ = ["fine_tune", "main"]

_log = logging.getLogger("clipbeam.train")


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
