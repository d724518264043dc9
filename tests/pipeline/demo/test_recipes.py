"""Tests for the bundled demo models: made by the recipes in the code, small, accurate."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest

from clipbeam.model import load_model, load_processor
from clipbeam.pipeline.demo import recipes
from clipbeam.pipeline.demo.recipes import CALIBRATION_FILE, RECIPES
from clipbeam.pipeline.demo.scenes import class_labels, class_prompt, generate_scenes
from clipbeam.pipeline.evaluation import zero_shot_accuracy

PRETRAINED = Path(recipes.__file__).resolve().parents[2] / "model" / "pretrained"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_bundled_model_is_small_recorded_and_accurate_on_held_out_scenes(name: str) -> None:
    folder = PRETRAINED / name
    record = json.loads((folder / CALIBRATION_FILE).read_text())
    recipe = RECIPES[name]
    # The shipped files come from the recipe in the code, not from some earlier version of it.
    assert record["recipe_settings"] == json.loads(json.dumps(dataclasses.asdict(recipe)))
    model, processor = load_model(name), load_processor(name)
    # Held-out scenes of a seed neither training (1) nor the recipe's evaluation (2) used.
    scenes = generate_scenes(240, seed=12, two_object_fraction=0.0)
    labels = class_labels()
    truth = [
        labels.index((s[0], c[0]))
        for s, c in zip(
            scenes.column("shapes").to_pylist(), scenes.column("colors").to_pylist(), strict=True
        )
    ]
    from PIL import Image

    images = [Image.open(io.BytesIO(b)) for b in scenes.column("image").to_pylist()]
    prompts = [class_prompt(s, c, recipe.language) for s, c in labels]
    accuracy = zero_shot_accuracy(model, processor, images, truth, prompts)
    assert accuracy >= 0.9, f"{name}: zero-shot shape x colour accuracy {accuracy:.1%}"


def test_bundled_models_fit_in_ten_megabytes() -> None:
    files = [f for name in RECIPES for f in (PRETRAINED / name).iterdir()]
    assert {f.name for f in files} >= {"config.json", "model.safetensors"}
    total = sum(f.stat().st_size for f in files)
    assert total <= 10 * 1024 * 1024, f"bundled demo models take {total / 2**20:.1f} MiB"
