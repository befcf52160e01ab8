"""Drop-ins for the trainers people run (optional dependencies; `import gro_kernels` never loads them).

- `hf.patch_causal_lm(model, ...)`: a transformers causal LM whose `model(..., labels=..., fused_lm_head=True)`
  returns per-token logprobs / entropy / statistics from the decoder's hidden states, never [B, T, V] logits.
- `trl`: GRO*Trainer subclasses of TRL's trainers and `patch_trl()` (TRL tier 1: gro-kernels' head, TRL's loss).

Each submodule imports its framework on import; this package imports none of them.
"""
