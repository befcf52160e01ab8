"""Triton per-token policy epilogue under the interpreter vs token_terms.policy_token_terms (the
torch reference of docs/math.md §3/§5) and, for PPO clip + k3, vs autograd of the plain formula."""

import pytest
import torch

from gro_kernels.ops.policy_loss import token_terms, triton_impl
from gro_kernels.ops.policy_loss.token_terms import TokenLossConfig

pytestmark = pytest.mark.interpreter

N = 1500  # two programs of 1024, the second a tail


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(N, generator=g) * 5
    old = lp + torch.randn(N, generator=g) * 0.3
    old[:20] = lp[:20] + torch.linspace(-30, 30, 20)  # log ratios beyond the +-20 clamp
    ref = lp + torch.randn(N, generator=g) * 0.2
    rollout = old + torch.randn(N, generator=g) * 0.1
    adv = torch.randn(N, generator=g)
    adv[::7] = 0.0
    mask = torch.rand(N, generator=g) > 0.2
    scale = torch.rand(N, generator=g)  # O(1), so an absolute tolerance is meaningful for loss and grads
    entropy = torch.rand(N, generator=g) * 3
    ratio = torch.randn(N, generator=g) * 0.2
    return dict(lp=lp, old=old, ref=ref, rollout=rollout, adv=adv, mask=mask, scale=scale, entropy=entropy,
                ratio=ratio)


CONFIGS = {
    "clip_k3": (TokenLossConfig(kl_coef=0.04), dict(old=True, ref=True)),
    "clip_asym_dual_entropy_tis": (TokenLossConfig(epsilon_low=0.2, epsilon_high=0.28, dual_clip=3.0, kl_coef=0.1,
                                                   kl_estimator="k2", entropy_coef=0.01, tis_cap=2.0),
                                   dict(old=True, ref=True, entropy=True, rollout=True)),
    "clip_no_old": (TokenLossConfig(), dict()),
    "clip_seq_ratio_k1": (TokenLossConfig(kl_coef=0.05, kl_estimator="k1"), dict(old=True, ref=True, ratio=True)),
    "cispo_k3_st": (TokenLossConfig(surrogate="cispo", epsilon_high=4.0, kl_coef=0.02, kl_estimator="k3_st"),
                    dict(old=True, ref=True)),
    "reinforce_ref_logged_only": (TokenLossConfig(surrogate="reinforce"), dict(ref=True, entropy=True)),
}


def _run(fn, b, cfg, use):
    pick = lambda key: b[key] if use.get(key) else None  # noqa: E731
    return fn(b["lp"], b["adv"], b["scale"], b["mask"], old_logprobs=pick("old"), ref_logprobs=pick("ref"),
              entropy=pick("entropy"), rollout_logprobs=pick("rollout"), log_ratio=pick("ratio"), cfg=cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_token_terms(name):
    cfg, use = CONFIGS[name]
    b = _batch()
    got = _run(triton_impl.policy_token_terms, b, cfg, use)
    ref = _run(token_terms.policy_token_terms, b, cfg, use)
    for field in token_terms.TokenTerms._fields:
        a, r = getattr(got, field), getattr(ref, field)
        if r is None:
            assert a is None, field
            continue
        # k3 = exp(-d) + d - 1 cancels for small d: two fp32 exp's differ there by ~1 ulp of 1.0.
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6, msg=lambda m: f"{field}: {m}")
    masked = ~b["mask"]
    assert (got.loss[masked] == 0).all() and (got.grad_logprobs[masked] == 0).all()


def test_ppo_clip_k3_gradient_equals_autograd_of_plain_formula():
    b = _batch(1)
    eps, beta = 0.2, 0.04
    l = b["lp"].double().requires_grad_()
    m = b["mask"].double()
    rho = torch.exp((l - b["old"].double()).clamp(-20, 20))
    adv = b["adv"].double()
    pg = -torch.minimum(rho * adv, rho.clamp(1 - eps, 1 + eps) * adv)
    d = l - b["ref"].double()
    k3 = torch.exp(-d) + d - 1
    loss = ((pg + beta * k3) * m * b["scale"].double()).sum()
    loss.backward()
    got = triton_impl.policy_token_terms(b["lp"], b["adv"], b["scale"], b["mask"], old_logprobs=b["old"],
                                         ref_logprobs=b["ref"], cfg=TokenLossConfig(kl_coef=beta))
    torch.testing.assert_close(got.loss.double().sum(), loss.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.grad_logprobs.double(), l.grad, rtol=1e-5, atol=1e-6)


def test_empty_input_and_bad_option():
    b = {k: v[:0] for k, v in _batch().items()}
    out = _run(triton_impl.policy_token_terms, b, TokenLossConfig(), dict(old=True))
    assert out.loss.shape == (0,) and out.extras.shape == (0, 4)
    with pytest.raises(ValueError, match="surrogate"):
        _run(triton_impl.policy_token_terms, _batch(), TokenLossConfig(surrogate="nope"), dict())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nan_in_a_live_row_gives_nan_like_torch(name):
    """tl.minimum / tl.maximum drop NaN by default: a NaN log ratio used to be clamped to -20 and vanish from
    the loss. It must stay NaN on the token (as token_terms gives), and masked rows must stay 0."""
    cfg, use = CONFIGS[name]
    b = _batch(2)
    live = int(b["mask"].nonzero()[0, 0])
    dead = int((~b["mask"]).nonzero()[0, 0])
    for key in ("old", "ratio", "rollout"):
        b[key] = b[key].clone()
        b[key][live] = b[key][dead] = float("nan")
    b["lp"] = b["lp"].clone()
    b["lp"][live + 1] = float("nan")  # a NaN current logprob too (used without old logprobs)
    b["mask"][live + 1] = True
    got = _run(triton_impl.policy_token_terms, b, cfg, use)
    ref = _run(token_terms.policy_token_terms, b, cfg, use)
    for field in token_terms.TokenTerms._fields:
        a, r = getattr(got, field), getattr(ref, field)
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6, equal_nan=True, msg=lambda m: f"{field}: {m}")
    assert got.loss[dead] == 0
    if use.get("old") or use.get("ratio"):
        assert torch.isnan(got.loss[live]) and torch.isnan(got.loss.sum())
