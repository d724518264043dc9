"""Towers computing only the pooled position on their last layer give the full pass's pooling."""

from __future__ import annotations

import pytest
import torch

from clipbeam.model.attention import TokenPacking, take_rows
from clipbeam.model.configuration import ChineseCLIPConfig, CLIPConfig
from clipbeam.model.modeling_chinese_clip import ChineseCLIPModel
from clipbeam.model.modeling_clip import CLIPModel

SMALL = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4}
VISION = {**SMALL, "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}


def _ids(vocab: int, lengths: list[int], eos: int, pad: int, left: bool = False):
    """Token ids ending in ``eos``, padded to the longest (on the left if asked), and a mask."""
    gen = torch.Generator().manual_seed(0)
    longest = max(lengths)
    ids = torch.full((len(lengths), longest), pad)
    mask = torch.zeros((len(lengths), longest), dtype=torch.long)
    for row, n in enumerate(lengths):
        span = slice(longest - n, longest) if left else slice(0, n)
        ids[row, span] = torch.randint(3, vocab - 2, (n,), generator=gen)
        ids[row, span.stop - 1] = eos
        mask[row, span] = 1
    return ids, mask


@pytest.mark.parametrize("left_padding", [False, True])
@pytest.mark.parametrize("eos_token_id", [2, 63])  # legacy argmax pooling, and the real EOS
def test_clip_towers(left_padding, eos_token_id):
    torch.manual_seed(0)
    text = {**SMALL, "num_hidden_layers": 3, "vocab_size": 64, "eos_token_id": eos_token_id}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION)).eval()
    ids, mask = _ids(64, [3, 7, 5], eos=63, pad=0, left=left_padding)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        full = model.text_model(ids, mask)
        pooled = model.text_model(ids, mask, pooled_only=True)
        torch.testing.assert_close(pooled.pooler_output, full.pooler_output)
        assert pooled.last_hidden_state.shape == (3, 1, 32)
        full_image = model.vision_model(pixels)
        pooled_image = model.vision_model(pixels, pooled_only=True)
        torch.testing.assert_close(pooled_image.pooler_output, full_image.pooler_output)
        torch.testing.assert_close(
            pooled_image.last_hidden_state, full_image.last_hidden_state[:, :1]
        )


def test_chinese_clip_text_tower():
    torch.manual_seed(0)
    text = {**SMALL, "num_hidden_layers": 2, "vocab_size": 64, "max_position_embeddings": 16}
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=VISION)).eval()
    ids, mask = _ids(64, [4, 9], eos=63, pad=0)
    with torch.inference_mode():
        full = model.text_model(ids, mask)
        pooled = model.text_model(ids, mask, pooled_only=True)
    torch.testing.assert_close(pooled.last_hidden_state, full.last_hidden_state[:, :1])


def test_pooled_only_cannot_return_every_layer():
    model = CLIPModel(
        CLIPConfig(text_config={**SMALL, "num_hidden_layers": 1}, vision_config=VISION)
    )
    with pytest.raises(ValueError, match="cannot return every layer's hidden states"):
        model.vision_model(torch.randn(1, 3, 32, 32), output_hidden_states=True, pooled_only=True)


def test_take_rows():
    x = torch.arange(24).view(2, 4, 3)
    assert torch.equal(take_rows(x, 0), x[:, :1])
    assert torch.equal(take_rows(x, torch.tensor([3, 1])), torch.stack([x[0, 3:4], x[1, 1:2]]))


def _with_holes(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with a padded position inside each sequence longer than three tokens."""
    holed = mask.clone()
    for row in range(len(mask)):
        if int(mask[row].sum()) > 3:
            holed[row, 2] = 0
    return holed


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("family", ["clip", "chinese_clip"])
def test_text_towers_pooled_on_packed_tokens(family, holes):
    """A padded batch runs its pooled pass on the real tokens alone (fewer rows through every
    product), and pools what the full padded pass pools, also with padding inside a sequence."""
    torch.manual_seed(0)
    text = {**SMALL, "num_hidden_layers": 3, "vocab_size": 64, "max_position_embeddings": 16}
    if family == "clip":
        config = CLIPConfig(text_config={**text, "eos_token_id": 63}, vision_config=VISION)
        model = CLIPModel(config).eval()
    else:
        config = ChineseCLIPConfig(text_config=text, vision_config=VISION)
        model = ChineseCLIPModel(config).eval()
    ids, mask = _ids(64, [4, 11, 6, 2, 9], eos=63, pad=0)
    if holes:
        mask = _with_holes(mask)
    rows = (ids == 63).int().argmax(dim=-1) if family == "clip" else 0  # EOS or [CLS]
    packing = TokenPacking.of(mask, rows)
    assert packing is not None and len(packing.index) == int(mask.sum()) < mask.numel()
    seen = []
    hook = model.text_model.encoder.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].shape)
    )
    with torch.inference_mode():
        full = model.text_model(ids, mask)
        pooled = model.text_model(ids, mask, pooled_only=True)
    hook.remove()
    assert seen == [(5, 11, 32), (1, int(mask.sum()), 32)]  # padded, then packed
    torch.testing.assert_close(
        pooled.last_hidden_state[:, 0], take_rows(full.last_hidden_state, rows)[:, 0]
    )


def test_packing_only_where_it_is_exact_and_saves_work():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    packing = TokenPacking.of(mask, torch.tensor([2, 1]))
    assert packing.index.tolist() == [0, 1, 2, 4, 5]
    assert packing.packed_rows.tolist() == [2, 4]
    x = torch.arange(8.0).view(2, 4, 1)
    assert packing.pack(x).flatten().tolist() == [0, 1, 2, 4, 5]
    assert packing.unpack(packing.pack(x)).flatten().tolist() == [0, 1, 2, 0, 4, 5, 0, 0]
    assert TokenPacking.of(torch.ones(2, 4), 0) is None  # no padding: nothing to skip
    assert TokenPacking.of(mask, torch.tensor([3, 1])) is None  # a pooled position is padding
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert TokenPacking.of(left, 0) is None  # [CLS] pooling under left padding


def test_packed_pass_keeps_gradients():
    torch.manual_seed(0)
    text = {**SMALL, "num_hidden_layers": 2, "vocab_size": 64, "eos_token_id": 63}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION))
    ids, mask = _ids(64, [3, 7], eos=63, pad=0)
    grads = []
    for pooled_only in (False, True):
        model.zero_grad()
        model.text_model(ids, mask, pooled_only=pooled_only).pooler_output.sum().backward()
        # The pooled last layer never computes keys, so its key bias (whose true gradient is
        # zero: softmax ignores it) gets none.
        grads.append(
            [
                torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in model.text_model.parameters()
            ]
        )
    for packed, full in zip(*grads, strict=True):
        torch.testing.assert_close(packed, full)


def test_feed_forward_residual_folds_the_quick_gelu_scale(monkeypatch):
    """Inference folds quick_gelu's 1.702 into the LayerNorm and biases (one in-place silu);
    the result is the plain block's, and the plain activation is what training runs."""
    from clipbeam.model import kernels
    from clipbeam.model.layers import CLIPEncoderLayer

    torch.manual_seed(0)
    layer = CLIPEncoderLayer(CLIPConfig(vision_config=VISION).vision_config)
    assert layer.mlp.hidden_act == "quick_gelu"
    for param in (*layer.layer_norm2.parameters(), layer.mlp.fc1.bias, layer.mlp.fc2.bias):
        torch.nn.init.normal_(param, std=0.5)
    hidden = torch.randn(2, 5, 32) * 3
    calls = []
    plain = kernels.quick_gelu
    monkeypatch.setitem(kernels.ACTIVATIONS, "quick_gelu", lambda x: calls.append(1) or plain(x))
    with torch.no_grad():
        expected = hidden + layer.mlp(layer.layer_norm2(hidden))
    assert calls
    calls.clear()
    with torch.inference_mode():
        got = layer.mlp.add_to(hidden, layer.layer_norm2)
    assert not calls  # folded
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    trained = layer.mlp.add_to(hidden, layer.layer_norm2)  # with gradients: the plain path
    assert trained.requires_grad and calls
    torch.testing.assert_close(trained.detach(), expected)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_attention_from_rows_needs_no_keys_or_values(dropout_p):
    """The pooled row's attention, computed from W_k^T q and sum_j p_j x_j, is the attention of
    the explicit keys and values (with the same dropout mask on the probabilities)."""
    from clipbeam.model.attention import attend_from_rows, mask_to_bias

    torch.manual_seed(0)
    batch, seq, width, heads = 3, 6, 32, 4
    projections = tuple(torch.nn.Linear(width, width) for _ in range(3))
    for layer in projections:
        torch.nn.init.normal_(layer.bias, std=1.0)
    x = torch.randn(batch, seq, width)
    rows = torch.tensor([5, 2, 0])
    allowed = torch.rand(batch, 1, seq, seq) > 0.3
    allowed[torch.arange(batch), 0, rows, rows] = True  # every query sees itself
    bias = mask_to_bias(allowed, x.dtype)
    torch.manual_seed(1)
    got = attend_from_rows(x, bias, projections, heads, rows, dropout_p=dropout_p)

    q, k, v = (layer(x).view(batch, seq, heads, -1).transpose(1, 2) for layer in projections)
    q = take_rows(q.transpose(1, 2), rows).transpose(1, 2)  # [B, H, 1, d]
    scores = q @ k.transpose(-1, -2) / (width // heads) ** 0.5
    scores = scores + take_rows(bias.transpose(1, 2), rows).transpose(1, 2)
    torch.manual_seed(1)
    probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout_p, training=dropout_p > 0)
    expected = (probs @ v).transpose(1, 2).reshape(batch, 1, width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
