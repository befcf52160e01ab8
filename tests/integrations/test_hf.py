"""patch_causal_lm against the model's own logits: per-token logprobs, entropy, statistics and every parameter
gradient, on tiny models of each supported family (softcap: gemma2/gemma3; logit scale: cohere, granite)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from gro_kernels.integrations import hf  # noqa: E402
from tests.integrations.tiny_models import FAMILIES, batch, tiny_causal_lm  # noqa: E402

ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _reference(model, ids, mask, labels, temperature):
    """From the model's own [B, T, V] logits (its forward applies its softcap / scale)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / temperature
    targets = labels[:, 1:]
    valid = targets != -100
    log_p = torch.log_softmax(logits, -1)
    lp = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    ent = -(log_p.exp() * log_p).sum(-1) * valid
    with torch.no_grad():
        stats = dict(mean_logits=logits.mean(-1) * valid,
                     log_sum_sq_probs=(torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)) * valid,
                     is_top1=(logits.argmax(-1) == targets) & valid)
    return lp, ent, stats


def _grads(model, objective):
    model.zero_grad(set_to_none=True)
    objective.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_patched_forward_matches_the_models_logits(family):
    temperature = 0.8
    model = tiny_causal_lm(family)
    ids, mask, labels = batch(model)
    g = torch.Generator().manual_seed(2)
    w_lp, w_ent = torch.randn(ids.shape[0], ids.shape[1] - 1, generator=g), torch.randn(ids.shape[0], ids.shape[1] - 1,
                                                                                       generator=g)
    ref_lp, ref_ent, ref_stats = _reference(model, ids, mask, labels, temperature)
    ref_grads = _grads(model, (ref_lp * w_lp).sum() + (ref_ent * w_ent).sum())

    hf.patch_causal_lm(model, temperature=temperature, outputs=ALL)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert isinstance(out, hf.HeadOutput) and out.log_probs.shape == ids[:, 1:].shape
    assert (out.log_probs - ref_lp).abs().max() <= 1e-5 and (out.entropy - ref_ent).abs().max() <= 1e-5
    assert (out.mean_logits - ref_stats["mean_logits"]).abs().max() <= 1e-5
    assert (out.log_sum_sq_probs - ref_stats["log_sum_sq_probs"]).abs().max() <= 1e-5
    assert torch.equal(out.is_top1, ref_stats["is_top1"]) and torch.equal(out.label_mask, labels[:, 1:] != -100)
    n = (labels[:, 1:] != -100).sum()
    assert torch.allclose(out.loss, -ref_lp.sum() / n, rtol=1e-5)
    grads = _grads(model, (out.log_probs * w_lp).sum() + (out.entropy * w_ent).sum())
    assert grads.keys() == ref_grads.keys() and len(grads) > 5
    for name in grads:
        assert _rel(grads[name], ref_grads[name]) <= 1e-5, name
    # the config's transform matters: the untransformed head would be off (so this family's check can fail)
    softcap, scale = hf.head_transform(model.config)
    if softcap is not None or scale != 1.0:
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            raw = torch.log_softmax(model.get_output_embeddings()(hidden) / temperature, -1)
            raw = raw.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels[:, 1:] != -100)
        assert (raw - ref_lp).abs().max() > 1e-2


def test_unpatched_call_and_generation_are_unchanged():
    model = tiny_causal_lm("llama")
    ids, mask, labels = batch(model)
    before = model(input_ids=ids, attention_mask=mask, labels=labels)
    gen_before = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
    hf.patch_causal_lm(model)
    after = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.equal(before.logits, after.logits) and torch.equal(before.loss, after.loss)
    assert torch.equal(model.generate(ids[:1], max_new_tokens=5, do_sample=False), gen_before)
    assert torch.equal(model.lm_head(torch.ones(2, 32)), torch.ones(2, 32) @ model.lm_head.weight.t())


def test_shift_labels_and_num_items_in_batch():
    model = tiny_causal_lm("qwen2")
    ids, mask, labels = batch(model)
    hf.patch_causal_lm(model)
    shifted = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    shift = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    pre = model(input_ids=ids, attention_mask=mask, shift_labels=shift, fused_lm_head=True, num_items_in_batch=7)
    assert pre.log_probs.shape == ids.shape
    assert torch.allclose(pre.log_probs[:, :-1], shifted.log_probs, atol=1e-6)
    assert torch.allclose(pre.loss, -shifted.log_probs.sum() / 7, rtol=1e-6)


def test_the_head_runs_inside_the_head_modules_call():
    """What FSDP / ZeRO-3 / accelerate rely on: the head module's pre-forward and forward hooks fire."""
    model = tiny_causal_lm("llama")
    ids, mask, labels = batch(model)
    hf.patch_causal_lm(model)
    calls = []
    model.lm_head.register_forward_pre_hook(lambda mod, args, kwargs: calls.append("pre"), with_kwargs=True)
    model.lm_head.register_forward_hook(lambda mod, args, kwargs, out: calls.append(len(out)), with_kwargs=True)
    model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert calls == ["pre", 5]


def test_cast_lm_head_to_fp32_and_bf16_model():
    model = tiny_causal_lm("llama", dtype=torch.bfloat16)
    ids, mask, labels = batch(model)
    hf.patch_causal_lm(model, cast_lm_head_to_fp32=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1].float()
    logits = hidden @ model.lm_head.weight.float().t()
    ref = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    ref = ref * (labels[:, 1:] != -100)
    assert (out.log_probs - ref).abs().max() <= 1e-4
    out.log_probs.sum().backward()
    assert model.lm_head.weight.grad.dtype == torch.bfloat16 and model.lm_head.weight.grad.abs().max() > 0


def test_lora_and_non_linear_heads_raise():
    model = tiny_causal_lm("llama")

    class LoraLinear(torch.nn.Linear):  # what a PEFT LoRA layer looks like from outside: lora_A / base_layer
        def __init__(self, base):
            super().__init__(base.in_features, base.out_features, bias=False)
            self.lora_A = torch.nn.Linear(base.in_features, 4, bias=False)

    model.lm_head = LoraLinear(model.lm_head)
    with pytest.raises(ValueError, match=r"the LM head is a LoRA / adapter layer \(LoraLinear\)"):
        hf.patch_causal_lm(model)
    model = tiny_causal_lm("llama")
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(TypeError, match=r"the LM head must be a torch.nn.Linear, got Sequential"):
        hf.patch_causal_lm(model)
    with pytest.raises(ValueError, match=r"outputs must be names among"):
        hf.patch_causal_lm(tiny_causal_lm("llama"), outputs=("logits",))


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_moe_router_aux_loss_is_the_models_own(family):
    """output_router_logits in the config: loss = NLL + router_aux_loss_coef * aux_loss, aux_loss equal to the
    one the model's own forward adds, and its gradient reaches the routers."""
    extra = dict(num_local_experts=4) if family == "mixtral" else dict(num_experts=4, moe_intermediate_size=32)
    model = tiny_causal_lm(family, output_router_logits=True, router_aux_loss_coef=0.5, num_experts_per_tok=2,
                           **extra)
    ids, mask, labels = batch(model)
    own = model(input_ids=ids, attention_mask=mask, labels=labels)
    hf.patch_causal_lm(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert out.aux_loss is not None and torch.allclose(out.aux_loss, own.aux_loss, rtol=1e-6)
    assert torch.allclose(out.loss, own.loss, rtol=1e-5)  # own.loss: mean NLL + coef * aux at temperature 1
    out.loss.backward()
    routers = [p.grad for n, p in model.named_parameters() if "gate" in n and "proj" not in n]
    assert routers and all(g is not None and g.abs().max() > 0 for g in routers)


@pytest.mark.parametrize("hooked", ["before_patch", "after_patch"])
def test_accelerate_hooks_on_the_head_run_once_per_call(hooked):
    """An accelerate hook (what device_map / offload install) on lm_head: its pre_forward and post_forward run
    exactly once around the fused head, whether it was added before or after the patch."""
    hooks = pytest.importorskip("accelerate.hooks")
    calls = []

    class Recorder(hooks.ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append("pre")
            return args, kwargs

        def post_forward(self, module, output):
            calls.append("post")
            return output

    model = tiny_causal_lm("llama")
    ids, mask, labels = batch(model)
    if hooked == "before_patch":
        hooks.add_hook_to_module(model.lm_head, Recorder())
    hf.patch_causal_lm(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    if hooked == "after_patch":
        assert calls == []  # the head layer is set up on the first fused call; hook it now and call again
        hooks.add_hook_to_module(model.lm_head, Recorder())
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert calls == ["pre", "post"]
    calls.clear()
    plain = model(input_ids=ids, attention_mask=mask)  # a plain call still goes through the hook once
    assert calls == ["pre", "post"] and plain.logits.shape[-1] == model.config.vocab_size
    assert out.log_probs.abs().sum() > 0
