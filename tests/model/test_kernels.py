"""The linear-layer dispatch and activations of model.kernels, against plain PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipbeam.model import kernels
from clipbeam.model.attention import fused_projection
from clipbeam.model.kernels import ACTIVATIONS, get_activation, linear, quick_gelu

needs_onednn = pytest.mark.skipif(
    not kernels.onednn_linear_available(), reason="this torch build has no oneDNN"
)


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts calls of the oneDNN kernel (still running it)."""
    calls = []
    real = kernels._onednn_linear

    def spy(*args):
        calls.append(args[3])  # the post-op
        return real(*args)

    monkeypatch.setattr(kernels, "_onednn_linear", spy)
    return calls


def _inputs(dtype=torch.float32, out=24):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen).to(dtype)
    weight = (torch.randn(out, 16, generator=gen) * 0.3).to(dtype)
    bias = torch.randn(out, generator=gen).to(dtype)
    return x, weight, bias


@needs_onednn
@pytest.mark.parametrize("activation", [None, *sorted(ACTIVATIONS)])
def test_cpu_inference_runs_on_onednn_and_matches_torch(activation, onednn_calls):
    x, weight, bias = _inputs()
    expected = F.linear(x, weight, bias)
    if activation is not None:
        expected = ACTIVATIONS[activation](expected)
    with torch.inference_mode():
        got = linear(x, weight, bias, activation)
    assert got.shape == (3, 5, 24)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # gelu (exact or tanh), relu, silu and tanh run inside the product; quick_gelu after it.
    assert onednn_calls == [_postop(activation)]


def _postop(activation: str | None) -> str:
    if activation in (None, "quick_gelu"):
        return "none"
    return "swish" if activation in ("silu", "swish") else activation.split("_")[0]


@pytest.mark.skipif(
    not kernels.onednn_linear_available(torch.bfloat16),
    reason="oneDNN runs no bfloat16 products on this CPU",
)
def test_bfloat16_runs_on_onednn_and_without_bias(onednn_calls):
    x, weight, _ = _inputs(torch.bfloat16)
    with torch.no_grad():
        got = linear(x, weight)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.linear(x, weight), atol=0.05, rtol=0.02)
    assert onednn_calls == ["none"]


def test_bfloat16_without_onednn_support_runs_on_torch(onednn_calls, monkeypatch):
    # An AVX2-only CPU: oneDNN refuses bfloat16 there, so the product must not be sent to it.
    monkeypatch.setattr(kernels, "_ONEDNN_BF16", False)
    x, weight, bias = _inputs(torch.bfloat16)
    with torch.no_grad():
        got = linear(x, weight, bias, "gelu")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.gelu(F.linear(x, weight, bias)), atol=0.05, rtol=0.02)
    assert onednn_calls == []


def test_gradients_flow_through_the_torch_kernel(onednn_calls):
    x, weight, bias = _inputs()
    weight.requires_grad_(True)
    linear(x, weight, bias, "quick_gelu").sum().backward()
    expected = weight.detach().clone().requires_grad_(True)
    quick_gelu(F.linear(x, expected, bias)).sum().backward()
    torch.testing.assert_close(weight.grad, expected.grad)
    assert onednn_calls == []  # oneDNN's kernel has no backward


def test_disabled_onednn_and_mixed_dtypes_use_the_torch_kernel(onednn_calls):
    x, weight, bias = _inputs()
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))
    with torch.inference_mode():
        linear(x.double(), weight.double(), bias.double())
        with pytest.raises(RuntimeError, match="same dtype"):
            linear(x.bfloat16(), weight, None)  # torch's own error, not a oneDNN one
    assert onednn_calls == []


def test_quick_gelu_in_place_path_matches_the_formula():
    x = torch.linspace(-6, 6, 101)
    expected = x * torch.sigmoid(1.702 * x)
    with torch.inference_mode():
        got = quick_gelu(x)
    torch.testing.assert_close(got, expected)
    assert torch.equal(x, torch.linspace(-6, 6, 101))  # the input is left alone
    y = x.clone().requires_grad_(True)
    torch.testing.assert_close(quick_gelu(y), expected)  # autograd path
    assert quick_gelu(y).grad_fn is not None


def test_unknown_activation_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"unsupported hidden_act 'swiglu'.*quick_gelu"):
        get_activation("swiglu")
    with pytest.raises(ValueError, match="unsupported hidden_act 'swiglu'"):
        linear(*_inputs(), activation="swiglu")


def test_fused_projection_equals_separate_layers():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 8) for _ in range(3)]
    x = torch.randn(2, 4, 16)
    weight, bias = fused_projection(*layers)
    assert weight.shape == (24, 16) and bias.shape == (24,)
    with torch.inference_mode():
        joint = linear(x, weight, bias)
        for i, layer in enumerate(layers):
            torch.testing.assert_close(joint[..., 8 * i : 8 * (i + 1)], layer(x))
    # Training: the gradient reaches each layer's own parameters.
    linear(x, *fused_projection(*layers)).sum().backward()
    assert all(layer.weight.grad is not None for layer in layers)
