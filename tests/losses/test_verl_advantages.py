"""gro_loss with verl's advantage estimators (adv_estimator=, the verl-named presets) and TRL's advantage
options (eps 1e-4, RLOO's KL in the reward and normalize_advantages), on hidden states: grad-in-forward and the
plain path against a float64 reference built from the spec's advantages (ops/group_advantages/naive.py)."""

import numpy as np
import pytest
import torch

import gro_kernels
from gro_kernels.ops.group_advantages import naive as N
from tests.support import reference_losses as R

B, T, H, V = 6, 5, 8, 13
GROUP_IDS = torch.tensor([0, 0, 0, 1, 1, 2])
UIDS = np.array(["p0", "p0", "p0", "p1", "p1", "p2"], dtype=object)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 1:] = False
    mask[5] = False  # an empty row
    with torch.no_grad():
        lp, _, _ = R.token_logprobs(hidden, weight, None, targets)
    noise = lambda s: s * torch.randn(B, T, generator=g, dtype=torch.float64)  # noqa: E731
    old = lp + noise(0.1)
    pi = old.exp()
    extra = dict(old=old, ref=lp + noise(0.2), rewards=torch.randn(B, generator=g, dtype=torch.float64),
                 values=torch.randn(B, T, generator=g, dtype=torch.float64),
                 spp=pi ** 2 + (1 - pi) ** 2 * torch.rand(B, T, generator=g, dtype=torch.float64))
    return hidden, weight, targets, mask, extra


def run(batch, **kw):
    hidden, weight, targets, mask, _ = batch
    h = hidden.float().requires_grad_()
    w = weight.float().requires_grad_()
    out = gro_kernels.gro_loss(h, w, targets, mask=mask, **kw)
    out.loss.backward()
    return out.loss.detach().double(), h.grad.double(), w.grad.double()


def run_ref(batch, adv, aggregation="token_mean"):
    hidden, weight, targets, mask, extra = batch
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    lp, _, _ = R.token_logprobs(h, w, None, targets)
    m = mask & (targets != -100)
    x, _ = R.policy_per_token(lp, adv, m, old=extra["old"])
    loss = R.aggregate(x, m, aggregation)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def assert_same(ours, ref, what):
    for name, a, b in zip(("loss", "dhidden", "dweight"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6, msg=f"{what}: {name}")


def spec_advantages(estimator, batch):
    """The spec's advantages of each verl estimator on this batch (float64)."""
    _, _, targets, mask, e = batch
    m = mask & (targets != -100)
    r = e["rewards"]
    return {
        "grpo_passk": lambda: N.grpo_passk_naive(r, GROUP_IDS),
        "opo": lambda: N.opo_naive(r, GROUP_IDS, m.sum(1)),
        "gpg": lambda: N.gpg_naive(r, GROUP_IDS),
        "reinforce_plus_plus_baseline": lambda: N.reinforce_pp_baseline_naive(r, m, group_index=GROUP_IDS),
        "gae": lambda: N.gae_naive(r, m, e["values"], gamma=0.9, lam=0.95),
        "optimal_token_baseline": lambda: N.optimal_token_baseline_naive(r, m, GROUP_IDS, e["old"], e["spp"],
                                                                         eps=1e-6),
        "tir_optimal_token_baseline": lambda: N.optimal_token_baseline_naive(r, m, GROUP_IDS, e["old"], e["spp"],
                                                                             eps=1e-6, aligned=True),
    }[estimator]()


ESTIMATORS = ["grpo_passk", "opo", "gpg", "reinforce_plus_plus_baseline", "gae", "optimal_token_baseline",
              "tir_optimal_token_baseline"]


def estimator_inputs(estimator, extra):
    kw = dict(rewards=extra["rewards"].float(), group_ids=UIDS, old_logprobs=extra["old"].float())
    if estimator == "gae":
        kw.update(values=extra["values"].float(), gamma=0.9, lam=0.95)
        del kw["group_ids"]
    if "optimal_token" in estimator:
        kw["sum_pi_squared"] = extra["spp"].float()
    return kw


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_adv_estimator_on_hidden_states_matches_reference(estimator, grad_in_forward):
    """gro_loss(adv_estimator=<verl name>) on the token_mean (bnpo) objective: loss and gradients equal the
    float64 reference policy loss with the spec's advantages (verl: core_algos.compute_<estimator>_... ;
    the spec is checked against verl's formulas in tests/ops/group_advantages/test_verl_estimators.py)."""
    batch = make_batch()
    ours = run(batch, preset="bnpo", adv_estimator=estimator, eps=1e-6, grad_in_forward=grad_in_forward,
               **estimator_inputs(estimator, batch[-1]))
    assert_same(ours, run_ref(batch, spec_advantages(estimator, batch)), estimator)


@pytest.mark.parametrize("preset", ["grpo_passk", "opo", "gpg", "reinforce_pp_baseline", "gae",
                                    "optimal_token_baseline", "tir_optimal_token_baseline"])
def test_verl_presets_equal_adv_estimator_on_bnpo(preset):
    """The verl-named presets are bnpo (token_mean, clip 0.2) with verl's estimator and eps 1e-6; gpg also takes
    verl's gpg policy loss (no ratio: surrogate "reinforce"), as verl's GPG recipe pairs the two."""
    batch = make_batch(1)
    estimator = {"reinforce_pp_baseline": "reinforce_plus_plus_baseline"}.get(preset, preset)
    kw = estimator_inputs(estimator, batch[-1])
    if preset == "reinforce_pp_baseline":
        kw["ref_logprobs"] = batch[-1]["ref"].float()
    by_preset = run(batch, preset=preset, **kw)
    if preset == "gpg":
        kw["surrogate"] = "reinforce"
    by_name = run(batch, preset="bnpo", adv_estimator=estimator, eps=1e-6,
                  **({"kl_in_reward": True, "kl_estimator": "k1", "ref_logprobs": kw.pop("ref_logprobs")}
                     if preset == "reinforce_pp_baseline" else {}), **kw)
    assert_same(by_preset, by_name, preset)


def test_reinforce_pp_baseline_preset_puts_the_summed_kl_in_the_score():
    batch = make_batch(2)
    _, _, targets, mask, e = batch
    m = mask & (targets != -100)
    ours = run(batch, preset="reinforce_pp_baseline", rewards=e["rewards"].float(), group_ids=GROUP_IDS,
               old_logprobs=e["old"].float(), ref_logprobs=e["ref"].float(), beta=0.1)
    adv = N.reinforce_pp_baseline_naive(e["rewards"], m, group_index=GROUP_IDS, token_kl=e["old"] - e["ref"],
                                        kl_coef=0.1)
    assert_same(ours, run_ref(batch, adv), "reinforce_pp_baseline with KL")


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_reinforce_plus_plus_with_gamma(grad_in_forward):
    batch = make_batch(3)
    _, _, targets, mask, e = batch
    m = mask & (targets != -100)
    ours = run(batch, preset="reinforce_pp", adv_estimator="reinforce_plus_plus", gamma=0.8,
               rewards=e["rewards"].float(), old_logprobs=e["old"].float(), ref_logprobs=e["ref"].float(), beta=0.05,
               grad_in_forward=grad_in_forward)
    adv = N.reinforce_pp_gamma_naive(e["rewards"], m, gamma=0.8, token_kl=e["old"] - e["ref"], kl_coef=0.05)
    assert_same(ours, run_ref(batch, adv), "reinforce_plus_plus gamma=0.8")


def test_norm_adv_by_std_in_grpo_false_is_dr_grpo_advantages():
    batch = make_batch(4)
    e = batch[-1]
    kw = dict(rewards=e["rewards"].float(), group_ids=GROUP_IDS, old_logprobs=e["old"].float())
    assert_same(run(batch, preset="bnpo", adv_estimator="grpo", norm_adv_by_std_in_grpo=False, **kw),
                run(batch, preset="bnpo", scale_rewards="none", **kw), "norm_adv_by_std_in_grpo=False")
    assert_same(run(batch, preset="bnpo", adv_estimator="grpo_passk", norm_adv_by_std_in_grpo=False, **kw),
                run_ref(batch, N.grpo_passk_naive(e["rewards"], GROUP_IDS, scale_rewards="none")), "passk unscaled")


# ---- TRL: eps 1e-4, RLOO's KL in the reward and normalize_advantages ----

def test_trl_presets_default_to_trl_eps_and_eps_overrides_it():
    """TRL GRPOTrainer._generate_and_score_completions: advantages / (std_grouped_rewards + 1e-4)."""
    batch = make_batch(5)
    e = batch[-1]
    r = torch.tensor([1.0, 1.0 + 2e-4, 1.0 - 1e-4, 0.0, 1e-4, 3.0], dtype=torch.float64)  # tiny group stds
    kw = dict(rewards=r.float(), group_ids=GROUP_IDS, old_logprobs=e["old"].float())
    for preset, eps in (("grpo", 1e-4), ("bnpo", 1e-4), ("dapo", 1e-4), ("gpg", 1e-6), ("reinforce_pp", 1e-6)):
        assert gro_kernels.PRESETS[preset].advantage_eps == eps, preset
    trl = R.advantages("grpo", r, [[0, 1, 2], [3, 4], [5]], eps=1e-4)
    assert_same(run(batch, preset="bnpo", **kw), run_ref(batch, trl), "bnpo eps 1e-4")
    verl = R.advantages("grpo", r, [[0, 1, 2], [3, 4], [5]], eps=1e-6)
    assert_same(run(batch, preset="bnpo", eps=1e-6, **kw), run_ref(batch, verl), "bnpo eps=1e-6")
    assert (trl - verl).abs().max() > 0.1  # the two eps really differ here


def trl_rloo_advantages(rewards, mask, old, ref, beta, groups, normalize):
    """trl/trainer/rloo_trainer.py RLOOTrainer._generate_and_score_completions: rewards - beta * sum_t (old - ref)
    over the completion, leave-one-out baseline (grouped_sum - r) / (n - 1), then optionally
    (A - mean) / (std + 1e-4) over the batch."""
    r = rewards - beta * ((old - ref) * mask).sum(-1)
    adv = torch.zeros_like(r)
    for rows in groups:
        n = len(rows)
        adv[rows] = r[rows] - (r[rows].sum() - r[rows]) / (n - 1)
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-4)
    return adv


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_trl_rloo_kl_in_reward_and_normalize_advantages(normalize, grad_in_forward):
    batch = make_batch(6)
    _, _, targets, mask, e = batch
    m = (mask & (targets != -100)).double()
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    ours = run(batch, preset="rloo", kl_in_reward=True, kl_estimator="k1", beta=0.05, normalize_advantages=normalize,
               rewards=e["rewards"].float(), group_ids=ids, old_logprobs=e["old"].float(),
               ref_logprobs=e["ref"].float(), grad_in_forward=grad_in_forward)
    adv = trl_rloo_advantages(e["rewards"], m, e["old"], e["ref"], 0.05, [[0, 1, 2], [3, 4, 5]], normalize)
    assert_same(ours, run_ref(batch, adv), f"TRL RLOO normalize={normalize}")


BAD = [
    ("unknown adv_estimator", dict(adv_estimator="ppo"), ValueError, r"adv_estimator must be one of verl's"),
    ("adv_estimator with scale_rewards", dict(adv_estimator="grpo", scale_rewards="none"), ValueError,
     r"adv_estimator='grpo' and scale_rewards='none' both set the advantage estimator"),
    ("norm_adv for rloo", dict(preset="rloo", norm_adv_by_std_in_grpo=False), ValueError,
     r"norm_adv_by_std_in_grpo applies to grpo / grpo_passk advantages"),
    ("norm_adv not a bool", dict(norm_adv_by_std_in_grpo=1), TypeError, r"norm_adv_by_std_in_grpo must be a bool"),
    ("values for grpo", dict(values=torch.zeros(B, T)), ValueError, r"values= is used only by preset 'grpo'"),
    ("gamma for grpo", dict(gamma=0.9), ValueError, r"gamma=0.9 discounts token-level returns"),
    ("gae without values", dict(adv_estimator="gae", group_ids=None), ValueError, r"needs values="),
    ("reinforce_plus_plus with groups", dict(adv_estimator="reinforce_plus_plus"), ValueError,
     r"has no group baseline and would ignore group_ids="),
    ("normalize_advantages for gae", dict(preset="gae", normalize_advantages=True), ValueError,
     r"normalize_advantages whitens sequence advantages"),
    ("advantage_eps=0", dict(advantage_eps=0.0), ValueError, r"advantage_eps must be finite and > 0"),
    ("values with advantages", dict(preset="gae", rewards=None, group_ids=None, advantages=torch.zeros(B),
                                    values=torch.zeros(B, T)), ValueError,
     r"values= feed the advantage estimator, but advantages= are given"),
]


@pytest.mark.parametrize("what,kw,err,match", BAD, ids=[b[0] for b in BAD])
def test_bad_advantage_options_raise_naming_them(what, kw, err, match):
    batch = make_batch(7)
    hidden, weight, targets, mask, e = batch
    args = dict(rewards=e["rewards"].float(), group_ids=GROUP_IDS, old_logprobs=e["old"].float())
    args.update(kw)
    for name in ("group_ids", "rewards"):
        if name in args and args[name] is None:
            del args[name]
    with pytest.raises(err, match=match):
        gro_kernels.gro_loss(hidden.float(), weight.float(), targets, mask=mask, **args)


def test_trl_rloo_preset_matches_trl_rloo_loss():
    """trl/trainer/rloo_trainer.py RLOOTrainer: advantages as trl_rloo_advantages (beta 0.05), then in _compute_loss
    log_ratio = sum_t (l - l_old) per sequence, loss = mean_i -min(exp(log_ratio) A_i, clip(exp(log_ratio), 1 - 0.2,
    1 + 0.2) A_i); the gradient by autograd of that float64 formula."""
    batch = make_batch(8)
    hidden, weight, targets, mask, e = batch
    mask = mask.clone()
    mask[5, 0] = True  # TRL's mean runs over every completion; gro's seq_mean counts empty rows too: keep none
    batch = (hidden, weight, targets, mask, e)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    e = dict(e, old=e["old"] + torch.tensor([0.1, -0.1, 0.0, 0.0, 0.3, 0.0], dtype=torch.float64).unsqueeze(1))
    ours = run(batch, preset="trl_rloo", rewards=e["rewards"].float(), group_ids=ids, old_logprobs=e["old"].float(),
               ref_logprobs=e["ref"].float())
    m = mask.double()
    adv = trl_rloo_advantages(e["rewards"], m, e["old"], e["ref"], 0.05, [[0, 1, 2], [3, 4, 5]], False)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    lp, _, _ = R.token_logprobs(h, w, None, targets)
    log_ratio = ((lp - e["old"]) * m).sum(1)
    coef = torch.exp(log_ratio)
    loss = -torch.min(coef * adv, torch.clamp(coef, 0.8, 1.2) * adv).mean()
    loss.backward()
    assert_same(ours, (loss.detach(), h.grad, w.grad), "trl_rloo")
    assert bool(((coef < 0.8) | (coef > 1.2)).any())  # the clip is active on some sequence


def test_sequence_sum_level_in_policy_loss():
    """policy_loss(importance_sampling_level="sequence_sum") is the same per-sequence term (TRL RLOO)."""
    g = torch.Generator().manual_seed(3)
    lp = (-torch.rand(4, 3, generator=g, dtype=torch.float64)).requires_grad_()
    old = lp.detach() + 0.2 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    m = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    lpf = lp.detach().float().requires_grad_()
    out = gro_kernels.policy_loss(lpf, adv.float(), m, old_logprobs=old.float(), loss_type="seq_mean_token_mean",
                                  importance_sampling_level="sequence_sum")
    out.loss.backward()
    coef = torch.exp(((lp - old) * m).sum(1))
    ref = -torch.min(coef * adv, torch.clamp(coef, 0.8, 1.2) * adv).mean()
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lpf.grad.double(), lp.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
@pytest.mark.parametrize("estimator", ["gae", "optimal_token_baseline", "tir_optimal_token_baseline",
                                       "reinforce_plus_plus_baseline", "opo"])
def test_packed_batches_equal_padded(estimator, grad_in_forward):
    """cu_seqlens (issue #14): the per-token estimator inputs (values, sum_pi_squared) go to the grid like
    old_logprobs; the loss, logprobs and gradients equal the padded batch's."""
    from tests.losses import test_packed as P
    batch = P.Batch(seed=4)
    g = torch.Generator().manual_seed(1)
    values = torch.randn(P.B, P.T, generator=g)
    spp = batch.old.float().exp() ** 2 + 0.1
    group_ids = torch.tensor([0, 0, 1, 1, 1, 2])
    per_token = {"gae": {"values": values}, "optimal_token_baseline": {"sum_pi_squared": spp},
                 "tir_optimal_token_baseline": {"sum_pi_squared": spp}}.get(estimator, {})
    kw = dict(preset="bnpo", adv_estimator=estimator, rewards=batch.rewards, old_logprobs=batch.old.float(),
              grad_in_forward=grad_in_forward, **({} if estimator == "gae" else {"group_ids": group_ids}))
    padded = P.run(batch, False, **kw, **per_token)
    packed = P.run(batch, True, **kw, **{k: batch.flat(t) for k, t in per_token.items()})
    P.assert_same(batch, padded, packed, estimator)
