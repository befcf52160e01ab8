"""The loss layer's Triton dispatch end to end under the interpreter: with GRO_BACKEND=triton the
public policy_loss, gro_loss (plain and grad-in-forward paths) and group_advantages run the Triton
kernels on CPU tensors (spied), and give what the torch path gives with GRO_BACKEND unset."""

import pytest
import torch

import gro_kernels
from gro_kernels.losses import gro as _gro_module
from gro_kernels.ops.group_advantages import naive
from gro_kernels.ops.group_advantages import triton_impl as adv_triton
from gro_kernels.ops.policy_loss import triton_impl as pl_triton

pytestmark = pytest.mark.interpreter

B, T, H, V = 4, 6, 16, 40
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture
def spied(monkeypatch):
    """Counts calls of the two Triton entry points the dispatch uses."""
    calls = {"policy": 0, "advantages": 0}
    for module, name, key in ((pl_triton, "policy_token_terms", "policy"),
                              (adv_triton, "segmented_advantages", "advantages")):
        original = getattr(module, name)

        def spy(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def _run(monkeypatch, backend, fn):
    if backend is None:
        monkeypatch.delenv("GRO_BACKEND", raising=False)
    else:
        monkeypatch.setenv("GRO_BACKEND", backend)
    return fn()


def _tokens(seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    mask = torch.rand(B, T, generator=g) > 0.25
    return dict(lp=lp, mask=mask, adv=torch.randn(B, generator=g), old=lp + torch.randn(B, T, generator=g) * 0.2,
                ref=lp + torch.randn(B, T, generator=g) * 0.2, rollout=lp + torch.randn(B, T, generator=g) * 0.1,
                entropy=torch.rand(B, T, generator=g) * 2)


POLICY_OPTIONS = {
    "grpo_clip_k3": dict(beta=0.04),
    "gspo_sequence_ratio": dict(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4),
    "cispo_entropy_tis": dict(surrogate="cispo", epsilon_high=5.0, entropy_coef=0.01, tis_cap=2.0, loss_type="bnpo"),
    "dual_clip_k2": dict(dual_clip=3.0, beta=0.1, kl_estimator="k2", loss_type="dr_grpo"),
}


def _policy(b, options):
    lp, ent = b["lp"].clone().requires_grad_(), b["entropy"].clone().requires_grad_()
    loss, metrics = gro_kernels.policy_loss(lp, b["adv"], b["mask"], old_logprobs=b["old"], ref_logprobs=b["ref"],
                                            rollout_logprobs=b["rollout"], entropy=ent, **options)
    g = torch.randn(())
    (loss * g).backward()  # a non-unit upstream gradient
    return loss.detach(), metrics, lp.grad, ent.grad


def _assert_same(got, ref):
    for a, r in zip(got, ref):
        if isinstance(r, dict):
            assert a.keys() == r.keys()
            for k in r:
                torch.testing.assert_close(a[k], r[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
        else:
            torch.testing.assert_close(a, r, **TOL)


@pytest.mark.parametrize("name", list(POLICY_OPTIONS))
def test_policy_loss_dispatches_to_triton(monkeypatch, spied, name):
    b = _tokens()
    torch.manual_seed(1)
    ref = _run(monkeypatch, None, lambda: _policy(b, POLICY_OPTIONS[name]))
    assert spied["policy"] == 0
    torch.manual_seed(1)
    got = _run(monkeypatch, "triton", lambda: _policy(b, POLICY_OPTIONS[name]))
    assert spied["policy"] == 1
    _assert_same(got, ref)


def _gro(backend, **options):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(B, T, H, generator=g).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / H ** 0.5).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[1, 4:] = -100
    lp = torch.randn(B, T, generator=g) * 0.1 - 3
    out = gro_kernels.gro_loss(hidden, weight, targets, preset="dapo", backend=backend, old_logprobs=lp,
                               ref_logprobs=lp - 0.05, beta=0.04, rewards=torch.randn(B, generator=g),
                               group_ids=torch.tensor([5, 2, 5, 2]), **options)
    out.loss.backward(torch.tensor(-1.7))
    return out.loss.detach(), out.metrics, hidden.grad, weight.grad


@pytest.mark.parametrize("backend,fused", [("auto", False), ("chunked", True)],
                         ids=["plain_path_triton_linear_logprobs", "grad_in_forward_chunked"])
def test_gro_loss_dispatches_to_triton(monkeypatch, spied, backend, fused):
    ref = _run(monkeypatch, None, lambda: _gro(backend, return_entropy=True))
    assert spied == {"policy": 0, "advantages": 0}
    paths, use_fused = [], _gro_module._use_fused

    def record(*args):
        paths.append(use_fused(*args))
        return paths[-1]

    monkeypatch.setattr(_gro_module, "_use_fused", record)
    got = _run(monkeypatch, "triton", lambda: _gro(backend, return_entropy=True))
    # auto + GRO_BACKEND=triton: Triton linear_logprobs, plain path; explicit chunked: the fused chunk loop
    # whose per-chunk token function is the Triton epilogue.
    assert paths == [fused] and spied["advantages"] == 1 and spied["policy"] >= 1
    _assert_same(got, ref)


@pytest.mark.parametrize("mode,scale", [("grpo", "group"), ("grpo", "batch"), ("dr_grpo", "group"),
                                        ("rloo", "group")])
def test_group_advantages_dispatches_to_triton(monkeypatch, spied, mode, scale):
    g = torch.Generator().manual_seed(4)
    ids = torch.tensor([3, 9, 3, 1, 9, 9, 3, 7, 1, 3])  # ragged, unsorted, a group of one (7)
    rewards = torch.randn(ids.numel(), generator=g)
    rewards[ids == 9] = 0.5  # identical rewards
    call = lambda: gro_kernels.group_advantages(rewards, group_ids=ids, mode=mode, scale_rewards=scale)  # noqa: E731
    ref = _run(monkeypatch, None, call)
    got = _run(monkeypatch, "triton", call)
    assert spied["advantages"] == 1
    torch.testing.assert_close(got, ref, **TOL)
    index = torch.unique(ids, return_inverse=True)[1]
    torch.testing.assert_close(got.double(), naive.group_advantages_naive(rewards, index, mode, scale_rewards=scale),
                               **TOL)
    assert (got[ids == 9] == 0).all() and (mode == "dr_grpo" or got[ids == 7].item() == 0)
