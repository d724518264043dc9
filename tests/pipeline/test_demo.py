"""Tests for ``clipbeam demo``: the bundled models find the planted mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.demo import MARKER_FILE, main, run_demo


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
