"""Checkpoint source resolution: local folders, fsspec URLs, the hub, and the errors."""

import fsspec
import pytest

from model.hub import CheckpointNotFoundError, resolve_source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBEAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_local_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    src = resolve_source(tmp_path)
    assert src.kind == "local"
    assert src.get("config.json") == tmp_path / "config.json"
    assert src.get("model.safetensors") is None


def test_fsspec_url_is_cached_once_and_refreshed_when_changed(cache):
    fs = fsspec.filesystem("memory")
    fs.pipe("/ckpt-a/config.json", b'{"a": 1}')
    src = resolve_source("memory://ckpt-a")
    assert src.kind == "fsspec"
    path = src.get("config.json")
    assert path.read_bytes() == b'{"a": 1}'
    assert cache in path.parents
    assert src.get("missing.json") is None
    # A new source object sees new content of the same size-changed file.
    fs.pipe("/ckpt-a/config.json", b'{"a": 22}')
    assert resolve_source("memory://ckpt-a").get("config.json").read_bytes() == b'{"a": 22}'


def test_file_url_reads_in_place(tmp_path, cache):
    (tmp_path / "config.json").write_text("{}")
    src = resolve_source(f"file://{tmp_path}")
    assert src.get("config.json") == tmp_path / "config.json"
    assert not cache.exists()


def test_require_names_the_file_and_the_place(tmp_path):
    src = resolve_source(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=r"no tokenizer\.json.*looked in"):
        src.require("tokenizer.json")


def test_not_found_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve_source("someorg/no-such-model")
    message = str(info.value)
    assert "local directory" in message and "does not exist" in message
    assert "Hugging Face Hub repo 'someorg/no-such-model'" in message


def test_missing_url_directory():
    with pytest.raises(CheckpointNotFoundError, match="not a directory that exists"):
        resolve_source("memory://nowhere-at-all")


def test_a_file_is_not_a_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "weights.bin").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="is a file, not a checkpoint folder"):
        resolve_source(tmp_path / "weights.bin")
