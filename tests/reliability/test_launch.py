"""Launch errors the corpus brings: a bad shard among good ones, and models that try to run code.

Every error is one line on stderr, exit status 2, no traceback and no pipeline built (the other
launch errors are in tests/pipeline/test_launch_errors.py).
"""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clipbeam.pipeline import cli
from tests.datasets import build_dataset


@pytest.fixture(autouse=True)
def no_pipeline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built although launch checks should have failed")

    monkeypatch.setattr("clipbeam.pipeline.jobs.build_job", refuse)


@pytest.fixture
def dataset(tmp_path):
    return build_dataset(tmp_path / "data", num_files=2, rows_per_file=3, seed=3)


def launch_error(capsys, *argv: str) -> str:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    assert status == 2, captured
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip().removeprefix("clipbeam: error: ")


# What each job needs beside --input, --output and --model to be a valid job.
REQUIRED = {
    "embed": [],
    "score": [],
    "filter": ["--min-score", "0.1"],
    "classify": ["--labels", "cat,dog"],
}


def job(inputs: str, output, model, *more: str, command: str = "score") -> list[str]:
    return [
        command,
        "--input",
        inputs,
        "--output",
        str(output),
        "--model",
        str(model),
        *REQUIRED[command],
        *more,
    ]


def write_shard(dataset, name: str, columns: dict[str, pa.Array]) -> str:
    path = f"{dataset.root}/{name}"
    pq.write_table(pa.table(columns), path)
    return path


# A later shard that does not fit, and whether the job reads captions for it to matter
# (classify reads images only: a shard without a text column is fine there).
SHARDS = [
    ({"id": ["x"], "image": [b"x"]}, "--text-column 'text' is not a column of the input", True),
    ({"id": ["x"], "image": [b"x"], "text": [1]}, "--text-column 'text' has type int64", True),
    ({"id": ["x"], "text": ["a"]}, "--image-column 'image' is not a column of the input", False),
    ({"id": ["x"], "image": [1], "text": ["a"]}, "image column 'image' has type int64", False),
    ({"id": [7], "image": [b"x"], "text": ["a"]}, "'id' is int64 there but string in", False),
]


@pytest.mark.parametrize(
    ("command", "columns", "message"),
    [
        pytest.param(command, columns, message, id=f"{command}-shard{i}")
        for command in REQUIRED
        for i, (columns, message, reads_text) in enumerate(SHARDS)
        if command != "classify" or not reads_text
    ],
)
def test_a_later_shard_that_does_not_fit_fails_at_launch(
    capsys, tmp_path, dataset, clip_checkpoint, command, columns, message
):
    shard = write_shard(dataset, "part-zzz.parquet", columns)
    inputs = f"{dataset.root}/*.parquet"
    argv = job(inputs, tmp_path / "o", clip_checkpoint, "--id-column", "id", command=command)
    found = launch_error(capsys, *argv)
    assert message in found and shard in found
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", list(REQUIRED))
def test_a_zero_byte_shard_fails_at_launch(capsys, tmp_path, dataset, clip_checkpoint, command):
    empty = tmp_path / "data" / "part-empty.parquet"
    empty.write_bytes(b"")
    argv = job(f"{dataset.root}/*.parquet", tmp_path / "o", clip_checkpoint, command=command)
    found = launch_error(capsys, *argv)
    assert found.startswith(f"cannot read input file {empty} as Parquet")
    assert not (tmp_path / "o").exists()


class _Exploit:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _weights_only_checkpoint(source, target):
    """A copy of ``source`` without model.safetensors, so pytorch_model.bin is what loads."""
    shutil.copytree(source, target)
    (target / "model.safetensors").unlink()
    return target


def test_a_model_whose_pickle_would_run_code_is_refused(capsys, tmp_path, dataset, clip_checkpoint):
    model = _weights_only_checkpoint(clip_checkpoint, tmp_path / "evil")
    marker = tmp_path / "pwned"
    torch.save({"payload": _Exploit(marker)}, model / "pytorch_model.bin")
    found = launch_error(capsys, *job(dataset.pattern, tmp_path / "o", model))
    assert found.startswith(f"--model {model}: refused to load {model / 'pytorch_model.bin'}")
    assert "weights_only=True" in found and "Pickled code is never executed" in found
    assert not marker.exists()


def test_a_torchscript_archive_is_refused(capsys, tmp_path, dataset, clip_checkpoint):
    model = _weights_only_checkpoint(clip_checkpoint, tmp_path / "scripted")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), model / "pytorch_model.bin")
    found = launch_error(capsys, *job(dataset.pattern, tmp_path / "o", model))
    # Recognised as TorchScript before torch.load is even called; nothing of it runs.
    assert found.startswith(f"--model {model}: refused to load {model / 'pytorch_model.bin'}")
    assert "TorchScript archive" in found and "never loads TorchScript" in found


def test_remote_code_in_a_checkpoint_is_never_imported(tmp_path, clip_checkpoint):
    from clipbeam.pipeline.arguments import parse_args
    from clipbeam.pipeline.validate import check_model

    model = tmp_path / "remote-code"
    shutil.copytree(clip_checkpoint, model)
    marker = tmp_path / "imported"
    (model / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    spec = parse_args(job("in/*.parquet", tmp_path / "o", model)).spec
    check_model(spec)  # loads the built-in CLIP model from the weights, as always
    assert not marker.exists()


# -- a missing column in a very wide file: a bounded list, the close matches first -------------


def test_missing_column_of_a_wide_file(capsys, tmp_path, clip_checkpoint):
    columns = {f"feature_{i:05d}": [i] for i in range(10_000)}
    columns.update({"id": ["x"], "image": [b"x"], "caption": ["a"], "captions_zh": ["b"]})
    columns["s" * 5000] = ["a column with a very long name"]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "in" / "wide.parquet")
    argv = job(str(tmp_path / "in" / "wide.parquet"), tmp_path / "out", clip_checkpoint)
    message = launch_error(capsys, *argv, "--text-column", "captoin")
    assert message.startswith("--text-column 'captoin' is not a column of the input")
    assert "closest: caption (string)" in message
    assert f"more of its {len(columns)} columns" in message
    assert len(message) < 2000, len(message)
    many = ",".join(f"kept_{i}" for i in range(500))
    message = launch_error(capsys, *argv, "--text-column", "caption", "--keep-columns", many)
    assert len(message) < 2000 and "and 480 more: not in the input" in message
