"""policy_loss on per-token logprobs against the fp64 reference: every surrogate, clip option,
importance level, KL estimator and aggregation; values, metrics, gradients of logprobs and entropy."""

import pytest
import torch

import gro_kernels
from tests.support import reference_losses as R
from tests.support.policy_batches import T, batch

CASES = {
    "clip": dict(),
    "clip_asym_k2": dict(epsilon_high=0.28, beta=0.05, kl_estimator="k2"),
    "dual_clip": dict(dual_clip=3.0, beta=0.05),
    "cispo": dict(surrogate="cispo", epsilon_high=1.2, beta=0.05),
    "reinforce": dict(surrogate="reinforce", beta=0.05, kl_estimator="k1"),
    "gspo": dict(importance_sampling_level="sequence", epsilon=0.1),
    "gspo_token": dict(importance_sampling_level="sequence_token", epsilon=0.1),
    "tis_entropy": dict(tis_cap=1.5, entropy_coef=0.01, beta=0.05, kl_estimator="k3_st"),
    "no_old": dict(use_old=False, beta=0.05),
    "per_token_adv": dict(token_adv=True, beta=0.05),
}
AGGS = ["grpo", "bnpo", "dr_grpo", "seq_mean_token_sum"]
AGG_REF = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm",
           "seq_mean_token_sum": "seq_mean_token_sum"}


@pytest.mark.parametrize("loss_type", AGGS)
@pytest.mark.parametrize("case", list(CASES))
def test_policy_loss_matches_reference(case, loss_type):
    d = batch()
    opts = dict(CASES[case])
    use_old, token_adv = opts.pop("use_old", True), opts.pop("token_adv", False)
    adv = d["adv"].unsqueeze(1) * torch.linspace(0.5, 1.5, T, dtype=torch.float64) if token_adv else d["adv"]
    lp, ent = d["lp"].float().requires_grad_(), d["ent"].float().requires_grad_()
    old = d["old"].float() if use_old else None
    loss, metrics = gro_kernels.policy_loss(lp, adv.float(), d["mask"], old_logprobs=old,
                                            ref_logprobs=d["ref"].float(), rollout_logprobs=d["rollout"].float(),
                                            entropy=ent, loss_type=loss_type, **opts)
    up = 1.7
    (loss * up).backward()

    lp64, ent64 = d["lp"].clone().requires_grad_(), d["ent"].clone().requires_grad_()
    el = opts.get("epsilon", 0.2)
    x, rho = R.policy_per_token(lp64, adv, d["mask"], old=d["old"] if use_old else None, ref=d["ref"],
                                rollout=d["rollout"], ent=ent64, surrogate=opts.get("surrogate", "clip"), eps_low=el,
                                eps_high=opts.get("epsilon_high", el), dual_clip=opts.get("dual_clip"),
                                is_level=opts.get("importance_sampling_level", "token"), kl_coef=opts.get("beta", 0.0),
                                kl_estimator=opts.get("kl_estimator", "k3"), ent_coef=opts.get("entropy_coef", 0.0),
                                tis_cap=opts.get("tis_cap"))
    ref_loss = R.aggregate(x, d["mask"], AGG_REF[loss_type])
    (ref_loss * up).backward()
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad.double(), lp64.grad, rtol=1e-5, atol=1e-6)
    if opts.get("entropy_coef"):
        torch.testing.assert_close(ent.grad.double(), ent64.grad, rtol=1e-5, atol=1e-6)
    expected = R.clip_metrics(rho.detach(), adv, d["mask"], el, opts.get("epsilon_high", el),
                              opts.get("surrogate", "clip"))
    n = d["mask"].sum()
    expected["kl"] = (R.kl_estimate(d["lp"], d["ref"], opts.get("kl_estimator", "k3")) * d["mask"]).sum() / n
    expected["entropy"] = (d["ent"] * d["mask"]).sum() / n
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name].double(), value.double(), rtol=1e-5, atol=1e-6, msg=name)
        assert metrics[name].dtype == torch.float32 and metrics[name].dim() == 0


def test_masked_tokens_get_zero_gradient_even_with_garbage_values():
    d = batch(1)
    old = d["old"].float().clone()
    old[~d["mask"]] = float("-inf")  # padding in old logprobs must not leak NaN
    lp = d["lp"].float().requires_grad_()
    loss, metrics = gro_kernels.policy_loss(lp, d["adv"].float(), d["mask"], old_logprobs=old, loss_type="bnpo")
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert torch.count_nonzero(lp.grad[~d["mask"]]) == 0


def test_dual_clip_caps_negative_advantage_loss():
    lp = torch.zeros(1, 1, requires_grad=True)
    old = torch.full((1, 1), -3.0)  # ratio e^3 ~ 20 with A < 0
    loss, _ = gro_kernels.policy_loss(lp, torch.tensor([-1.0]), old_logprobs=old, dual_clip=3.0, loss_type="bnpo")
    loss.backward()
    assert loss.item() == pytest.approx(3.0) and lp.grad.item() == 0.0
