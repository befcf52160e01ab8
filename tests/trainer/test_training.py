"""Training steps of the thin trainer on tiny CPU models: fused == materialized reference, gradient
accumulation == one big batch, resume == uninterrupted, every mode end to end, bad rewards, empty
completions, and the CLI on the demo config."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gro_kernels.trainer import RewardError, checkpoint, objective, policy
from gro_kernels.trainer.cli import main as cli_main

from tests.support.trainer_support import (OFFLINE_LABELS, OFFLINE_PAIRS, frozen_copy, make_trainer, tiny_model,
                                           tokenizer)

ROOT = Path(__file__).parents[2]


def capture_batches(trainer):
    """Record the prepared batch of every update (wraps the bound method; nothing else changes)."""
    seen, update = [], trainer._update

    def spy(batch):
        seen.append(batch)
        return update(batch)

    trainer._update = spy
    return seen


def materialized_logprobs(model, rollout, temperature):
    """Plain reference: full [B, T, V] logits from model(...), log-softmax, gather the completion tokens."""
    pos = policy.position_ids(rollout.attention_mask)
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=pos).logits
    P = rollout.prompt_width
    logp = torch.log_softmax(logits[:, P - 1:-1].float() / temperature, dim=-1)
    return logp.gather(-1, rollout.completion_ids.unsqueeze(-1)).squeeze(-1) * rollout.completion_mask


def reference_grpo_loss(lp, ref_lp, mask, rewards, groups, beta, eps_clip):
    adv = torch.zeros_like(rewards)
    for g in groups.unique():
        rows = groups == g
        r = rewards[rows]
        adv[rows] = (r - r.mean()) / (r.std() + 1e-4)  # the grpo preset's advantage_eps (TRL's)
    ratio = torch.exp(lp - lp.detach())
    pg = -torch.minimum(ratio * adv[:, None], ratio.clamp(1 - eps_clip, 1 + eps_clip) * adv[:, None])
    d = lp - ref_lp
    per_token = pg + beta * (torch.exp(-d) + d - 1)
    return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def reference_dpo_loss(lp, ref_lp, mask, pair_ids, chosen, beta):
    g = ((lp - ref_lp) * mask).sum(1)
    losses = []
    for p in pair_ids.unique():
        w = ((pair_ids == p) & chosen).nonzero()[0, 0]
        l_ = ((pair_ids == p) & ~chosen).nonzero()[0, 0]
        losses.append(-F.logsigmoid(beta * (g[w] - g[l_])))
    return torch.stack(losses).mean()


def reference_step(model, ref, batch, cfg, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    model.eval()
    lp = materialized_logprobs(model, batch.rollout, cfg.temperature)
    with torch.no_grad():
        ref_lp = materialized_logprobs(ref, batch.rollout, cfg.temperature)
    loss = loss_fn(lp, ref_lp, batch.rollout.completion_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    return loss.item()


@pytest.mark.parametrize("mode", ["grpo", "dpo"])
def test_fused_step_equals_materialized_reference(tmp_path, mode):
    init = tiny_model(seed=1)
    ref = frozen_copy(init)
    if mode == "grpo":
        tr = make_trainer(tmp_path, model=frozen_copy(init).requires_grad_(True), ref=ref, preset="grpo", beta=0.1,
                          max_grad_norm=0.5, temperature=0.8, weight_decay=0.01)
    else:
        tr = make_trainer(tmp_path, model=frozen_copy(init).requires_grad_(True), ref=ref, mode="iterative_dpo",
                          preset="dpo", beta=0.5, max_grad_norm=0.5, prompts_per_step=4)
    seen = capture_batches(tr)
    record = tr.train_step()
    (batch,) = seen
    cfg, model = tr.config, frozen_copy(init).requires_grad_(True)
    if mode == "grpo":
        fn = lambda lp, rlp, m: reference_grpo_loss(lp, rlp, m, batch.rows["rewards"], batch.rows["group_ids"],  # noqa
                                                    cfg.beta, tr.preset.epsilon_low)
    else:
        assert len(batch.rows["pair_ids"]) >= 2, "the tiny model should give at least one preference pair"
        fn = lambda lp, rlp, m: reference_dpo_loss(lp, rlp, m, batch.rows["pair_ids"], batch.rows["chosen"],  # noqa
                                                   cfg.beta)
    ref_loss = reference_step(model, ref, batch, cfg, fn)
    assert record["loss"] == pytest.approx(ref_loss, abs=1e-6, rel=1e-5)
    for (name, a), b in zip(tr.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=f"grad {name}")
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=f"param {name}")
    assert any(not torch.equal(a, b) for a, b in zip(tr.model.parameters(), init.parameters()))


def _loss_and_grads(tr, batch, micro_size):
    tr.model.zero_grad(set_to_none=True)
    mini = list(range(batch.num_rows))
    norms = objective.normalizers(batch, mini, tr.preset)
    micros = objective.micro_batches(batch, mini, micro_size)
    total = 0.0
    for micro in micros:
        out, _ = objective.micro_loss(tr, batch, micro, norms)
        out.loss.backward()
        total += float(out.loss)
    return total, len(micros), [p.grad.clone() for p in tr.model.parameters()]


def length_reward(prompt, completion, **_):
    """Spread-out rewards (so every group has a best and a worst answer)."""
    return len(completion) + 0.1 * sum(map(ord, completion)) % 7


ACCUMULATION_CASES = {
    "grpo-kl": dict(preset="grpo", beta=0.1),
    "dapo": dict(preset="dapo"),
    "dr_grpo": dict(preset="dr_grpo"),
    "gspo": dict(preset="gspo", num_iterations=2),
    "reinforce_pp": dict(preset="reinforce_pp", beta=0.05),
    "dpo": dict(mode="iterative_dpo", preset="dpo", beta=0.3, prompts_per_step=4),
    "hybrid-dpo": dict(mode="hybrid", preset="grpo", offline_preset="dpo", offline_per_step=2),
    "hybrid-kto": dict(mode="hybrid", preset="dapo", offline_preset="kto", offline_per_step=2),
}


@pytest.mark.parametrize("case", list(ACCUMULATION_CASES))
def test_gradient_accumulation_equals_full_batch(tmp_path, case):
    changes = dict(ACCUMULATION_CASES[case])
    offline = {"dpo": OFFLINE_PAIRS, "kto": OFFLINE_LABELS}.get(changes.get("offline_preset"))
    needs_ref = changes.get("beta", 0) > 0 or changes.get("mode") in ("hybrid", "iterative_dpo")
    model = tiny_model(seed=2)
    tr = make_trainer(tmp_path, model=model, ref=frozen_copy(model) if needs_ref else None, offline=offline,
                      reward=length_reward, **changes)
    with torch.no_grad():  # move the policy off the reference and the old policy so every term is live
        for p in tr.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    seen = capture_batches(tr)
    tr.train_step()
    (batch,) = seen
    full, n_full, g_full = _loss_and_grads(tr, batch, batch.num_rows)
    split = max(2, batch.num_rows // 4)
    part, n_part, g_part = _loss_and_grads(tr, batch, split)
    assert n_full == 1 and n_part >= 3
    assert part == pytest.approx(full, abs=1e-6, rel=1e-5)
    for a, b in zip(g_full, g_part):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("changes", [
    dict(preset="grpo", beta=0.05, num_iterations=2, lr_scheduler="cosine", warmup_steps=1),
    dict(mode="iterative_dpo", preset="dpo", beta=0.3, ref_refresh_steps=3),
], ids=["grpo", "iterative_dpo"])
def test_resume_gives_the_same_parameters(tmp_path, changes):
    init = tiny_model(seed=3)
    ref = frozen_copy(init) if changes.get("mode") != "iterative_dpo" else None
    common = dict(max_steps=4, **changes)
    straight = make_trainer(tmp_path / "a", model=frozen_copy(init).requires_grad_(True), ref=ref, **common)
    straight.train()
    crashed = make_trainer(tmp_path / "b", model=frozen_copy(init).requires_grad_(True), ref=ref, **common)
    crashed.train_step()
    crashed.train_step()
    crashed.save()
    crashed.train_step()  # progress after the checkpoint is lost in the "crash"
    resumed = make_trainer(tmp_path / "b", model=tiny_model(seed=99), ref=ref, resume=True, **common)
    assert resumed.step == 2
    resumed.train()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4]  # append-only: the lost step 3 stays; readers take the last record per step
    assert [r["step"] for r in resumed.log.read()] == [1, 2, 3, 4]


MODES = {
    "grpo": dict(preset="grpo"), "dapo": dict(preset="dapo"), "dr_grpo": dict(preset="dr_grpo"),
    "rloo": dict(preset="rloo"), "remax": dict(preset="remax"), "reinforce_pp": dict(preset="reinforce_pp", beta=0.05),
    "gspo": dict(preset="gspo"), "cispo": dict(preset="cispo", num_iterations=2),
    "iterative_dpo": dict(mode="iterative_dpo", preset="dpo", beta=0.2),
    "iterative_ipo": dict(mode="iterative_dpo", preset="ipo", beta=0.2),
    "rejection_sampling": dict(mode="rejection_sampling", preset="grpo", rejection_keep=2),
    "hybrid_pairs": dict(mode="hybrid", preset="grpo", offline_preset="dpo", beta=0.05),
    "hybrid_labels": dict(mode="hybrid", preset="rloo", offline_preset="kto"),
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_runs_two_steps(tmp_path, name):
    changes = dict(MODES[name])
    offline = {"dpo": OFFLINE_PAIRS, "kto": OFFLINE_LABELS}.get(changes.get("offline_preset"))
    model = tiny_model(seed=4)
    needs_ref = changes.get("beta", 0) > 0 or changes.get("mode") == "hybrid"
    init = [p.detach().clone() for p in model.parameters()]
    tr = make_trainer(tmp_path, model=model, ref=frozen_copy(model) if needs_ref else None, offline=offline,
                      plot=True, **changes)
    records = tr.train()
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert all(v == v for v in r.values() if isinstance(v, float)), r  # no NaN anywhere
    if not any(r.get("skipped") for r in records):
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
        assert any(not torch.equal(a, b) for a, b in zip(init, model.parameters()))
    log = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2 and (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert checkpoint.latest_checkpoint(tmp_path / "run").name == "step-00000002"


def test_reward_error_stops_run_with_last_checkpoint_intact(tmp_path):
    calls = {"n": 0}

    def flaky(prompt, completion, **_):
        calls["n"] += 1
        if calls["n"] > 2 * 12:  # the third step's first completion
            raise ZeroDivisionError("bad verifier")
        return float(len(completion))

    tr = make_trainer(tmp_path, reward=flaky, max_steps=4, save_steps=1)
    with pytest.raises(RewardError, match=r"reward function '.*flaky' raised ZeroDivisionError.*prompt index \d+"):
        tr.train()
    last = checkpoint.latest_checkpoint(tmp_path / "run")
    assert last.name == "step-00000002"
    state = checkpoint.load_checkpoint(last, policy=tiny_model(seed=5), optimizer=tr.optimizer, scheduler=tr.scheduler)
    assert state["step"] == 2


def test_nan_reward_is_a_clear_error(tmp_path):
    tr = make_trainer(tmp_path, reward=lambda p, c, **_: float("nan"))
    with pytest.raises(RewardError, match="non-finite reward"):
        tr.train_step()


def test_empty_completions_are_handled(tmp_path):
    """EOS at once: the completion text is "" and only the EOS token is trained; a row with no completion
    token at all contributes nothing (and no NaN)."""
    tr = make_trainer(tmp_path, preset="dapo", beta=0.1, ref=tiny_model())
    eos = tokenizer().eos_token_id

    def stop_at_once(model, tok, prompt_ids, g, **kw):
        out = tr_sample(model, tok, prompt_ids, g, **kw)
        out.input_ids[::2, out.prompt_width:] = tok.pad_token_id
        out.input_ids[::2, out.prompt_width] = eos
        out.completion_mask[::2] = 0.0
        out.completion_mask[::2, 0] = 1.0
        out.attention_mask[::2, out.prompt_width:] = out.completion_mask[::2].long()
        for r in range(0, len(out.completions), 2):
            out.completions[r] = ""
        return out

    tr_sample = tr.sample_fn
    tr.sample_fn = stop_at_once
    seen = capture_batches(tr)
    record = tr.train_step()
    assert record["empty_completion_frac"] >= 0.5 and record["loss"] == record["loss"]
    batch = seen[0]
    # Make row 0 zero-length: with it the loss and gradients equal those of the other rows alone.
    batch.rollout.completion_mask[0] = 0.0
    rows = list(range(batch.num_rows))
    norms = objective.normalizers(batch, rows, tr.preset)
    results = []
    for subset in (rows, rows[1:]):
        tr.model.zero_grad(set_to_none=True)
        out, _ = objective.micro_loss(tr, batch, subset, norms)
        out.loss.backward()
        results.append((out.loss.item(), [p.grad.clone() for p in tr.model.parameters()]))
    (with_empty, g_with), (without, g_without) = results
    assert with_empty == pytest.approx(without, abs=1e-7) and with_empty == with_empty
    for a, b in zip(g_with, g_without):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_materialized_loss_impl_matches_fused(tmp_path):
    init = tiny_model(seed=6)
    runs = []
    for impl in ("fused", "materialized"):
        tr = make_trainer(tmp_path / impl, model=frozen_copy(init).requires_grad_(True), ref=frozen_copy(init),
                          beta=0.1, num_iterations=2, loss_impl=impl)
        runs.append((tr.train_step(), tr.model))
    (rec_a, a), (rec_b, b) = runs
    assert rec_a["loss"] == pytest.approx(rec_b["loss"], abs=1e-6)
    # AdamW moves every parameter by about lr per step whatever its gradient's size, so on parameters whose
    # gradient is ~0 fp32 rounding differences between the two loss paths show up at up to ~1e-3 of lr.
    lr = tr.config.learning_rate
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-2 * lr, rtol=1e-5)


def test_cli_runs_the_demo_config(tmp_path):
    out = tmp_path / "demo"
    code = cli_main(["--config", str(ROOT / "examples" / "demo_sort.yaml"), "--set", "max_steps=3",
                     "--set", f"output_dir={out}", "--set", "prompts_per_step=4", "--set", "save_steps=2"])
    assert code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
    assert (out / "curves.png").exists()
    assert checkpoint.latest_checkpoint(out).name == "step-00000003"
    code = cli_main(["--config", str(ROOT / "examples" / "demo_sort.yaml"), "--resume", "--set", "max_steps=4",
                     "--set", f"output_dir={out}", "--set", "prompts_per_step=4"])
    assert code == 0 and len((out / "metrics.jsonl").read_text().splitlines()) == 4
