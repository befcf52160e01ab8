"""TRL KTOTrainer's apo_zero_unpaired and KL reference point, and CPOTrainer's loss types with AlphaPO and the NLL
term, in preference_loss. References: transcriptions of TRL 1.16.0 trl/trainer/kto_trainer.py
KTOTrainer._compute_loss (kl = clamp(mean(KL_logps - ref_KL_logps), 0), detached; desirable / undesirable
losses; nanmean) and trl/experimental/cpo/cpo_trainer.py CPOTrainer.cpo_loss (called directly as well) plus
concatenated_forward's nll_loss (token-mean cross entropy of the chosen responses); fp64 loss and gradient."""

import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

import gro_kernels
from tests.ops.preference_loss.test_trl_dpo import CHOSEN, PAIR_IDS, PAIRS, batch

DESIRABLE = torch.tensor([True, True, False, False, True, False, True, False])
T_KL = 4  # width of the mismatched (KL) completions


def trl_kto(lp, ref, mask, desirable, loss_type, beta, kl=None, dw=1.0, uw=1.0):
    logps, ref_logps = (lp * mask).sum(1), (ref * mask).sum(1)
    kl = torch.zeros(1, dtype=lp.dtype) if kl is None else kl
    c, r = desirable.nonzero().view(-1), (~desirable).nonzero().view(-1)
    c_lr, r_lr = logps[c] - ref_logps[c], logps[r] - ref_logps[r]
    if loss_type == "kto":
        c_loss, r_loss = 1 - torch.sigmoid(beta * (c_lr - kl)), 1 - torch.sigmoid(beta * (kl - r_lr))
    else:
        c_loss, r_loss = 1 - torch.sigmoid(beta * c_lr), torch.sigmoid(beta * r_lr)
    return torch.cat((dw * c_loss, uw * r_loss)).nanmean()


@pytest.mark.parametrize("empty_row", [None, 2])
def test_apo_zero_unpaired_matches_trl(empty_row):
    lp, ref, _, mask = batch(1, empty_row)
    x = lp.clone().requires_grad_()
    out = gro_kernels.preference_loss(x, mask, loss_type="apo_zero_unpaired", ref_logprobs=ref, desirable=DESIRABLE,
                                      beta=0.3, desirable_weight=1.2, undesirable_weight=0.8)
    out.loss.backward()
    keep = mask.any(1)  # gro leaves an empty response out; TRL would have no such row
    y = lp.clone().requires_grad_()
    expected = trl_kto(y[keep], ref[keep], mask[keep], DESIRABLE[keep], "apo_zero_unpaired", 0.3, dw=1.2, uw=0.8)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    assert "kto_z0" not in out.metrics


def test_kto_reference_point_from_mismatched_pairs_matches_trl():
    lp, ref, _, mask = batch(2)
    g = torch.Generator().manual_seed(5)
    kl_logps = -torch.rand(8, generator=g, dtype=torch.float64) * 4
    ref_kl_logps = kl_logps - 0.5 * torch.rand(8, generator=g, dtype=torch.float64)  # mean log-ratio > 0
    x = lp.clone().requires_grad_()
    out = gro_kernels.preference_loss(x, mask, loss_type="kto", ref_logprobs=ref, desirable=DESIRABLE, beta=0.2,
                                      kl_logps=kl_logps, ref_kl_logps=ref_kl_logps)
    out.loss.backward()
    y = lp.clone().requires_grad_()
    kl = (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)
    expected = trl_kto(y, ref, mask, DESIRABLE, "kto", 0.2, kl=kl)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.metrics["kto_z0"].double(), kl, rtol=1e-5, atol=1e-6)
    # a negative mismatched KL is clamped at 0, as TRL does
    neg = gro_kernels.preference_loss(lp, mask, loss_type="kto", ref_logprobs=ref, desirable=DESIRABLE,
                                      kl_logps=ref_kl_logps, ref_kl_logps=kl_logps)
    assert float(neg.metrics["kto_z0"]) == 0.0


def cpo_self(loss_type, beta, label_smoothing=0.0, simpo_gamma=0.5, alpha=0.0):
    """The attributes CPOTrainer.cpo_loss reads, for calling TRL's own method."""
    return types.SimpleNamespace(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                                 simpo_gamma=simpo_gamma, alpha=alpha,
                                 accelerator=types.SimpleNamespace(device=torch.device("cpu")))


def trl_cpo(lp, mask, pairs, loss_type, beta, cpo_alpha=0.0, **kw):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    w = torch.tensor([p[0] for p in pairs])
    lo = torch.tensor([p[1] for p in pairs])
    logps = (lp * mask).sum(1)
    if loss_type in ("ipo", "simpo"):  # get_batch_logps(average_log_prob=True)
        logps = logps / mask.sum(1)
    losses, _, _ = CPOTrainer.cpo_loss(cpo_self(loss_type, beta, **kw), logps[w], logps[lo])
    nll = F.nll_loss(lp[w][mask[w]].unsqueeze(1), torch.zeros(int(mask[w].sum()), dtype=torch.long))
    return losses.mean() + cpo_alpha * nll


CPO_CASES = {
    "sigmoid": ("cpo", dict(beta=0.2, label_smoothing=0.1)),
    "hinge": ("cpo_hinge", dict(beta=0.3)),
    "ipo": ("cpo_ipo", dict(beta=0.4)),
    "simpo": ("simpo", dict(beta=2.0, simpo_gamma=0.3, label_smoothing=0.1)),
}


@pytest.mark.parametrize("alpha", [0.0, 0.25])
@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])
@pytest.mark.parametrize("trl_type", list(CPO_CASES))
def test_cpo_loss_types_match_trl(trl_type, cpo_alpha, alpha):
    name, opts = CPO_CASES[trl_type]
    lp, _, _, mask = batch(3)
    x = lp.clone().requires_grad_()
    out = gro_kernels.preference_loss(x, mask, loss_type=name, pair_ids=PAIR_IDS, chosen=CHOSEN,
                                      cpo_alpha=cpo_alpha, alpha=alpha, **opts)
    out.loss.backward()
    y = lp.clone().requires_grad_()
    expected = trl_cpo(y, mask, PAIRS, trl_type, cpo_alpha=cpo_alpha, alpha=alpha, **opts)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    assert ("nll_loss" in out.metrics) == (cpo_alpha != 0.0)


BAD = {
    "kl_logps without ref_kl_logps": (dict(loss_type="kto", kl_logps=torch.zeros(3)), "ref_kl_logps"),
    "kl_logps with kto_z0": (dict(loss_type="kto", kl_logps=torch.zeros(3), ref_kl_logps=torch.zeros(3),
                                  kto_z0=0.1), "kto_z0"),
    "kl_logps on apo_zero_unpaired": (dict(loss_type="apo_zero_unpaired", kl_logps=torch.zeros(3),
                                           ref_kl_logps=torch.zeros(3)), "kl_logps"),
    "kto_z0 on apo_zero_unpaired": (dict(loss_type="apo_zero_unpaired", kto_z0=0.1), "kto_z0"),
    "kl_logps 2-D": (dict(loss_type="kto", kl_logps=torch.zeros(3, 1), ref_kl_logps=torch.zeros(3, 1)), "kl_logps"),
    "kl_logps shapes differ": (dict(loss_type="kto", kl_logps=torch.zeros(3), ref_kl_logps=torch.zeros(4)),
                               "kl_logps"),
    "cpo_alpha negative": (dict(loss_type="cpo", cpo_alpha=-1.0), "cpo_alpha"),
    "smoothing unused by cpo_ipo": (dict(loss_type="cpo_ipo", label_smoothing=0.1), "label_smoothing"),
    "alpha not finite": (dict(loss_type="cpo", alpha=float("nan")), "alpha"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_kto_cpo_options_raise_naming_them(case):
    opts, name = BAD[case]
    lp, ref, _, mask = batch()
    kw = dict(desirable=DESIRABLE) if opts.get("loss_type") in ("kto", "apo_zero_unpaired") else \
        dict(pair_ids=PAIR_IDS, chosen=CHOSEN)
    with pytest.raises((ValueError, TypeError), match=name):
        gro_kernels.preference_loss(lp.float(), mask, ref_logprobs=ref.float(), **kw, **opts)


class FakeKTOModel:
    """TRL's model(..., fused_lm_head=True) stand-in: the completion logprobs, or the mismatched pairs' ones when
    called on KL_input_ids."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, log_probs, kl_log_probs, kl_input_ids):
        self.log_probs, self.kl_log_probs, self.kl_input_ids = log_probs, kl_log_probs, kl_input_ids

    def __call__(self, input_ids, **kwargs):
        lp = self.kl_log_probs if input_ids is self.kl_input_ids else self.log_probs
        z = torch.zeros_like(self.log_probs).detach()
        return types.SimpleNamespace(log_probs=lp, entropy=z, mean_logits=z, aux_loss=None)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_matches_trl_code(loss_type):
    """KTOTrainer._compute_loss itself (precomputed reference logps; for kto the KL of mismatched pairs from the
    policy's KL_logps and ref_KL_logps), against preference_loss with kl_logps / ref_kl_logps."""
    from trl.trainer.kto_trainer import KTOTrainer
    lp, ref, _, mask = batch(6)
    g = torch.Generator().manual_seed(9)
    kl_tok = -torch.rand(8, T_KL, generator=g, dtype=torch.float64)
    ref_kl = kl_tok.sum(1) - 0.4 * torch.rand(8, generator=g, dtype=torch.float64)
    x = lp.clone().requires_grad_()
    kw = dict(kl_logps=kl_tok.sum(1), ref_kl_logps=ref_kl) if loss_type == "kto" else {}
    out = gro_kernels.preference_loss(x, mask, loss_type=loss_type, ref_logprobs=ref, desirable=DESIRABLE, beta=0.3,
                                      desirable_weight=1.1, undesirable_weight=0.9, **kw)
    out.loss.backward()
    y = lp.clone().requires_grad_()
    ids = torch.ones(8, lp.shape[1] + 1, dtype=torch.long)
    kl_ids = torch.ones(8, T_KL + 1, dtype=torch.long)
    completion_mask = torch.cat([torch.zeros(8, 1, dtype=torch.long), mask.long()], 1)
    model = FakeKTOModel(torch.where(mask, y, 0.0), kl_tok, kl_ids)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=completion_mask,
                  label=DESIRABLE.clone(), ref_logps=((ref * mask).sum(1)))
    if loss_type == "kto":
        inputs.update(KL_input_ids=kl_ids, KL_attention_mask=torch.ones_like(kl_ids),
                      KL_completion_mask=torch.ones_like(kl_ids), ref_KL_logps=ref_kl)
    accel = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = types.SimpleNamespace(model=model, accelerator=accel, calculate_KL=loss_type == "kto",
                                    precompute_ref_logps=True, loss_type=loss_type, beta=0.3, desirable_weight=1.1,
                                    undesirable_weight=0.9, aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1,
                                    _metrics=defaultdict(lambda: defaultdict(list)),
                                    args=types.SimpleNamespace(gradient_checkpointing_kwargs=None))
    trainer._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(trainer, m, b)
    expected = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    if loss_type == "kto":
        torch.testing.assert_close(out.metrics["kto_z0"].double(), torch.tensor(trainer._metrics["train"]["kl"][-1],
                                   dtype=torch.float64), rtol=1e-5, atol=1e-6)
