"""preference_loss on per-token logprobs against the loop reference: dpo (label smoothing), ipo,
simpo, kto (batch z0 and given z0), cpl (discount); shuffled pair ids; gradients; metrics."""

import pytest
import torch

import gro_kernels
from tests.support import reference_losses as R

B, T = 6, 5
PAIR_IDS = torch.tensor([11, 40, 40, 11, 7, 7])
CHOSEN = torch.tensor([False, True, False, True, True, False])
PAIRS = [(3, 0), (1, 2), (4, 5)]
DESIRABLE = torch.tensor([True, True, False, False, True, False])


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    ref = lp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 3:] = False
    mask[5, 1:] = False
    return lp, ref, mask


CASES = {
    "dpo": dict(beta=0.1), "dpo_smooth": dict(beta=0.3, label_smoothing=0.2), "ipo": dict(beta=0.5),
    "simpo": dict(beta=2.0, simpo_gamma=0.3, label_smoothing=0.1), "kto": dict(beta=0.2),
    "kto_z0": dict(beta=0.2, kto_z0=0.4, desirable_weight=1.3, undesirable_weight=0.7),
    "cpl": dict(beta=0.4, cpl_lambda=0.6, cpl_discount=0.8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_preference_loss_matches_reference(case):
    loss_type = case.split("_")[0]
    opts = CASES[case]
    lp, ref, mask = batch()
    x = lp.float().requires_grad_()
    kw = dict(desirable=DESIRABLE) if loss_type == "kto" else dict(pair_ids=PAIR_IDS, chosen=CHOSEN)
    loss, metrics = gro_kernels.preference_loss(x, mask, loss_type=loss_type, ref_logprobs=ref.float(), **kw, **opts)
    loss.backward(torch.tensor(-0.8))
    x64 = lp.clone().requires_grad_()
    ref_opts = dict(beta=opts["beta"], label_smoothing=opts.get("label_smoothing", 0.0),
                    simpo_gamma=opts.get("simpo_gamma", 0.5), cpl_lambda=opts.get("cpl_lambda", 0.5),
                    cpl_discount=opts.get("cpl_discount", 1.0), dw=opts.get("desirable_weight", 1.0),
                    uw=opts.get("undesirable_weight", 1.0),
                    kto_z0=None if "kto_z0" not in opts else torch.tensor(opts["kto_z0"], dtype=torch.float64))
    expected = R.preference(loss_type, x64, mask, ref, pairs=PAIRS, desirable=DESIRABLE, **ref_opts)
    (expected * -0.8).backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in metrics.values())


def test_dpo_reward_metrics():
    lp, ref, mask = batch(1)
    _, metrics = gro_kernels.preference_loss(lp.float(), mask, ref_logprobs=ref.float(), pair_ids=PAIR_IDS,
                                             chosen=CHOSEN, beta=0.1)
    g = ((lp - ref) * mask).sum(1) * 0.1
    w, l_ = torch.tensor([p[0] for p in PAIRS]), torch.tensor([p[1] for p in PAIRS])
    torch.testing.assert_close(metrics["rewards_chosen"].double(), g[w].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["reward_margin"].double(), (g[w] - g[l_]).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["reward_accuracy"].double(), (g[w] > g[l_]).double().mean())


def test_kto_z0_is_detached():
    lp, ref, mask = batch(2)
    x = lp.float().requires_grad_()
    loss, metrics = gro_kernels.preference_loss(x, mask, loss_type="kto", ref_logprobs=ref.float(), desirable=DESIRABLE)
    loss.backward()
    z0 = metrics["kto_z0"]
    y = lp.float().requires_grad_()
    loss2, _ = gro_kernels.preference_loss(y, mask, loss_type="kto", ref_logprobs=ref.float(), desirable=DESIRABLE,
                                           kto_z0=float(z0))
    loss2.backward()
    torch.testing.assert_close(x.grad, y.grad)
