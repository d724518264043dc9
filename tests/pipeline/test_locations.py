"""Input locations are recorded absolute: a relative spelling resumes an absolute one's job, and
the records stay valid from another working directory (the report's thumbnails)."""

from __future__ import annotations

import json
import os

from clipbeam.transforms import storage
from tests.datasets import build_dataset
from tests.pipeline.jobtools import run_job


def test_absolute():
    assert storage.absolute("gs://bucket/a/*.parquet") == "gs://bucket/a/*.parquet"
    assert storage.absolute("/data/./x/../y/*.parquet") == "/data/y/*.parquet"


def test_relative_and_absolute_inputs_are_one_job(clip_checkpoint, tmp_path, monkeypatch):
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=3, seed=5)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    relative = os.path.relpath(data.pattern, tmp_path)
    assert not os.path.isabs(relative)
    first = run_job("score", relative, str(out), clip_checkpoint, "--id-column", "id")
    recorded = json.loads((out / "_job.json").read_text())["inputs"]
    assert recorded == [data.pattern]
    assert first.summary["inputs"] == recorded

    # The same input spelled absolute, from another folder: resumed, not "a different job".
    monkeypatch.chdir(tmp_path / "in")
    again = run_job(
        "score", data.pattern, str(out), clip_checkpoint, "--id-column", "id", "--resume"
    )
    assert again.summary["resumed_units"] == again.summary["units"] > 0
