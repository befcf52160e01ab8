"""gro_loss for every preset against the independent fp64 reference (materialized logits): loss,
metrics and the gradients of hidden, weight and bias; plus the named invariants of issue #3."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.group_advantages.naive import reinforce_pp_naive
from tests.support import reference_losses as R

B, T, H, V = 6, 5, 8, 37
GROUPS = [[0, 1, 2], [3, 4], [5]]          # ragged, with a group of one
GROUP_IDS = torch.tensor([7, 7, 7, 2, 2, 9])
PAIR_IDS = torch.tensor([3, 1, 3, 0, 1, 0])
CHOSEN = torch.tensor([False, True, True, False, False, True])
PAIRS = [(2, 0), (1, 4), (5, 3)]            # (chosen row, rejected row)
DESIRABLE = torch.tensor([True, False, True, True, False, False])

# preset -> (advantage mode, aggregation, eps_low, eps_high, importance level, surrogate) for the reference
ONLINE = {
    "grpo": ("grpo", "seq_mean_token_mean", 0.2, 0.2, "token", "clip"),
    "bnpo": ("grpo", "token_mean", 0.2, 0.2, "token", "clip"),
    "dr_grpo": ("dr_grpo", "seq_mean_token_sum_norm", 0.2, 0.2, "token", "clip"),
    "dapo": ("grpo", "token_mean", 0.2, 0.28, "token", "clip"),
    "rloo": ("rloo", "token_mean", 0.2, 0.2, "token", "clip"),
    "remax": ("remax", "token_mean", 0.2, 0.2, "token", "clip"),
    "reinforce_pp": ("reinforce_pp", "token_mean", 0.2, 0.2, "token", "clip"),
    "ppo": ("given", "token_mean", 0.2, 0.2, "token", "clip"),
    "gspo": ("grpo", "seq_mean_token_mean", 3e-4, 4e-4, "sequence", "clip"),
    "cispo": ("grpo", "token_mean", 0.2, 5.0, "token", "cispo"),
}
OFFLINE = ("dpo", "ipo", "simpo", "kto", "cpl")


def make_batch(seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) * 0.3 if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 1:] = False
    targets[2, 4] = -100
    with torch.no_grad():
        lp, _, _ = R.token_logprobs(hidden, weight, b, targets)
    noise = lambda s: s * torch.randn(B, T, generator=g, dtype=torch.float64)  # noqa: E731
    extra = dict(old=lp + noise(0.15), ref=lp + noise(0.2), rewards=torch.randn(B, generator=g, dtype=torch.float64),
                 baseline=torch.randn(B, generator=g, dtype=torch.float64),
                 adv=torch.randn(B, generator=g, dtype=torch.float64), lp=lp, tiny_old=lp + noise(3e-4))
    return hidden, weight, b, targets, mask, extra


def leaves(*ts, dtype=torch.float32):
    return [None if t is None else t.detach().to(dtype).clone().requires_grad_() for t in ts]


def run_ours(preset, batch, scale=1.0, **kw):
    hidden, weight, b, targets, mask, _ = batch
    h, w, bb = leaves(hidden, weight, b)
    out = gro_kernels.gro_loss(h, w, targets, bb, preset=preset, mask=mask, **kw)
    (out.loss * scale).backward()
    return out, [h.grad, w.grad] + ([bb.grad] if bb is not None else [])


def run_ref(fn, batch, scale=1.0):
    hidden, weight, b, targets, mask, _ = batch
    h, w, bb = leaves(hidden, weight, b, dtype=torch.float64)
    lp, ent, logp = R.token_logprobs(h, w, bb, targets)
    loss, metrics = fn(lp, ent, mask & (targets != -100), logp)
    (loss * scale).backward()
    return loss.detach(), metrics, [h.grad, w.grad] + ([bb.grad] if bb is not None else [])


def assert_matches(ours, ref, what):
    out, grads = ours
    loss, metrics, ref_grads = ref
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-5, atol=1e-6, msg=f"{what}: loss")
    for name, value in metrics.items():
        torch.testing.assert_close(out.metrics[name].double(), value.double(), rtol=1e-5, atol=1e-6,
                                   msg=f"{what}: metric {name}")
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=2e-6, msg=f"{what}: grad {i}")


def online_reference(preset, extra, *, kl_coef, old_key="old"):
    mode, agg, el, eh, level, surrogate = ONLINE[preset]

    def fn(lp, ent, m, logp):
        if mode == "given":
            adv = extra["adv"]
        elif mode == "reinforce_pp":
            k1 = extra[old_key] - extra["ref"]
            adv = reinforce_pp_naive(extra["rewards"], m, group_index=GROUP_IDS, token_kl=k1, kl_coef=kl_coef)
        else:
            adv = R.advantages(mode, extra["rewards"], GROUPS, baseline=extra["baseline"],
                               eps=gro_kernels.PRESETS[preset].advantage_eps)  # TRL's presets: 1e-4
        x, rho = R.policy_per_token(lp, adv, m, old=extra[old_key], ref=extra["ref"], surrogate=surrogate,
                                    eps_low=el, eps_high=eh, is_level=level,
                                    kl_coef=0.0 if preset == "reinforce_pp" else kl_coef)
        metrics = R.clip_metrics(rho, adv, m, el, eh, surrogate)
        n = m.sum()
        metrics["kl"] = (R.kl_estimate(lp, extra["ref"], "k1" if preset == "reinforce_pp" else "k3") * m).sum() / n
        return R.aggregate(x, m, agg), metrics
    return fn


def online_kwargs(preset, extra, old_key="old"):
    kw = dict(old_logprobs=extra[old_key].float(), ref_logprobs=extra["ref"].float(), beta=0.04)
    if ONLINE[preset][0] == "given":
        kw["advantages"] = extra["adv"].float()
    else:
        kw.update(rewards=extra["rewards"].float(), group_ids=GROUP_IDS, baseline=extra["baseline"].float())
    return kw


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
@pytest.mark.parametrize("preset", list(ONLINE))
def test_online_preset_matches_reference(preset, grad_in_forward):
    batch = make_batch()
    extra = batch[-1]
    old_key = "tiny_old" if preset == "gspo" else "old"
    ours = run_ours(preset, batch, scale=0.7, grad_in_forward=grad_in_forward, **online_kwargs(preset, extra, old_key))
    ref = run_ref(online_reference(preset, extra, kl_coef=0.04, old_key=old_key), batch, scale=0.7)
    assert_matches(ours, ref, preset)


def offline_kwargs(preset, extra):
    kw = dict(ref_logprobs=extra["ref"].float())
    if preset == "kto":
        kw["desirable"] = DESIRABLE
    else:
        kw.update(pair_ids=PAIR_IDS, chosen=CHOSEN)
    return kw


OFFLINE_OPTIONS = {"dpo": dict(beta=0.1, label_smoothing=0.1), "ipo": dict(beta=0.5), "simpo": dict(beta=2.0),
                   "kto": dict(beta=0.1), "cpl": dict(beta=0.3, cpl_discount=0.9)}


@pytest.mark.parametrize("preset", OFFLINE)
def test_offline_preset_matches_reference(preset):
    batch = make_batch(seed=1)
    extra = batch[-1]
    opts = OFFLINE_OPTIONS[preset]
    ours = run_ours(preset, batch, scale=-1.3, **offline_kwargs(preset, extra), **opts)

    def fn(lp, ent, m, logp):
        loss = R.preference(preset, lp, m, extra["ref"], pairs=PAIRS, desirable=DESIRABLE,
                            beta=opts["beta"], label_smoothing=opts.get("label_smoothing", 0.0),
                            cpl_discount=opts.get("cpl_discount", 1.0))
        return loss, {}
    assert_matches(ours, run_ref(fn, batch, scale=-1.3), preset)


def test_exact_kl_option_matches_reference():
    batch = make_batch(seed=2)
    hidden, weight, b, targets, mask, extra = batch
    g = torch.Generator().manual_seed(5)
    ref_hidden = hidden + 0.3 * torch.randn(hidden.shape, generator=g, dtype=torch.float64)
    kw = online_kwargs("grpo", extra)
    kw.update(kl_estimator="exact", ref_hidden=ref_hidden.float(), ref_bias=b.float())
    ours = run_ours("grpo", batch, **kw)

    def fn(lp, ent, m, logp):
        adv = R.advantages("grpo", extra["rewards"], GROUPS, eps=1e-4)  # the grpo preset follows TRL's eps
        x, rho = R.policy_per_token(lp, adv, m, old=extra["old"])
        with torch.no_grad():
            ref_logp = torch.log_softmax(ref_hidden @ weight.detach().t() + b.detach(), -1)
        kl = R.exact_kl(logp, ref_logp)
        return R.aggregate(x + 0.04 * kl, m, "seq_mean_token_mean"), {"kl": (kl * m).sum() / m.sum()}
    assert_matches(ours, run_ref(fn, batch), "exact kl")


def test_reference_streamed_from_ref_head_equals_given_ref_logprobs():
    batch = make_batch(seed=3)
    hidden, weight, b, targets, mask, extra = batch
    ref_w = weight + 0.05
    with torch.no_grad():
        ref_lp = gro_kernels.linear_logprobs(hidden.float(), ref_w.float(), targets)
    kw = dict(advantages=extra["adv"].float(), old_logprobs=extra["old"].float(), beta=0.1)
    a, ga = run_ours("ppo", batch, ref_logprobs=ref_lp, **kw)
    s, gs = run_ours("ppo", batch, ref_hidden=hidden.float(), ref_weight=ref_w.float(), **kw)
    torch.testing.assert_close(a.loss, s.loss, rtol=0, atol=0)
    for x, y in zip(ga, gs):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "cispo", "ppo"])
@pytest.mark.parametrize("scale", [1.0, -2.5, 0.0])
def test_grad_in_forward_equals_plain_path(preset, scale):
    batch = make_batch(seed=4)
    extra = batch[-1]
    kw = online_kwargs(preset, extra)
    fused = run_ours(preset, batch, scale=scale, grad_in_forward=True, entropy_coef=0.01, **kw)
    plain = run_ours(preset, batch, scale=scale, grad_in_forward=False, entropy_coef=0.01, **kw)
    torch.testing.assert_close(fused[0].loss, plain[0].loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused[0].logprobs, plain[0].logprobs, rtol=0, atol=1e-6)
    for name in plain[0].metrics:
        torch.testing.assert_close(fused[0].metrics[name], plain[0].metrics[name], rtol=1e-6, atol=1e-7)
    for x, y in zip(fused[1], plain[1]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_ratio_is_one_and_nothing_clipped_when_old_equals_current():
    batch = make_batch(seed=5)
    hidden, weight, b, targets, mask, extra = batch
    first = gro_kernels.gro_loss(hidden.float(), weight.float(), targets, b.float(), preset="dapo", mask=mask,
                                 advantages=extra["adv"].float())
    out = gro_kernels.gro_loss(hidden.float(), weight.float(), targets, b.float(), preset="dapo", mask=mask,
                               advantages=extra["adv"].float(), old_logprobs=first.logprobs)
    assert out.metrics["ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert out.metrics["clip_ratio"].item() == 0.0
    torch.testing.assert_close(out.loss, first.loss)


def test_fully_masked_sequence_contributes_nothing():
    batch = make_batch(seed=6)
    hidden, weight, b, targets, mask, extra = batch
    kw = online_kwargs("grpo", extra)
    masked = mask.clone()
    masked[0] = False
    out, grads = run_ours("grpo", (hidden, weight, b, targets, masked, extra), **kw)
    assert torch.count_nonzero(grads[0][0]) == 0
    # the same batch without row 0 (seq-mean over the 5 other rows instead of 6: scale by 5/6)
    keep = torch.arange(1, B)
    # row 0's reward still shapes its group's advantages: pass the full-batch advantages instead
    adv = gro_kernels.group_advantages(kw["rewards"], group_ids=GROUP_IDS, eps=1e-4)  # the grpo preset's (TRL's) eps
    out_full = gro_kernels.gro_loss(hidden.float(), weight.float(), targets, b.float(), preset="grpo", mask=masked,
                                    advantages=adv, old_logprobs=kw["old_logprobs"], ref_logprobs=kw["ref_logprobs"],
                                    beta=0.04)
    out_sub = gro_kernels.gro_loss(hidden[keep].float(), weight.float(), targets[keep], b.float(), preset="grpo",
                                   mask=masked[keep], advantages=adv[keep], old_logprobs=kw["old_logprobs"][keep],
                                   ref_logprobs=kw["ref_logprobs"][keep], beta=0.04)
    torch.testing.assert_close(out_full.loss * B, out_sub.loss * (B - 1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.loss, out_full.loss)


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "gspo", "dpo", "kto"])
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_all_masked_batch_gives_zero_loss_and_zero_grad(preset, grad_in_forward):
    batch = make_batch(seed=7)
    hidden, weight, b, targets, mask, extra = batch
    none = torch.zeros_like(mask)
    kw = offline_kwargs(preset, extra) if preset in OFFLINE else online_kwargs(preset, extra)
    out, grads = run_ours(preset, (hidden, weight, b, targets, none, extra), grad_in_forward=grad_in_forward, **kw)
    assert out.loss.item() == 0.0
    for g in grads:
        assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0
    for name, value in out.metrics.items():
        assert torch.isfinite(value), name


def test_mixed_online_offline_equals_weighted_sum_of_separate_calls():
    batch = make_batch(seed=8)
    hidden, weight, b, targets, mask, extra = batch
    cfg = gro_kernels.GROObjective(name="grpo+dpo", rows="mixed", kl_coef=0.04, preference_beta=0.2,
                                   advantage_eps=1e-4)  # the grpo preset's (TRL's) eps
    online = torch.tensor([True, True, True, True, False, False])
    on_rows, off_rows = torch.arange(4), torch.arange(4, 6)
    pair_ids = torch.tensor([-1, -1, -1, -1, 5, 5])  # online rows' pair ids are ignored
    chosen = torch.tensor([False, False, False, False, False, True])
    group_ids = torch.tensor([0, 0, 1, 1, -1, -1])
    rewards = extra["rewards"].float().clone()
    rewards[4:] = float("nan")  # offline rows carry no reward
    h, w, bb = hidden.float(), weight.float(), b.float()
    common = dict(old_logprobs=extra["old"].float(), ref_logprobs=extra["ref"].float())
    hm, wm, bm = leaves(h, w, bb)
    mixed = gro_kernels.gro_loss(hm, wm, targets, bm, config=cfg, mask=mask, online=online, rewards=rewards,
                                 group_ids=group_ids, pair_ids=pair_ids, chosen=chosen, online_weight=0.7,
                                 offline_weight=1.9, **common)
    mixed.loss.backward()
    hs, ws, bs = leaves(h, w, bb)
    sel = lambda t, r: t[r]  # noqa: E731
    on = gro_kernels.gro_loss(hs[on_rows], ws, targets[on_rows], bs, preset="grpo", mask=mask[on_rows],
                              rewards=rewards[on_rows], group_ids=group_ids[on_rows], beta=0.04,
                              **{k: sel(v, on_rows) for k, v in common.items()})
    off = gro_kernels.gro_loss(hs[off_rows], ws, targets[off_rows], bs, preset="dpo", mask=mask[off_rows],
                               pair_ids=pair_ids[off_rows], chosen=chosen[off_rows], beta=0.2,
                               ref_logprobs=common["ref_logprobs"][off_rows])
    total = 0.7 * on.loss + 1.9 * off.loss
    total.backward()
    torch.testing.assert_close(mixed.loss, total, rtol=1e-6, atol=1e-7)
    for x, y in ((hm, hs), (wm, ws), (bm, bs)):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mixed.metrics["loss_offline"], off.loss.detach())


@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["gif", "plain"])
def test_global_token_count_makes_half_batches_accumulate_exactly(grad_in_forward):
    batch = make_batch(seed=9)
    hidden, weight, b, targets, mask, extra = batch
    adv = extra["adv"].float()
    kw = lambda r: dict(mask=mask[r], advantages=adv[r], old_logprobs=extra["old"][r].float(),  # noqa: E731
                        ref_logprobs=extra["ref"][r].float(), beta=0.04, grad_in_forward=grad_in_forward)
    valid = (mask & (targets != -100)).sum()
    h, w, bb = leaves(hidden, weight, b)
    full = gro_kernels.gro_loss(h, w, targets, bb, preset="dapo", **kw(slice(None)))
    full.loss.backward()
    h2, w2, b2 = leaves(hidden, weight, b)
    total = 0.0
    for r in (slice(0, 3), slice(3, 6)):
        part = gro_kernels.gro_loss(h2[r], w2, targets[r], b2, preset="dapo", global_token_count=valid, **kw(r))
        part.loss.backward()
        total = total + part.loss.detach()
    torch.testing.assert_close(total, full.loss.detach(), rtol=1e-6, atol=1e-7)
    for x, y in ((h, h2), (w, w2), (bb, b2)):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-7)


def test_custom_config_and_module():
    batch = make_batch(seed=10)
    hidden, weight, b, targets, mask, extra = batch
    cfg = gro_kernels.GROObjective(anchor="leave_one_out", magnitude="identity", surrogate="clip", dual_clip=3.0,
                                aggregation="seq_mean_token_sum", kl_coef=0.02, kl_estimator="k3_st")
    kw = dict(mask=mask, rewards=extra["rewards"].float(), group_ids=GROUP_IDS, old_logprobs=extra["old"].float(),
              ref_logprobs=extra["ref"].float())

    def fn(lp, ent, m, logp):
        adv = R.advantages("rloo", extra["rewards"] * 4.0, GROUPS)  # large advantages: the dual clip is active
        x, rho = R.policy_per_token(lp, adv, m, old=extra["old"], ref=extra["ref"], dual_clip=3.0, kl_coef=0.02,
                                    kl_estimator="k3_st")
        return R.aggregate(x, m, "seq_mean_token_sum"), {}
    kw["rewards"] = kw["rewards"] * 4.0
    ours = run_ours(None, batch, config=cfg, **{k: v for k, v in kw.items() if k != "mask"})
    assert_matches(ours, run_ref(fn, batch), "custom config")
    module = gro_kernels.GROLoss(config=cfg)
    out = module(hidden.float(), weight.float(), targets, b.float(), **kw)
    torch.testing.assert_close(out.loss, ours[0].loss)


def test_masked_pair_is_left_out_of_the_dpo_mean():
    batch = make_batch(seed=11)
    hidden, weight, b, targets, mask, extra = batch
    masked = mask.clone()
    masked[2] = False  # row 2 is the chosen row of pair 3 (rows 2, 0)
    kw = dict(ref_logprobs=extra["ref"].float(), beta=0.1)
    out, grads = run_ours("dpo", (hidden, weight, b, targets, masked, extra), pair_ids=PAIR_IDS, chosen=CHOSEN, **kw)
    assert torch.count_nonzero(grads[0][2]) == 0 and torch.count_nonzero(grads[0][0]) == 0
    keep = torch.tensor([1, 3, 4, 5])
    sub = gro_kernels.gro_loss(hidden[keep].float(), weight.float(), targets[keep], b.float(), preset="dpo",
                               mask=mask[keep], pair_ids=PAIR_IDS[keep], chosen=CHOSEN[keep],
                               ref_logprobs=extra["ref"][keep].float(), beta=0.1)
    torch.testing.assert_close(out.loss, sub.loss)
