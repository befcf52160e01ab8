"""verl plug-in: `actor_rollout_ref.model.use_fused_kernels=True` with `fused_kernel_options.impl_backend=gro`
runs verl's fused-kernel forward on gro-kernels' LM head (no [tokens, vocab] logits, in forward or backward).

How it loads. pyproject.toml declares this module in the `verl.plugins` entry-point group; `import verl`
loads every entry point of that group in each process that imports verl (driver and Ray workers alike), unless
VERL_USE_EXTERNAL_PLUGINS is "none" or a list without "gro". verl logs a failing plug-in only at DEBUG level,
so this module logs its own outcome: INFO when it is installed, WARNING (before raising) when it is not.

What it patches, and why there. verl 0.9's `verl.models.transformers.monkey_patch.patch_forward_with_backends`
is a closed if/else over impl_backend in {torch, triton, liger}: any other name prints "Skipping monkey patch"
and leaves the model unpatched, so `impl_backend=gro` alone would silently run the plain HF forward. verl's FSDP
engine reaches it only through `apply_monkey_patch`, which looks `patch_forward_with_backends` up in its own
module's globals at call time. So the plug-in replaces that one module attribute with a wrapper:
`use_fused_kernels=True, fused_kernels_backend="gro"` installs `forward_with_gro_backend` as the model class's
forward (class-level, exactly as verl installs its own backends); every other call goes to verl's original,
unchanged. Nothing else in verl is modified.

The forward contract (verl/models/transformers/dense_common.py, forward_with_torch_backend): run the decoder,
take the labels from `shift_labels` (the engine's globally rolled ids under use_remove_padding), else `labels`
rolled by one, else `input_ids` rolled by one, and return `CausalLMOutputForPPO(log_probs, entropy)` with the
labels' shape (length T), for a scalar `temperature`. Differences, all deliberate: entropy is fp32 for every
model dtype (verl's torch backend rounds it to the model dtype); a bias on `lm_head` is used (verl's drops it);
label value -100 gives log-prob 0 and no gradient (verl's torch backend would index out of range).
"""

import logging
import numbers

import torch

import gro_kernels

logger = logging.getLogger(__name__)

BACKEND_NAME = "gro"
SEAM_READ_FROM = "0.9"  # the verl minor version whose patch_forward_with_backends and forward contract this follows

try:
    import verl
    from verl.models.transformers import monkey_patch as _verl_monkey_patch
    from verl.models.transformers.dense_common import CausalLMOutputForPPO, forward_base_model
except ImportError as exc:
    logger.warning("gro-kernels verl plug-in not loaded: %s", exc)
    raise ImportError(
        "gro_kernels.integrations.verl is the verl plug-in and needs verl's model-patching code "
        f"(verl.models.transformers; written against verl {SEAM_READ_FROM}, e.g. `pip install verl==0.9.1`): "
        f"{exc}. gro_kernels itself does not need verl.") from exc

# verl routes these model types to forwards of their own (vision-language models: qwen2_vl.py, qwen3_vl.py,
# glm4v.py, qwen3_5.py), whose decoder call differs from dense_common's; gro does not reproduce them.
VERL_OWN_FORWARD_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v", "qwen3_5",
                                "qwen3_5_moe")


def _scalar_temperature(temperature) -> float:
    """verl passes one Python float per micro-batch (its engine asserts it is not a per-sample tensor)."""
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        return float(temperature)
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        return float(temperature)
    raise TypeError("temperature: impl_backend=gro takes one scalar temperature per forward, got "
                    f"{type(temperature).__name__}"
                    + (f" of shape {tuple(temperature.shape)}" if isinstance(temperature, torch.Tensor) else ""))


def _rolled_labels(shift_labels, labels, input_ids):
    """The next-token ids, in verl's order of precedence (dense_common.forward_with_torch_backend)."""
    if shift_labels is not None:
        return shift_labels
    if labels is not None:
        return torch.roll(labels, shifts=-1, dims=-1)
    if input_ids is not None:
        return torch.roll(input_ids, shifts=-1, dims=-1)
    raise ValueError("impl_backend=gro needs shift_labels, labels or input_ids to know the next tokens; got none")


def forward_with_gro_backend(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                             inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                             output_hidden_states=None, return_dict=None, cache_position=None, logits_to_keep=0,
                             temperature=1.0, shift_labels=None, **loss_kwargs):
    """verl's fused-kernel forward with gro's head: per-token log-probs and entropy of the rolled labels.

    Same signature as verl's forward_with_torch_backend (logits_to_keep and loss_kwargs are accepted and unused,
    as there). Returns CausalLMOutputForPPO(log_probs fp32, entropy fp32) of the labels' shape.
    """
    if not return_dict:
        raise ValueError("return_dict: impl_backend=gro returns CausalLMOutputForPPO and needs return_dict=True "
                         f"(verl's engine passes it), got {return_dict!r}")
    temperature = _scalar_temperature(temperature)
    outputs = forward_base_model(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                 cache_position=cache_position)
    hidden_states = outputs[0]
    targets = _rolled_labels(shift_labels, labels, input_ids)
    head = self.lm_head
    log_probs, entropy = gro_kernels.linear_logprobs(hidden_states, head.weight, targets, getattr(head, "bias", None),
                                                     temperature=temperature, return_entropy=True)
    return CausalLMOutputForPPO(log_probs=log_probs, entropy=entropy, past_key_values=outputs.past_key_values,
                                hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def install_gro_forward(model) -> None:
    """Make `model`'s class run forward_with_gro_backend (what verl does for its own backends)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in VERL_OWN_FORWARD_MODEL_TYPES:
        raise ValueError(f"fused_kernel_options.impl_backend={BACKEND_NAME}: model_type {model_type!r} has a "
                         "verl forward of its own that gro does not reproduce; use impl_backend=torch or triton")
    missing = [name for name in ("model", "lm_head") if not isinstance(getattr(model, name, None), torch.nn.Module)]
    if missing:
        raise ValueError(f"fused_kernel_options.impl_backend={BACKEND_NAME}: {type(model).__name__} has no "
                         f"{' / '.join(missing)} submodule; it needs a decoder `model` and an `lm_head` "
                         "(a transformers *ForCausalLM)")
    model._verl_fused_kernels_backend = BACKEND_NAME
    type(model).forward = forward_with_gro_backend
    logger.info("gro-kernels: %s.forward now computes log-probs and entropy with gro_kernels.linear_logprobs "
                "(impl_backend=%s)", type(model).__name__, BACKEND_NAME)


def _wrap(verl_patch):
    def patch_forward_with_backends(model, use_fused_kernels=False, fused_kernels_backend=None):
        """verl's patch_forward_with_backends, plus impl_backend="gro" (gro_kernels.integrations.verl)."""
        if use_fused_kernels and fused_kernels_backend == BACKEND_NAME:
            return install_gro_forward(model)
        return verl_patch(model, use_fused_kernels=use_fused_kernels, fused_kernels_backend=fused_kernels_backend)

    patch_forward_with_backends.gro_wraps = verl_patch  # verl's original; also keeps a re-import from wrapping twice
    return patch_forward_with_backends


def _install() -> None:
    current = getattr(_verl_monkey_patch, "patch_forward_with_backends", None)
    if current is None:
        logger.warning("gro-kernels verl plug-in not loaded: verl %s has no "
                       "verl.models.transformers.monkey_patch.patch_forward_with_backends", verl.__version__)
        raise ImportError(f"gro_kernels.integrations.verl: verl {verl.__version__} has no "
                          "verl.models.transformers.monkey_patch.patch_forward_with_backends, the seam it patches "
                          f"(written against verl {SEAM_READ_FROM})")
    if not verl.__version__.startswith(SEAM_READ_FROM + "."):
        logger.warning("gro-kernels verl plug-in: written against verl %s.x, found %s; the forward contract may "
                       "differ", SEAM_READ_FROM, verl.__version__)
    original = getattr(current, "gro_wraps", current)
    _verl_monkey_patch.patch_forward_with_backends = _wrap(original)
    logger.info("gro-kernels verl plug-in loaded (verl %s): fused_kernel_options.impl_backend=%s available",
                verl.__version__, BACKEND_NAME)


_install()
