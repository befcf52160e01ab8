"""gro-kernels: fused log-prob, KL and GRO loss kernels for RL post-training of LLMs."""

from ._ext import native_status
from .functional import exact_kl, linear_logprobs, linear_logprobs_no_grad, release_logit_store, selected_backend
from .losses import GROOutput, LossOutput, gro_loss, group_advantages, kl_penalty, policy_loss, preference_loss
from .modules import GROLoss, GROModelLoss, LinearLogprobs
from .presets import PRESETS, GROObjective

__all__ = ["GROObjective", "GROOutput", "GROLoss", "GROModelLoss", "LinearLogprobs", "LossOutput", "PRESETS",
           "gro_loss", "group_advantages", "kl_penalty", "policy_loss", "preference_loss", "exact_kl", "linear_logprobs",
           "linear_logprobs_no_grad", "native_status", "release_logit_store", "selected_backend"]
__version__ = "0.1.0"
