"""TRL tier 2: trl.GRPOTrainer + install_gro_loss against TRL's own GRPO loss on the same trainer and inputs.

The reference is TRL 1.16's GRPOTrainer._compute_loss (trl/trainer/grpo_trainer.py), with its own chunked head
(trl/trainer/utils.py add_fused_lm_head), run on a tiny Llama saved to a temp dir (no downloads). Old logprobs
are perturbed so ratios fall on both sides of the clip range; advantages come from a reward with spread.
"""

import math

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from gro_kernels.integrations.trl_gro_loss import install_gro_loss  # noqa: E402
from gro_kernels.ops.linear_logprobs import fused_token_loss as ftl  # noqa: E402

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
RTOL = 1e-5
PROMPTS = ["w3 w4 w5", "w6 w7", "w8 w9 w10 w11", "w12"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(61)]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def _reward(completions, **kwargs):
    """Rewards with spread inside every group (length and position), so advantages are not all zero."""
    return [0.1 * len(c) + (i % 3) for i, c in enumerate(completions)]


def make_trainer(model_dir, rewards=_reward, trainer_cls=GRPOTrainer, extra=None, **options):
    """trainer_cls / extra: another GRPOTrainer class and its own constructor arguments (GROGRPOTrainer, gro_loss)."""
    settings = dict(output_dir=model_dir + "/out", per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=6, max_steps=2, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                    disable_tqdm=True, bf16=False, use_bias_correction_kl=False, logging_steps=1)
    settings.update(options)
    return trainer_cls(model=model_dir, reward_funcs=rewards, args=GRPOConfig(**settings),
                       train_dataset=datasets.Dataset.from_dict({"prompt": PROMPTS}),
                       processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir), **(extra or {}))


def _batch(trainer, accumulation):
    """One micro-batch as training_step gets it, with old logprobs 0.3 nat off TRL's own (both clip sides)."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                                 inputs["completion_ids"].size(1))
    gen = torch.Generator().manual_seed(1)
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=gen)
    return inputs


def _loss_grads_metrics(trainer, inputs, compute):
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = compute(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {k: list(v) for k, v in trainer._metrics["train"].items()}


def _assert_rel(name, got, want, rtol=RTOL):
    err, size = (got - want).norm().item(), want.norm().item()
    assert err <= rtol * size + 1e-9, f"{name}: |gro - trl| = {err:.3g}, |trl| = {size:.3g}"


def _gro_loss_grads_metrics(trainer, inputs):
    """trainer.compute_loss's loss, gradients and metrics, and how many times the grad-in-forward op ran."""
    calls = []
    real = ftl.fused_token_loss
    ftl.fused_token_loss = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        return _loss_grads_metrics(trainer, inputs, lambda m, x: trainer.compute_loss(m, x)), len(calls)
    finally:
        ftl.fused_token_loss = real


def _compare(trainer, accumulation, rtol=RTOL, fused=True):
    """fused: the gro loss must take the grad-in-forward op (token-level ratios), else the plain path."""
    inputs = _batch(trainer, accumulation)
    want = _loss_grads_metrics(trainer, inputs, lambda m, x: GRPOTrainer._compute_loss(trainer, m, x))
    install_gro_loss(trainer)
    got, calls = _gro_loss_grads_metrics(trainer, inputs)
    assert bool(calls) == fused, f"grad-in-forward ran {calls} times"
    _assert_rel("loss", got[0], want[0], rtol)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        _assert_rel(f"grad {name}", got[1][name], want[1][name], rtol)
    assert got[2].keys() == want[2].keys(), (sorted(got[2]), sorted(want[2]))
    for key, values in want[2].items():
        assert got[2][key] == pytest.approx(values, rel=rtol * 10, abs=1e-6, nan_ok=True), key
    return want


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_compute_loss_and_gradients_match_trl(model_dir, loss_type, beta, accumulation):
    trainer = make_trainer(model_dir, loss_type=loss_type, beta=beta, gradient_accumulation_steps=accumulation)
    _, _, metrics = _compare(trainer, accumulation)
    clipped = metrics.get("clip_ratio/region_mean", metrics.get("cispo_clip_ratio"))
    assert clipped[0] > 0.0, "the perturbed old logprobs should put some tokens outside the clip range"
    assert ("kl" in metrics) == (beta != 0.0)


@pytest.mark.parametrize("options", [
    dict(loss_type="grpo", delta=1.5, epsilon_high=0.28),
    dict(loss_type="bnpo", importance_sampling_level="sequence", beta=0.04),
    dict(loss_type="dapo", temperature=0.7, epsilon=0.1),
    dict(loss_type="cispo", epsilon_high=5.0, temperature=1.3),
    dict(loss_type="grpo", cast_lm_head_to_fp32=True),
], ids=["delta", "sequence-level", "temperature", "cispo-eps5", "fp32-head"])
def test_other_mapped_options_match_trl(model_dir, options):
    sequence = options.get("importance_sampling_level") == "sequence"  # GSPO couples tokens: the plain path
    _compare(make_trainer(model_dir, **options), 1, fused=not sequence)


def test_bf16_autocast_matches_trl_to_bf16_rounding(model_dir):
    """bf16=True (TRL's default): both heads multiply in bf16; gro keeps fp32 logits, TRL rounds them to bf16."""
    _compare(make_trainer(model_dir, loss_type="grpo", beta=0.04, bf16=True), 1, rtol=2e-2)


def _train(model_dir, gro, **options):
    seen = []

    def reward(completions, **kwargs):
        seen.append(list(completions))
        return _reward(completions)

    trainer = make_trainer(model_dir, rewards=reward, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                           weight_decay=0.0, **options)
    if gro:
        install_gro_loss(trainer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    deltas = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    return deltas, seen, [e["loss"] for e in trainer.state.log_history if "loss" in e]


# Every loss type once; beta 0 / 0.04 and accumulation 1 / 2 each appear with several loss types (a train() pair
# costs ~5 s on two shared cores; compute_loss above covers the full grid).
@pytest.mark.parametrize("loss_type,beta,accumulation", [
    ("grpo", 0.0, 1), ("bnpo", 0.04, 2), ("dr_grpo", 0.0, 2), ("dapo", 0.04, 2), ("cispo", 0.04, 1)])
def test_two_train_steps_give_trl_parameters(model_dir, loss_type, beta, accumulation):
    """SGD without clipping, so a wrong loss scale (e.g. the accumulation normalizer) shows in the update."""
    options = dict(loss_type=loss_type, beta=beta, gradient_accumulation_steps=accumulation)
    want, want_seen, want_loss = _train(model_dir, False, **options)
    got, got_seen, got_loss = _train(model_dir, True, **options)
    assert got_seen == want_seen, "both runs must score the same completions for the comparison to mean anything"
    assert got_loss == pytest.approx(want_loss, rel=1e-4, abs=1e-6)
    moved = sum(d.norm().item() for d in want.values())
    assert moved > 1e-3
    for name in want:
        _assert_rel(f"update {name}", got[name], want[name])


@pytest.mark.parametrize("options,named", [
    (dict(loss_type="sapo"), "loss_type='sapo'"),
    (dict(loss_type="vespo"), "loss_type='vespo'"),
    (dict(loss_type="luspo"), "loss_type='luspo'"),
    (dict(beta=0.04, use_bias_correction_kl=True), "use_bias_correction_kl=True"),
    (dict(top_entropy_quantile=0.5), "top_entropy_quantile=0.5"),
    (dict(entropy_coef=0.01), "entropy_coef=0.01"),
    (dict(use_adaptive_entropy=True), "use_adaptive_entropy=True"),
    (dict(off_policy_mask_threshold=0.5), "off_policy_mask_threshold=0.5"),
    (dict(delta=1.1), "delta=1.1"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_unreproduced_options_raise_naming_them(model_dir, options, named):
    trainer = make_trainer(model_dir, **options)
    with pytest.raises(ValueError, match="gro_loss=True cannot reproduce") as info:
        install_gro_loss(trainer)
    assert named in str(info.value)
    assert trainer._compute_loss.__func__ is GRPOTrainer._compute_loss  # nothing installed


def test_bias_correction_kl_is_accepted_without_kl(model_dir):
    """use_bias_correction_kl (TRL's default True) only acts through the KL term: with beta 0 it changes nothing."""
    trainer = make_trainer(model_dir, beta=0.0, use_bias_correction_kl=True)
    assert install_gro_loss(trainer).gro_loss_installed


def test_logit_transforms_and_vllm_correction_raise(model_dir):
    trainer = make_trainer(model_dir)
    trainer.model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="model config final_logit_softcapping=30.0"):
        install_gro_loss(trainer)
    trainer.model.config.final_logit_softcapping = None
    trainer.use_vllm = True  # the flag the loss reads; generation is not exercised
    with pytest.raises(ValueError, match="vllm_importance_sampling_correction=True"):
        install_gro_loss(trainer)


def test_multimodal_batch_raises(model_dir):
    trainer = install_gro_loss(make_trainer(model_dir))
    inputs = _batch(trainer, 1)
    inputs["pixel_values"] = torch.zeros(1)
    with pytest.raises(ValueError, match="text-only.*pixel_values"):
        trainer.compute_loss(trainer.model, inputs)


def test_generation_and_old_logprobs_still_use_trls_head(model_dir):
    """Only the loss call asks for hidden states; other forwards are TRL's fused head (or plain generate)."""
    trainer = install_gro_loss(make_trainer(model_dir))
    inputs = _batch(trainer, 1)  # generates, then scores through TRL's head
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    out = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, fused_lm_head=True)
    assert type(out).__name__ == "FusedCausalLMOutput"
    hidden = trainer.model(input_ids=ids, gro_hidden_states=True)
    assert hidden.shape == (*ids.shape, trainer.model.config.hidden_size)
    assert math.isfinite(out.loss.item())


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_eval_loss_matches_trl(model_dir, loss_type):
    """In eval TRL neither divides by the accumulation steps nor rescales num_items_in_batch by them (no grad:
    gro_loss takes its plain path)."""
    trainer = make_trainer(model_dir, loss_type=loss_type, beta=0.04, gradient_accumulation_steps=2)
    inputs = _batch(trainer, 2)
    trainer.model.eval()
    with torch.no_grad():
        want = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
        want_metrics = {k: list(v) for k, v in trainer._metrics["eval"].items()}
        trainer._metrics["eval"].clear()
        install_gro_loss(trainer)
        got = trainer.compute_loss(trainer.model, inputs)
    _assert_rel("eval loss", got, want)
    assert {k: list(v) for k, v in trainer._metrics["eval"].items()} == pytest.approx(want_metrics, rel=1e-4)
    trainer.model.train()  # train: grpo divides by the 2 accumulation steps; dapo by 2 / steps_per_generation = 1
    with torch.no_grad():
        train_loss = trainer.compute_loss(trainer.model, inputs).item()
    assert train_loss == pytest.approx(want.item() * (0.5 if loss_type == "grpo" else 1.0), rel=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_tier1_trainer_with_gro_loss_matches_trl(model_dir, loss_type):
    """GROGRPOTrainer(..., gro_loss=True): gro-kernels' head (tier 1) and gro_loss (tier 2) in one trainer, against
    TRL's own GRPOTrainer._compute_loss on the same weights (both load model_dir) and the same micro-batch."""
    from gro_kernels.integrations.trl import GROGRPOTrainer

    trl_trainer = make_trainer(model_dir, loss_type=loss_type, beta=0.04)
    inputs = _batch(trl_trainer, 1)
    want = _loss_grads_metrics(trl_trainer, inputs, lambda m, x: GRPOTrainer._compute_loss(trl_trainer, m, x))
    gro = make_trainer(model_dir, trainer_cls=GROGRPOTrainer, extra=dict(gro_loss=True),
                       output_dir=model_dir + "/out_gro", loss_type=loss_type, beta=0.04)
    gro.model.train()
    gro.current_gradient_accumulation_steps = 1
    got, calls = _gro_loss_grads_metrics(gro, inputs)
    assert calls, "gro_loss=True must compute the loss with gro_loss's grad-in-forward op"
    _assert_rel("loss", got[0], want[0])
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        _assert_rel(f"grad {name}", got[1][name], want[1][name])
