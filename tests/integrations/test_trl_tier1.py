"""TRL tier 1: TRL 1.16's real GRPO / RLOO / DPO / KTO / SFT trainers on a tiny saved model, TRL's own head
vs the GRO*Trainer subclass (gro-kernels' head, TRL's loss): compute_loss and every parameter gradient on the
same inputs agree to <= 1e-5 relative, and 2 train() steps give the same parameters.

Everything runs on CPU in fp32 (TRL defaults to bf16 autocast, where TRL's head rounds its logits to bf16
and ours does not, so the two would differ by bf16 rounding, not by a bug)."""

import importlib

import pytest
import torch

trl = pytest.importorskip("trl")

from gro_kernels.integrations import trl as gro_trl  # noqa: E402
from tests.integrations import trl_support as S  # noqa: E402

TOL = 1e-5


def _grpo(gro, path, tmp_path, **config):
    args = trl.GRPOConfig(**S.common_args(tmp_path, per_device_train_batch_size=4, num_generations=2,
                                          max_completion_length=8, **config))
    cls = gro_trl.GROGRPOTrainer if gro else trl.GRPOTrainer
    return cls(model=path, reward_funcs=S.reward_small_ids, args=args, train_dataset=S.prompts(),
               processing_class=S.make_tokenizer())


def _rloo(gro, path, tmp_path, **config):
    args = trl.RLOOConfig(**S.common_args(tmp_path, per_device_train_batch_size=4, num_generations=2,
                                          max_completion_length=8, **config))
    cls = gro_trl.GRORLOOTrainer if gro else trl.RLOOTrainer
    return cls(model=path, reward_funcs=S.reward_small_ids, args=args, train_dataset=S.prompts(),
               processing_class=S.make_tokenizer())


def _dpo(gro, path, tmp_path, **config):
    args = trl.DPOConfig(**S.common_args(tmp_path, per_device_train_batch_size=4, max_length=32, **config))
    cls = gro_trl.GRODPOTrainer if gro else trl.DPOTrainer
    return cls(model=path, args=args, train_dataset=S.preference_data(), processing_class=S.make_tokenizer())


def _kto(gro, path, tmp_path, **config):
    args = trl.KTOConfig(**S.common_args(tmp_path, per_device_train_batch_size=4, max_length=32, **config))
    cls = gro_trl.GROKTOTrainer if gro else trl.KTOTrainer
    return cls(model=path, args=args, train_dataset=S.kto_data(), processing_class=S.make_tokenizer())


def _sft(gro, path, tmp_path, **config):
    args = trl.SFTConfig(**S.common_args(tmp_path, per_device_train_batch_size=4, max_length=32, packing=False,
                                         **config))
    cls = gro_trl.GROSFTTrainer if gro else trl.SFTTrainer
    return cls(model=path, args=args, train_dataset=S.sft_data(), processing_class=S.make_tokenizer())


# (builder, config): temperature != 1 and a reference model (beta > 0) go through the head's contract too
CASES = {
    "grpo": (_grpo, dict(temperature=0.7)),
    "grpo-beta": (_grpo, dict(beta=0.04, loss_type="dapo")),
    "rloo": (_rloo, dict(temperature=0.8)),
    "dpo": (_dpo, {}),
    "kto": (_kto, {}),
    "sft": (_sft, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gro_head_matches_trls_head_in_trls_trainer(case, tmp_path):
    build, config = CASES[case]
    path = S.save_tiny_model(tmp_path)
    from transformers import AutoModelForCausalLM

    initial = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}

    # 2 steps of train() each: the same parameters. Built and trained one after the other: the Trainer seeds
    # the global RNG in __init__, so each run samples the same generations / batches from there.
    theirs = build(False, path, tmp_path, **config)
    seen_theirs = S.capture_first_inputs(theirs)
    theirs.train()
    ours = build(True, path, tmp_path, **config)
    seen_ours = S.capture_first_inputs(ours)
    ours.train()
    assert hasattr(ours.model, "_gro_head_options") and not hasattr(theirs.model, "_gro_head_options")
    if getattr(ours, "ref_model", None) is not None:
        assert hasattr(ours.ref_model, "_gro_head_options")
    moved = 0.0
    for (name, a), (_, b) in zip(theirs.model.named_parameters(), ours.model.named_parameters()):
        assert S.max_rel(b.detach(), a.detach()) <= TOL, name
        moved = max(moved, (a.detach() - initial[name]).abs().max().item() if name in initial else 0.0)
    assert moved > 1e-4, "training did not move the parameters: the comparison would prove nothing"
    for key, value in seen_theirs[0].items():  # both runs saw the same batch (same generations)
        if torch.is_tensor(value) and not value.is_floating_point():
            assert torch.equal(value, seen_ours[0][key]), key

    # compute_loss and every gradient on identical inputs, from the initial parameters
    loss_a, grads_a = S.loss_and_grads(theirs, seen_theirs[0], initial)
    loss_b, grads_b = S.loss_and_grads(ours, seen_theirs[0], initial)
    assert (loss_b - loss_a).abs() <= TOL * max(loss_a.abs().item(), 1.0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 5
    nonzero = 0
    for name in grads_a:
        assert S.max_rel(grads_b[name], grads_a[name]) <= TOL, name
        nonzero += grads_a[name].abs().max().item() > 0
    assert nonzero > 5


def test_construction_leaves_trls_name_in_place_and_patch_trl_swaps_it():
    modules = [importlib.import_module(name) for name in gro_trl.TRAINER_MODULES]
    assert all(m.add_fused_lm_head is gro_trl.TRL_ADD_FUSED_LM_HEAD for m in modules)
    gro_trl.patch_trl()
    try:
        assert all(m.add_fused_lm_head is gro_trl.add_fused_lm_head for m in modules)
    finally:
        gro_trl.unpatch_trl()
    assert all(m.add_fused_lm_head is gro_trl.TRL_ADD_FUSED_LM_HEAD for m in modules)


def test_patch_trl_makes_trls_own_class_use_the_gro_head(tmp_path):
    path = S.save_tiny_model(tmp_path)
    gro_trl.patch_trl()
    try:
        trainer = _sft(False, path, tmp_path)
    finally:
        gro_trl.unpatch_trl()
    assert type(trainer) is trl.SFTTrainer and hasattr(trainer.model, "_gro_head_options")
    assert trainer.model._gro_head_options["outputs"] == ("log_probs", "entropy", "is_top1")


def test_gro_loss_flag_calls_install_gro_loss(tmp_path, monkeypatch):
    """gro_loss=True hands the trainer to trl_gro_loss.install_gro_loss (written by tier 2); False never imports it."""
    import sys
    import types

    called = []
    fake = types.ModuleType("gro_kernels.integrations.trl_gro_loss")
    fake.install_gro_loss = called.append
    monkeypatch.setitem(sys.modules, "gro_kernels.integrations.trl_gro_loss", fake)
    path = S.save_tiny_model(tmp_path)
    trainer = _grpo(True, path, tmp_path)
    assert called == []
    trainer = gro_trl.GROGRPOTrainer(model=path, reward_funcs=S.reward_small_ids, args=trainer.args,
                                     train_dataset=S.prompts(), processing_class=S.make_tokenizer(), gro_loss=True)
    assert called == [trainer]


def test_unsupported_trl_version_raises_on_import(monkeypatch):
    import sys

    monkeypatch.setattr(trl, "__version__", "1.15.2")
    monkeypatch.delitem(sys.modules, "gro_kernels.integrations.trl")
    with pytest.raises(ImportError, match=r"supports trl >= 1.16.0, < 1.17.0.*found trl 1.15.2"):
        importlib.import_module("gro_kernels.integrations.trl")
    monkeypatch.setattr(trl, "__version__", "1.16.0")
    importlib.import_module("gro_kernels.integrations.trl")


MOE = dict(num_local_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.5)


@pytest.mark.parametrize("family,temperature,cast,overrides", [
    ("llama", 0.7, False, {}), ("gemma2", 1.0, False, {}), ("cohere", 0.9, True, {}), ("granite", 1.0, False, {}),
    ("mixtral", 1.0, False, MOE)], ids=["llama", "gemma2", "cohere", "granite", "mixtral-aux-loss"])
def test_add_fused_lm_head_contract_field_by_field(family, temperature, cast, overrides):
    """Our add_fused_lm_head vs TRL's on the same model and labels: every FusedCausalLMOutput field and every
    parameter gradient (softcap: gemma2; logit_scale: cohere; 1/logits_scaling: granite; MoE aux loss: mixtral)."""
    from tests.integrations.tiny_models import batch, tiny_causal_lm

    outputs = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    results = []
    for install in (gro_trl.TRL_ADD_FUSED_LM_HEAD, gro_trl.add_fused_lm_head):
        model = tiny_causal_lm(family, **overrides)
        ids, mask, labels = batch(model)
        with torch.no_grad():  # every third scored label the model's own argmax, so is_top1 has True rows
            predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        labels = labels.clone()
        labels[:, 1::3] = torch.where(labels[:, 1::3] != -100, predicted[:, 0::3][:, :labels[:, 1::3].shape[1]],
                                      labels[:, 1::3])
        install(model, temperature=temperature, cast_lm_head_to_fp32=cast, outputs=outputs)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, num_items_in_batch=9)
        assert type(out).__name__ == "FusedCausalLMOutput"
        w = torch.linspace(-1, 1, out.entropy.numel()).reshape(out.entropy.shape)
        (out.loss + (out.entropy * w).sum()).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (theirs, grads_a), (ours, grads_b) = results
    for field in ("loss",) + outputs[:-1]:
        assert (getattr(ours, field) - getattr(theirs, field)).abs().max() <= 1e-5, field
    assert torch.equal(ours.is_top1, theirs.is_top1) and torch.equal(ours.label_mask, theirs.label_mask)
    assert ours.is_top1.any()
    if overrides:
        assert torch.allclose(ours.aux_loss, theirs.aux_loss, rtol=1e-6)
    else:
        assert ours.aux_loss is None and theirs.aux_loss is None
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert S.max_rel(grads_b[name], grads_a[name]) <= TOL, name
