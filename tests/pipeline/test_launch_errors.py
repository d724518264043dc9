"""Launch errors: one message on stderr, no traceback, exit status 2, and no pipeline built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cli
from tests.datasets import build_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("launch") / "data", num_files=2, rows_per_file=3)


@pytest.fixture(autouse=True)
def no_pipeline(monkeypatch):
    """A launch error must come before any pipeline is built or run."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built although launch checks should have failed")

    monkeypatch.setattr("pipeline.jobs.build_job", refuse)


def launch_error(capsys, *argv: str) -> str:
    """Runs the console script; returns its one stderr line after checking the exit status."""
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("clipbeam: error: "), captured.err
    return captured.err.strip().removeprefix("clipbeam: error: ")


def job(command: str, inputs: str, output: Path | str, model: str | Path, *more: str) -> list[str]:
    return [command, "--input", inputs, "--output", str(output), "--model", str(model), *more]


def test_no_input_file(capsys, tmp_path, clip_checkpoint):
    message = launch_error(
        capsys, *job("embed", str(tmp_path / "none" / "*.parquet"), tmp_path / "o", clip_checkpoint)
    )
    assert "matches no file" in message and "none/*.parquet" in message
    assert not (tmp_path / "o").exists()


def test_not_parquet(capsys, tmp_path, clip_checkpoint):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    message = launch_error(
        capsys, *job("embed", str(tmp_path / "bad.parquet"), tmp_path / "o", clip_checkpoint)
    )
    assert "cannot read input file" in message and "bad.parquet" in message


def test_missing_column_lists_the_columns(capsys, tmp_path, dataset, clip_checkpoint):
    message = launch_error(
        capsys,
        *job("score", dataset.pattern, tmp_path / "o", clip_checkpoint, "--text-column", "caption"),
    )
    assert message.startswith("--text-column 'caption' is not a column of the input;")
    assert "id (string), image (binary), text (string), source (string), rank (int64)" in message


def test_wrong_column_types(capsys, tmp_path, dataset, clip_checkpoint):
    base = job("score", dataset.pattern, tmp_path / "o", clip_checkpoint)
    message = launch_error(capsys, *base, "--text-column", "rank")
    assert "--text-column 'rank' has type int64, but captions must be strings" in message
    message = launch_error(capsys, *base, "--image-column", "rank")
    assert "image column 'rank' has type int64" in message
    message = launch_error(capsys, *base, "--id-column", "image")
    assert "--id-column 'image' has type binary, but ids must be strings or integers" in message
    message = launch_error(capsys, *base, "--keep-columns", "width,rank")
    assert message.startswith("--keep-columns width: not in the input")


def test_image_format_does_not_fit_the_column(capsys, tmp_path, dataset, clip_checkpoint):
    message = launch_error(
        capsys,
        *job("embed", dataset.pattern, tmp_path / "o", clip_checkpoint, "--image-format", "path"),
    )
    assert "has type binary, but image format 'path' needs string" in message
    assert "it looks like --image-format bytes" in message


def test_text_only_dataset(capsys, tmp_path, clip_checkpoint):
    texts = build_dataset(tmp_path / "texts", num_files=1, rows_per_file=2, image_column=None)
    message = launch_error(capsys, *job("embed", texts.pattern, tmp_path / "o", clip_checkpoint))
    assert "--image-column 'image' is not a column" in message
    assert "or --image-column none to embed texts only" in message
    message = launch_error(capsys, *job("score", texts.pattern, tmp_path / "o", clip_checkpoint))
    assert "--image-column 'image' is not a column" in message
    message = launch_error(
        capsys,
        *job("score", texts.pattern, tmp_path / "o", clip_checkpoint, "--image-column", "none"),
    )
    assert "score needs both an image column and a text column" in message


def test_model_not_found(capsys, tmp_path, dataset):
    message = launch_error(
        capsys, *job("embed", dataset.pattern, tmp_path / "o", tmp_path / "no-such-model")
    )
    assert message.startswith(f"--model {tmp_path / 'no-such-model'}:")
    assert "not found" in message


def test_model_does_not_load(capsys, tmp_path, dataset):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    message = launch_error(capsys, *job("embed", dataset.pattern, tmp_path / "o", broken))
    assert message.startswith(f"--model {broken}")


def test_output_not_writable(capsys, tmp_path, dataset, clip_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    message = launch_error(capsys, *job("embed", dataset.pattern, blocker / "out", clip_checkpoint))
    assert message.startswith(f"--output {blocker / 'out'} is not writable")


def test_output_holds_an_earlier_run(capsys, tmp_path, dataset, clip_checkpoint):
    out = tmp_path / "o"
    (out / "errors").mkdir(parents=True)
    (out / "errors" / "part-00000-00000.parquet").write_bytes(b"x")
    message = launch_error(capsys, *job("embed", dataset.pattern, out, clip_checkpoint))
    assert "already holds results of an earlier run (errors)" in message
    assert "Pass --resume" in message


def test_resume_of_a_different_job(capsys, tmp_path, dataset, clip_checkpoint):
    from pipeline.options import parse_args
    from pipeline.validate import JOB_FILE, job_record

    out = tmp_path / "o"
    out.mkdir()
    earlier = parse_args(job("embed", dataset.pattern, out, "another-model"))
    (out / JOB_FILE).write_text(json.dumps(job_record(earlier.spec, earlier.inputs)))
    message = launch_error(capsys, *job("embed", dataset.pattern, out, clip_checkpoint, "--resume"))
    assert message.startswith(f"--resume: {out} holds a run of a different job (model: ")
    assert "'another-model' then" in message


def test_conflicting_options(capsys, tmp_path, dataset, clip_checkpoint):
    base = job("filter", dataset.pattern, tmp_path / "o", clip_checkpoint)
    message = launch_error(capsys, *base, "--min-score", "0.1", "--top-fraction", "0.3")
    assert message.startswith("pass --min-score or --top-fraction, not both")
    message = launch_error(capsys, *base, "--min_scor", "0.1")
    assert "unknown option --min_scor" in message and "did you mean --min_score" in message


def test_cuda_without_gpu(capsys, tmp_path, dataset, clip_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = launch_error(
        capsys, *job("embed", dataset.pattern, tmp_path / "o", clip_checkpoint, "--device", "cuda")
    )
    assert "--device cuda was asked for" in message and "sees no CUDA GPU" in message
