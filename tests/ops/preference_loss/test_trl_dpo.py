"""TRL DPOTrainer loss types in preference_loss, against a transcription of TRL 1.16.0's formula
(trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss: ld_alpha sequence sums, f_divergence_type scores, the
loss_type loop with loss_weights, WPO use_weighting), written here on TRL's [chosen; rejected] batch layout:
loss and gradient in fp64, shuffled pair ids, masked tokens and a pair with an empty response left out."""

import math

import pytest
import torch
import torch.nn.functional as F

import gro_kernels

B, T = 8, 6
PAIR_IDS = torch.tensor([11, 40, 40, 11, 7, 7, 3, 3])
CHOSEN = torch.tensor([False, True, False, True, True, False, False, True])
PAIRS = [(3, 0), (1, 2), (4, 5), (7, 6)]  # (chosen row, rejected row), in pair-id order as TRL's batch would be


def batch(seed=0, empty_row=None):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    ref = lp + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lss = -torch.rand(B, T, generator=g, dtype=torch.float64)  # log sum_v p_v^2 <= 0
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 3:] = False
    mask[5, 1:] = False
    mask[6, 4:] = False
    if empty_row is not None:
        mask[empty_row] = False
    return lp, ref, lss, mask


def trl_reference(lp, ref, lss, mask, pairs, loss_types, loss_weights=None, beta=0.1, label_smoothing=0.0,
                  f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
                  discopop_tau=0.05):
    """TRL's _compute_loss from the per-token logprobs on: rows reordered to [chosen..., rejected...]."""
    order = torch.tensor([w for w, _ in pairs] + [lo for _, lo in pairs])
    m = mask[order].double()
    per_token_logps = lp[order] * m
    ref_per_token = ref[order] * m
    if ld_alpha is None:
        logps, ref_logps = per_token_logps.sum(1), ref_per_token.sum(1)
    else:
        comp_pos = m.cumsum(1)
        chosen_lens, rejected_lens = m.sum(1).chunk(2)
        shared = torch.minimum(chosen_lens, rejected_lens).repeat(2)
        shared_mask = (comp_pos > 0) & (comp_pos <= shared.unsqueeze(1))
        tail_mask = comp_pos > shared.unsqueeze(1)
        logps = (per_token_logps * shared_mask).sum(1) + ld_alpha * (per_token_logps * tail_mask).sum(1)
        ref_logps = (ref_per_token * shared_mask).sum(1) + ld_alpha * (ref_per_token * tail_mask).sum(1)
    chosen_logps, rejected_logps = logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.chunk(2)
    c_lr, r_lr = chosen_logps - ref_chosen, rejected_logps - ref_rejected
    if f_divergence_type == "reverse_kl":
        c_s, r_s = c_lr, r_lr
    elif f_divergence_type == "forward_kl":
        c_s, r_s = 1 - torch.exp(-c_lr), 1 - torch.exp(-r_lr)
    elif f_divergence_type == "js_divergence":
        c_s, r_s = math.log(2) + F.logsigmoid(c_lr), math.log(2) + F.logsigmoid(r_lr)
    else:
        a = f_alpha_divergence_coef
        c_s = (torch.exp(torch.clamp((a - 1) * c_lr, max=80.0)) - 1) / (a - 1)
        r_s = (torch.exp(torch.clamp((a - 1) * r_lr, max=80.0)) - 1) / (a - 1)
    d = c_s - r_s
    c_mask, r_mask = m.chunk(2)
    eps = label_smoothing
    loss = 0.0
    for loss_type, w in zip(loss_types, loss_weights or [1.0] * len(loss_types)):
        if loss_type == "sigmoid":
            per = -F.logsigmoid(beta * d)
        elif loss_type == "hinge":
            per = torch.relu(1 - beta * d)
        elif loss_type == "ipo":
            per = (c_s / c_mask.sum(1).clamp(min=1) - r_s / r_mask.sum(1).clamp(min=1) - 1 / (2 * beta)) ** 2
        elif loss_type == "exo_pair":
            per = (torch.sigmoid(beta * d) * (F.logsigmoid(beta * d) - math.log1p(-eps))
                   + torch.sigmoid(-beta * d) * (F.logsigmoid(-beta * d) - math.log(eps)))
        elif loss_type == "nca_pair":
            cr, rr = beta * c_lr, beta * r_lr
            per = -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rr)
        elif loss_type == "robust":
            per = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
        elif loss_type == "bco_pair":
            per = -F.logsigmoid(beta * c_lr) - F.logsigmoid(-beta * r_lr)
        elif loss_type == "sppo_hard":
            per = (c_lr - 0.5 / beta) ** 2 + (r_lr + 0.5 / beta) ** 2
        elif loss_type in ("aot", "aot_unpaired"):
            if loss_type == "aot":
                delta = (torch.sort(chosen_logps - rejected_logps).values
                         - torch.sort(ref_chosen - ref_rejected).values)
            else:
                delta = torch.sort(c_lr).values - torch.sort(r_lr).values
            per = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
        elif loss_type == "apo_zero":
            per = 1 - torch.sigmoid(beta * c_lr) + torch.sigmoid(beta * r_lr)
        elif loss_type == "apo_down":
            per = torch.sigmoid(beta * c_lr) + 1 - torch.sigmoid(beta * (c_lr - r_lr))
        elif loss_type == "discopop":
            x = d * beta
            mod = torch.sigmoid(x / discopop_tau)
            per = -F.logsigmoid(x) * (1 - mod) + torch.exp(-x) * mod
        elif loss_type == "sft":
            c_tok, _ = per_token_logps.chunk(2)
            per = (-c_tok[c_mask.bool()].mean()).expand(len(pairs))
        elif loss_type == "sigmoid_norm":
            per = -F.logsigmoid(beta * (c_s / c_mask.sum(1).clamp(min=1) - r_s / r_mask.sum(1).clamp(min=1)))
        if use_weighting:
            with torch.no_grad():
                aligned = ((lp[order] - lss[order]) * m).sum(1) / m.sum(1).clamp(min=1)
            cw, rw = torch.exp(aligned).chunk(2)
            per = per * cw * rw
        loss = loss + per.mean() * w
    return loss


def run(loss_type, pairs=PAIRS, empty_row=None, trl_types=None, trl_kw=None, seed=0, **options):
    lp, ref, lss, mask = batch(seed, empty_row)
    x = lp.clone().requires_grad_()
    kw = dict(log_sum_sq_probs=lss) if options.get("use_weighting") else {}
    out = gro_kernels.preference_loss(x, mask, loss_type=loss_type, ref_logprobs=ref, pair_ids=PAIR_IDS,
                                      chosen=CHOSEN, **kw, **options)
    out.loss.backward()
    y = lp.clone().requires_grad_()
    types = trl_types or ([loss_type] if isinstance(loss_type, str) else list(loss_type))
    expected = trl_reference(y, ref, lss, mask, pairs, types, **(trl_kw if trl_kw is not None else options))
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    return out, x.grad


TRL_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
             "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
GRO_NAME = {"ipo": "ipo_norm"}  # preference_loss keeps gro's plain-sum "ipo"; TRL's is "ipo_norm"
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.2, "aot": 0.1, "aot_unpaired": 0.1}


@pytest.mark.parametrize("trl_type", TRL_TYPES)
def test_each_dpo_loss_type_matches_trl(trl_type):
    opts = dict(beta=0.3)
    if trl_type in SMOOTHING:
        opts["label_smoothing"] = SMOOTHING[trl_type]
    run(GRO_NAME.get(trl_type, trl_type), trl_types=[trl_type], **opts)


@pytest.mark.parametrize("trl_type", TRL_TYPES)
def test_pair_with_empty_response_is_left_out(trl_type):
    """Row 5 fully masked: TRL's reference on the three other pairs; rows 4 and 5 get no gradient."""
    opts = dict(beta=0.3, label_smoothing=SMOOTHING.get(trl_type, 0.0))
    if not opts["label_smoothing"]:
        del opts["label_smoothing"]
    _, grad = run(GRO_NAME.get(trl_type, trl_type), pairs=[(3, 0), (1, 2), (7, 6)], empty_row=5, trl_types=[trl_type],
                  **opts)
    assert grad[4].abs().sum() == 0 and grad[5].abs().sum() == 0
    assert grad[3].abs().sum() > 0  # the chosen row of a kept pair


@pytest.mark.parametrize("f_div", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("trl_type", ["sigmoid", "hinge", "ipo", "robust", "discopop", "sigmoid_norm"])
def test_f_divergence_matches_trl(f_div, trl_type):
    opts = dict(beta=0.2, f_divergence_type=f_div, f_alpha_divergence_coef=0.3)
    if trl_type == "robust":
        opts["label_smoothing"] = 0.1
    run(GRO_NAME.get(trl_type, trl_type), trl_types=[trl_type], **opts)


@pytest.mark.parametrize("trl_type", ["sigmoid", "ipo", "apo_zero", "aot", "bco_pair"])
def test_ld_alpha_matches_trl(trl_type):
    run(GRO_NAME.get(trl_type, trl_type), trl_types=[trl_type], beta=0.2, ld_alpha=0.4)


@pytest.mark.parametrize("trl_type", ["sigmoid", "ipo", "nca_pair", "sft"])
def test_wpo_weighting_matches_trl(trl_type):
    run(GRO_NAME.get(trl_type, trl_type), trl_types=[trl_type], beta=0.2, use_weighting=True)


def test_loss_type_list_with_weights_matches_trl():
    """MPO-style combination: DPOConfig(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])."""
    out, _ = run(["sigmoid", "bco_pair", "sft"], trl_types=["sigmoid", "bco_pair", "sft"], beta=0.1,
                 loss_weights=[0.8, 0.2, 1.0])
    assert "nll_loss" in out.metrics


def test_rpo_alpha_is_sigmoid_plus_weighted_sft():
    run("dpo", trl_types=["sigmoid", "sft"], trl_kw=dict(beta=0.1, loss_weights=[1.0, 0.7]), beta=0.1, rpo_alpha=0.7)


def test_gro_ipo_is_plain_sums_and_differs_from_trl_ipo():
    """gro's documented "ipo" keeps plain sums; TRL's (ipo_norm) divides by the length: they must differ here."""
    lp, ref, lss, mask = batch()
    common = dict(ref_logprobs=ref, pair_ids=PAIR_IDS, chosen=CHOSEN, beta=0.3)
    gro_ipo = gro_kernels.preference_loss(lp, mask, loss_type="ipo", **common).loss
    trl_ipo = gro_kernels.preference_loss(lp, mask, loss_type="ipo_norm", **common).loss
    torch.testing.assert_close(trl_ipo.double(), trl_reference(lp, ref, lss, mask, PAIRS, ["ipo"], beta=0.3),
                               rtol=1e-5, atol=1e-6)
    assert (gro_ipo - trl_ipo).abs() > 1e-3


def test_reward_metrics_are_trl_rewards():
    """rewards/chosen etc. are beta * log-ratios (LD-weighted with ld_alpha), as TRL logs them."""
    lp, ref, _, mask = batch()
    out = gro_kernels.preference_loss(lp, mask, loss_type="hinge", ref_logprobs=ref, pair_ids=PAIR_IDS,
                                      chosen=CHOSEN, beta=0.25)
    g = ((lp - ref) * mask).sum(1) * 0.25
    w, lo = torch.tensor([p[0] for p in PAIRS]), torch.tensor([p[1] for p in PAIRS])
    torch.testing.assert_close(out.metrics["rewards_chosen"].double(), g[w].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.metrics["reward_accuracy"].double(), (g[w] > g[lo]).double().mean())


BAD = {
    "f_divergence on nca_pair": (dict(loss_type="nca_pair", f_divergence_type="forward_kl"), "f_divergence_type"),
    "unknown f_divergence": (dict(f_divergence_type="tv"), "f_divergence_type"),
    "WPO without log_sum_sq_probs": (dict(use_weighting=True), "log_sum_sq_probs"),
    "WPO with aot": (dict(loss_type="aot", use_weighting=True), "use_weighting"),
    "exo_pair without smoothing": (dict(loss_type="exo_pair"), "label_smoothing"),
    "smoothing unused by hinge": (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing"),
    "loss_weights length": (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights"),
    "loss_weights on one non-DPO loss": (dict(loss_type="simpo", loss_weights=[1.0]), "loss_weights"),
    "list with a CPO loss": (dict(loss_type=["sigmoid", "cpo"]), "loss_type"),
    "ld_alpha out of range": (dict(ld_alpha=1.5), "ld_alpha"),
    "ld_alpha on cpo": (dict(loss_type="cpo", ld_alpha=0.5), "ld_alpha"),
    "cpo_alpha on dpo": (dict(cpo_alpha=1.0), "cpo_alpha"),
    "discopop_tau unused": (dict(discopop_tau=0.1), "discopop_tau"),
    "alpha on dpo": (dict(alpha=0.5), "alpha"),
    "negative rpo_alpha": (dict(rpo_alpha=-1.0), "rpo_alpha"),
    "unknown loss in list": (dict(loss_type=["sigmoid", "orpo"]), "loss_type"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_trl_options_raise_naming_them(case):
    opts, name = BAD[case]
    lp, ref, _, mask = batch()
    with pytest.raises((ValueError, TypeError), match=name):
        gro_kernels.preference_loss(lp, mask, ref_logprobs=ref, pair_ids=PAIR_IDS, chosen=CHOSEN, **opts)
