"""Ctrl-C mid-run: exit status 130 and the one-line --resume hint, no traceback; the resume then
finishes with every row once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.datasets import build_dataset
from tests.pipeline.jobtools import DIRECT, check_accounting, run_job

HINT = (
    "clipbeam: interrupted; finished work units are kept, rerun the same command with --resume "
    "to continue"
)


def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, clip_checkpoint):
    data = build_dataset(tmp_path / "in", num_files=4, rows_per_file=16, row_group_size=4, seed=3)
    out = tmp_path / "out"
    args = ["--id-column", "id", "--batch-size", "2", "--dtype", "float32"]
    command = [sys.executable, "-m", "clipbeam.pipeline", "score", "--input", data.pattern]
    command += ["--output", str(out), "--model", str(clip_checkpoint), *args, *DIRECT]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while not (out / "_units").is_dir() or not any((out / "_units").glob("*.json")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no unit finished within 300 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == HINT
    assert not (out / "summary.json").exists()

    run = run_job("score", data.pattern, str(out), clip_checkpoint, *args, "--resume")
    check_accounting(run, data, output_folders=["scores"])
