"""--preprocess: every job takes it, exact is the default, and fast mode stays close to exact."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline.arguments import parse_args
from clipbeam.pipeline.options import JOB_KINDS, LaunchError
from tests.datasets import build_dataset
from tests.pipeline.jobtools import ids, join, run_job

BASE = ["--input", "data/*.parquet", "--output", "out", "--model", "ckpt"]
REQUIRED = {"filter": ["--min-score", "0.2"], "classify": ["--labels", "cat,dog"]}


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_every_job_takes_the_option_and_defaults_to_exact(kind):
    args = [kind, *BASE, *REQUIRED.get(kind, [])]
    assert parse_args(args).spec.preprocess == "exact"
    for spelling in (["--preprocess", "fast"], ["--preprocess=fast"]):
        assert parse_args([*args, *spelling]).spec.preprocess == "fast"
    with pytest.raises(LaunchError, match="invalid choice: 'quick'"):
        parse_args([*args, "--preprocess", "quick"])


def test_fast_scores_stay_close_to_exact_and_outputs_say_which_mode(clip_checkpoint, tmp_path):
    data = build_dataset(tmp_path / "data", num_files=1, rows_per_file=12, row_group_size=12)
    runs = {
        mode: run_job(
            "score",
            join(str(tmp_path), "data", "*.parquet"),
            str(tmp_path / mode),
            clip_checkpoint,
            "--id-column",
            "id",
            "--preprocess",
            mode,
        )
        for mode in ("exact", "fast")
    }
    tables = {mode: run.table("scores").sort_by("id") for mode, run in runs.items()}
    assert (
        ids(tables["fast"], "id") == ids(tables["exact"], "id") == sorted(r.id for r in data.rows)
    )
    exact, fast = (tables[m].column("clip_score").to_numpy() for m in ("exact", "fast"))
    np.testing.assert_allclose(fast, exact, atol=0.02)
    for mode in runs:
        (first,) = (tmp_path / mode / "scores").glob("*.parquet")
        job = json.loads(pq.read_schema(first).metadata[b"clipbeam.job"])
        assert job["preprocess"] == mode
