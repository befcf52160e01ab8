"""preference_loss against TRL's own code: trl/trainer/dpo_trainer.py DPOTrainer._compute_loss (TRL 1.16.0)
called with a stand-in trainer and model that return the test's per-token logprobs (what TRL's fused LM head
would give), on TRL's [chosen; rejected] batch. Loss and gradient, for every loss type and option."""

import types
from collections import defaultdict

import pytest
import torch

import gro_kernels
from tests.ops.preference_loss.test_trl_dpo import CHOSEN, PAIR_IDS, PAIRS, SMOOTHING, batch

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")


class FakeModel:
    """Returns fixed per-token outputs, as TRL's model(..., fused_lm_head=True) would."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, log_probs, log_sum_sq_probs):
        self.log_probs, self.lss = log_probs, log_sum_sq_probs

    def __call__(self, **kwargs):
        z = torch.zeros_like(self.log_probs).detach()
        return types.SimpleNamespace(log_probs=self.log_probs, entropy=z, mean_logits=z, is_top1=z.bool(),
                                     log_sum_sq_probs=self.lss, aux_loss=None)


def trl_loss(lp, ref, lss, mask, loss_types, loss_weights=None, beta=0.1, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None, use_weighting=False,
             discopop_tau=0.05):
    order = torch.tensor([w for w, _ in PAIRS] + [lo for _, lo in PAIRS])
    m = mask[order]
    completion_mask = torch.cat([torch.zeros(len(order), 1, dtype=torch.long), m.long()], 1)  # prompt column
    inputs = dict(input_ids=torch.ones_like(completion_mask), attention_mask=torch.ones_like(completion_mask),
                  completion_mask=completion_mask)
    model = FakeModel(torch.where(m, lp[order], 0.0), lss[order])
    accel = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = types.SimpleNamespace(
        model=model, ref_model=FakeModel(torch.where(m, ref[order], 0.0), lss[order]), accelerator=accel,
        aux_loss_enabled=False, ld_alpha=ld_alpha, precompute_ref_logps=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=discopop_tau),
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta,
        label_smoothing=label_smoothing, use_weighting=use_weighting,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    return trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def check(gro_type, trl_types, **options):
    lp, ref, lss, mask = batch(4)
    x = lp.clone().requires_grad_()
    kw = dict(log_sum_sq_probs=lss) if options.get("use_weighting") else {}
    out = gro_kernels.preference_loss(x, mask, loss_type=gro_type, ref_logprobs=ref, pair_ids=PAIR_IDS,
                                      chosen=CHOSEN, **kw, **options)
    out.loss.backward()
    # TRL's alpha-divergence clamp table has no fp64 entry: feed it fp32 there (the op computes in fp32 anyway)
    dtype = torch.float32 if options.get("f_divergence_type") == "alpha_divergence" else torch.float64
    y = lp.to(dtype).requires_grad_()
    expected = trl_loss(y, ref.to(dtype), lss.to(dtype), mask, trl_types, **options)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach().double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad.double(), rtol=1e-5, atol=1e-6)


TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
         "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]
GRO = {"ipo": "ipo_norm"}


@pytest.mark.parametrize("ld_alpha", [None, 0.3])
@pytest.mark.parametrize("trl_type", TYPES)
def test_every_loss_type_matches_trl_code(trl_type, ld_alpha):
    opts = dict(beta=0.25, ld_alpha=ld_alpha)
    if trl_type in SMOOTHING:
        opts["label_smoothing"] = SMOOTHING[trl_type]
    check(GRO.get(trl_type, trl_type), [trl_type], **opts)


@pytest.mark.parametrize("f_div", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("trl_type", ["sigmoid", "hinge", "ipo", "exo_pair", "robust", "discopop", "sigmoid_norm"])
def test_f_divergences_match_trl_code(trl_type, f_div):
    opts = dict(beta=0.2, f_divergence_type=f_div, f_alpha_divergence_coef=0.6)
    if trl_type in SMOOTHING:
        opts["label_smoothing"] = SMOOTHING[trl_type]
    check(GRO.get(trl_type, trl_type), [trl_type], **opts)


@pytest.mark.parametrize("trl_type", ["sigmoid", "ipo", "bco_pair", "discopop"])
def test_wpo_matches_trl_code(trl_type):
    check(GRO.get(trl_type, trl_type), [trl_type], beta=0.2, use_weighting=True)


def test_trl_sft_with_wpo_fails_in_trl():
    """TRL 1.16 multiplies its expanded sft scalar in place and raises; gro gives the product TRL means (the
    sft term times the mean pair weight), checked against the transcription in test_trl_dpo.py."""
    lp, ref, lss, mask = batch(4)
    with pytest.raises(RuntimeError, match="more than one element"):
        trl_loss(lp, ref, lss, mask, ["sft"], use_weighting=True)


def test_weighted_list_matches_trl_code():
    check(["sigmoid", "bco_pair", "sft"], ["sigmoid", "bco_pair", "sft"], beta=0.1, loss_weights=[0.8, 0.2, 1.0],
          ld_alpha=0.5)
