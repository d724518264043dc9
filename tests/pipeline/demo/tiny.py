"""Tiny versions of the demo recipes, trained in seconds, for the tests of training."""

from __future__ import annotations

import dataclasses

import torch

from clipbeam.pipeline.demo import recipes
from clipbeam.pipeline.demo.recipes import RECIPES
from clipbeam.pipeline.demo.scenes import generate_scenes
from clipbeam.pipeline.training import PairData, TrainingConfig


def tiny_recipe(name: str) -> recipes.Recipe:
    return dataclasses.replace(
        RECIPES[name],
        train_rows=64,
        width=32,
        vision_layers=1,
        text_layers=1,
        heads=2,
        projection_dim=16,
        image_size=32,
        eval_rows=48,
        calibration_rows=60,
        training=TrainingConfig(
            steps=25, batch_size=16, learning_rate=2e-3, threads=1, log_every=5
        ),
    )


def tiny_model(name: str) -> tuple[torch.nn.Module, object, PairData]:
    recipe = tiny_recipe(name)
    table = generate_scenes(recipe.train_rows, seed=5, image_size=32)
    data = PairData(
        table.column("image").to_pylist(),
        table.column(recipe.text_column).to_pylist(),
        "bytes",
        ["memory"],
    )
    processor = recipes._new_processor(recipe, data.texts)
    torch.manual_seed(0)
    return recipes._new_model(recipe, processor), processor, data
