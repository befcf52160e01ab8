"""`python -m benchmarks.study --quick` end to end into a tmp dir (one task, one seed, every method, a small
budget): the outputs exist, every method has a run with sane numbers, budgets are equal, and the plots are PNGs.
Also the study tasks' rewards and the offline pool replay on their own (fast)."""

import csv
import json
import math

import pytest
import torch
import yaml

from benchmarks.study import pool as pool_mod
from benchmarks.study import run as study_run
from benchmarks.study.__main__ import DEFAULT_CONFIG, load, main
from benchmarks.study.tasks import expression_reward, make_task
from gro_kernels.trainer import rollout as ro

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_quick")
    assert main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_study_writes_every_output(quick):
    study = load(DEFAULT_CONFIG, quick=True)
    for name in ("config.yaml", "environment.json", "summary.csv", "table.md", "final_accuracy.png"):
        assert (quick / name).is_file(), name
    for task in study["tasks"]:
        assert (quick / f"curves_{task}.png").read_bytes()[:8] == PNG
    assert yaml.safe_load((quick / "config.yaml").read_text()) == study
    env = json.loads((quick / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["git_commit"] and env["cpu_count"] >= 1
    rows = list(csv.DictReader((quick / "summary.csv").open()))
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in study["tasks"] for m in study["methods"]}
    table = (quick / "table.md").read_text()
    assert all(f"| {m} |" in table for m in study["methods"])


def test_quick_study_numbers_are_sane(quick):
    study = load(DEFAULT_CONFIG, quick=True)
    rows = {r["method"]: r for r in csv.DictReader((quick / "summary.csv").open())}
    budget = study["tasks"]["sort"]["budget_tokens"]
    for method, r in rows.items():
        for key in ("final_accuracy", "final_reward", "initial_reward"):
            assert 0.0 <= float(r[key]) <= 1.0, (method, key, r[key])
        assert float(r["kl_to_initial"]) > 0.0, method            # every method moved the policy
        assert 0.0 < float(r["entropy"]) <= math.log(20), method  # per-token entropy of a 19-token vocabulary
        assert int(r["steps"]) >= 1 and float(r["wall_s"]) > 0.0
        online = int(r["sampled_tokens"])
        if method.startswith("hybrid"):
            online -= int(rows["offline_dpo"]["sampled_tokens"])  # the same pool, charged up front
        if method != "offline_dpo":  # the budget is met and overshot by at most one step's tokens
            t = {**study["trainer"], **study["tasks"]["sort"]["trainer"]}
            per_step = t["prompts_per_step"] * t["num_generations"] * t["max_new_tokens"]
            assert budget <= online < budget + per_step, (method, online)
    # every run starts from the same initial policy (same seed) and is evaluated on the same prompts
    assert len({r["initial_reward"] for r in rows.values()}) == 1
    curve = [json.loads(line) for line in
             (quick / "runs" / "sort" / "grpo" / "seed0" / "curve.jsonl").read_text().splitlines()]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == int(rows["grpo"]["steps"])
    assert all(a["sampled_tokens"] < b["sampled_tokens"] for a, b in zip(curve, curve[1:]))


def test_expression_reward_partial_credit():
    assert expression_reward("3*4-5=", "7", target="7") == 1.0
    assert expression_reward("3*4-5=", "5", target="7") == pytest.approx(0.4)
    assert expression_reward("3*4-5=", "-30", target="7") == 0.0
    assert expression_reward("3*4-5=", "7-", target="7") == 0.0
    with pytest.raises(ValueError, match="target"):
        expression_reward("3*4-5=", "7")


@pytest.mark.parametrize("task", ["sort", "add", "expr"])
def test_held_out_prompts_are_unseen(task):
    train, held, reward = make_task(task, 200, 50, seed=3)
    assert len(held) == 50 and len({r["prompt"] for r in held}) == 50
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert all(reward(r["prompt"], r["target"], target=r["target"]) == 1.0 for r in train[:20])


def test_replay_sampler_returns_the_pooled_answers():
    study = load(DEFAULT_CONFIG, quick=True)
    study["tasks"]["sort"]["budget_tokens"] = 384  # 1 nominal step: 16 prompts
    train, _, reward, sizes = study_run.task_setup(study, "sort")
    model, tok = study_run.initial_model(study, 0)
    t = sizes["trainer"]
    pool = pool_mod.build_pool(model.eval(), tok, train, reward, t["num_generations"], t["max_new_tokens"], 12)
    sample = pool_mod.replay_sampler(pool)
    prompt_ids = ro.encode_prompts(tok, [r["prompt"] for r in train[:2]], 12, True)
    got = sample(model, tok, prompt_ids, t["num_generations"], temperature=1.0, top_p=1.0, max_new_tokens=3)
    want = torch.cat([pool.completions[tuple(ids)][0] for ids in prompt_ids])
    width = got.completion_ids.shape[1]
    assert torch.equal(got.completion_ids, want[:, :width])
    assert pool.tokens > 0 and all(p["chosen"] != p["rejected"] for p in pool.pairs)
    with pytest.raises(ValueError, match="num_generations=3"):
        sample(model, tok, prompt_ids, 3, temperature=1.0, top_p=1.0, max_new_tokens=3)
