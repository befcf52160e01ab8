"""RL-free losses on sequence-level scores (docs/math.md §4): the formulas, per pair or per row.

Inputs are per-pair (or per-row for KTO) tensors of sequence scores; the pairing, the sequence
sums and the reduction live in function.py. Plain autograd ops in the input dtype.
"""

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
