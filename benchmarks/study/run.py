"""One study run: (task, method, seed) trained with the repo's GROTrainer to a budget of sampled tokens, with
held-out evaluations along the way. Everything it reads comes from the study config (config.yaml)."""

import copy
import json
import math
import shutil
from pathlib import Path

import torch

from gro_kernels.trainer import GROConfig, GROTrainer, objective, tiny

from . import pool as pool_mod
from .evaluate import evaluate
from .tasks import ALPHABET, make_task


def task_setup(study: dict, task: str):
    """(train, held-out, reward, sizes) of a task. The training prompts are one pass of the nominal budget: the
    number of update steps a method sampling full-length answers gets, times prompts_per_step."""
    spec = study["tasks"][task]
    t = {**study["trainer"], **spec.get("trainer", {})}
    per_step = t["prompts_per_step"] * t["num_generations"] * t["max_new_tokens"]
    steps = max(1, spec["budget_tokens"] // per_step)
    train, held, reward = make_task(task, steps * t["prompts_per_step"], study["num_eval_prompts"],
                                    study["data_seed"], **spec.get("options", {}))
    return train, held, reward, dict(nominal_steps=steps, trainer=t)


def initial_model(study: dict, seed: int):
    tokenizer = tiny.char_tokenizer(ALPHABET)
    torch.manual_seed(seed)
    return tiny.tiny_llama(tokenizer, **study["model"]), tokenizer


def pool_path(out: Path, task: str, seed: int) -> Path:
    return out / "pools" / f"{task}_seed{seed}.pt"


def make_pool(study: dict, task: str, seed: int, out: Path) -> dict:
    torch.set_num_threads(1)
    train, _, reward, sizes = task_setup(study, task)
    model, tokenizer = initial_model(study, seed)
    model.eval()
    torch.manual_seed(seed + 1_000)
    t = sizes["trainer"]
    pool = pool_mod.build_pool(model, tokenizer, train, reward, t["num_generations"], t["max_new_tokens"],
                               t["max_prompt_length"])
    path = pool_path(out, task, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pool, path)
    return {"task": task, "seed": seed, "pairs": len(pool.pairs), "tokens": pool.tokens, "seconds": pool.seconds}


def run_one(study: dict, task: str, method: str, seed: int, out: Path) -> dict:
    torch.set_num_threads(1)
    train, held, reward, sizes = task_setup(study, task)
    spec = study["methods"][method]
    t = sizes["trainer"]
    model, tokenizer = initial_model(study, seed)
    initial = copy.deepcopy(model).eval().requires_grad_(False)
    uses_pool = spec.get("offline") in ("replay", "pairs")
    pool = torch.load(pool_path(out, task, seed), weights_only=False) if uses_pool else None
    run_dir = out / "runs" / task / method / f"seed{seed}"
    cap = int(math.ceil(study["max_steps_factor"] * sizes["nominal_steps"]))
    options = {**t, **spec.get("trainer", {})}
    if spec.get("offline") == "replay":  # offline DPO: one pass over the pool, reference = initial policy forever
        options.update(mode="iterative_dpo", ref_refresh_steps=10 ** 9)
        cap = sizes["nominal_steps"]
    config = GROConfig(**options, max_steps=cap, seed=seed, output_dir=str(run_dir / "trainer"), plot=False,
                       progress_bar=False, save_steps=0, overwrite_output_dir=True)
    needs_ref = config.mode != "iterative_dpo" and objective.needs_reference(objective.preset_for(config), config)
    trainer = GROTrainer(model, copy.deepcopy(initial) if needs_ref else None, tokenizer, [reward], config, train,
                         offline_data=pool.pairs if spec.get("offline") == "pairs" else None)
    if spec.get("offline") == "replay":
        trainer.sample_fn = pool_mod.replay_sampler(pool)
    # The pool's samples and their wall time are charged up front to the runs that learn from them.
    tokens = pool.tokens if uses_pool else 0
    wall = pool.seconds if uses_pool else 0.0
    budget = tokens + study["tasks"][task]["budget_tokens"] if spec.get("offline") != "replay" else math.inf
    evals_every = max(1, sizes["nominal_steps"] // study["num_evals"])
    curve = []

    def log_eval(record=None):
        e = evaluate(trainer.model, initial, tokenizer, held, reward, t["max_new_tokens"], t["max_prompt_length"])
        row = {"step": trainer.step, "sampled_tokens": tokens, "wall_s": wall, **e}
        if record is not None:  # the trainer's own step metrics, beside the held-out ones
            for key in ("reward_mean", "loss", "kl", "entropy"):
                row[f"train_{key}"] = record.get(key)
        curve.append(row)

    log_eval()
    record, train_rewards = None, []
    while trainer.step < cap and tokens < budget:
        record = trainer.train_step()
        wall += record["step_time_s"]
        if spec.get("offline") != "replay":  # sampled this step (online rows only, EOS included)
            tokens += int(round(record["completion_len"] * t["prompts_per_step"] * t["num_generations"]))
            train_rewards.append(record["reward_mean"])
        if trainer.step % evals_every == 0:
            log_eval(record)
    if curve[-1]["step"] != trainer.step:
        log_eval(record)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "curve.jsonl").open("w") as f:
        for row in curve:
            f.write(json.dumps(row) + "\n")
    last = curve[-1]
    tail = train_rewards[-max(1, len(train_rewards) // 10):]
    summary = {"task": task, "method": method, "seed": seed, "steps": trainer.step, "sampled_tokens": tokens,
            "wall_s": wall, "final_accuracy": last["eval_accuracy"], "final_reward": last["eval_reward"],
            "kl_to_initial": last["kl_to_initial"], "entropy": last["entropy"],
            "initial_accuracy": curve[0]["eval_accuracy"], "initial_reward": curve[0]["eval_reward"],
            "train_reward_last10pct": sum(tail) / len(tail) if tail else None}
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)  # the trainer's per-step log: curve.jsonl keeps the part used
    (run_dir / "summary.json").write_text(json.dumps(summary) + "\n")  # a study cut short keeps its finished runs
    return summary
