"""Which implementation the policy token epilogue runs (Triton on CUDA, torch otherwise, GRO_BACKEND
overrides), and gro_loss's grad-in-forward decision agreeing with linear_logprobs' auto rule on CUDA
(it depends on the head's hidden size). No GPU: availability is patched, as in test_backend_rule_cuda."""

import pytest
import torch

import gro_kernels
from gro_kernels import _ext
from gro_kernels.losses import gro as _gro
from gro_kernels import functional as F
from gro_kernels.ops.linear_logprobs import function as lp_function
from gro_kernels.ops.policy_loss import function as pl_function

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
BIG = lp_function.CHUNKED_MIN_HIDDEN_CUDA


@pytest.fixture
def patch(monkeypatch):
    monkeypatch.delenv("GRO_BACKEND", raising=False)

    def apply(*, triton: bool, native: bool = True):
        monkeypatch.setattr(pl_function, "_triton_impl", lambda: object() if triton else None)
        monkeypatch.setattr(lp_function, "triton_usable", lambda device: triton and device.type == "cuda")
        monkeypatch.setattr(_ext, "native_available", lambda device_type="cpu": native)

    return apply


def test_policy_token_rule(patch, monkeypatch):
    patch(triton=True)
    assert (pl_function.select_token_impl(CUDA), pl_function.select_token_impl(CPU)) == ("triton", "torch")
    for env, cuda, cpu in [("chunked", "torch", "torch"), ("naive", "torch", "torch"), ("triton", "triton", "triton")]:
        monkeypatch.setenv("GRO_BACKEND", env)
        assert (pl_function.select_token_impl(CUDA), pl_function.select_token_impl(CPU)) == (cuda, cpu)
    monkeypatch.delenv("GRO_BACKEND")
    patch(triton=False)
    assert pl_function.select_token_impl(CUDA) == "torch"
    monkeypatch.setenv("GRO_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        pl_function.select_token_impl(CUDA)


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("GRO_BACKEND", "triton")
    lp = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        gro_kernels.policy_loss(lp, torch.ones(2), old_logprobs=lp)


def _fused_decision(hidden_size, backend="auto"):
    cfg = _gro.resolve_config("grpo", None, {})
    inputs, _ = _gro._split_kwargs({})
    inputs["device"] = CUDA
    return _gro._use_fused(cfg, None, inputs, dict(backend=backend, process_group=None), hidden_size)


@pytest.mark.parametrize("triton,native,hidden,fused", [
    (True, True, BIG, True),        # linear_logprobs: chunked + CUDA epilogue
    (True, True, BIG - 1, False),   # linear_logprobs: triton, so no chunk loop to fuse into
    (True, False, BIG, False),      # triton (no native epilogue)
    (False, True, 896, True),       # chunked (no Triton)
])
def test_grad_in_forward_follows_linear_logprobs_on_cuda(patch, triton, native, hidden, fused):
    patch(triton=triton, native=native)
    assert _fused_decision(hidden) is fused
    assert F.selected_backend(CUDA, hidden_size=hidden).startswith("chunked") is fused
    assert _fused_decision(hidden, backend="chunked") is True


def test_gro_loss_asks_with_the_heads_hidden_size(monkeypatch):
    seen, selected = [], F.selected_backend

    def spy(device="cpu", backend="auto", hidden_size=None):
        seen.append(hidden_size)
        return selected(device, backend, hidden_size=hidden_size)

    monkeypatch.setattr(F, "selected_backend", spy)
    hidden, weight = torch.randn(2, 3, 24), torch.randn(11, 24)
    gro_kernels.gro_loss(hidden, weight, torch.randint(0, 11, (2, 3)), preset="grpo", advantages=torch.ones(2))
    assert seen == [24]
