"""RL-free losses on sequence-level scores (docs/math.md §4): the formulas, per pair or per row.

Inputs are per-pair (or per-row for KTO) tensors of sequence scores; the pairing, the sequence
sums and the reduction live in function.py. Plain autograd ops in the input dtype.
"""

import math

import torch
import torch.nn.functional as F

PAIRED = ("dpo", "ipo", "simpo", "cpl")


def sigmoid_loss(margin, label_smoothing: float = 0.0):
    """-(1 - eps) log sigmoid(margin) - eps log sigmoid(-margin): DPO's (conservative) logistic loss."""
    loss = -F.logsigmoid(margin)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-margin)
    return loss


def dpo_loss(g_w, g_l, beta: float, label_smoothing: float = 0.0):
    """g = L - R (policy minus reference sequence logprob): -log sigmoid(beta (g_w - g_l)), smoothed."""
    return sigmoid_loss(beta * (g_w - g_l), label_smoothing)


def ipo_loss(g_w, g_l, beta: float):
    """(Delta - 1 / (2 beta))^2 with Delta = g_w - g_l."""
    return (g_w - g_l - 1.0 / (2.0 * beta)).square()


def simpo_loss(avg_w, avg_l, beta: float, gamma: float, label_smoothing: float = 0.0):
    """avg = L / |y| (length-normalized, no reference): -log sigmoid(beta (avg_w - avg_l) - gamma)."""
    return sigmoid_loss(beta * (avg_w - avg_l) - gamma, label_smoothing)


def cpl_loss(s_w, s_l, lam: float):
    """S = alpha sum_t gamma^t l_t (no reference): -log sigmoid(S_w - lambda S_l)."""
    return -F.logsigmoid(s_w - lam * s_l)


def kto_loss(g, desirable, z0, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
    """Per row: desirable lambda_D (1 - sigmoid(beta (g - z0))), undesirable lambda_U (1 - sigmoid(beta (z0 - g)));
    z0 must already be detached (the batch KL reference point)."""
    good = desirable_weight * (1.0 - torch.sigmoid(beta * (g - z0)))
    bad = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - g)))
    return torch.where(desirable, good, bad)


# ---- TRL DPOTrainer loss types (per pair; g = policy minus reference sequence logprob, s = f(g) the
# f-divergence score, n = response length). beta, eps (label_smoothing), tau as in TRL's DPOConfig. ----

def hinge_loss(delta, beta: float):
    """relu(1 - beta Delta): SLiC's hinge on the score margin."""
    return torch.relu(1.0 - beta * delta)


def ipo_norm_loss(s_w, s_l, n_w, n_l, beta: float):
    """TRL's IPO: (s_w / n_w - s_l / n_l - 1 / (2 beta))^2, each score divided by its response length."""
    return (s_w / n_w - s_l / n_l - 1.0 / (2.0 * beta)).square()


def exo_pair_loss(delta, beta: float, eps: float):
    """EXO-pref: KL(softmax over {w, l} of beta * score || [1 - eps, eps]), eps > 0."""
    x = beta * delta
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-eps))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(eps)))


def nca_pair_loss(g_w, g_l, beta: float):
    """NCA: -log sigmoid(beta g_w) - 1/2 log sigmoid(-beta g_w) - 1/2 log sigmoid(-beta g_l)."""
    return -F.logsigmoid(beta * g_w) - 0.5 * F.logsigmoid(-beta * g_w) - 0.5 * F.logsigmoid(-beta * g_l)


def robust_loss(delta, beta: float, eps: float):
    """Robust DPO (labels flipped with probability eps < 1/2): unbiased, so the eps term enters with a plus."""
    x = beta * delta
    return (-(1.0 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1.0 - 2.0 * eps)


def bco_pair_loss(g_w, g_l, beta: float):
    """BCO on pairs (no reward shift): -log sigmoid(beta g_w) - log sigmoid(-beta g_l)."""
    return -F.logsigmoid(beta * g_w) - F.logsigmoid(-beta * g_l)


def sppo_hard_loss(g_w, g_l, beta: float):
    """SPPO with hard win probabilities: (g_w - 1/(2 beta))^2 + (g_l + 1/(2 beta))^2."""
    half = 0.5 / beta
    return (g_w - half).square() + (g_l + half).square()


def apo_zero_loss(g_w, g_l, beta: float):
    """APO-zero: (1 - sigmoid(beta g_w)) + sigmoid(beta g_l): raise chosen, lower rejected."""
    return 1.0 - torch.sigmoid(beta * g_w) + torch.sigmoid(beta * g_l)


def apo_down_loss(g_w, g_l, beta: float):
    """APO-down: sigmoid(beta g_w) + (1 - sigmoid(beta (g_w - g_l))): lower both, rejected more."""
    return torch.sigmoid(beta * g_w) + 1.0 - torch.sigmoid(beta * (g_w - g_l))


def discopop_loss(delta, beta: float, tau: float):
    """DiscoPOP: x = beta Delta, m = sigmoid(x / tau); (1 - m) (-log sigmoid(x)) + m exp(-x)."""
    x = beta * delta
    m = torch.sigmoid(x / tau)
    return -F.logsigmoid(x) * (1.0 - m) + torch.exp(-x) * m


def sigmoid_norm_loss(s_w, s_l, n_w, n_l, beta: float):
    """-log sigmoid(beta (s_w / n_w - s_l / n_l)): the sigmoid loss of length-averaged scores."""
    return -F.logsigmoid(beta * (s_w / n_w - s_l / n_l))


def f_divergence_score(g, kind: str, alpha_coef: float = 0.5):
    """f'(pi / pi_ref) of f-DPO as a function of the log-ratio g: reverse_kl g; forward_kl 1 - exp(-g);
    js_divergence log 2 + log sigmoid(g); alpha_divergence (exp((a - 1) g) - 1) / (a - 1), the exponent
    clamped at 80 in fp32 as TRL does (a within 1e-6 of 1 is reverse_kl, the limit)."""
    if kind == "reverse_kl":
        return g
    if kind == "forward_kl":
        return 1.0 - torch.exp(-g)
    if kind == "js_divergence":
        return math.log(2.0) + F.logsigmoid(g)
    if kind == "alpha_divergence":
        if abs(alpha_coef - 1.0) < 1e-6:
            return g
        return torch.expm1(torch.clamp((alpha_coef - 1.0) * g, max=80.0)) / (alpha_coef - 1.0)
    raise ValueError(f"f_divergence_type must be reverse_kl, forward_kl, js_divergence or alpha_divergence, "
                     f"got {kind!r}")


# ---- TRL CPOTrainer (no reference) and KTOTrainer's unpaired APO ----

def alphapo_reward(logp, alpha: float):
    """AlphaPO: (1 - p^(-alpha)) / alpha with p = exp(logp), written -expm1(-alpha logp) / alpha; alpha 0: logp."""
    if alpha == 0.0:
        return logp
    return -torch.expm1(-alpha * logp) / alpha


def apo_zero_unpaired_loss(g, desirable, beta: float, desirable_weight: float = 1.0,
                           undesirable_weight: float = 1.0):
    """Per row: desirable lambda_D (1 - sigmoid(beta g)), undesirable lambda_U sigmoid(beta g) (no z0)."""
    good = desirable_weight * (1.0 - torch.sigmoid(beta * g))
    bad = undesirable_weight * torch.sigmoid(beta * g)
    return torch.where(desirable, good, bad)


def chosen_nll(l, m, win, valid):
    """Token mean of -l over the chosen responses of the valid pairs (TRL's sft / CPO nll / RPO term); 0 if none.
    l: [B, T] logprobs already 0 off the mask, m: [B, T] float mask."""
    rows = m[win] * valid.to(m.dtype).unsqueeze(1)
    return -(l[win] * rows).sum() / rows.sum().clamp(min=1.0)
