"""TRL tier 2: a TRL GRPOTrainer whose GRPO loss is gro_kernels.gro_loss on the policy's last hidden states.

TRL 1.16 computes per-token logprobs with its chunked head (forward, then a backward that recomputes the
logits: 4 head GEMMs) and applies its loss on them. Here the loss runs inside the head's chunk loop
(grad-in-forward: logits GEMM, loss and its gradient per chunk, dhidden/dW GEMMs, 3 GEMMs) and autograd only
carries the finished dhidden back into the backbone.

Everything outside the loss stays TRL's: generation, rewards, advantages (scale_rewards,
multi_objective_aggregation, reward_weights), old and reference logprobs (TRL's own head, computed in
_generate_and_score_completions), the buffered generation batch, the optimizer. The GRPOConfig options
the loss reads map one to one (_loss_options; docs/design.md "TRL tier 2", docs/math.md §5); every option
whose effect this loss would not reproduce exactly raises ValueError when the loss is installed, naming the
option, its value and the setting that turns it off (unsupported_options).

    trainer = trl.GRPOTrainer(model=..., args=GRPOConfig(..., loss_type="grpo"), ...)
    install_gro_loss(trainer)      # or GROGRPOTrainer(..., gro_loss=True), which calls it
    trainer.train()
"""

import functools
import types

import torch

import gro_kernels

SUPPORTED_TRL = "1.16"
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# loss_type -> gro_loss aggregation. dapo/cispo take the plain token sum (one "sequence"), divided afterwards by
# TRL's normalizer, which can be a fractional token count that gro_loss's own count option would clamp to 1.
AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm",
               "dapo": "seq_mean_token_sum", "cispo": "seq_mean_token_sum"}
# Inputs of vision-language models: the hidden-state call below passes only text inputs.
MULTIMODAL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                     "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
# Config attributes by which TRL's head transforms the logits (softcap, multipliers); gro_loss has none yet.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling")
HIDDEN_FLAG = "gro_hidden_states"


def install_gro_loss(trainer):
    """Replace `trainer`'s GRPO loss (a constructed trl.GRPOTrainer) with gro_loss; returns the trainer.

    Raises ValueError naming every GRPOConfig option (or model / launch setting) whose effect the
    gro loss would not reproduce exactly, and RuntimeError for a TRL version other than SUPPORTED_TRL.
    """
    _check_trl_version()
    problems = unsupported_options(trainer)
    if problems:
        raise ValueError("gro_loss=True cannot reproduce TRL's GRPO loss with these settings:\n  - " +
                         "\n  - ".join(problems))
    _add_hidden_states_forward(_unwrapped_policy(trainer))
    trainer._compute_loss = types.MethodType(_gro_compute_loss, trainer)
    trainer.gro_loss_installed = True
    return trainer


def _check_trl_version():
    import trl

    if ".".join(trl.__version__.split(".")[:2]) != SUPPORTED_TRL:
        raise RuntimeError(f"gro_loss=True mirrors TRL {SUPPORTED_TRL}.x's GRPO loss (its normalizations and metrics), "
                           f"found trl {trl.__version__}; install trl=={SUPPORTED_TRL}.* or leave gro_loss off")


def unsupported_options(trainer) -> list:
    """One line per setting the gro loss does not reproduce: 'option=value: why; how to turn it off'."""
    args, out = trainer.args, []

    def refuse(option, value, why, fix):
        out.append(f"{option}={value!r}: {why}; {fix}")

    if trainer.loss_type not in LOSS_TYPES:
        refuse("loss_type", trainer.loss_type, f"gro_loss=True maps {list(LOSS_TYPES)}", "use one of them or "
               "gro_loss=False")
    if trainer.importance_sampling_level not in ("token", "sequence"):
        refuse("importance_sampling_level", trainer.importance_sampling_level, "TRL knows token and sequence",
               "use one of them")
    if trainer.beta != 0.0 and args.use_bias_correction_kl:
        refuse("use_bias_correction_kl", True, "the KL term times the differentiable ratio is not a gro_loss term "
               f"(it is on by default and matters with beta={trainer.beta})", "set use_bias_correction_kl=False")
    if trainer.top_entropy_quantile < 1.0:
        refuse("top_entropy_quantile", trainer.top_entropy_quantile, "the high-entropy token mask needs a "
               "cross-rank quantile of the entropies before the loss", "set top_entropy_quantile=1.0")
    if trainer.entropy_coef != 0.0:
        refuse("entropy_coef", trainer.entropy_coef, "TRL's entropy bonus is a token mean outside the loss-type "
               "normalization, gro_loss scales it like the policy term", "set entropy_coef=0.0")
    if trainer.use_adaptive_entropy:
        refuse("use_adaptive_entropy", True, "the adaptive entropy bonus is not reproduced",
               "set use_adaptive_entropy=False")
    if trainer.off_policy_mask_threshold is not None:
        refuse("off_policy_mask_threshold", trainer.off_policy_mask_threshold, "the off-policy sequence mask is "
               "not reproduced", "set off_policy_mask_threshold=None")
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:
        refuse("vllm_importance_sampling_correction", True, "vLLM's importance-sampling ratio is not applied "
               "(it is on by default with use_vllm=True)", "set vllm_importance_sampling_correction=False")
    if getattr(args, "use_liger_kernel", False):
        refuse("use_liger_kernel", True, "Liger's layer kernels are not verified with the gro loss",
               "set use_liger_kernel=False")
    if getattr(trainer, "aux_loss_enabled", False):
        refuse("router_aux_loss_coef", trainer.router_aux_loss_coef, "the MoE load-balancing loss is not added",
               "set router_aux_loss_coef=0.0")
    delta = args.delta
    if delta is not None and trainer.loss_type in CLIPPED_LOSS_TYPES and delta < 1.0 + trainer.epsilon_high:
        # delta >= 1 + epsilon_high is gro_loss's dual clip exactly; below it, delta also cuts positive advantages.
        refuse("delta", delta, f"maps to gro_loss's dual clip only when delta >= 1 + epsilon_high "
               f"({1.0 + trainer.epsilon_high})", "raise delta or set delta=None")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        refuse("deepspeed/fsdp", "enabled", "grad-in-forward needs the full lm_head weight outside the head's "
               "forward and holds a full-size dW until backward", "use the tier-1 head (gro_loss=False)")
    config = _unwrapped_policy(trainer).config.get_text_config()
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value is not None and not (name != "final_logit_softcapping" and value == 1.0):
            refuse(f"model config {name}", value, "gro_loss has no logit softcap or multiplier",
                   "use a model without it, or gro_loss=False")
    return out


def _unwrapped_policy(trainer):
    """The causal LM TRL installed its head on (the base model under PEFT)."""
    model = trainer.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _add_hidden_states_forward(model):
    """Let model(..., gro_hidden_states=True) return the backbone's last hidden states, no head at all.

    The call still goes through the outer model (DDP, accelerate's wrappers) like TRL's own head call, so
    their forward hooks run; any other call is the forward TRL installed (its head, used for old and
    reference logprobs, and generation). The backbone is looked up on each call: PEFT replaces modules.
    """
    if getattr(model, "_gro_hidden_states_forward", False):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, **kwargs):
        if not kwargs.pop(HIDDEN_FLAG, False):
            return previous(*args, **kwargs)
        for head_only in ("labels", "shift_labels", "num_items_in_batch", "fused_lm_head"):
            kwargs.pop(head_only, None)
        kwargs["use_cache"] = False
        return self.base_model(*args, **kwargs).last_hidden_state

    model.forward = types.MethodType(forward, model)
    model._gro_hidden_states_forward = True


def _gro_compute_loss(self, model, inputs):
    """GRPOTrainer._compute_loss (TRL 1.16) with gro_loss: same inputs, same scaling, same logged metrics."""
    present = [k for k in MULTIMODAL_INPUTS if inputs.get(k) is not None]
    if present:
        raise ValueError(f"gro_loss=True handles text-only batches; this batch has {present}")
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    width = completion_ids.size(1)
    with self.accelerator.autocast():
        last = model(input_ids=torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
                     attention_mask=torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
                     **{HIDDEN_FLAG: True})
        head = _unwrapped_policy(self).get_output_embeddings()  # looked up per call: wrappers replace it
        hidden = last[:, -width - 1:-1].to(head.weight.device)  # position t predicts completion token t
        weight, bias, hidden = _head_operands(self, head, hidden)
    options = _loss_options(self)
    old = inputs.get("old_per_token_logps")
    ref = inputs["ref_per_token_logps"] if self.beta != 0.0 else None
    out = gro_kernels.gro_loss(hidden, weight, completion_ids.to(weight.device), bias,
                               mask=mask.bool(), advantages=inputs["advantages"], old_logprobs=old,
                               ref_logprobs=ref, temperature=self.temperature, return_entropy=True,
                               grad_in_forward=None if torch.is_grad_enabled() else False, **options)
    training = self.model.training
    accumulation = self.current_gradient_accumulation_steps if training else 1.0
    if self.loss_type in ("dapo", "cispo"):
        # TRL's num_items_in_batch counts the whole generation batch; one accumulation window gets its share.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if training:
            normalizer = normalizer * accumulation / self.args.steps_per_generation
    else:
        normalizer = accumulation
    _log_metrics(self, "train" if training else "eval", out.logprobs, out.entropy, old, ref, mask,
                 inputs["advantages"])
    return out.loss / normalizer


def _head_operands(trainer, head, hidden):
    """(weight, bias, hidden) in the dtype TRL's head multiplies in. Called inside the autocast context."""
    weight, bias = head.weight, head.bias
    if trainer.args.cast_lm_head_to_fp32:  # TRL's head then runs in fp32 outside autocast; so does this one
        return weight, bias, hidden.float()
    if torch.is_autocast_enabled(hidden.device.type):
        # Under autocast (bf16=True is TRL's default) TRL's head multiplies in the autocast dtype. gro_loss takes
        # one dtype for hidden and weight, so both are cast, differentiably: dW reaches the fp32 weight.
        dtype = torch.get_autocast_dtype(hidden.device.type)
        return weight.to(dtype), None if bias is None else bias.to(dtype), hidden.to(dtype)
    return weight, bias, hidden


def _loss_options(trainer) -> dict:
    """gro_loss keyword options of the trainer's GRPOConfig (advantages come as given, so no reward options)."""
    loss_type = trainer.loss_type
    options = dict(preset="cispo" if loss_type == "cispo" else "grpo", epsilon_low=trainer.epsilon_low,
                   epsilon_high=trainer.epsilon_high, kl_coef=trainer.beta, kl_estimator="k3",
                   importance_sampling_level=trainer.importance_sampling_level, aggregation=AGGREGATION[loss_type])
    if loss_type in CLIPPED_LOSS_TYPES and trainer.args.delta is not None:
        options["dual_clip"] = trainer.args.delta  # checked >= 1 + epsilon_high at install
    if loss_type == "dr_grpo":
        options["max_completion_length"] = trainer.max_completion_length
    if loss_type in ("dapo", "cispo"):
        options["num_sequences"] = 1
    return options


# ---- the metrics TRL logs from its loss, recomputed from the detached logprobs gro_loss returns ----

def _log_metrics(trainer, mode, logprobs, entropy, old, ref, mask, advantages):
    from trl.trainer.utils import nanmax, nanmin

    metrics = trainer._metrics[mode]
    m = mask.to(logprobs.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = logprobs - (logprobs if old is None else old)
    if trainer.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    if ref is not None:
        d = ref - logprobs
        metrics["kl"].append(_masked_mean(trainer, torch.exp(d) - d - 1.0, m))
    metrics["entropy"].append(_masked_mean(trainer, entropy, m))
    if trainer.loss_type == "cispo":
        clipped = (ratio > trainer.epsilon_high) & (adv > 0)
        metrics["cispo_clip_ratio"].append(_masked_mean(trainer, clipped.float(), m))
        return
    if trainer.args.delta is not None:
        ratio = ratio.clamp(max=trainer.args.delta)  # TRL measures the clip fractions on the delta-capped ratio
    low = ((ratio < 1.0 - trainer.epsilon_low) & (adv < 0)).float()
    high = ((ratio > 1.0 + trainer.epsilon_high) & (adv > 0)).float()
    metrics["clip_ratio/low_mean"].append(_masked_mean(trainer, low, m))
    metrics["clip_ratio/high_mean"].append(_masked_mean(trainer, high, m))
    metrics["clip_ratio/region_mean"].append(_masked_mean(trainer, torch.maximum(low, high), m))
    gather = trainer.accelerator.gather
    metrics["clip_ratio/low_min"].append(nanmin(gather(_per_sequence_mean(low, m))).item())
    metrics["clip_ratio/high_max"].append(nanmax(gather(_per_sequence_mean(high, m))).item())


def _masked_mean(trainer, x, m):
    """Mean over every rank's valid tokens (a [B, 1] per-sequence value counts once per sequence)."""
    if x.shape[1] == 1:
        total, count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
    else:
        total, count = (x * m).sum(), m.sum().float()
    sums = trainer.accelerator.reduce(torch.stack([total, count]), reduction="sum")
    return (sums[0] / sums[1].clamp(min=1.0)).item()


def _per_sequence_mean(x, m):
    """Per-sequence mean over valid tokens; NaN for an empty sequence (TRL's nanmin/nanmax skip it)."""
    return x.squeeze(1) if x.shape[1] == 1 else (x * m).sum(-1) / m.sum(-1)
