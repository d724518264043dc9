"""model.heads: the published layouts against plain-torch references written here, format 1
round trips, and files that must be refused (code in a pickle, a lying safetensors header)."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from clipbeam.model.heads import Head, HeadConfig, HeadError, LayerConfig, load_head, save_head


class LaionAesthetic(nn.Module):
    """The improved aesthetic predictor's MLP as LAION's repository defines it."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


class CuratorNsfw(nn.Module):
    """NeMo Curator's port of LAION's NSFW detector (norm, then four linear layers)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.norm = nn.Module()
        self.norm.register_buffer("mean", torch.zeros(dim))
        self.norm.register_buffer("variance", torch.ones(dim))
        self.linear_1 = nn.Linear(dim, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)

    def forward(self, x):
        x = (x - self.norm.mean) / self.norm.variance.sqrt()
        x = torch.relu(self.linear_1(x))
        x = torch.relu(self.linear_2(x))
        x = torch.relu(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x))


def random_laion(dim: int = 768, seed: int = 0) -> LaionAesthetic:
    torch.manual_seed(seed)
    return LaionAesthetic(dim).eval()


def random_curator(dim: int = 768, seed: int = 1) -> CuratorNsfw:
    torch.manual_seed(seed)
    net = CuratorNsfw(dim).eval()
    net.norm.mean.normal_(0, 0.02)
    net.norm.variance.uniform_(0.5, 2.0).mul_(1e-3)
    return net


def embeddings(n: int, dim: int, seed: int = 2) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("make", [random_laion, random_curator], ids=["laion", "curator"])
def test_published_layouts_match_their_reference(tmp_path, make, suffix):
    net = make()
    path = tmp_path / f"head{suffix}"
    if suffix == ".pth":
        torch.save(net.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    head = load_head(path)
    x = embeddings(64, 768)
    with torch.no_grad():
        expected = net(x).squeeze(-1)
        got = head(x)
    assert got.shape == (64,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert head.config.trained_on == "openai/clip-vit-large-patch14"
    assert head.sha256.startswith("sha256:")
    # Heads normalize their input: raw (unnormalized) features give the same outputs.
    with torch.no_grad():
        torch.testing.assert_close(head(x * 7.5), expected, atol=1e-5, rtol=0)


def test_laion_layout_reads_its_sizes(tmp_path):
    torch.save(random_laion().state_dict(), tmp_path / "a.pth")
    config = load_head(tmp_path / "a.pth").config
    assert [(c.in_features, c.out_features) for c in config.layers] == [
        (768, 1024),
        (1024, 128),
        (128, 64),
        (64, 16),
        (16, 1),
    ]
    assert {c.activation for c in config.layers} == {"none"}
    assert config.output == "identity"
    assert config.source == "laion-aesthetic"


@pytest.mark.parametrize("make", [random_laion, random_curator], ids=["laion", "curator"])
def test_format1_round_trip(tmp_path, make):
    torch.save(make().state_dict(), tmp_path / "h.pth")
    head = load_head(tmp_path / "h.pth")
    folder = save_head(head, tmp_path / "converted")
    assert sorted(os.listdir(folder)) == ["head.json", "head.safetensors"]
    again = load_head(folder)
    assert again.config == head.config
    x = embeddings(32, 768)
    with torch.no_grad():
        assert torch.equal(again(x), head(x))


def test_config_errors_are_named(tmp_path):
    config = HeadConfig(layers=(LayerConfig(8, 4, "relu"), LayerConfig(4, 1)), embedding_dim=8)
    folder = save_head(Head(config), tmp_path)
    data = json.loads((folder / "head.json").read_text())
    data["layers"][0]["activation"] = "swish2"
    (folder / "head.json").write_text(json.dumps(data))
    with pytest.raises(HeadError, match="activation must be one of"):
        load_head(folder)
    data["layers"][0]["activation"] = "relu"
    data["layers"][1]["out_features"] = 3
    (folder / "head.json").write_text(json.dumps(data))
    with pytest.raises(HeadError, match="gives 3 outputs"):
        load_head(folder)


def test_weights_that_do_not_fit_the_config_are_listed(tmp_path):
    config = HeadConfig(layers=(LayerConfig(8, 1),), embedding_dim=8)
    folder = save_head(Head(config), tmp_path)
    save_file(
        {"layers.0.weight": torch.zeros(1, 9), "extra": torch.zeros(1)},
        str(folder / "head.safetensors"),
    )
    with pytest.raises(HeadError) as caught:
        load_head(folder)
    message = str(caught.value)
    assert "missing layers.0.bias" in message
    assert "unexpected extra" in message
    assert "layers.0.weight [1, 9] (expected [1, 8])" in message


def test_unknown_layout_names_its_keys(tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 4), "fc.bias": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(
        HeadError, match=r"unknown head layout; found 2 tensors: fc\.bias, fc\.weight"
    ):
        load_head(tmp_path / "x.pth")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.target}",))


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    target = tmp_path / "ran"
    _Payload.target = str(target)
    torch.save({"layers.0.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(HeadError, match=r"refused .*weights_only=True"):
        load_head(tmp_path / "evil.pth")
    assert not target.exists()


def test_torchscript_is_refused(tmp_path):
    scripted = torch.jit.script(nn.Linear(4, 1))
    scripted.save(str(tmp_path / "s.pth"))
    with pytest.raises(HeadError, match="TorchScript"):
        load_head(tmp_path / "s.pth")


def test_lying_safetensors_header_is_refused(tmp_path):
    path = tmp_path / "h.safetensors"
    save_file({"layers.0.weight": torch.zeros(1, 8), "layers.0.bias": torch.zeros(1)}, str(path))
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["layers.0.weight"]["data_offsets"] = [0, 10**9]  # far past the end of the file
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
    with pytest.raises(HeadError, match="not a readable safetensors file"):
        load_head(path)
    # A header length beyond the file.
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(HeadError, match="not a readable safetensors file"):
        load_head(path)


def test_missing_source_says_what_a_head_is(tmp_path):
    with pytest.raises(HeadError, match="does not exist"):
        load_head(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadError, match=r"head\.json is missing"):
        load_head(tmp_path / "empty")
