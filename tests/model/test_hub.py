"""Checkpoint source resolution: local folders, fsspec URLs, the hub, and the errors."""

import fsspec
import pytest
import torch

from clipbeam.model.hub import CheckpointNotFoundError, resolve_source


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


# -- the hub, through a stand-in for hf_hub_download ---------------------------------------------

REPO = "someorg/tiny-clip"
WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A stand-in hub: ``hub(folder, uncached=(), known_absent=())`` serves ``folder`` as the
    local hub cache of :data:`REPO`.

    Files of ``folder`` are returned as cached; files named in ``uncached`` raise
    ``LocalEntryNotFoundError`` (what huggingface_hub raises offline or when the hub cannot be
    reached and the cache lacks them); other files raise ``EntryNotFoundError`` (the hub
    answered that the repo has no such file). ``try_to_load_from_cache`` reports the files in
    ``known_absent`` as known to be absent, the rest as unknown. Returns the list of
    ``(filename, revision)`` requests.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    monkeypatch.chdir(tmp_path)  # so that REPO names no local folder
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    requests: list[tuple[str, str | None]] = []

    def install(folder, uncached=(), known_absent=()):
        def download(repo_id, filename, *, revision=None, **_):
            assert repo_id == REPO
            requests.append((filename, revision))
            if filename in uncached:
                raise LocalEntryNotFoundError(f"{filename} is not in the cache (stand-in)")
            if not (folder / filename).is_file():
                raise EntryNotFoundError(f"{REPO} has no {filename} (stand-in)")
            return str(folder / filename)

        def from_cache(repo_id, filename, *, revision=None, **_):
            return _CACHED_NO_EXIST if filename in known_absent else None

        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", from_cache)
        return requests

    return install


def test_a_model_loads_through_the_hub_path(hub, hf_checkpoint):
    from safetensors.torch import load_file

    from clipbeam.model.modeling_clip import CLIPModel

    folder = hf_checkpoint("clip-b32")
    requests = hub(folder)
    source = resolve_source(REPO, revision="v1")
    assert source.kind == "hub" and source.location == REPO
    model = CLIPModel.from_pretrained(REPO, revision="v1")
    expected = load_file(folder / "model.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert ("model.safetensors", "v1") in requests and ("config.json", "v1") in requests


def test_offline_mode_without_cached_weights_says_so(hub, hf_checkpoint, monkeypatch):
    from clipbeam.model.modeling_clip import CLIPModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub(hf_checkpoint("clip-b32"), uncached=WEIGHTS)
    with pytest.raises(CheckpointNotFoundError) as info:
        CLIPModel.from_pretrained(REPO)
    message = str(info.value)
    assert "has no weights" not in message
    assert "model.safetensors" in message and "HF_HUB_OFFLINE is set (offline mode)" in message
    assert f"models--{REPO.replace('/', '--')}" in message  # the cache folder looked in
    assert f"huggingface.co/{REPO} (not contacted: offline mode)" in message
    assert "unset HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message


def test_an_unreachable_hub_without_cached_weights_says_so(hub, hf_checkpoint, monkeypatch):
    from clipbeam.model.modeling_clip import CLIPModel

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub(hf_checkpoint("clip-b32"), uncached=WEIGHTS)
    with pytest.raises(CheckpointNotFoundError, match="the hub could not be reached") as info:
        CLIPModel.from_pretrained(REPO)
    assert f"{REPO} (unreachable)" in str(info.value)
    assert "check the network connection" in str(info.value)


def test_offline_files_known_absent_are_absent(hub, hf_checkpoint, tmp_path, monkeypatch):
    """Weights the cache knows the repo lacks give the plain error; optional files that cannot
    be checked offline do not stop a load whose needed files are cached."""
    import shutil

    from safetensors.torch import load_file

    from clipbeam.model.modeling_clip import CLIPModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub(hf_checkpoint("clip-b32"), uncached=WEIGHTS, known_absent=WEIGHTS)
    with pytest.raises(CheckpointNotFoundError, match="has no weights") as info:
        CLIPModel.from_pretrained(REPO)
    assert "offline" not in str(info.value)

    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(hf_checkpoint("clip-b32") / "config.json", folder)
    state = load_file(hf_checkpoint("clip-b32") / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    hub(folder, uncached=WEIGHTS[:2])  # safetensors unknown offline, the .bin cached
    model = CLIPModel.from_pretrained(REPO)
    assert torch.equal(model.logit_scale, state["logit_scale"])
