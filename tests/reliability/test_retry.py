"""A bundle that fails on its first attempt and is retried by the runner: every id exactly once.

Beam runners retry a failed bundle (Dataflow up to four times in batch). Of the local runners,
only the BundleBasedDirectRunner does: the default DirectRunner (FnApiRunner) fails the pipeline
on the first bundle error, as checked below. So the job runs on the BundleBasedDirectRunner with
two failures injected, each only on the first attempt of its unit:

- mid-unit: publishing the unit's scores file fails, after its rows were computed and spooled;
- after the unit's files are published but before its completion marker is written.

Both retries redo the whole bundle; the output must still hold every input id exactly once
(output or error row), and summary.json must count every row once. (A crashed run resumed with
``--resume`` is tested in tests/pipeline/test_resume.py and tests/transforms/test_process.py.)
"""

from __future__ import annotations

import threading
from collections import Counter

import apache_beam as beam
import pytest

from tests.datasets import build_dataset
from tests.pipeline.jobtools import check_errors, ids, run_job

RETRYING = ["--runner", "BundleBasedDirectRunner"]


class _FailOnce:
    """Counts calls per key and raises on the first call for the keys it targets."""

    def __init__(self, targets: set[str]):
        self.targets = targets
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, key: str) -> None:
        with self.lock:
            self.calls[key] += 1
            first = self.calls[key] == 1
        if first and key in self.targets:
            raise RuntimeError(f"injected failure: first attempt at {key}")


def test_failed_bundles_are_retried_without_losing_or_doubling_rows(
    clip_checkpoint, tmp_path, monkeypatch
):
    from clipbeam.transforms import storage, writer

    data = build_dataset(
        tmp_path / "in",
        num_files=2,
        rows_per_file=6,
        row_group_size=3,
        plant={"corrupt_image": 1, "null_text": 1},
        seed=23,
    )
    out = tmp_path / "out"
    mid_unit = str(out / "scores" / "part-00000-00001.parquet")
    before_marker = str(out / "_units" / "write-part-00001-00000.json")
    fail = _FailOnce({mid_unit, before_marker})

    commit = writer.ParquetSpool.commit

    def failing_commit(self):
        fail(self.destination)
        commit(self)

    write_atomic = storage.write_atomic

    def failing_write_atomic(path, data):
        fail(str(path))
        write_atomic(path, data)

    monkeypatch.setattr(writer.ParquetSpool, "commit", failing_commit)
    monkeypatch.setattr(storage, "write_atomic", failing_write_atomic)

    run = run_job(
        "score",
        data.pattern,
        str(out),
        clip_checkpoint,
        "--id-column",
        "id",
        "--batch-size",
        "2",
        beam_args=RETRYING,
    )

    # Both failures happened and their units were attempted again (more than once when both
    # units share a bundle: the second failure then repeats the first unit too).
    assert fail.calls[mid_unit] >= 2 and fail.calls[before_marker] >= 2
    written, errors = ids(run.table("scores")), ids(run.table("errors"))
    assert sorted(written + errors) == sorted(r.id for r in data.rows)  # none lost, none twice
    check_errors(run, data)
    summary = run.summary
    assert (summary["input_rows"], summary["output_rows"], summary["error_rows"]) == (
        len(data),
        len(written),
        len(errors),
    )
    assert summary["units"] == data.num_row_groups()
    # summary.json is summed from the units' emitted stats, which Beam keeps from the successful
    # attempt only. (This runner's counters, unlike Dataflow's committed counters, also keep the
    # increments of failed attempts, so they are not compared here.)
    assert sorted(p.name for p in (out / "scores").iterdir()) == [
        f"part-{f:05d}-{g:05d}.parquet" for f in range(2) for g in range(2)
    ]


def test_the_default_direct_runner_does_not_retry():
    """Why the test above names the BundleBasedDirectRunner."""
    attempts = Counter()

    def flaky(x):
        attempts[x] += 1
        if attempts[x] == 1:
            raise RuntimeError("first attempt")
        return x

    with pytest.raises(RuntimeError, match="first attempt"), beam.Pipeline("DirectRunner") as p:
        _ = p | beam.Create([1]) | beam.Map(flaky)
