"""The loss layer on top of the LM-head primitive: gro_loss and the per-token losses it is made of."""

from .gro import GROOutput, gro_loss
from .token_losses import LossOutput, group_advantages, kl_penalty, policy_loss, preference_loss

__all__ = ["GROOutput", "LossOutput", "gro_loss", "group_advantages", "kl_penalty", "policy_loss", "preference_loss"]
