"""--resume never loses or duplicates a row: changed input sets, outputs the input would read,
and the temporary files of killed runs.

A work unit is its file (path, size + modification time, or generation on gs://) and row group;
``_job.json`` records the planned files, and each unit's marker records its identity.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter

import pyarrow.parquet as pq
import pytest

from clipbeam.pipeline import cli
from tests.datasets import build_dataset
from tests.pipeline.jobtools import DIRECT, check_accounting, run_job

ARGS = ("--id-column", "id", "--batch-size", "4")


def _argv(pattern: str, out, model, *more: str) -> list[str]:
    return ["score", "--input", pattern, "--output", str(out), "--model", str(model), *more]


def launch_error(capsys, argv: list[str]) -> str:
    status = cli.main([*argv, *DIRECT])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip().removeprefix("clipbeam: error: ")


def _ids(out, folder: str = "scores") -> list[str]:
    return [
        i
        for path in sorted((out / folder).glob("*.parquet"))
        for i in pq.read_table(path).column("id").to_pylist()
    ]


@pytest.fixture
def two_files(tmp_path, clip_checkpoint):
    """Two files scored into out/, and a third file (sorting first) kept aside."""
    data = build_dataset(tmp_path / "in", num_files=3, rows_per_file=6, row_group_size=3, seed=5)
    aside = tmp_path / "aside.parquet"
    shutil.move(data.files[0], aside)
    out = tmp_path / "out"
    run_job("score", data.pattern, str(out), clip_checkpoint, *ARGS)
    return data, aside, out


@pytest.mark.parametrize("change", ["added", "gone", "rewritten"])
def test_resume_refuses_a_changed_input_set(capsys, two_files, clip_checkpoint, change):
    data, aside, out = two_files
    if change == "added":  # the case: a third file that sorts first
        shutil.copy(aside, data.files[0])
        changed = data.files[0]
    elif change == "gone":
        os.remove(data.files[2])
        changed = data.files[2]
    else:  # the same name, other rows
        table = pq.read_table(data.files[1])
        pq.write_table(table.slice(0, 4), data.files[1], row_group_size=3)
        changed = data.files[1]
    before = sorted(p.name for p in (out / "scores").iterdir())
    message = launch_error(
        capsys, _argv(data.pattern, out, clip_checkpoint, *ARGS, "--resume", "--dtype", "float32")
    )
    assert message.startswith(f"--resume: the input files changed since the run in {out}")
    assert f"1 {change} ({changed})" in message
    assert "empty --output folder" in message
    assert sorted(p.name for p in (out / "scores").iterdir()) == before  # nothing touched


def test_unchanged_inputs_resume(two_files, clip_checkpoint):
    data, _, out = two_files
    run = run_job("score", data.pattern, str(out), clip_checkpoint, *ARGS, "--resume")
    assert run.summary["resumed_units"] == run.summary["units"] == 4
    assert sorted(_ids(out)) == sorted(r.id for r in data.rows[6:])


def test_marker_of_another_file_is_not_trusted(two_files, clip_checkpoint):
    """Below the launch check: a record without file versions (an older clipbeam) and a new file
    that sorts first, so every unit name now means another file. Markers record their unit, so
    none is taken for another's: every id once, and counts that add up."""
    data, aside, out = two_files
    record = json.loads((out / "_job.json").read_text())
    del record["files"]
    (out / "_job.json").write_text(json.dumps(record))
    shutil.copy(aside, data.files[0])
    run = run_job("score", data.pattern, str(out), clip_checkpoint, *ARGS, "--resume")
    written = _ids(out)
    assert Counter(written) == Counter(r.id for r in data.rows)  # 18 rows, each once
    assert run.summary["input_rows"] == run.summary["output_rows"] == 18
    assert run.summary["resumed_units"] == 0


@pytest.mark.parametrize(
    ("pattern", "output"),
    [
        ("{root}", "{root}/out"),  # a folder takes every Parquet file below it
        ("{root}/**.parquet", "{root}/out"),
        ("{root}/**", "{root}/deep/out"),
        ("{root}/*.parquet", "{root}"),  # not reached: outputs are in sub-folders ...
    ],
)
def test_output_that_the_input_reaches(capsys, tmp_path, clip_checkpoint, pattern, output):
    data = build_dataset(tmp_path / "in", num_files=2, rows_per_file=3, seed=2)
    pattern, output = (s.format(root=data.root) for s in (pattern, output))
    argv = _argv(pattern, output, clip_checkpoint, *ARGS, "--dtype", "float32")
    if output == data.root:
        # ... so the job runs, and its resume reads exactly the input files again.
        run_job("score", pattern, output, clip_checkpoint, *ARGS)
        run = run_job("score", pattern, output, clip_checkpoint, *ARGS, "--resume")
        check_accounting(run, data, output_folders=["scores"])
        return
    message = launch_error(capsys, argv)
    assert message.startswith(f"--input {pattern!r} would read this job's own output files")
    assert not os.path.exists(output)  # refused before anything was created


def test_output_named_hidden_is_not_reached(tmp_path, clip_checkpoint):
    """Names starting with "_" are never input (as in pyarrow.dataset): such an output is fine."""
    data = build_dataset(tmp_path / "in", num_files=1, rows_per_file=3, seed=4)
    out = f"{data.root}/_clip"
    run_job("score", data.root, out, clip_checkpoint, *ARGS)
    run = run_job("score", data.root, out, clip_checkpoint, *ARGS, "--resume")
    check_accounting(run, data, output_folders=["scores"])


def test_temporaries_of_killed_runs_are_removed(two_files, clip_checkpoint):
    """A kill -9 between creating a temporary file and renaming it leaves hidden
    ``.part-...parquet.<hex>.tmp`` files; redoing the unit removes them (its own only)."""
    data, _, out = two_files
    redo = "part-00000-00001"
    (out / "_units" / f"write-{redo}.json").unlink()
    left = [
        out / "scores" / f".{redo}.parquet.{uuid.uuid4().hex}.tmp",
        out / "errors" / f".{redo}.parquet.{uuid.uuid4().hex}.tmp",
        out / "_units" / f".write-{redo}.json.{uuid.uuid4().hex}.tmp",
    ]
    other = out / "scores" / f".part-00000-00011.parquet.{uuid.uuid4().hex}.tmp"
    for path in [*left, other]:
        path.write_bytes(b"PAR1 half a file")
    run = run_job("score", data.pattern, str(out), clip_checkpoint, *ARGS, "--resume")
    assert run.summary["resumed_units"] == 3
    assert not any(p.exists() for p in left)
    assert other.exists()  # not this unit's: no unit of the job writes that name
    assert sorted(_ids(out)) == sorted(r.id for r in data.rows[6:])
