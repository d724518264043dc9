"""Weight loading: file formats, towers from full checkpoints, strictness, safety, errors."""

from __future__ import annotations

import json
import os
import shutil

import fsspec
import pytest
import torch
from safetensors.torch import load_file, save_file

from clipbeam.model.auto import load_model, weights_fingerprint
from clipbeam.model.hub import CheckpointError, CheckpointNotFoundError
from clipbeam.model.loading import resolve_device, resolve_dtype
from clipbeam.model.modeling_chinese_clip import (
    ChineseCLIPModel,
    ChineseCLIPTextModel,
    ChineseCLIPVisionModel,
)
from clipbeam.model.modeling_clip import (
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)
from tests.model.conftest import hf_model

CLIP = "clip-b32"
CHINESE = "chinese-b16"


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(path, edit):
    """Applies ``edit(state) -> state`` to a checkpoint's model.safetensors."""
    file = path / "model.safetensors"
    save_file(edit(load_file(file)), file, metadata={"format": "pt"})


def assert_same_weights(model, reference_state, prefix=""):
    state = model.state_dict()
    assert state, "model has no tensors"
    for key, value in state.items():
        assert torch.equal(value, reference_state[prefix + key]), key


# -- file formats -------------------------------------------------------------------------------


def test_sharded_safetensors_with_index(tmp_path):
    reference = hf_model(CLIP, "CLIPModel")
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert_same_weights(CLIPModel.from_pretrained(tmp_path), reference.state_dict())


@pytest.mark.parametrize("sharded", [False, True])
def test_pytorch_model_bin(sharded, hf_checkpoint, tmp_path):
    source = hf_checkpoint(CLIP)
    shutil.copy(source / "config.json", tmp_path)
    state = load_file(source / "model.safetensors")
    if not sharded:
        torch.save(state, tmp_path / "pytorch_model.bin")
    else:
        names = sorted(state)
        halves = {"pytorch_model-00001-of-00002.bin": names[::2]}
        halves["pytorch_model-00002-of-00002.bin"] = names[1::2]
        for file, keys in halves.items():
            torch.save({k: state[k] for k in keys}, tmp_path / file)
        weight_map = {k: file for file, keys in halves.items() for k in keys}
        index = {"metadata": {}, "weight_map": weight_map}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_same_weights(CLIPModel.from_pretrained(tmp_path), state)


def test_safetensors_is_preferred_over_bin(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(CLIP), tmp_path / "ckpt")
    (path / "pytorch_model.bin").write_bytes(b"never read")
    CLIPModel.from_pretrained(path)


def test_fsspec_source_loads(hf_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBEAM_CACHE", str(tmp_path / "cache"))
    source = hf_checkpoint(CLIP)
    fs = fsspec.filesystem("memory")
    for file in source.iterdir():
        fs.pipe(f"/clip-loading/{file.name}", file.read_bytes())
    model = CLIPModel.from_pretrained("memory://clip-loading")
    assert_same_weights(model, load_file(source / "model.safetensors"))
    assert weights_fingerprint("memory://clip-loading") == weights_fingerprint(source)


# -- towers and legacy names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "prefix"),
    [
        (CLIPTextModel, "text_model."),
        (CLIPVisionModel, "vision_model."),
        (CLIPTextModelWithProjection, ""),
        (CLIPVisionModelWithProjection, ""),
    ],
)
def test_clip_towers_load_from_a_full_checkpoint(cls, prefix, hf_checkpoint):
    path = hf_checkpoint(CLIP)
    assert_same_weights(cls.from_pretrained(path), load_file(path / "model.safetensors"), prefix)


def test_chinese_towers_load_from_a_full_checkpoint(hf_checkpoint, tmp_path):
    path = hf_checkpoint(CHINESE)
    state = load_file(path / "model.safetensors")
    assert_same_weights(ChineseCLIPVisionModel.from_pretrained(path), state, "vision_model.")
    # transformers saves the full model without the BERT pooler: the text tower cannot load.
    with pytest.raises(
        CheckpointError, match=r"(?s)2 missing tensors: pooler\.dense\.bias.*no BERT"
    ):
        ChineseCLIPTextModel.from_pretrained(path)

    # Hub checkpoints carry text_model.pooler: the full model skips it, the tower uses it.
    hub_like = copy_checkpoint(path, tmp_path / "hub-like")
    pooler = {"text_model.pooler.dense.weight": torch.randn(32, 32)}
    pooler["text_model.pooler.dense.bias"] = torch.randn(32)
    rewrite_weights(hub_like, lambda s: {**s, **pooler})
    assert_same_weights(ChineseCLIPModel.from_pretrained(hub_like), state)
    tower = ChineseCLIPTextModel.from_pretrained(hub_like)
    assert torch.equal(tower.pooler.dense.weight, pooler["text_model.pooler.dense.weight"])


def test_transformers_4_tower_layout_and_index_buffers(hf_checkpoint, tmp_path):
    """transformers 4 saved a bare tower under a prefix, with persistent index buffers."""
    path = copy_checkpoint(hf_checkpoint(CLIP, "CLIPVisionModel"), tmp_path / "v4")
    state = load_file(path / "model.safetensors")

    def to_v4(s):
        s = {f"vision_model.{k}": v for k, v in s.items()}
        s["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
        return s

    rewrite_weights(path, to_v4)
    assert_same_weights(CLIPVisionModel.from_pretrained(path), state)


def test_legacy_layernorm_gamma_beta_names(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(CHINESE), tmp_path / "gamma")
    state = load_file(path / "model.safetensors")

    def to_tf_names(s):
        renamed = {}
        for key, value in s.items():
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma")
            renamed[key.replace("LayerNorm.bias", "LayerNorm.beta")] = value
        renamed["text_model.embeddings.token_type_ids"] = torch.zeros(1, 16, dtype=torch.long)
        return renamed

    rewrite_weights(path, to_tf_names)
    assert any(k.endswith("gamma") for k in load_file(path / "model.safetensors"))
    assert_same_weights(ChineseCLIPModel.from_pretrained(path), state)


# -- strictness ---------------------------------------------------------------------------------


def test_all_mismatches_are_reported_in_one_error(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(CLIP), tmp_path / "broken")

    def break_it(s):
        removed = sorted(k for k in s if k.startswith("vision_model.encoder"))[:12]
        s = {k: v for k, v in s.items() if k not in removed}
        s["vision_model.extra.weight"] = torch.zeros(1)
        s["text_model.surprise"] = torch.zeros(1)
        s["text_projection.weight"] = torch.zeros(3, 3)
        return s

    rewrite_weights(path, break_it)
    with pytest.raises(CheckpointError) as info:
        CLIPModel.from_pretrained(path)
    message = str(info.value)
    assert "12 missing tensors: vision_model.encoder.layers.0." in message
    assert "(2 more)" in message
    assert "2 unexpected tensors: text_model.surprise, vision_model.extra.weight" in message
    assert "1 tensor with the wrong shape: text_projection.weight: checkpoint [3, 3]" in message
    assert str(path) in message


def test_wrong_family_is_an_error(hf_checkpoint):
    with pytest.raises(CheckpointError, match=r"'chinese_clip' model.*Use ChineseCLIPModel"):
        CLIPModel.from_pretrained(hf_checkpoint(CHINESE))
    with pytest.raises(CheckpointError, match=r"'clip' model.*Use CLIPModel"):
        ChineseCLIPModel.from_pretrained(hf_checkpoint(CLIP))
    with pytest.raises(CheckpointError, match="cannot load"):
        CLIPVisionModel.from_pretrained(hf_checkpoint(CHINESE))


def test_unknown_model_type_is_an_error(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(CLIP), tmp_path / "bert")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported model_type 'bert'"):
        CLIPModel.from_pretrained(path)
    with pytest.raises(CheckpointError, match="model_type 'bert'; load_model"):
        load_model(path)


# -- bad files ----------------------------------------------------------------------------------


def test_missing_weights_file(hf_checkpoint, tmp_path):
    shutil.copy(hf_checkpoint(CLIP) / "config.json", tmp_path)
    with pytest.raises(
        CheckpointNotFoundError, match=r"has no weights: none of model\.safetensors"
    ):
        CLIPModel.from_pretrained(tmp_path)


def test_missing_shard(tmp_path):
    hf_model(CLIP, "CLIPModel").save_pretrained(tmp_path, max_shard_size="40KB")
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"a shard listed in model\.safetensors"):
        CLIPModel.from_pretrained(tmp_path)


def test_truncated_safetensors(hf_checkpoint, tmp_path):
    path = copy_checkpoint(hf_checkpoint(CLIP), tmp_path / "truncated")
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"cannot read {file}.*truncated or corrupt"):
        CLIPModel.from_pretrained(path)


def test_truncated_bin(hf_checkpoint, tmp_path):
    shutil.copy(hf_checkpoint(CLIP) / "config.json", tmp_path)
    file = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(100)}, file)
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"cannot read {file}.*truncated"):
        CLIPModel.from_pretrained(tmp_path)


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(hf_checkpoint, tmp_path):
    shutil.copy(hf_checkpoint(CLIP) / "config.json", tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(1), "payload": _Exploit(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refused to load .*weights_only=True"):
        CLIPModel.from_pretrained(tmp_path)
    assert not marker.exists()


def test_bin_that_is_not_a_tensor_dict(hf_checkpoint, tmp_path):
    shutil.copy(hf_checkpoint(CLIP) / "config.json", tmp_path)
    torch.save([torch.zeros(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="flat dict of tensor name -> tensor"):
        CLIPModel.from_pretrained(tmp_path)


def test_malformed_shard_index(hf_checkpoint, tmp_path):
    shutil.copy(hf_checkpoint(CLIP) / "config.json", tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    with pytest.raises(CheckpointError, match="not a plain file name"):
        CLIPModel.from_pretrained(tmp_path)
    index.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        CLIPModel.from_pretrained(tmp_path)


# -- devices and dtypes -------------------------------------------------------------------------


def test_loaded_model_is_materialised_in_eval_mode(hf_checkpoint):
    model = CLIPModel.from_pretrained(hf_checkpoint(CLIP))
    assert not model.training
    assert all(not t.is_meta for t in model.state_dict().values())
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


def test_dtype_choices(tmp_path):
    hf_model(CLIP, "CLIPModel").half().save_pretrained(tmp_path)
    assert CLIPModel.from_pretrained(tmp_path).dtype == torch.float32  # None: float32
    auto = CLIPModel.from_pretrained(tmp_path, dtype="auto")
    assert auto.dtype == torch.float16 and auto.config.dtype == "float16"
    assert CLIPModel.from_pretrained(tmp_path, torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="disagree"):
        CLIPModel.from_pretrained(tmp_path, dtype=torch.float16, torch_dtype=torch.float32)
    with pytest.raises(ValueError, match=r"floating point torch dtype.*\(got 'int8'\)"):
        CLIPModel.from_pretrained(tmp_path, dtype="int8")


def test_auto_dtype_without_config_dtype_uses_the_weights():
    from clipbeam.model.configuration import CLIPVisionConfig

    tensors = [torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bfloat16)]
    assert resolve_dtype("auto", CLIPVisionConfig(), tensors) is torch.bfloat16
    assert resolve_dtype("auto", CLIPVisionConfig(dtype="float16"), tensors) is torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_an_error_not_a_fallback(hf_checkpoint):
    with pytest.raises(RuntimeError, match=r"device='cuda' was requested but no CUDA GPU"):
        CLIPModel.from_pretrained(hf_checkpoint(CLIP), device="cuda")
    with pytest.raises(ValueError, match="not a torch device name"):
        resolve_device("gpu0")


# -- saving, dispatch, fingerprints -------------------------------------------------------------


def test_save_pretrained_round_trip_with_tied_weights(hf_checkpoint, tmp_path):
    model = CLIPModel.from_pretrained(hf_checkpoint(CLIP))
    layer = model.vision_model.encoder.layers[0].self_attn
    layer.k_proj.weight = layer.q_proj.weight  # tie two tensors
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["CLIPModel"] and config["dtype"] == "float32"
    again = CLIPModel.from_pretrained(tmp_path)
    assert_same_weights(again, model.state_dict())


def test_load_model_dispatches_on_model_type(hf_checkpoint, tmp_path):
    assert type(load_model(hf_checkpoint(CLIP))) is CLIPModel
    assert type(load_model(hf_checkpoint(CHINESE), dtype=torch.bfloat16)) is ChineseCLIPModel
    with pytest.raises(CheckpointError, match=r"model_type 'clip_text_model'.*CLIPTextModel"):
        load_model(hf_checkpoint(CLIP, "CLIPTextModel"))
    path = copy_checkpoint(hf_checkpoint(CLIP), tmp_path / "untyped")
    config = json.loads((path / "config.json").read_text())
    del config["model_type"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has no 'model_type'"):
        load_model(path)


def test_weights_fingerprint_is_stable_and_content_based(hf_checkpoint, tmp_path):
    source = hf_checkpoint(CLIP)
    copy = copy_checkpoint(source, tmp_path / "copy")
    fingerprint = weights_fingerprint(source)
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    assert weights_fingerprint(copy) == fingerprint
    (copy / "config.json").write_text("{}")  # the config is not part of it
    assert weights_fingerprint(copy) == fingerprint
    rewrite_weights(copy, lambda s: {**s, "logit_scale": s["logit_scale"] + 1})
    assert weights_fingerprint(copy) != fingerprint
    assert weights_fingerprint(hf_checkpoint(CLIP, seed=1)) != fingerprint
