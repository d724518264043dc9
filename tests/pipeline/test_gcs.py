"""The jobs reading and writing gs:// through the real client code, against the storage emulator
(Beam's GCS filesystem for listing and writes, gcsfs for Parquet and image reads), in memory and
under ``--direct_running_mode=multi_processing --direct_num_workers=2``; and the jobs not run
that way on gs:// (score, classify) under multi_processing on local paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.datasets import FAULTS, build_dataset
from tests.pipeline.jobtools import (
    Reference,
    check_accounting,
    check_errors,
    expected_id,
    run_job,
)

MULTI = ["--runner", "DirectRunner", "--direct_running_mode=multi_processing"]
MULTI += ["--direct_num_workers=2"]
IN_MEMORY = ["--runner", "DirectRunner", "--direct_num_workers", "1"]


def upload(folder: Path, url: str) -> str:
    """Copies a local checkpoint folder to gs://, so the model is read from the bucket too."""
    from clipbeam.transforms import storage

    for path in sorted(folder.iterdir()):
        storage.write_atomic(f"{url}/{path.name}", path.read_bytes())
    return url


@pytest.mark.parametrize(
    ("command", "args", "folders", "beam_args"),
    [
        pytest.param("embed", [], ["embeddings"], MULTI, id="embed-multiprocessing"),
        pytest.param("score", [], ["scores"], IN_MEMORY, id="score"),
        pytest.param(
            "filter",
            ["--top-fraction", "0.5", "--min-image-side", "20"],
            ["kept", "rejected"],
            MULTI,
            id="filter-multiprocessing",
        ),
        pytest.param(
            "classify", ["--labels", "cat,rocket,coins"], ["labels"], IN_MEMORY, id="classify"
        ),
    ],
)
def test_job_on_gcs(command, args, folders, beam_args, clip_checkpoint, gcs_dir):
    # Images are paths to gs:// objects, read per row through fsspec.
    data = build_dataset(
        f"{gcs_dir}/in",
        num_files=2,
        rows_per_file=6,
        image_format="path",
        plant=dict.fromkeys(FAULTS, 1) if command != "classify" else {"missing_image": 1},
        seed=19,
    )
    model = upload(clip_checkpoint, f"{gcs_dir}/model")
    run = run_job(
        command,
        data.pattern,
        f"{gcs_dir}/out",
        model,
        "--id-column",
        "id",
        *args,
        beam_args=beam_args,
    )
    check_accounting(run, data, output_folders=folders)
    check_errors(run, data)
    if command in ("embed", "score"):
        reference = Reference(clip_checkpoint)
        by_id = {expected_id(data, r): r for r in data.good_rows}
        table = run.table(folders[0])
        for row in table.to_pylist():
            source = by_id[row["id"]]
            want = float(reference.image(source) @ reference.text(source.text))
            assert abs(row["clip_score"] - want) <= 1e-5
            if command == "embed":
                got = np.asarray(row["image_embedding"])
                assert np.abs(got - reference.image(source)).max() <= 1e-5


@pytest.mark.parametrize("command", ["score", "classify"])
def test_job_in_worker_processes(command, clip_checkpoint, tmp_path):
    # Tiny on purpose: most of the time goes to starting the two worker processes.
    data = build_dataset(
        tmp_path / "in",
        num_files=2,
        rows_per_file=3,
        row_group_size=2,
        plant={"corrupt_image": 1, "null_text": 1} if command == "score" else {"empty_image": 1},
        seed=23,
    )
    labels = ["cat", "rocket", "coins"]
    args = ["--labels", ",".join(labels)] if command == "classify" else []
    run = run_job(
        command,
        data.pattern,
        str(tmp_path / "out"),
        clip_checkpoint,
        "--id-column",
        "id",
        *args,
        beam_args=MULTI,
    )
    folder = "scores" if command == "score" else "labels"
    check_accounting(run, data, output_folders=[folder])
    check_errors(run, data)
    assert run.summary["units"] == data.num_row_groups() == run.counters["units"]
    reference = Reference(clip_checkpoint)
    by_id = {expected_id(data, r): r for r in data.good_rows}
    rows = run.table(folder).to_pylist()
    assert len(rows) == len(by_id)
    if command == "score":
        for row in rows:
            source = by_id[row["id"]]
            want = float(reference.image(source) @ reference.text(source.text))
            assert abs(row["clip_score"] - want) <= 1e-5
    else:
        classifier = reference.prompts(labels, ["a photo of a {}."])
        for row in rows:
            logits = reference.logit_scale * (classifier @ reference.image(by_id[row["id"]]))
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            assert row["labels"][0] == labels[int(np.argmax(probs))]
            assert abs(row["probabilities"][0] - probs.max()) <= 1e-5
