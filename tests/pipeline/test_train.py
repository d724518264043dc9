"""Tests for ``clipbeam train``: a recipe and a fine-tuning write loadable checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipbeam.model import load_model, load_processor
from clipbeam.pipeline import train
from clipbeam.pipeline.demo import recipes
from clipbeam.pipeline.demo.recipes import CALIBRATION_FILE
from clipbeam.pipeline.demo.scenes import write_scenes
from tests.pipeline.demo.tiny import tiny_recipe


def test_recipe_and_fine_tuning_write_loadable_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(recipes.RECIPES, "demo-clip", tiny_recipe("demo-clip"))
    record = recipes.build_recipe("demo-clip", tmp_path / "base", on_log=lambda _: None)
    saved = json.loads((tmp_path / "base" / CALIBRATION_FILE).read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["min_score"] == saved["held_out"]["calibration"]["min_score"]
    base = load_model(tmp_path / "base")
    assert next(base.parameters()).dtype == torch.float32  # stored as float16, loaded as float32
    assert json.loads((tmp_path / "base" / "config.json").read_text())["dtype"] == "float16"

    data = write_scenes(tmp_path / "pairs.parquet", 20, seed=9, image_size=32)
    argv = ["--data", data, "--model", str(tmp_path / "base"), "--out", str(tmp_path / "tuned")]
    argv += ["--text-column", "caption_en", "--steps", "3", "--batch-size", "8", "--threads", "1"]
    assert train.main(argv) == 0
    tuned = load_model(tmp_path / "tuned")
    assert (
        load_processor(tmp_path / "tuned").tokenizer.get_vocab()
        == load_processor(tmp_path / "base").tokenizer.get_vocab()
    )
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed, "fine-tuning changed no weight"


def test_command_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--recipe", "demo-clip", "--data", "a.parquet"])
    assert "drop --data / --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--data", "a.parquet"])
    assert (
        "give --recipe NAME, or both --data PATTERN and --model SOURCE" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        train.main(["--out", "x", "--data", "a", "--model", "m", "--warmup-fraction", "1.5"])
    assert "warmup_fraction must be in [0, 1)" in capsys.readouterr().err
