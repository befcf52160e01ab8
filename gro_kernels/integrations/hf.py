"""patch_causal_lm: per-token logprobs of a transformers causal LM straight from its hidden states.

After `patch_causal_lm(model)`, `model(input_ids, ..., labels=labels, fused_lm_head=True)` runs the decoder,
then gro-kernels' chunked head on the hidden states of the positions whose next-token label is not -100, and
returns a HeadOutput (loss, log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1, label_mask, aux_loss),
each per-token field [B, T - 1] (or [B, T] with pre-shifted `shift_labels`). Without `fused_lm_head=True` the
model's own forward runs, so generation is unchanged. The contract is TRL 1.16's `add_fused_lm_head`, so that
TRL's trainers can take this head unchanged (integrations/trl.py).

Why the head runs inside the head module's own call: FSDP1/FSDP2, DeepSpeed ZeRO-3 and accelerate gather a
module's parameters in its pre-forward hooks and reduce/re-gather them through hooks on its outputs. Reading
`lm_head.weight` from outside would see a shard (or an empty tensor) and skip the gradient reduction, so the
patch gives the head module a forward that, when handed a HeadRequest, computes the logprobs from its own
(gathered) weight; a plain call `lm_head(hidden)` is still the original linear layer.
"""

import functools
import types
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput

from ..functional import HEAD_OUTPUTS, linear_head_outputs

IGNORE_INDEX = -100
_PATCHED = "_gro_head_options"  # attribute on a patched model: the options it was patched with


@dataclass
class HeadOutput(ModelOutput):
    """What a patched model returns with fused_lm_head=True (field names and meaning of TRL 1.16's
    FusedCausalLMOutput). Per-token fields are 0 / False where the label is -100, None when not requested.

    loss: -sum(log_probs) / (number of labelled tokens, or num_items_in_batch when passed).
    log_probs, entropy (differentiable); log_sum_sq_probs, mean_logits, is_top1 (no grad): docs/math.md §1.
    label_mask: labels != -100. aux_loss: the MoE load-balancing loss when router logits are requested
    (output_router_logits=True, or the config asks for them), already added to loss times router_aux_loss_coef.
    """

    loss: Optional[torch.Tensor] = None
    log_probs: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    log_sum_sq_probs: Optional[torch.Tensor] = None
    mean_logits: Optional[torch.Tensor] = None
    is_top1: Optional[torch.Tensor] = None
    label_mask: Optional[torch.Tensor] = None
    aux_loss: Optional[torch.Tensor] = None


def head_transform(config):
    """(final_logit_softcapping or None, logit_scale) a causal LM applies to its head's logits, read from the
    text config under the names transformers' models use (the same lookup as TRL 1.16's add_fused_lm_head):
    `final_logit_softcapping` (Gemma 2/3); the multiplier `logit_scale` (Cohere), `output_multiplier`,
    `lm_head_multiplier` (Falcon-H1), or `logits_scaling` (Granite, MiniCPM3 divide by it; HyperCLOVA X
    multiplies)."""
    text = config.get_text_config()
    softcap = getattr(text, "final_logit_softcapping", None)
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(text, name, None)
        if scale is not None:
            break
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1.0 / text.logits_scaling
    return softcap, 1.0 if scale is None else float(scale)


def _unwrapped(module):
    """The layer under FSDP1 / checkpoint / DDP-style wrappers (they keep it as _fsdp_wrapped_module / module)."""
    seen = 0
    while seen < 8:
        inner = getattr(module, "_fsdp_wrapped_module", None) or getattr(module, "_checkpoint_wrapped_module", None)
        if inner is None:
            return module
        module, seen = inner, seen + 1
    return module


def check_head(head):
    """The head must be a plain linear layer: raise, naming what is there, for what this patch cannot do."""
    layer = _unwrapped(head)
    names = {cls.__name__ for cls in type(layer).__mro__}
    if any("lora" in n.lower() for n in names) or hasattr(layer, "lora_A") or hasattr(layer, "base_layer"):
        raise ValueError(f"the LM head is a LoRA / adapter layer ({type(layer).__name__}); patch_causal_lm reads "
                         "lm_head.weight and would leave the adapter's weights untrained. Keep lm_head out of "
                         "the adapter's target_modules, or merge the adapter first")
    if not isinstance(layer, torch.nn.Linear):
        raise TypeError(f"the LM head must be a torch.nn.Linear, got {type(layer).__name__}; its transform is "
                         "not one patch_causal_lm can reproduce")
    if type(layer).forward is not torch.nn.Linear.forward:
        raise ValueError(f"the LM head {type(layer).__name__} overrides nn.Linear.forward (a head transform "
                         "patch_causal_lm cannot reproduce)")
    return layer


class HeadRequest:
    """One fused head call, handed to the head module's forward so it runs under the module's hooks."""

    def __init__(self, labels, options):
        self.labels, self.options = labels, options

    def run(self, layer, hidden):
        o = self.options
        weight, bias = layer.weight, layer.bias
        if hasattr(weight, "full_tensor"):  # a DTensor outside FSDP2's unshard (e.g. tensor parallel)
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        context = nullcontext()
        if o["cast_lm_head_to_fp32"]:
            context = torch.autocast(hidden.device.type, enabled=False)
            hidden = hidden.float()
        with context:
            if not torch.is_autocast_enabled(hidden.device.type):
                # No autocast: the head computes in hidden's dtype (a plain F.linear would insist on it).
                weight = weight.to(hidden.dtype)
                bias = bias.to(hidden.dtype) if bias is not None else None
            out = linear_head_outputs(hidden, weight, self.labels, bias, outputs=o["outputs"],
                                      temperature=o["temperature"], ignore_index=IGNORE_INDEX,
                                      final_logit_softcapping=o["softcap"], logit_scale=o["logit_scale"],
                                      backend=o["backend"], chunk_size=o["chunk_size"])
        return tuple(out)


def _install_head_forward(layer):
    """Give the head layer a forward that serves HeadRequests (idempotent; per instance)."""
    if getattr(layer, "_gro_serves_requests", False):
        return
    plain = layer.forward  # bound: the class's forward, or a wrapper someone installed (kept for plain calls)
    # accelerate (device_map, cpu/disk offload) wraps a module's forward in its hook's pre_forward /
    # post_forward. Installed before us, that wrapper is `plain`, which a request bypasses: run the hook
    # around the request too. Installed after us, it wraps this forward and runs by itself.
    accelerate_hook = getattr(layer, "_hf_hook", None)

    def forward(self, input, gro_request: Optional[HeadRequest] = None):
        if gro_request is None:
            return plain(input)
        if accelerate_hook is None:
            return gro_request.run(self, input)
        args, _ = accelerate_hook.pre_forward(self, input)
        return accelerate_hook.post_forward(self, gro_request.run(self, args[0]))

    layer.forward = types.MethodType(forward, layer)
    layer._gro_serves_requests = True


def patch_causal_lm(model, *, temperature: float = 1.0, outputs=("log_probs", "entropy"),
                    cast_lm_head_to_fp32: bool = False, backend: str = "auto", chunk_size: Optional[int] = None,
                    output_class=HeadOutput):
    """Patch `model` (this instance only) so `model(..., labels=..., fused_lm_head=True)` returns per-token
    logprobs without [B, T, V] logits. Returns the model.

    Args:
        model: a transformers causal LM (`*ForCausalLM`: llama, qwen2, qwen3, mistral, gemma, gemma2,
            gemma3_text, ... anything with a decoder at `model.base_model` and a plain nn.Linear head at
            `model.get_output_embeddings()`). Patch before wrapping with FSDP / DeepSpeed / accelerate.
        temperature: > 0, the logits are divided by it (after the config's softcap / scale, see head_transform).
        outputs: per-token fields to compute, among "log_probs" (always), "entropy", "log_sum_sq_probs",
            "mean_logits", "is_top1".
        cast_lm_head_to_fp32: run the head in fp32 with autocast off (hidden, weight, bias cast to fp32).
        backend, chunk_size: as for gro_kernels.linear_logprobs.
        output_class: the ModelOutput class built from the fields of HeadOutput (TRL passes its own).

    The call: labels [B, T] (next-token labels are labels[:, 1:], scored on hidden[:, :-1]) or pre-shifted
    shift_labels [B, T]; -100 marks positions that are not scored; num_items_in_batch divides the loss.
    Raises ValueError for a LoRA head, TypeError for a head that is not a plain nn.Linear, ValueError for
    bad options.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        raise TypeError(f"model must be a transformers causal LM (a PreTrainedModel), got {type(model).__name__}")
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to patch")
    check_head(head)
    unknown = [o for o in outputs if o not in HEAD_OUTPUTS]
    if isinstance(outputs, str) or unknown:
        raise ValueError(f"outputs must be names among {HEAD_OUTPUTS}, got {outputs!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    softcap, logit_scale = head_transform(model.config)
    options = dict(temperature=float(temperature), outputs=tuple(dict.fromkeys(("log_probs",) + tuple(outputs))),
                   cast_lm_head_to_fp32=bool(cast_lm_head_to_fp32), backend=backend, chunk_size=chunk_size,
                   softcap=softcap, logit_scale=logit_scale)
    original_forward = model.__dict__.get("_gro_original_forward", model.forward)

    # The class's signature, so generate() validates its model kwargs against the real one.
    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head:
            extra = dict(labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
            return original_forward(*args, **kwargs, **{k: x for k, x in extra.items() if x is not None})
        return _fused_forward(self, args, kwargs, labels, shift_labels, num_items_in_batch, options, output_class)

    model._gro_original_forward = original_forward
    model.forward = types.MethodType(forward, model)
    setattr(model, _PATCHED, options)
    return model


def _fused_forward(model, args, kwargs, labels, shift_labels, num_items_in_batch, options, output_class):
    if labels is None and shift_labels is None:
        raise ValueError("fused_lm_head=True needs labels= ([B, T], -100 where not scored) or shift_labels=")
    kwargs["use_cache"] = False
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False):  # MoE: as the model's own forward does
        kwargs.setdefault("output_router_logits", True)
    # Looked up on every call: FSDP and PEFT replace the backbone and the head after patching.
    backbone_out = model.base_model(*args, **kwargs)
    hidden = backbone_out.last_hidden_state
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    head = model.get_output_embeddings()
    layer = check_head(head)
    _install_head_forward(layer)
    targets = targets.to(layer.weight.device)
    hidden = hidden.to(layer.weight.device)  # device_map may end the backbone on another device
    fields = head(hidden, gro_request=HeadRequest(targets, options))
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = fields
    mask = targets != IGNORE_INDEX
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / denominator
    aux_loss = None
    if kwargs.get("output_router_logits"):
        aux_loss = router_aux_loss(text_config, backbone_out.router_logits, kwargs.get("attention_mask"))
        loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
    return output_class(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs,
                        mean_logits=mean_logits, is_top1=is_top1, label_mask=mask, aux_loss=aux_loss)


def router_aux_loss(text_config, router_logits, attention_mask):
    """The MoE load-balancing loss the model's own forward adds (transformers' Mixtral formula, which the MoE
    families share), from the backbone's router logits; attention_mask None (padding-free) counts every token."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    experts = getattr(text_config, "num_experts", None) or getattr(text_config, "num_local_experts", None)
    if experts is None or router_logits is None:
        raise ValueError(f"output_router_logits=True but {text_config.model_type} exposes no router logits / "
                         "number of experts for the load-balancing loss")
    return load_balancing_loss_func(router_logits, experts, text_config.num_experts_per_tok, attention_mask)
