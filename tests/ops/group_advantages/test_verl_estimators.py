"""verl's advantage estimators (ops/group_advantages/estimators.py) against the spec (naive.py), and the spec
against references written here from verl 0.9.1's formulas (verl/trainer/ppo/core_algos.py, the function named
in each test). verl's group of one is the one documented difference (gro gives it 0): the verl references
follow verl there, and the comparisons leave such groups out or check gro's 0 on purpose."""

import numpy as np
import pytest
import torch

import gro_kernels
from gro_kernels.ops.group_advantages import estimators as E
from gro_kernels.ops.group_advantages import naive as N

B, T = 10, 7
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # group 3 is a group of one


def make(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, generator=g, dtype=torch.float64)
    r[4] = 0.0  # a zero reward (gpg counts the nonzero ones)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[2] = True
    mask[6] = False           # an empty row
    mask[7, :2] = False       # a late start (observation tokens first)
    kl = 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64)
    old = -2.0 * torch.rand(B, T, generator=g, dtype=torch.float64)
    pi = old.exp()
    spp = pi ** 2 + (1 - pi) ** 2 * torch.rand(B, T, generator=g, dtype=torch.float64)  # >= pi^2: w >= 0
    rho = 0.5 + torch.rand(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    return r, mask, kl, old, spp, rho, values


def close(ours, ref, atol=2e-6, rtol=2e-5):
    torch.testing.assert_close(ours.double(), ref.double(), atol=atol, rtol=rtol)


# ---- references from verl's formulas (float64, Python loops as verl's own) ----

def _by_group(index):
    out = {}
    for i, g in enumerate(index.tolist()):
        out.setdefault(g, []).append(i)
    return out


def _verl_whiten(x, m):
    """verl.utils.torch_functional.masked_whiten: (x - mean) * rsqrt(var + 1e-8), var unbiased over m."""
    vals = x[m]
    return torch.where(m, (x - vals.mean()) * torch.rsqrt(vals.var() + 1e-8), torch.zeros_like(x))


def _verl_token_rewards(r, m, kl=None, kl_coef=0.0):
    """verl's token_level_rewards: the score on the last valid token, minus kl_coef * k1 when the KL is in the
    reward (ray_trainer apply_kl_penalty)."""
    x = torch.zeros(m.shape, dtype=torch.float64)
    for i in range(m.shape[0]):
        valid = m[i].nonzero().flatten().tolist()
        x[i, valid[-1] if valid else -1] = r[i]  # an empty row: verl's index valid_length - 1 = -1
    if kl is not None:
        x = x - kl_coef * kl * m
    return x


def verl_passk(r, index, norm, eps=1e-6):
    """core_algos.compute_grpo_passk_outcome_advantage (every group has >= 2 rows there)."""
    out = torch.zeros_like(r)
    for rows in _by_group(index).values():
        vals = r[rows]
        top, where = torch.topk(vals, 2)
        adv = top[0] - top[1]
        out[rows[int(where[0])]] = adv / (vals.std() + eps) if norm else adv
    return out


def verl_opo(r, index, m):
    """core_algos.compute_opo_outcome_advantage: r - sum(len * r) / sum(len) over the group."""
    length = m.sum(1).double()
    out = r.clone()
    for rows in _by_group(index).values():
        if len(rows) > 1:
            out[rows] = r[rows] - (length[rows] * r[rows]).sum() / length[rows].sum()
    return out


def verl_gpg(r, index):
    """core_algos.compute_gpg_outcome_advantage (f_norm = 1): alpha = B / count_nonzero, alpha (r - mean_g)."""
    alpha = r.numel() / max(int(torch.count_nonzero(r)), 1)
    out = torch.zeros_like(r)
    for rows in _by_group(index).values():
        mean = r[rows].mean() if len(rows) > 1 else 0.0
        out[rows] = alpha * (r[rows] - mean)
    return out


def verl_rpp_baseline(r, index, m, kl, kl_coef):
    """core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage: the summed token rewards (KL-shaped)
    minus the group mean, tiled over the response, masked_whiten."""
    score = _verl_token_rewards(r, m, kl, kl_coef).sum(1)
    for rows in _by_group(index).values():
        if len(rows) > 1:
            score[rows] = score[rows] - score[rows].mean()
    return _verl_whiten(score.unsqueeze(1) * m, m)


def verl_rpp(r, m, gamma, kl, kl_coef):
    """core_algos.compute_reinforce_plus_plus_outcome_advantage: discounted returns that carry the running
    return through masked tokens, masked_whiten."""
    x = _verl_token_rewards(r, m, kl, kl_coef)
    returns = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=torch.float64)
    mf = m.double()
    for t in reversed(range(x.shape[1])):
        new = x[:, t] + gamma * running
        returns[:, t] = new * mf[:, t]
        running = new * mf[:, t] + running * (1 - mf[:, t])
    return _verl_whiten(returns, m)


def verl_gae(r, m, values, gamma, lam):
    """core_algos.compute_gae_advantage_return (advantages; verl leaves masked tokens unzeroed: compared on m)."""
    x = _verl_token_rewards(r, m)
    mf = m.double()
    nextvalues, lastgaelam, rev = 0.0, 0.0, []
    for t in reversed(range(x.shape[1])):
        delta = x[:, t] + gamma * nextvalues - values[:, t]
        new = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mf[:, t] + (1 - mf[:, t]) * nextvalues
        lastgaelam = new * mf[:, t] + (1 - mf[:, t]) * lastgaelam
        rev.append(lastgaelam)
    return _verl_whiten(torch.stack(rev[::-1], 1), m)


def verl_otb(r, index, m, old, spp, rho, handle_zero_tail, eps=1e-8):
    """core_algos.compute_optimal_token_baseline_advantage."""
    x = _verl_token_rewards(r, m)
    mf = m.double()
    returns = (x * mf).flip(-1).cumsum(-1).flip(-1)
    w = (1 - 2 * old.exp() + spp) * rho ** 2
    wc = (w * mf).cumsum(-1)
    base = torch.zeros_like(returns)
    for rows in _by_group(index).values():
        if len(rows) == 1:
            continue
        num = (returns[rows] * wc[rows] * mf[rows]).sum(0)
        den = (wc[rows] * mf[rows]).sum(0) + eps
        base[rows] = num / den
        if handle_zero_tail:
            lengths = mf[rows].sum(-1)
            ordered = torch.sort(lengths).values
            longest = (lengths == ordered[-1]).nonzero().flatten()
            if longest.numel() == 1 and ordered[-1] > ordered[-2]:
                base[rows[int(longest[0])], int(ordered[-2]):] = 0.0
    return (returns - base) * mf


def verl_tir_otb(r, index, m, old, spp, rho, handle_zero_tail, eps=1e-8):
    """core_algos.compute_multi_turn_optimal_token_baseline_advantage: the k-th valid token of each row is
    compared with the k-th of the others; empty rows sit out."""
    x = _verl_token_rewards(r, m)
    mf = m.double()
    returns = (x * mf).flip(-1).cumsum(-1).flip(-1)
    wc = ((1 - 2 * old.exp() + spp) * rho ** 2 * mf).cumsum(-1)
    lengths = m.sum(1)
    width = int(lengths.max())
    W = torch.zeros(B, width, dtype=torch.float64)
    G = torch.zeros_like(W)
    for i in range(B):
        W[i, :lengths[i]] = wc[i, m[i]]
        G[i, :lengths[i]] = returns[i, m[i]]
    base = torch.zeros_like(G)
    for rows in _by_group(index).values():
        rows = [i for i in rows if lengths[i] > 0]
        if len(rows) < 2:
            continue
        base[rows] = (G[rows] * W[rows]).sum(0) / (W[rows].sum(0) + eps)
        if handle_zero_tail:
            ls = lengths[rows]
            ordered = torch.sort(ls).values
            longest = (ls == ordered[-1]).nonzero().flatten()
            if longest.numel() == 1 and ordered[-1] > ordered[-2]:
                base[rows[int(longest[0])], int(ordered[-2]):] = 0.0
    adv = G - base
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        out[i, m[i]] = adv[i, :lengths[i]]
    return out


def multi_row(index):
    """Rows in groups of two or more (where gro and verl agree by design)."""
    sizes = torch.bincount(index)
    return sizes[index] > 1


# ---- sequence-level: grpo_passk, opo, gpg ----

@pytest.mark.parametrize("norm", [True, False])
def test_grpo_passk_matches_spec_and_verl(norm):
    r, mask, *_ = make()
    scale = "group" if norm else "none"
    ours = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="grpo_passk", norm_adv_by_std_in_grpo=norm)
    spec = N.grpo_passk_naive(r, GROUPS, scale_rewards=scale)
    close(ours, spec)
    keep = multi_row(GROUPS)
    close(spec[keep], verl_passk(r[keep], GROUPS[keep], norm))
    assert ours[~keep].abs().max() == 0  # a group of one: 0 (verl refuses it)
    assert int((ours != 0).sum()) == 3   # one best row per group of two or more


def test_grpo_passk_ties_and_equal_rewards_give_zero():
    r = torch.tensor([1.0, 1.0, 0.5, 2.0, 2.0, 2.0])
    out = gro_kernels.group_advantages(r, group_ids=torch.tensor([0, 0, 0, 1, 1, 1]), mode="grpo_passk")
    assert torch.equal(out, torch.zeros(6))


def test_opo_matches_spec_and_verl():
    r, mask, *_ = make(1)
    ours = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="opo", mask=mask)
    spec = N.opo_naive(r, GROUPS, mask.sum(1))
    close(ours, spec)
    keep = multi_row(GROUPS)
    close(spec[keep], verl_opo(r, GROUPS, mask)[keep])
    assert ours[~keep].abs().max() == 0


def test_gpg_matches_spec_and_verl():
    r, *_ = make(2)
    ours = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="gpg")
    spec = N.gpg_naive(r, GROUPS)
    close(ours, spec)
    keep = multi_row(GROUPS)
    close(spec[keep], verl_gpg(r, GROUPS)[keep])
    # alpha = B / #nonzero: one zero reward in ten rows
    centered = r[0] - r[:3].mean()
    close(ours[0], torch.tensor(B / 9 * float(centered), dtype=torch.float64))


# ---- token-level ----

def test_reinforce_pp_baseline_sums_the_kl_shaped_score_per_sequence():
    r, mask, kl, *_ = make(3)
    ours = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="reinforce_plus_plus_baseline",
                                        mask=mask, token_kl=kl.float(), kl_coef=0.3)
    spec = N.reinforce_pp_baseline_naive(r, mask, group_index=GROUPS, token_kl=kl, kl_coef=0.3)
    close(ours, spec)
    # verl: groups of two or more only (its group of one keeps its score, which moves the batch whitening)
    keep = multi_row(GROUPS)
    ref = verl_rpp_baseline(r[keep], GROUPS[keep], mask[keep], kl[keep], 0.3)
    close(N.reinforce_pp_baseline_naive(r[keep], mask[keep], group_index=GROUPS[keep], token_kl=kl[keep],
                                        kl_coef=0.3), ref, atol=1e-5, rtol=1e-5)
    # not gro's reinforce_pp, whose per-token return keeps the KL tail
    other = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="reinforce_pp", mask=mask,
                                         token_kl=kl.float(), kl_coef=0.3)
    assert (other - ours).abs().max() > 1e-3


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
def test_reinforce_plus_plus_discounts_over_valid_tokens(gamma):
    r, mask, kl, *_ = make(4)
    ours = gro_kernels.group_advantages(r.float(), mode="reinforce_plus_plus", mask=mask, token_kl=kl.float(),
                                        kl_coef=0.2, gamma=gamma)
    spec = N.reinforce_pp_gamma_naive(r, mask, gamma=gamma, token_kl=kl, kl_coef=0.2)
    close(ours, spec)
    close(spec, verl_rpp(r, mask, gamma, kl, 0.2), atol=1e-5, rtol=1e-5)
    # with groups (gro's reinforce_pp): the group-centred reward, discounted
    grouped = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode="reinforce_pp", mask=mask,
                                           token_kl=kl.float(), kl_coef=0.2, gamma=gamma)
    close(grouped, N.reinforce_pp_gamma_naive(r, mask, gamma=gamma, group_index=GROUPS, token_kl=kl, kl_coef=0.2))


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.7, 0.3)])
def test_gae_matches_spec_and_verl(gamma, lam):
    r, mask, _, _, _, _, values = make(5)
    ours = gro_kernels.group_advantages(r.float(), mode="gae", mask=mask, values=values.float(), gamma=gamma, lam=lam)
    spec = N.gae_naive(r, mask, values, gamma=gamma, lam=lam)
    close(ours, spec)
    close(spec, verl_gae(r, mask, values, gamma, lam) * mask, atol=1e-5, rtol=1e-5)
    assert ours[~mask].abs().max() == 0


@pytest.mark.parametrize("zero_tail", [True, False])
@pytest.mark.parametrize("aligned", [False, True], ids=["otb", "tir"])
def test_optimal_token_baseline_matches_spec_and_verl(aligned, zero_tail):
    r, mask, _, old, spp, rho, _ = make(6)
    mode = "tir_optimal_token_baseline" if aligned else "optimal_token_baseline"
    ours = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode=mode, mask=mask, old_logprobs=old.float(),
                                        sum_pi_squared=spp.float(), rollout_is_weights=rho.float(),
                                        handle_zero_tail=zero_tail, eps=1e-8)
    spec = N.optimal_token_baseline_naive(r, mask, GROUPS, old, spp, rollout_is_weights=rho,
                                          handle_zero_tail=zero_tail, aligned=aligned)
    close(ours, spec, atol=1e-5)
    verl = (verl_tir_otb if aligned else verl_otb)(r, GROUPS, mask, old, spp, rho, zero_tail)
    keep = multi_row(GROUPS)
    close(spec[keep], verl[keep], atol=1e-6)
    assert ours[~keep].abs().max() == 0  # gro: a group of one gets 0 (verl: its return)


def test_optimal_token_zero_tail_changes_the_lone_longest_row():
    """Group 1 has rows of different lengths: the longer one loses its baseline past the other's length."""
    r, mask, _, old, spp, rho, _ = make(6)
    kw = dict(group_ids=GROUPS, mode="optimal_token_baseline", mask=mask, old_logprobs=old.float(),
              sum_pi_squared=spp.float())
    on = gro_kernels.group_advantages(r.float(), handle_zero_tail=True, **kw)
    off = gro_kernels.group_advantages(r.float(), handle_zero_tail=False, **kw)
    assert (on - off).abs().max() > 1e-3


def test_token_modes_give_zero_on_empty_rows_and_masked_tokens():
    r, mask, kl, old, spp, rho, values = make(7)
    for mode, kw in (("reinforce_pp_baseline", {}), ("gae", dict(values=values.float(), gamma=0.9)),
                     ("optimal_token_baseline", dict(old_logprobs=old.float(), sum_pi_squared=spp.float())),
                     ("tir_optimal_token_baseline", dict(old_logprobs=old.float(), sum_pi_squared=spp.float())),
                     ("reinforce_pp", dict(gamma=0.8))):
        out = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode=mode, mask=mask, **kw)
        assert out.shape == (B, T) and out.dtype == torch.float32
        assert out[~mask].abs().max() == 0, mode
        assert torch.isfinite(out).all(), mode


def test_all_masked_batch_gives_zeros():
    r = torch.randn(4)
    m = torch.zeros(4, 3, dtype=torch.bool)
    for mode, kw in (("reinforce_pp_baseline", {}), ("gae", dict(values=torch.randn(4, 3))),
                     ("tir_optimal_token_baseline", dict(old_logprobs=-torch.rand(4, 3),
                                                         sum_pi_squared=torch.rand(4, 3)))):
        out = gro_kernels.group_advantages(r, group_size=2, mode=mode, mask=m, **kw)
        assert torch.equal(out, torch.zeros(4, 3)), mode


# ---- verl's names, uid strings, verl's singleton choices ----

def test_verl_vectorized_names_are_gro_modes():
    r, *_ = make(8)
    rf = r.float()
    for verl, gro in (("grpo_vectorized", "grpo"), ("rloo_vectorized", "rloo")):
        assert torch.equal(gro_kernels.group_advantages(rf, group_ids=GROUPS, mode=verl),
                           gro_kernels.group_advantages(rf, group_ids=GROUPS, mode=gro))


def test_uid_strings_as_verl_passes_them():
    """verl's index is a numpy object array of uid strings (ray_trainer: non_tensor_batch["uid"])."""
    r, *_ = make(9)
    uids = np.array([f"uid-{int(g) * 7 % 5}" for g in GROUPS], dtype=object)
    for mode in ("grpo", "rloo", "grpo_passk", "gpg"):
        by_uid = gro_kernels.group_advantages(r.float(), group_ids=uids, mode=mode)
        by_int = gro_kernels.group_advantages(r.float(), group_ids=GROUPS, mode=mode)
        assert torch.equal(by_uid, by_int), mode
    assert torch.equal(gro_kernels.group_advantages(r.float(), group_ids=list(uids)),
                       gro_kernels.group_advantages(r.float(), group_ids=GROUPS))


def test_group_of_one_is_zero_in_grpo_and_rloo_as_documented():
    """verl: compute_grpo_outcome_advantage gives a group of one r / (1 + eps) and compute_rloo_outcome_advantage
    r, while compute_rloo_vectorized_outcome_advantage gives 0. gro gives 0 in every grouped mode."""
    r = torch.tensor([0.3, -1.0, 2.0])
    ids = ["a", "b", "b"]
    for mode in ("grpo", "grpo_vectorized", "rloo", "rloo_vectorized", "dr_grpo", "gpg", "grpo_passk"):
        assert gro_kernels.group_advantages(r, group_ids=ids, mode=mode)[0] == 0, mode
    m = torch.ones(3, 2, dtype=torch.bool)
    assert gro_kernels.group_advantages(r, group_ids=ids, mode="opo", mask=m)[0] == 0


BAD = [
    ("gae without values", dict(mode="gae"), ValueError, r"mode='gae' needs values="),
    ("values for grpo", dict(mode="grpo", group_size=2, values=torch.randn(4, 3)), ValueError,
     r"values= is used only by mode='gae'; mode='grpo' would ignore it"),
    ("otb without sum_pi_squared", dict(mode="optimal_token_baseline", group_size=2, old_logprobs=torch.randn(4, 3)),
     ValueError, r"needs sum_pi_squared="),
    ("otb without groups", dict(mode="optimal_token_baseline", old_logprobs=torch.randn(4, 3),
                                sum_pi_squared=torch.rand(4, 3)), ValueError, r"needs group_ids= or group_size="),
    ("gamma for grpo", dict(mode="grpo", group_size=2, gamma=0.9), ValueError,
     r"gamma=0.9 discounts token-level returns: used only by mode='reinforce_pp' / 'gae'"),
    ("lam for reinforce_pp", dict(mode="reinforce_pp", lam=0.9), ValueError, r"lam=0.9 is GAE's lambda"),
    ("gamma > 1", dict(mode="gae", gamma=1.5, values=torch.randn(4, 3)), ValueError, r"gamma must be a number in"),
    ("reinforce_plus_plus with groups", dict(mode="reinforce_plus_plus", group_size=2), ValueError,
     r"has no group baseline and would ignore group_ids="),
    ("norm_adv for rloo", dict(mode="rloo", group_size=2, norm_adv_by_std_in_grpo=False), ValueError,
     r"norm_adv_by_std_in_grpo is used only by mode='grpo'"),
    ("handle_zero_tail for gae", dict(mode="gae", values=torch.randn(4, 3), handle_zero_tail=False), ValueError,
     r"handle_zero_tail=False is used only by the optimal_token_baseline modes"),
    ("values of the wrong shape", dict(mode="gae", values=torch.randn(4, 2)), ValueError, r"values"),
    ("opo without mask", dict(mode="opo", group_size=2, mask=None), ValueError, r"mode='opo' works on tokens"),
    ("2-D uid array", dict(mode="grpo", group_ids=np.array([["a", "b"], ["a", "b"]], dtype=object)), ValueError,
     r"group_ids as an array must be 1-D"),
    ("float uids", dict(mode="grpo", group_ids=[0.5, 0.5, 1.0, 1.0]), TypeError, r"uids must be str or int"),
    ("unknown mode", dict(mode="ppo_gae"), ValueError, r"mode must be one of .* or verl's"),
]


@pytest.mark.parametrize("what,kw,err,match", BAD, ids=[b[0] for b in BAD])
def test_bad_estimator_inputs_raise_naming_them(what, kw, err, match):
    kw = dict(kw)
    if kw["mode"] not in ("grpo", "rloo", "unknown"):
        kw.setdefault("mask", torch.ones(4, 3, dtype=torch.bool))
    if kw.get("mask", 0) is None:
        del kw["mask"]
    with pytest.raises(err, match=match):
        gro_kernels.group_advantages(torch.randn(4), **kw)


def test_segmented_ops_equal_naive_on_many_random_groups():
    """A ragged, shuffled batch of 64 rows in 13 groups: no Python loop over groups in the torch ops."""
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, 13, (64,), generator=g)
    r = torch.randn(64, generator=g, dtype=torch.float64).round(decimals=1)  # ties included
    G = int(idx.max()) + 1
    close(E.grpo_passk(r.float(), idx, G, eps=1e-6), N.grpo_passk_naive(r, idx))
    close(E.gpg(r.float(), idx, G), N.gpg_naive(r, idx))
    lengths = torch.randint(0, 9, (64,), generator=g)
    close(E.opo(r.float(), idx, G, lengths), N.opo_naive(r, idx, lengths))


def verl_gdpo(rewards, index, m, weights, norm, eps=1e-6):
    """core_algos.compute_gdpo_outcome_advantage: compute_grpo_outcome_advantage of each reward column (score on
    the last valid token), weighted sum, masked_whiten(.) * response_mask."""
    total = torch.zeros(m.shape, dtype=torch.float64)
    for k in range(rewards.shape[1]):
        adv = torch.zeros(rewards.shape[0], dtype=torch.float64)
        for rows in _by_group(index).values():
            vals = rewards[rows, k]
            mean, std = (vals.mean(), vals.std()) if len(rows) > 1 else (0.0, 1.0)
            adv[rows] = (vals - mean) / (std + eps) if norm else vals - mean
        total = total + weights[k] * adv.unsqueeze(1) * m
    return _verl_whiten(total, m) * m


@pytest.mark.parametrize("norm", [True, False])
def test_gdpo_matches_spec_and_verl(norm):
    r, mask, *_ = make(12)
    g = torch.Generator().manual_seed(12)
    rk = torch.stack([r, torch.randint(0, 2, (B,), generator=g).double(), 3 * torch.randn(B, generator=g,
                                                                                       dtype=torch.float64)], 1)
    weights = torch.tensor([1.0, 0.5, 2.0])
    ours = gro_kernels.group_advantages(rk.float(), group_ids=GROUPS, mode="gdpo", mask=mask,
                                        reward_weights=[1.0, 0.5, 2.0], norm_adv_by_std_in_grpo=norm)
    spec = N.gdpo_naive(rk, mask, GROUPS, weights=weights, scale_rewards="group" if norm else "none")
    close(ours, spec)
    keep = multi_row(GROUPS)
    ref = verl_gdpo(rk[keep], GROUPS[keep], mask[keep], weights.double(), norm)
    close(N.gdpo_naive(rk[keep], mask[keep], GROUPS[keep], weights=weights, scale_rewards="group" if norm else "none"),
          ref, atol=1e-5, rtol=1e-5)


def test_gdpo_bad_inputs():
    m = torch.ones(4, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"mode='gdpo' needs rewards as a 2-D floating tensor \[B, K\]"):
        gro_kernels.group_advantages(torch.randn(4), group_size=2, mode="gdpo", mask=m)
    with pytest.raises(ValueError, match=r"reward_weights must be 2 finite numbers"):
        gro_kernels.group_advantages(torch.randn(4, 2), group_size=2, mode="gdpo", mask=m, reward_weights=[1.0])
    with pytest.raises(ValueError, match=r"reward_weights= is used only by mode='gdpo'"):
        gro_kernels.group_advantages(torch.randn(4), group_size=2, reward_weights=[1.0])
    with pytest.raises(ValueError, match=r"adv_estimator='gdpo' needs several reward columns"):
        gro_kernels.gro_loss(torch.randn(4, 3, 8), torch.randn(5, 8), torch.zeros(4, 3, dtype=torch.long),
                             adv_estimator="gdpo", rewards=torch.randn(4), group_size=2)
