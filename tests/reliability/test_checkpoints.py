"""Broken checkpoints are refused at launch, in one line with exit status 2, naming the file and
the key or tensor: NaN or infinite weights, integer or bool tensors where floats belong, JSON
nested too deep or of the wrong type, and safetensors headers too large to parse."""

from __future__ import annotations

import json
import shutil
import struct
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipbeam.pipeline import cli
from tests.datasets import build_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("data"), num_files=1, rows_per_file=2, seed=1)


@pytest.fixture
def model(tmp_path, clip_checkpoint):
    copy = tmp_path / "model"
    shutil.copytree(clip_checkpoint, copy)
    return copy


def launch_error(capsys, dataset, model, tmp_path) -> str:
    argv = ["score", "--input", dataset.pattern, "--output", str(tmp_path / "out")]
    status = cli.main([*argv, "--model", str(model), "--dtype", "float32"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    return err.strip().removeprefix("clipbeam: error: ")


def _edit_weights(model, edit) -> str:
    state = load_file(model / "model.safetensors")
    name = sorted(k for k in state if k.endswith("q_proj.weight"))[0]
    state[name] = edit(state[name])
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_named(capsys, dataset, model, tmp_path, value):
    def poison(tensor):
        tensor = tensor.clone()
        tensor[0, :3] = value
        return tensor

    name = _edit_weights(model, poison)
    message = launch_error(capsys, dataset, model, tmp_path)
    assert "hold NaN or infinite values" in message
    assert f"{name} (3 of " in message


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_integer_weights_are_named(capsys, dataset, model, tmp_path, dtype):
    name = _edit_weights(model, lambda t: t.to(dtype))
    message = launch_error(capsys, dataset, model, tmp_path)
    assert f"tensor that is not floating point: {name}: {str(dtype)[6:]}" in message


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [100, 100_000])
@pytest.mark.parametrize("file", ["config.json", "tokenizer.json", "preprocessor_config.json"])
def test_deeply_nested_json(capsys, dataset, model, tmp_path, file, levels):
    text = (model / file).read_text().rstrip().removesuffix("}")
    (model / file).write_text(f'{text}, "extra_key": {_deep(levels)}}}')
    message = launch_error(capsys, dataset, model, tmp_path)
    assert f"{model / file} nests deeper than 64 levels (at key 'extra_key" in message


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: {**d, "model": {**d["model"], "vocab": [1, 2]}}, "model.vocab"),
        (lambda d: {**d, "model": {**d["model"], "vocab": {"a": "1"}}}, "model.vocab['a']"),
        (lambda d: {**d, "model": {**d["model"], "merges": 3}}, "model.merges"),
        (lambda d: {**d, "model": {**d["model"], "merges": [["a", 1]]}}, "model.merges[0]"),
        (lambda d: {**d, "added_tokens": {"a": 1}}, "added_tokens"),
        (lambda d: {**d, "added_tokens": [{"id": "1", "content": "x"}]}, "added_tokens[0].id"),
        (lambda d: {**d, "added_tokens": [{"id": 1, "content": 5}]}, "added_tokens[0].content"),
        (lambda d: {**d, "added_tokens": ["x"]}, "added_tokens[0]"),
    ],
)
def test_wrongly_typed_tokenizer_json(capsys, dataset, model, tmp_path, edit, key):
    data = json.loads((model / "tokenizer.json").read_text())
    (model / "tokenizer.json").write_text(json.dumps(edit(data)))
    message = launch_error(capsys, dataset, model, tmp_path)
    assert f"{model / 'tokenizer.json'}: key {key} must be" in message


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: {**d, "text_config": {**d["text_config"], "hidden_size": "64"}}, "hidden_size"),
        (lambda d: {**d, "vision_config": "x"}, "vision_config"),
        (lambda d: {**d, "projection_dim": 1.5}, "projection_dim"),
        (lambda d: {**d, "text_config": {**d["text_config"], "hidden_act": 3}}, "hidden_act"),
    ],
)
def test_wrongly_typed_config_json(capsys, dataset, model, tmp_path, edit, key):
    data = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(edit(data)))
    message = launch_error(capsys, dataset, model, tmp_path)
    assert f"{model / 'config.json'}" in message and key in message


@pytest.mark.parametrize("claimed", [84_000_000, 2**63])
def test_huge_safetensors_header_is_refused_before_parsing(
    capsys, dataset, model, tmp_path, claimed
):
    path = model / "model.safetensors"
    header = b"{" + b" " * (min(claimed, 84_000_000) - 2) + b"}"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", claimed))
        f.write(header)
    started = time.monotonic()
    message = launch_error(capsys, dataset, model, tmp_path)
    assert time.monotonic() - started < 30
    assert f"refused {path}: its safetensors header claims {claimed} bytes" in message
