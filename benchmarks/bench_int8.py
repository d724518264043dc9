"""int8 accuracy: what ``--dtype int8`` changes in the bundled demo models' results.

For each bundled trained model (``demo-clip``, ``demo-chinese-clip``), in float32 and in int8:

* zero-shot accuracy on held-out single-object scenes through ``clipbeam classify`` (the
  shape x colour prompts as labels, template ``{}``), the training recipe's evaluation seed;
* ``clipbeam demo`` (score + filter at the model's calibrated ``--min-score``): the Spearman rank
  correlation of int8 ``clip_score`` with float32's over the demo's rows, and the planted
  mismatches caught / good pairs wrongly rejected;
* which layers must stay float32: the Spearman correlation of in-process ``clip_score`` for the
  default choice (projections float32), every linear layer int8, and the first and last blocks
  float32 too.

Feature cosine on random ViT-B/16 towers is printed by ``benchmarks.bench_model``.
Run ``python -m benchmarks.bench_int8`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import spearmanr

from benchmarks.workloads import describe_machine, load_average

MODELS = ("demo-clip", "demo-chinese-clip")
DTYPES = ("float32", "int8")
# A tower's first and last blocks, as module names (CLIP's encoder.layers, BERT's encoder.layer).
_BLOCK = r"{tower}_model\.encoder\.layers?\.({first}|{last})\..*"


def _rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def zero_shot(model: str, dtype: str, rows: int, root: Path) -> float:
    """Top-1 accuracy of ``clipbeam classify`` on held-out scenes of the recipe's eval seed."""
    from clipbeam.pipeline.cli import run
    from clipbeam.pipeline.demo.recipes import _EVAL_SEED, RECIPES
    from clipbeam.pipeline.demo.scenes import class_labels, class_prompt, write_scenes

    language = RECIPES[model].language
    data = root / f"held-out-{language}.parquet"
    if not data.exists():
        write_scenes(data, rows, seed=_EVAL_SEED, two_object_fraction=0.0)
    prompts = {class_prompt(s, c, language): (s, c) for s, c in class_labels()}
    labels = root / f"labels-{language}.txt"
    labels.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = root / f"classify-{model}-{dtype}"
    command = ["classify", "--input", str(data), "--output", str(out), "--model", model]
    command += ["--labels-file", str(labels), "--template", "{}", "--top-k", "1"]
    command += ["--dtype", dtype, "--keep-columns", "shapes,colors", "--runner", "DirectRunner"]
    run(command)
    got = _rows(out / "labels")
    right = sum(prompts[r["labels"][0]] == (r["shapes"][0], r["colors"][0]) for r in got)
    return right / len(got)


def demo(model: str, dtype: str, rows: int, root: Path) -> tuple[dict, dict[str, float]]:
    """``clipbeam demo`` in ``dtype``: its counts and every row's ``clip_score`` by id."""
    from clipbeam.pipeline.demo.command import run_demo

    out = root / f"demo-{model}-{dtype}"
    result = run_demo(
        ["--model", model, "--output", str(out), "--rows", str(rows), "--dtype", dtype],
        quiet=True,
    )
    scores = {r["id"]: r["clip_score"] for r in _rows(out / "score" / "scores")}
    return vars(result), scores


def layer_choices(model: str, rows: int) -> dict[str, float]:
    """Spearman correlation with float32 of in-process ``clip_score``, per int8 layer choice."""
    from clipbeam.model.quantization import FLOAT_LAYERS, quantize_int8
    from clipbeam.pipeline.demo.recipes import RECIPES, _scene_images
    from clipbeam.pipeline.demo.scenes import generate_scenes
    from clipbeam.transforms.encoder import Encoder

    recipe = RECIPES[model]
    pairs = generate_scenes(rows, seed=0, mismatch_fraction=0.1)
    images, texts = _scene_images(pairs), pairs.column(recipe.text_column).to_pylist()
    base = Encoder.load(model, device="cpu", dtype="float32", batch_size=256)
    first_last = tuple(
        _BLOCK.format(tower=tower, first=0, last=config.num_hidden_layers - 1)
        for tower, config in (
            ("vision", base.model.config.vision_config),
            ("text", base.model.config.text_config),
        )
    )
    choices = {
        "projections float32 (default)": FLOAT_LAYERS,
        "every linear layer int8": (),
        "first and last blocks float32 too": (*FLOAT_LAYERS, *first_last),
    }

    def scores(encoder: Encoder) -> np.ndarray:
        return (encoder.encode_images(images) * encoder.encode_texts(texts)).sum(axis=1)

    reference = scores(base)
    result = {}
    for name, keep in choices.items():
        loaded = Encoder.load(model, device="cpu", dtype="float32", batch_size=256)
        quantized = Encoder(
            quantize_int8(loaded.model, float_layers=keep),
            loaded.processor,
            device=loaded.device,
            batch_size=256,
        )
        result[name] = float(spearmanr(reference, scores(quantized)).statistic)
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_int8", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--eval-rows", type=int, default=2000, help="held-out zero-shot scenes")
    parser.add_argument("--demo-rows", type=int, default=2000, help="rows of clipbeam demo")
    args = parser.parse_args(argv)
    if args.eval_rows < 1 or args.demo_rows < 10:
        parser.error("--eval-rows must be at least 1 and --demo-rows at least 10")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the measurements with command-line arguments ``argv`` (default ``sys.argv[1:]``)."""
    args = parse_args(argv)
    print(f"machine: {describe_machine()}")
    print(f"load average at start: {load_average()}")
    begin = time.perf_counter()
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models:
            entry: dict = {"zero_shot": {}, "demo": {}}
            scores = {}
            for dtype in DTYPES:
                entry["zero_shot"][dtype] = zero_shot(model, dtype, args.eval_rows, root)
                entry["demo"][dtype], scores[dtype] = demo(model, dtype, args.demo_rows, root)
            ids = sorted(scores["float32"])
            rho = spearmanr([scores["float32"][i] for i in ids], [scores["int8"][i] for i in ids])
            entry["spearman_clip_score"] = float(rho.statistic)
            entry["layer_choices_spearman"] = layer_choices(model, args.demo_rows)
            report[model] = entry
            print_model(model, entry, args)
    print(f"\nload average at end: {load_average()} ({time.perf_counter() - begin:.0f} s)")
    print("json: " + json.dumps(report, sort_keys=True, default=str))
    sys.stdout.flush()


def print_model(model: str, entry: dict, args: argparse.Namespace) -> None:
    """One model's figures, float32 against int8."""
    print(f"\n== {model} ==")
    zs = entry["zero_shot"]
    print(
        f"  zero-shot accuracy, {args.eval_rows} held-out scenes (clipbeam classify): "
        f"float32 {zs['float32']:.2%}, int8 {zs['int8']:.2%} "
        f"({(zs['int8'] - zs['float32']) * 100:+.2f} points)"
    )
    print(
        f"  Spearman of clip_score, int8 vs float32, {args.demo_rows} demo rows: "
        f"{entry['spearman_clip_score']:.5f}"
    )
    for dtype in DTYPES:
        d = entry["demo"][dtype]
        print(
            f"  demo {dtype} at --min-score {d['min_score']}: caught {d['caught']} of "
            f"{d['mismatched']}, good pairs rejected {d['good_rejected']} of {d['good']}"
        )
    print("  layers kept float32 (Spearman of clip_score vs float32, in process):")
    for name, rho in entry["layer_choices_spearman"].items():
        print(f"    {name:<36} {rho:.5f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
