"""Launch errors: one message on stderr, no traceback, exit status 2, and no pipeline built."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from clipbeam.pipeline import cli
from clipbeam.pipeline.options import LaunchError
from tests.datasets import build_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("launch") / "data", num_files=2, rows_per_file=3)


@pytest.fixture(autouse=True)
def no_pipeline(monkeypatch):
    """A launch error must come before any pipeline is built or run."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built although launch checks should have failed")

    monkeypatch.setattr("clipbeam.pipeline.jobs.build_job", refuse)


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


# What each job needs beside --input, --output and --model to be a valid job.
REQUIRED = {
    "embed": [],
    "score": [],
    "filter": ["--min-score", "0.1"],
    "classify": ["--labels", "cat,dog"],
}
JOBS = list(REQUIRED)
COLUMNS = "id (string), image (binary), text (string), source (string), rank (int64)"


def job_of(command: str, inputs: str, output: Path | str, model: str | Path, *more: str):
    """``command`` with the options it needs to be valid, then ``more``."""
    return job(command, inputs, output, model, *REQUIRED[command], *more)


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


@pytest.mark.parametrize("command", JOBS)
@pytest.mark.parametrize(
    ("option", "column"),
    [("--image-column", "picture"), ("--text-column", "caption"), ("--id-column", "key")],
)
def test_missing_column_lists_the_columns(
    capsys, tmp_path, dataset, clip_checkpoint, command, option, column
):
    message = launch_error(
        capsys,
        *job_of(command, dataset.pattern, tmp_path / "o", clip_checkpoint, option, column),
    )
    assert message.startswith(f"{option} {column!r} is not a column of the input;")
    assert COLUMNS in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", JOBS)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--text-column", "rank"],
            "--text-column 'rank' has type int64, but captions must be strings",
        ),
        (["--image-column", "rank"], "image column 'rank' has type int64"),
        (
            ["--id-column", "image"],
            "--id-column 'image' has type binary, but ids must be strings or integers",
        ),
        (["--keep-columns", "width,rank"], "--keep-columns width: not in the input"),
    ],
)
def test_wrong_column_types(capsys, tmp_path, dataset, clip_checkpoint, command, args, message):
    found = launch_error(
        capsys, *job_of(command, dataset.pattern, tmp_path / "o", clip_checkpoint, *args)
    )
    assert message in found
    assert not (tmp_path / "o").exists()


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


@pytest.mark.parametrize("command", JOBS)
def test_model_not_found(capsys, tmp_path, dataset, command):
    out = tmp_path / "o"
    message = launch_error(
        capsys, *job_of(command, dataset.pattern, out, tmp_path / "no-such-model")
    )
    assert message.startswith(f"--model {tmp_path / 'no-such-model'}:")
    assert "not found" in message
    # The model is checked before anything is created: no output folder is left behind.
    assert not out.exists()


def test_model_does_not_load(capsys, tmp_path, dataset):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    out = tmp_path / "nested" / "o"
    message = launch_error(capsys, *job("embed", dataset.pattern, out, broken))
    assert message.startswith(f"--model {broken}")
    assert not (tmp_path / "nested").exists()


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
    from clipbeam.pipeline.arguments import parse_args
    from clipbeam.pipeline.validate import JOB_FILE, job_record

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


@pytest.mark.parametrize("runner", [[], ["--runner", "DirectRunner"], ["--runner", "direct"]])
def test_cuda_without_gpu(capsys, tmp_path, dataset, clip_checkpoint, runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = launch_error(
        capsys,
        *job("embed", dataset.pattern, tmp_path / "o", clip_checkpoint, "--device", "cuda"),
        *runner,
    )
    assert "--device cuda was asked for" in message and "sees no CUDA GPU" in message


# -- Beam pipeline options with a bad value: one line, not Beam's usage and exit ---------------


@pytest.mark.parametrize(
    ("beam_args", "message"),
    [
        (
            ["--direct_num_workers", "abc"],
            "Beam pipeline option --direct_num_workers takes an integer, got 'abc'",
        ),
        (["--runner"], "Beam pipeline option --runner is given without a value: it takes a runner"),
        (
            ["--direct_running_mode", "bogus"],
            "Beam pipeline option --direct_running_mode takes one of in_memory, "
            "multi_threading, multi_processing, got 'bogus'",
        ),
        (["--runner", "bogus"], "Beam pipeline option --runner takes a runner name"),
        (["--runner=DataflowRunner", "--num_workers=x"], "--num_workers takes an integer, got 'x'"),
    ],
)
def test_bad_beam_option_value(capsys, tmp_path, dataset, clip_checkpoint, beam_args, message):
    out = tmp_path / "o"
    found = launch_error(capsys, *job("embed", dataset.pattern, out, clip_checkpoint), *beam_args)
    assert message in found
    assert "\n" not in found and "usage:" not in found
    assert not out.exists()


def test_bad_beam_option_value_from_the_shell(tmp_path):
    """The console script as a user runs it: one error line, status 2, no usage and no
    traceback (Beam's own parser would print 134 lines of usage and exit)."""
    import subprocess
    import sys

    argv = job("embed", "x", tmp_path / "o", "m", "--direct_num_workers", "abc")
    done = subprocess.run(
        [sys.executable, "-m", "clipbeam.pipeline", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "usage:" not in done.stderr and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("clipbeam: error: ")]
    assert errors == [
        "clipbeam: error: Beam pipeline option --direct_num_workers takes an integer, got 'abc'"
    ]
    assert done.stdout == ""


# -- Dataflow: workers are other machines, so local paths are refused at launch ------------------

DATAFLOW = [
    "--project=clipbeam-test",
    "--region=us-central1",
    "--temp_location=gs://clipbeam-test/tmp",
    "--dry_run=true",
]


@pytest.mark.parametrize("runner", ["DataflowRunner", "dataflow", "Dataflow"])
@pytest.mark.parametrize("command", JOBS)
@pytest.mark.parametrize(
    ("local", "message"),
    [
        ("input", "--input '{data}' is a local path, but on Dataflow every worker"),
        ("output", "--output '{out}' is a local path, but on Dataflow every worker"),
        ("model", "--model '{model}' is a local path or a Hugging Face Hub id, but on Dataflow"),
    ],
)
def test_dataflow_refuses_local_paths(
    capsys, tmp_path, dataset, clip_checkpoint, runner, command, local, message
):
    out = tmp_path / "o"
    remote = {
        "input": "gs://clipbeam-test/in/*.parquet",
        "output": "gs://clipbeam-test/out",
        "model": "gs://clipbeam-test/model",
    }
    on_disk = {"input": dataset.pattern, "output": str(out), "model": str(clip_checkpoint)}
    paths = {**remote, local: on_disk[local]}
    argv = job_of(command, paths["input"], paths["output"], paths["model"])
    found = launch_error(capsys, *argv, f"--runner={runner}", *DATAFLOW)
    expected = message.format(data=dataset.pattern, out=out, model=clip_checkpoint)
    assert found.startswith(expected), found
    assert "pass a gs:// URL" in found and "\n" not in found
    assert not out.exists()  # refused before anything was created


@pytest.mark.parametrize(
    "model", ["openai/clip-vit-base-patch32", "file:///models/clip", "models/clip"]
)
def test_dataflow_refuses_a_model_workers_cannot_fetch(capsys, model):
    argv = job("score", "gs://clipbeam-test/in/*.parquet", "gs://clipbeam-test/out", model)
    found = launch_error(capsys, *argv, "--runner", "DataflowRunner", *DATAFLOW)
    assert found.startswith(f"--model {model!r} is a local path or a Hugging Face Hub id")
    assert "or use a bundled model: demo-clip, demo-chinese-clip" in found


def test_check_remote_accepts_urls_bundled_models_and_a_local_labels_file(tmp_path):
    """A labels file is read on the launcher and its labels travel in the job: a direct run may
    read it from the launcher's disk (the template launcher has no user files, and refuses it)."""
    from clipbeam.pipeline.arguments import parse_args
    from clipbeam.pipeline.validate import check_remote

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    for model in ("gs://clipbeam-test/model", "demo-clip", "s3://bucket/model"):
        parsed = parse_args(
            job(
                "classify",
                "gs://clipbeam-test/in/*.parquet",
                "gs://clipbeam-test/out",
                model,
                "--labels-file",
                str(labels),
            )
        )
        check_remote(parsed.spec, parsed.inputs)
    with pytest.raises(LaunchError, match=r"^--labels-file '.*labels.txt' is a local path"):
        check_remote(parsed.spec, parsed.inputs, labels_file=parsed.labels_file)


@pytest.mark.parametrize(
    ("runner", "given", "schemes"),
    [
        ("DataflowRunner", [], ("gs", "http", "https")),
        ("dataflow", [], ("gs", "http", "https")),
        ("DataflowRunner", ["--allowed-url-schemes", "file,gs"], ("file", "gs")),
        (
            "DataflowRunner",
            ["--allowed-url-schemes", "file,gs,http,https"],
            ("file", "gs", "http", "https"),
        ),
        (None, [], ("file", "gs", "http", "https")),
        ("DirectRunner", [], ("file", "gs", "http", "https")),
    ],
)
def test_local_image_paths_are_refused_on_dataflow_unless_allowed(runner, given, schemes):
    from clipbeam.pipeline.arguments import parse_args
    from clipbeam.pipeline.validate import for_runner

    parsed = parse_args(job("score", "gs://b/in", "gs://b/out", "demo-clip", *given))
    assert for_runner(parsed.spec, runner).allowed_url_schemes == schemes


def test_the_console_script_leaves_the_callers_logging_as_it_was(capsys, monkeypatch, dataset):
    """``main`` run in a caller's process (a notebook, a test) prints its progress lines on that
    call's stderr and takes its handler away again: none is left writing to a closed stream."""
    log = logging.getLogger("clipbeam")
    before = (list(log.handlers), log.level, log.propagate)
    launch_error(capsys, "score", "--input", dataset.pattern, "--output", "/x")
    assert (list(log.handlers), log.level, log.propagate) == before
    seen = []

    def capture(spec, *args, **kwargs):
        seen.append([h.stream for h in log.handlers if isinstance(h, logging.StreamHandler)])
        raise LaunchError("stop here")

    monkeypatch.setattr(cli, "_launch", capture)
    assert cli.main(["score"]) == 2
    assert seen == [[sys.stderr]]
    assert (list(log.handlers), log.level, log.propagate) == before
