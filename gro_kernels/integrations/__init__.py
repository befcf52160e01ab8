"""Drop-ins for the trainers people run (optional dependencies; `import gro_kernels` never loads them).

- `hf.patch_causal_lm(model, ...)`: a transformers causal LM whose `model(..., labels=..., fused_lm_head=True)`
  returns per-token logprobs / entropy / statistics from the decoder's hidden states, never [B, T, V] logits.
- `trl`: GRO*Trainer subclasses of TRL's trainers and `patch_trl()` (TRL tier 1: gro-kernels' head, TRL's loss).
- `trl_gro_loss.install_gro_loss(trainer)`: TRL tier 2, a GRPOTrainer's loss replaced by gro_loss
  (`GROGRPOTrainer(..., gro_loss=True)`).
- `verl`: the verl plug-in (`fused_kernel_options.impl_backend=gro`).

Each submodule imports its framework on import; this package imports none of them.
"""
