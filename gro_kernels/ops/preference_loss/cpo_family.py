"""TRL CPOTrainer's loss types (no reference model): sigmoid ("cpo"), hinge ("cpo_hinge"), ipo ("cpo_ipo") and
simpo, on sequence sums (cpo, cpo_hinge) or length averages (cpo_ipo, simpo), with the AlphaPO reward shape
(alpha) and the NLL term on the chosen responses (cpo_alpha). docs/math.md §4, "TRL's CPO"."""

import torch

from . import naive

CPO_LOSSES = ("simpo", "cpo", "cpo_hinge", "cpo_ipo")
AVERAGED = ("simpo", "cpo_ipo")


def pair_losses(lp, mask, win, lose, valid, cfg, name):
    """(loss, per-row implicit reward beta * r detached, extra metrics); valid: [B//2] pairs that count."""
    m = mask.to(torch.float32)
    l = torch.where(mask, lp.float(), 0.0)
    logp = l.sum(1)
    if name in AVERAGED:
        logp = logp / m.sum(1).clamp(min=1.0)
    reward = naive.alphapo_reward(logp, cfg.alpha)
    margin = reward[win] - reward[lose]
    if name == "simpo":
        per_pair = naive.simpo_loss(reward[win], reward[lose], cfg.beta, cfg.simpo_gamma, cfg.label_smoothing)
    elif name == "cpo":
        per_pair = naive.sigmoid_loss(cfg.beta * margin, cfg.label_smoothing)
    elif name == "cpo_hinge":
        per_pair = naive.hinge_loss(margin, cfg.beta)
    elif name == "cpo_ipo":
        per_pair = naive.ipo_loss(reward[win], reward[lose], cfg.beta)
    else:
        raise ValueError(f"not a CPO loss type: {name!r}")
    count = valid.sum().clamp(min=1).to(torch.float32)
    loss = torch.where(valid, per_pair, 0.0).sum() / count
    metrics = {}
    if cfg.cpo_alpha != 0.0:
        nll = naive.chosen_nll(l, m, win, valid)
        loss = loss + cfg.cpo_alpha * nll
        metrics["nll_loss"] = nll.detach()
    return loss, cfg.beta * reward.detach(), metrics
