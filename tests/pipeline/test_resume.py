"""A job killed half way, then rerun with --resume: no id missing, none twice, exact counts; a
resumed --top-fraction filter splits by the cut its first run stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.datasets import build_dataset
from tests.pipeline.jobtools import DIRECT, check_accounting, check_errors, run_job

REPO = Path(__file__).resolve().parents[2]


def test_killed_run_resumes(clip_checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "in",
        num_files=4,
        rows_per_file=6,
        row_group_size=2,
        plant={"corrupt_image": 1, "null_text": 1},
        seed=17,
    )
    out = tmp_path / "out"
    args = ["--id-column", "id", "--batch-size", "2", "--dtype", "float32"]
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "score",
        "--input",
        data.pattern,
        "--output",
        str(out),
        "--model",
        str(clip_checkpoint),
        *args,
        *DIRECT,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    # Its own session, so the kill reaches every process the run started and nothing else.
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    markers = out / "_units"
    deadline = time.monotonic() + 300
    try:
        while not (markers.is_dir() and any(markers.glob("*.json"))):
            if process.poll() is not None:
                raise AssertionError(
                    "the job ended before it could be killed:\n" + process.stdout.read().decode()
                )
            assert time.monotonic() < deadline, "no unit finished within 300 s"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        process.stdout.close()

    finished = len(list(markers.glob("*.json")))
    assert 0 < finished < data.num_row_groups()
    assert not (out / "summary.json").exists()

    run = run_job("score", data.pattern, str(out), clip_checkpoint, *args, "--resume")
    check_accounting(run, data, output_folders=["scores"])
    check_errors(run, data)
    assert run.summary["resumed_units"] >= finished
    assert run.summary["units"] == data.num_row_groups()


def test_resumed_top_fraction_keeps_the_first_runs_cut(clip_checkpoint, tmp_path):
    data = build_dataset(
        tmp_path / "in",
        num_files=2,
        rows_per_file=6,
        row_group_size=3,
        plant={"null_text": 1},
        seed=18,
    )
    out = tmp_path / "out"
    args = ["--id-column", "id", "--top-fraction", "0.5"]
    first = run_job("filter", data.pattern, str(out), clip_checkpoint, *args)
    stored_path = out / "_top_fraction.json"
    stored = json.loads(stored_path.read_text())
    assert stored == {"top_fraction": 0.5, "threshold": first.summary["top_fraction_threshold"]}

    # Another cut, as another run's sketch could give above ~275k rows (the sketch is exact on
    # these 11); then the run dies after storing it, before splitting any unit.
    scores = sorted(
        first.table("kept").column("clip_score").to_pylist()
        + first.table("rejected").column("clip_score").to_pylist()
    )
    other = (scores[2] + scores[3]) / 2  # keeps 8 of 11 rows instead of 5 or 6
    assert other < first.summary["top_fraction_threshold"]
    stored_path.write_text(json.dumps({**stored, "threshold": other}))
    assert not (out / "_staging").exists()  # dropped when the first run finished
    for marker in (out / "_units").glob("select-*.json"):
        marker.unlink()
        _restage(out, marker.name.removeprefix("select-").removesuffix(".json"))

    second = run_job("filter", data.pattern, str(out), clip_checkpoint, *args, "--resume")
    check_accounting(second, data, output_folders=["kept", "rejected"])
    check_errors(second, data)
    assert second.summary["top_fraction_threshold"] == other  # read back, not recomputed
    assert json.loads(stored_path.read_text())["threshold"] == other
    kept = second.table("kept").column("clip_score").to_pylist()
    rejected = second.table("rejected").column("clip_score").to_pylist()
    assert len(kept) == 8 and min(kept) >= other > max(rejected)
    assert second.summary["resumed_units"] == data.num_row_groups()  # pass 1 only


def _restage(out: Path, unit: str) -> None:
    """Writes back the staged rows of a unit (its kept and rejected rows), as pass 1 left them:
    no reject reason yet, as --top-fraction is the only rule."""
    rejected = pq.read_table(out / "rejected" / f"{unit}.parquet")
    kept = pq.read_table(out / "kept" / f"{unit}.parquet")
    reason = rejected.schema.field("reject_reason")
    rows = pa.concat_tables([kept, rejected.drop_columns([reason.name])])
    rows = rows.append_column(reason, pa.nulls(rows.num_rows, reason.type))
    staged = rows.select(rejected.column_names).cast(rejected.schema)
    (out / "_staging").mkdir(exist_ok=True)
    pq.write_table(staged, out / "_staging" / f"{unit}.parquet")
