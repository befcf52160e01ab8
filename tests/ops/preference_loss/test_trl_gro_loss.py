"""gro_loss on hidden states with TRL's preference vocabulary (offline presets, loss_type in the preset's TRL
trainer's names, the DPOConfig / KTOConfig / CPOConfig fields) against preference_loss on logprobs of the
materialized fp64 logits (tests/support/reference_losses.token_logprobs): loss and the gradients of hidden
and weight. preference_loss itself is checked against TRL's formulas in test_trl_dpo.py / test_trl_kto_cpo.py."""

import pytest
import torch

import gro_kernels
from tests.support import reference_losses as R

B, T, H, V = 6, 5, 8, 29
PAIR_IDS = torch.tensor([3, 1, 3, 0, 1, 0])
CHOSEN = torch.tensor([False, True, True, False, False, True])
DESIRABLE = torch.tensor([True, False, True, True, False, False])


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H ** 0.5
    bias = torch.randn(V, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 2:] = False
    with torch.no_grad():
        lp, _, _ = R.token_logprobs(hidden, weight, bias, targets)
    ref = lp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lss = -torch.rand(B, T, generator=g, dtype=torch.float64)
    kl = -torch.rand(5, generator=g, dtype=torch.float64) * 3
    return hidden, weight, bias, targets, mask, dict(ref=ref, lss=lss, kl=kl, ref_kl=kl - 0.3)


# (gro_loss preset, its options) -> (preference_loss loss_type, its options)
CASES = {
    "dpo+ipo(TRL)": (("dpo", dict(loss_type="ipo", beta=0.3)), ("ipo_norm", dict(beta=0.3))),
    "dpo_ipo preset": (("dpo_ipo", dict(beta=0.3)), ("ipo_norm", dict(beta=0.3))),
    "dpo+list": (("dpo", dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5],
                              f_divergence_type="js_divergence")),
                 (["sigmoid", "sft"], dict(loss_weights=[1.0, 0.5], f_divergence_type="js_divergence"))),
    "dpo+ld+wpo": (("dpo", dict(ld_alpha=0.5, use_weighting=True)), ("dpo", dict(ld_alpha=0.5, use_weighting=True))),
    "dpo+rpo": (("dpo", dict(rpo_alpha=0.4)), ("dpo", dict(rpo_alpha=0.4))),
    "hinge": (("hinge", dict(beta=0.2)), ("hinge", dict(beta=0.2))),
    "exo_pair": (("exo_pair", {}), ("exo_pair", dict(label_smoothing=1e-3))),
    "aot": (("dpo", dict(loss_type="aot")), ("aot", {})),
    "discopop": (("discopop", dict(discopop_tau=0.1)), ("discopop", dict(discopop_tau=0.1))),
    "kto+mismatched KL": (("kto", dict(beta=0.2, kl=True)), ("kto", dict(beta=0.2, kl=True))),
    "kto+apo_zero_unpaired": (("kto", dict(loss_type="apo_zero_unpaired")), ("apo_zero_unpaired", {})),
    "apo_zero_unpaired preset": (("apo_zero_unpaired", {}), ("apo_zero_unpaired", {})),
    "cpo (cpo_alpha 1, alpha)": (("cpo", dict(alpha=0.2)), ("cpo", dict(cpo_alpha=1.0, alpha=0.2))),
    "cpo+simpo": (("cpo", dict(loss_type="simpo", simpo_gamma=0.3)), ("simpo", dict(cpo_alpha=1.0, simpo_gamma=0.3))),
    "simpo+hinge(CPO)": (("simpo", dict(loss_type="hinge")), ("cpo_hinge", dict(beta=2.0))),
}


def inputs_for(loss_type, opts, extra):
    opts = dict(opts)
    kw = {}
    first = loss_type if isinstance(loss_type, str) else loss_type[0]
    unpaired = first in ("kto", "apo_zero_unpaired")
    kw.update(dict(desirable=DESIRABLE) if unpaired else dict(pair_ids=PAIR_IDS, chosen=CHOSEN))
    if opts.pop("kl", False):
        kw.update(kl_logps=extra["kl"], ref_kl_logps=extra["ref_kl"])
    if opts.get("use_weighting"):
        kw["log_sum_sq_probs"] = extra["lss"]
    return kw, opts


@pytest.mark.parametrize("case", list(CASES))
def test_gro_loss_trl_names_match_preference_loss(case):
    (preset, gro_opts), (loss_type, pref_opts) = CASES[case]
    hidden, weight, bias, targets, mask, extra = make_batch()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    kw, gro_opts = inputs_for(loss_type, gro_opts, extra)
    out = gro_kernels.gro_loss(h, w, targets, bias, preset=preset, mask=mask, ref_logprobs=extra["ref"], **kw,
                               **gro_opts)
    out.loss.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, _, _ = R.token_logprobs(h2, w2, bias, targets)
    kw, pref_opts = inputs_for(loss_type, pref_opts, extra)
    expected = gro_kernels.preference_loss(lp, mask, loss_type=loss_type, ref_logprobs=extra["ref"], **kw,
                                           **pref_opts)
    expected.loss.backward()
    torch.testing.assert_close(out.loss.double(), expected.loss.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-6)
    assert h.grad.abs().sum() > 0
    for k in expected.metrics:
        torch.testing.assert_close(out.metrics[k].double(), expected.metrics[k].double(), rtol=1e-5, atol=1e-6)


NEW_PRESETS = ("dpo_ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
               "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft", "apo_zero_unpaired", "cpo")


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_new_presets_are_in_presets_and_run(preset):
    cfg = gro_kernels.PRESETS[preset]
    assert cfg.rows == "offline" and cfg.offline_loss_type is not None
    hidden, weight, bias, targets, mask, extra = make_batch(1)
    kw, _ = inputs_for(cfg.offline_loss_type, {}, extra)
    out = gro_kernels.gro_loss(hidden.float(), weight.float(), targets, bias.float(), preset=preset, mask=mask,
                               ref_logprobs=extra["ref"].float(), **kw)
    assert torch.isfinite(out.loss) and out.loss.dim() == 0


BAD = {
    "f_divergence_type on grpo": (dict(preset="grpo", f_divergence_type="forward_kl"), "f_divergence_type"),
    "cpo_alpha on grpo": (dict(preset="grpo", cpo_alpha=1.0), "cpo_alpha"),
    "log_sum_sq_probs on grpo": (dict(preset="grpo", log_sum_sq_probs=torch.zeros(B, T)), "log_sum_sq_probs"),
    "GRPO loss_type on dpo": (dict(preset="dpo", loss_type="dapo"), "loss_type"),
    "DPO loss_type on kto": (dict(preset="kto", loss_type="hinge"), "loss_type"),
    "loss_type on cpl": (dict(preset="cpl", loss_type="sigmoid"), "loss_type"),
    "loss_type and offline_loss_type": (dict(preset="dpo", loss_type="hinge", offline_loss_type="hinge"),
                                        "offline_loss_type"),
    "log_sum_sq_probs wrong shape": (dict(preset="dpo", use_weighting=True, log_sum_sq_probs=torch.zeros(B, 2)),
                                     "log_sum_sq_probs"),
    "kl_logps on dpo": (dict(preset="dpo", kl_logps=torch.zeros(3), ref_kl_logps=torch.zeros(3)), "kl_logps"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_trl_gro_loss_options_raise_naming_them(case):
    opts, name = BAD[case]
    hidden, weight, bias, targets, mask, extra = make_batch()
    preset = opts["preset"]
    online = gro_kernels.PRESETS[preset].rows == "online"
    kw = dict(advantages=torch.randn(B)) if online else (
        dict(desirable=DESIRABLE) if preset == "kto" else dict(pair_ids=PAIR_IDS, chosen=CHOSEN))
    with pytest.raises((ValueError, TypeError), match=name):
        gro_kernels.gro_loss(hidden.float(), weight.float(), targets, bias.float(), mask=mask,
                             ref_logprobs=extra["ref"].float(), **kw, **opts)


@pytest.mark.parametrize("packed", [False, True])
def test_wpo_weights_computed_from_the_head(packed):
    """gro_loss(use_weighting=True) without log_sum_sq_probs= computes TRL's log sum_v p_v^2 from the head:
    the same loss and gradients as passing it from the materialized fp64 logits (temperature and bias included)."""
    hidden, weight, bias, targets, mask, extra = make_batch(3)
    logits = (hidden @ weight.T + bias) / 0.7
    lss = torch.logsumexp(2 * torch.log_softmax(logits, -1), -1)
    common = dict(preset="dpo", ref_logprobs=extra["ref"], pair_ids=PAIR_IDS, chosen=CHOSEN, use_weighting=True,
                  temperature=0.7, beta=0.2)
    grads = []
    for given in (None, lss):
        h = hidden.clone().requires_grad_()
        if packed:  # every row full length: packed = flattened, cu_seqlens at multiples of T
            cu = torch.arange(0, B * T + 1, T, dtype=torch.int32)
            kw = dict(common, ref_logprobs=extra["ref"].reshape(-1))
            if given is not None:
                kw["log_sum_sq_probs"] = given.reshape(-1)
            out = gro_kernels.gro_loss(h.reshape(B * T, H), weight, targets.reshape(-1), bias, cu_seqlens=cu,
                                       mask=mask.reshape(-1), **kw)
        else:
            kw = dict(common) if given is None else dict(common, log_sum_sq_probs=given)
            out = gro_kernels.gro_loss(h, weight, targets, bias, mask=mask, **kw)
        out.loss.backward()
        grads.append((out.loss.detach(), h.grad, out.metrics["wpo_weight"]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[0][2], grads[1][2], rtol=1e-5, atol=1e-7)
    assert abs(float(grads[0][2]) - 1.0) > 1e-3  # the weights are not all 1


def test_mixed_rows_with_a_trl_offline_loss():
    """rows="mixed" with offline_loss_type (CPO with its NLL, AlphaPO): the offline part is preference_loss on the
    offline rows' pairs (online_weight=0 isolates it), with the gradients of hidden."""
    hidden, weight, bias, targets, mask, extra = make_batch(4)
    online = torch.tensor([True, True, False, False, False, False])
    pair_ids = torch.tensor([-1, -1, 0, 1, 0, 1])
    chosen = torch.tensor([False, False, True, False, False, True])
    cfg = gro_kernels.GROObjective(name="grpo+cpo", rows="mixed", offline_loss_type="cpo", cpo_alpha=1.0, alpha=0.3)
    h = hidden.clone().requires_grad_()
    out = gro_kernels.gro_loss(h, weight, targets, bias, config=cfg, mask=mask, online=online, online_weight=0.0,
                               advantages=torch.randn(B, dtype=torch.float64), pair_ids=pair_ids, chosen=chosen)
    out.loss.backward()
    h2 = hidden.clone().requires_grad_()
    lp, _, _ = R.token_logprobs(h2, weight, bias, targets)
    off = ~online
    expected = gro_kernels.preference_loss(lp[off], mask[off], loss_type="cpo", pair_ids=pair_ids[off],
                                           chosen=chosen[off], cpo_alpha=1.0, alpha=0.3)
    expected.loss.backward()
    torch.testing.assert_close(out.metrics["loss_offline"].double(), expected.loss.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-6)
    assert h.grad[off].abs().sum() > 0 and h.grad[online].abs().sum() == 0
