"""Bad input to the loss layer gets a clear error naming what is wrong (issue #3, "What bad input gets")."""

import pytest
import torch

import gro_kernels

B, T, H, V = 4, 3, 8, 11


@pytest.fixture
def base():
    hidden = torch.randn(B, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    return hidden, weight, targets


def call(base, **kw):
    return gro_kernels.gro_loss(*base, **kw)


PAIRS = dict(pair_ids=torch.tensor([0, 0, 1, 1]), chosen=torch.tensor([True, False, True, False]))
CASES = [
    ("adv_length", dict(advantages=torch.randn(3)), ValueError, r"advantages must have shape \(4,\).*got.*\(3,\)"),
    ("rewards_length", dict(rewards=torch.randn(5), group_size=1), ValueError, r"rewards .*\(4,\).*\(5,\)"),
    ("group_ids_short", dict(rewards=torch.randn(4), group_ids=torch.tensor([0, 0, 1])), ValueError,
     r"group_ids must give a group to every row.*\(4,\)"),
    ("group_size_not_dividing", dict(rewards=torch.randn(4), group_size=3), ValueError, r"group_size=3"),
    ("no_groups", dict(rewards=torch.randn(4)), ValueError, r"needs group_ids= or group_size="),
    ("no_advantages", dict(), ValueError, r"needs advantages= or rewards="),
    ("unknown_preset", dict(preset="grpoo", advantages=torch.randn(4)), ValueError,
     r"preset must be one of.*'grpoo'"),
    ("dpo_without_pairs", dict(preset="dpo", ref_logprobs=torch.randn(B, T)), ValueError,
     r"needs pair_ids= and chosen="),
    ("dpo_without_ref", dict(preset="dpo", **PAIRS), ValueError, r"needs ref_logprobs="),
    ("kto_without_labels", dict(preset="kto", ref_logprobs=torch.randn(B, T)), ValueError, r"needs desirable="),
    ("remax_without_baseline", dict(preset="remax", rewards=torch.randn(4)), ValueError, r"needs baseline="),
    ("kl_without_ref", dict(advantages=torch.randn(4), beta=0.1), ValueError, r"needs ref_logprobs="),
    ("negative_epsilon", dict(advantages=torch.randn(4), epsilon=-0.1), ValueError, r"epsilon must be finite and >= 0"),
    ("negative_epsilon_high", dict(advantages=torch.randn(4), epsilon_high=-1.0), ValueError, r"epsilon_high"),
    ("negative_beta", dict(advantages=torch.randn(4), beta=-0.04), ValueError, r"beta must be finite and >= 0"),
    ("dpo_zero_beta", dict(preset="dpo", beta=0.0, ref_logprobs=torch.randn(B, T), **PAIRS), ValueError, r"beta"),
    ("nan_reward", dict(rewards=torch.tensor([0.0, 1.0, float("nan"), 1.0]), group_size=2), ValueError,
     r"rewards must be finite; row 2"),
    ("unknown_option", dict(advantages=torch.randn(4), epsilon_hi=0.3), TypeError, r"epsilon_hi"),
    ("bad_pairs", dict(preset="dpo", ref_logprobs=torch.randn(B, T), pair_ids=torch.tensor([0, 0, 0, 1]),
                       chosen=torch.tensor([True, False, False, True])), ValueError, r"pair 0 has 3 rows"),
    ("two_chosen", dict(preset="dpo", ref_logprobs=torch.randn(B, T), pair_ids=torch.tensor([0, 0, 1, 1]),
                        chosen=torch.tensor([True, True, True, False])), ValueError,
     r"pair 0 has 2 rows with 2 chosen"),
    ("mask_shape", dict(advantages=torch.randn(4), mask=torch.ones(B, T + 1)), ValueError, r"mask must have shape"),
    ("old_shape", dict(advantages=torch.randn(4), old_logprobs=torch.randn(B)), ValueError, r"old_logprobs must have"),
    ("mixed_without_online", dict(config=gro_kernels.GROObjective(rows="mixed"), advantages=torch.randn(4), **PAIRS),
     ValueError, r"needs online="),
    ("mixed_beta_ambiguous", dict(config=gro_kernels.GROObjective(rows="mixed"), beta=0.1), ValueError, r"kl_coef="),
    ("bad_loss_type", dict(advantages=torch.randn(4), loss_type="mean"), ValueError, r"loss_type must be one of"),
    ("bad_estimator", dict(advantages=torch.randn(4), kl_estimator="k4"), ValueError, r"kl_estimator must be one of"),
    ("tis_without_rollout", dict(advantages=torch.randn(4), tis_cap=2.0), ValueError, r"rollout_logprobs="),
    ("dual_clip_below_one", dict(advantages=torch.randn(4), dual_clip=0.5), ValueError, r"dual_clip"),
    ("exact_kl_without_ref_head", dict(advantages=torch.randn(4), kl_estimator="exact", beta=0.1), ValueError,
     r"ref_hidden="),
]


@pytest.mark.parametrize("kw,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gro_loss_rejects(base, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(base, **kw)


def test_group_advantages_rejects_nan_with_row_and_missing_inputs():
    with pytest.raises(ValueError, match=r"row 1"):
        gro_kernels.group_advantages(torch.tensor([0.0, float("nan")]), group_size=2)
    with pytest.raises(ValueError, match=r"baseline="):
        gro_kernels.group_advantages(torch.randn(4), mode="remax")
    with pytest.raises(ValueError, match=r"mask="):
        gro_kernels.group_advantages(torch.randn(4), mode="reinforce_pp")
    with pytest.raises(ValueError, match=r"mode must be one of"):
        gro_kernels.group_advantages(torch.randn(4), mode="ppo", group_size=2)
    with pytest.raises(ValueError, match=r"sum to the batch of 4"):
        gro_kernels.group_advantages(torch.randn(4), group_size=[2, 1])


def test_policy_and_kl_reject():
    lp = torch.randn(B, T)
    with pytest.raises(ValueError, match=r"advantages must have shape"):
        gro_kernels.policy_loss(lp, torch.randn(B + 1))
    with pytest.raises(ValueError, match=r"epsilon must be finite and >= 0"):
        gro_kernels.policy_loss(lp, torch.randn(B), epsilon=-0.2)
    with pytest.raises(ValueError, match=r"beta > 0 .* needs ref_logprobs="):
        gro_kernels.policy_loss(lp, torch.randn(B), beta=0.1)
    with pytest.raises(ValueError, match=r"estimator must be one of"):
        gro_kernels.kl_penalty(lp, lp, estimator="exact")
    with pytest.raises(ValueError, match=r"ref_logprobs must have shape"):
        gro_kernels.kl_penalty(lp, lp[:, :2])


def test_all_masked_batch_is_zero_not_nan(base):
    out = call(base, preset="dapo", advantages=torch.randn(4), mask=torch.zeros(B, T, dtype=torch.bool))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert torch.count_nonzero(base[0].grad) == 0 and torch.count_nonzero(base[1].grad) == 0
