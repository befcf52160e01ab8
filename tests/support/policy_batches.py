"""A small per-token policy batch (fp64) shared by the policy-loss parity and device tests."""

import torch

B, T = 5, 7


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    lp = -r(B, T).abs() - 0.5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 5:] = False
    mask[3, 2:] = False
    return dict(lp=lp, old=lp + 0.3 * r(B, T), ref=lp + 0.3 * r(B, T), rollout=lp + 0.3 * r(B, T),
                ent=r(B, T).abs(), adv=2 * r(B), mask=mask)
