"""gro-kernels: fused log-prob, KL and GRO loss kernels for RL post-training of LLMs."""

from ._ext import native_status
from .functional import linear_logprobs, linear_logprobs_no_grad, selected_backend

__all__ = ["linear_logprobs", "linear_logprobs_no_grad", "native_status", "selected_backend"]
__version__ = "0.1.0"
