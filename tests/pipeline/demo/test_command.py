"""Tests for ``clipbeam demo``: the bundled models find the planted mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.demo.command import MARKER_FILE, main, run_demo


@pytest.mark.parametrize("model", ["demo-clip", "demo-chinese-clip"])
def test_demo_filter_catches_planted_mismatches(model: str, tmp_path: Path) -> None:
    """English captions through demo-clip, Chinese captions through demo-chinese-clip."""
    out = tmp_path / "demo"
    # A seed the models never saw in training (1) or calibration (3).
    result = run_demo(
        ["--output", str(out), "--model", model, "--rows", "400", "--seed", "21"], quiet=True
    )
    assert (result.mismatched, result.good, result.errors) == (40, 360, 0)
    assert result.caught / result.mismatched >= 0.9, result
    assert result.good_rejected / result.good <= 0.05, result

    kept = pq.read_table(out / "filter" / "kept").to_pylist()
    rejected = pq.read_table(out / "filter" / "rejected").to_pylist()
    assert len(kept) + len(rejected) == 400
    assert all(r["clip_score"] >= result.min_score for r in kept)
    language = "zh" if model == "demo-chinese-clip" else "en"
    assert set(kept[0]) >= {"id", "clip_score", "is_mismatched", f"caption_{language}"}
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["finished"] and marker["result"]["caught"] == result.caught


def test_demo_report_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["--output", str(out), "--rows", "60", "--seed", "5"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "planted mismatches caught :" in first
    assert "good pairs rejected       :" in first
    assert f"clipbeam report {out}/filter" in first
    # A rerun into the same folder replaces the earlier demo's results instead of failing.
    (out / "score" / "stale.txt").write_text("from the first run")
    assert main(argv) == 0
    assert not (out / "score" / "stale.txt").exists()
    assert "planted mismatches caught" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        run_demo(["--output", str(tmp_path), "--rows", "10"], quiet=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_demo_needs_a_threshold_for_an_uncalibrated_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        run_demo(["--output", str(tmp_path / "o"), "--model", str(checkpoint)], quiet=True)
    assert "pass --min-score X" in capsys.readouterr().err


@pytest.mark.parametrize(("model", "language"), [("demo-clip", "en"), ("demo-chinese-clip", "zh")])
def test_bundled_models_run_embed_and_classify(model: str, language: str, tmp_path: Path) -> None:
    """``--model demo-*`` selects the bundled model in every job, not only score and filter:
    classify names the shape and colour of held-out scenes, embed writes unit vectors."""
    import numpy as np

    from clipbeam.model import ChineseCLIPConfig, CLIPConfig
    from clipbeam.model.hub import resolve_source
    from clipbeam.pipeline.demo.scenes import class_labels, class_prompt, write_scenes
    from tests.pipeline.jobtools import run_job

    # A seed neither training (1), calibration (3) nor the other tests here use.
    data = write_scenes(tmp_path / "scenes.parquet", 120, seed=31, two_object_fraction=0.0)
    prompts = [class_prompt(shape, color, language) for shape, color in class_labels()]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")

    common = ("--image-column", "image", "--id-column", "id")
    classify = run_job(
        "classify", data, str(tmp_path / "classify"), model, *common,
        "--labels-file", str(labels_file), "--template", "{}", "--top-k", "3",
    )  # fmt: skip
    assert classify.summary["input_rows"] == 120 and classify.summary["error_rows"] == 0
    truth = pq.read_table(data, columns=["id", "shapes", "colors"]).to_pylist()
    expected = {r["id"]: class_prompt(r["shapes"][0], r["colors"][0], language) for r in truth}
    labelled = classify.table("labels").to_pylist()
    assert sorted(r["id"] for r in labelled) == sorted(expected)
    hits = sum(r["labels"][0] == expected[r["id"]] for r in labelled)
    assert hits / len(labelled) >= 0.9, f"{model}: {hits} of {len(labelled)} scenes labelled right"

    embed = run_job(
        "embed", data, str(tmp_path / "embed"), model, *common,
        "--text-column", f"caption_{language}",
    )  # fmt: skip
    assert embed.summary["output_rows"] == 120
    table = embed.table("embeddings")
    config_class = ChineseCLIPConfig if language == "zh" else CLIPConfig
    dim = config_class.from_pretrained(resolve_source(model).location).projection_dim
    for column in ("image_embedding", "text_embedding"):
        vectors = np.asarray(table.column(column).to_pylist(), dtype=np.float32)
        assert vectors.shape == (120, dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
