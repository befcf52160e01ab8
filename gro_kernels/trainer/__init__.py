"""The thin GRO trainer: online RL, iterative DPO, rejection sampling and hybrid batches on Hugging Face
causal LMs, with the loss computed from hidden states and lm_head.weight (no [batch, tokens, vocab] logits).

It imports only the public gro_kernels API; it owns the loop, not the math.
"""

from .config import GROConfig, load_config
from .rewards import RewardError
from .trainer import GROTrainer

__all__ = ["GROConfig", "GROTrainer", "RewardError", "load_config"]
