"""TRL tier 1: TRL's trainers with gro-kernels' LM head; TRL's loss math untouched.

TRL 1.16's GRPO, RLOO, DPO, KTO and SFT trainers get every per-token logprob from a chunked head they
install on the model in __init__, `trl.trainer.utils.add_fused_lm_head(model, temperature,
cast_lm_head_to_fp32, outputs)`, and call as `model(..., labels=..., fused_lm_head=True)` ->
`FusedCausalLMOutput`. gro-kernels' `patch_causal_lm` honours the same contract (labels / shift_labels / -100,
the outputs tuple, temperature, cast_lm_head_to_fp32, the output fields), so swapping the installer is the
whole integration:

- GROGRPOTrainer, GRORLOOTrainer, GRODPOTrainer, GROKTOTrainer, GROSFTTrainer: TRL's trainer with the same
  constructor; the trainer module's `add_fused_lm_head` is ours while TRL's __init__ runs (not thread-safe:
  construct trainers from one thread at a time).
- patch_trl(): rebinds the name in every trainer module for the whole process (scripts, the TRL CLI);
  unpatch_trl() restores TRL's.

Supported TRL versions are checked on import (SUPPORTED_TRL): the contract above is read from them.
"""

import contextlib
import importlib

import trl
from packaging.version import Version

from .hf import patch_causal_lm

SUPPORTED_TRL = (Version("1.16.0"), Version("1.17.0"))  # [low, high)
if not SUPPORTED_TRL[0] <= Version(trl.__version__) < SUPPORTED_TRL[1]:
    raise ImportError(f"gro_kernels.integrations.trl supports trl >= {SUPPORTED_TRL[0]}, < {SUPPORTED_TRL[1]} "
                      f"(its add_fused_lm_head / FusedCausalLMOutput contract); found trl {trl.__version__}. "
                      f"Install trl=={SUPPORTED_TRL[0]}")

from trl import DPOTrainer, GRPOTrainer, KTOTrainer, RLOOTrainer, SFTTrainer  # noqa: E402
from trl.trainer import utils as _trl_utils  # noqa: E402

# The trainer modules that bind add_fused_lm_head at import (`from .utils import add_fused_lm_head`).
TRAINER_MODULES = ("trl.trainer.grpo_trainer", "trl.trainer.rloo_trainer", "trl.trainer.dpo_trainer",
                   "trl.trainer.kto_trainer", "trl.trainer.sft_trainer")
TRL_ADD_FUSED_LM_HEAD = _trl_utils.add_fused_lm_head


def add_fused_lm_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                      outputs: tuple = ("log_probs",)) -> None:
    """gro-kernels' head with the signature and contract of trl.trainer.utils.add_fused_lm_head."""
    patch_causal_lm(model, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32, outputs=outputs,
                    output_class=_trl_utils.FusedCausalLMOutput)


@contextlib.contextmanager
def _gro_head_in(module_name):
    module = importlib.import_module(module_name)
    previous = module.add_fused_lm_head
    module.add_fused_lm_head = add_fused_lm_head
    try:
        yield
    finally:
        module.add_fused_lm_head = previous


def patch_trl() -> None:
    """Every TRL trainer in this process installs gro-kernels' head (the name bound in each trainer module).
    Call before constructing the trainer."""
    for name in TRAINER_MODULES:
        importlib.import_module(name).add_fused_lm_head = add_fused_lm_head


def unpatch_trl() -> None:
    """Undo patch_trl(): TRL's own head again."""
    for name in TRAINER_MODULES:
        importlib.import_module(name).add_fused_lm_head = TRL_ADD_FUSED_LM_HEAD


class GROGRPOTrainer(GRPOTrainer):
    """trl.GRPOTrainer with gro-kernels' head. gro_loss=True also replaces TRL's GRPO loss with gro_loss
    (tier 2, integrations/trl_gro_loss.py)."""

    def __init__(self, *args, gro_loss: bool = False, **kwargs):
        with _gro_head_in("trl.trainer.grpo_trainer"):
            super().__init__(*args, **kwargs)
        if gro_loss:
            from .trl_gro_loss import install_gro_loss

            install_gro_loss(self)


class GRORLOOTrainer(RLOOTrainer):
    """trl.RLOOTrainer with gro-kernels' head."""

    def __init__(self, *args, **kwargs):
        with _gro_head_in("trl.trainer.rloo_trainer"):
            super().__init__(*args, **kwargs)


class GRODPOTrainer(DPOTrainer):
    """trl.DPOTrainer with gro-kernels' head (policy and reference model)."""

    def __init__(self, *args, **kwargs):
        with _gro_head_in("trl.trainer.dpo_trainer"):
            super().__init__(*args, **kwargs)


class GROKTOTrainer(KTOTrainer):
    """trl.KTOTrainer with gro-kernels' head (policy and reference model)."""

    def __init__(self, *args, **kwargs):
        with _gro_head_in("trl.trainer.kto_trainer"):
            super().__init__(*args, **kwargs)


class GROSFTTrainer(SFTTrainer):
    """trl.SFTTrainer with gro-kernels' head."""

    def __init__(self, *args, **kwargs):
        with _gro_head_in("trl.trainer.sft_trainer"):
            super().__init__(*args, **kwargs)
