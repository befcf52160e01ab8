"""`gro-train --config run.yaml`: build the model, tokenizer, prompts and rewards a config names, then train."""

import argparse
import json
import logging
from pathlib import Path
from typing import List, Optional

import torch

from . import objective, tasks, tiny
from . import rewards as rewards_mod
from .policy import copy_as_reference
from .config import load_config
from .trainer import GROTrainer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gro-train", description="Train a causal LM with GRO (fused, no [tokens, V] "
                                "logits). Every option lives in the config file; --set overrides single keys.")
    p.add_argument("--config", required=True, help="a .yaml/.yml/.json GROConfig file")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (VALUE parsed as YAML), e.g. --set max_steps=20")
    return p


def parse_overrides(items: List[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got '{item}'")
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_records(path) -> list:
    """Records from a .jsonl (one JSON object per line) or .json (a list) file."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of records")
    return data


def build_model(config):
    """(model, tokenizer): the in-code tiny Llama, or a local Hugging Face checkpoint (no downloads)."""
    dtype = getattr(torch, config.dtype)
    if config.model == "tiny-llama":
        tokenizer = tiny.char_tokenizer(tasks.ALPHABET)
        model = tiny.tiny_llama(tokenizer, **config.tiny_model)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(config.model, local_files_only=True, dtype=dtype)
    return model.to(device=config.device, dtype=dtype), tokenizer


def task_data(config):
    """(prompt records, reward functions) of the config's task and rewards, errors naming the config field."""
    if config.task in tasks.TASKS:
        prompts = tasks.digit_task(config.task, **config.task_options)
    elif not Path(config.task).is_file():
        raise ValueError(f"task '{config.task}': no such prompts file (expected a built-in task "
                         f"{sorted(tasks.TASKS)} or an existing .json/.jsonl file)")
    else:
        prompts = read_records(config.task)
    if config.rewards:
        return prompts, [rewards_mod.resolve(spec, f"rewards[{i}]") for i, spec in enumerate(config.rewards)]
    if config.task not in tasks.TASKS:
        raise ValueError(f"rewards is empty and task '{config.task}' is a prompts file, which brings no reward; "
                         f"set rewards: ['package.module:function']")
    return prompts, [rewards_mod.resolve(config.task, "task")]


def build_trainer(config) -> GROTrainer:
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    prompts, rewards = task_data(config)
    model, tokenizer = build_model(config)
    ref = copy_as_reference(model) if objective.needs_reference(objective.preset_for(config), config) else None
    offline = read_records(config.offline_file) if config.offline_file else None
    return GROTrainer(model, ref, tokenizer, rewards, config, prompts, offline_data=offline)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = parse_overrides(args.set)
    if args.resume:
        overrides["resume"] = True
    config = load_config(args.config, overrides)
    trainer = build_trainer(config)
    records = trainer.train()
    if records and trainer.dp.rank == 0:  # under torchrun, one summary line (rank 0 owns the metrics file)
        first, last = records[0], records[-1]
        logging.getLogger("gro_kernels.trainer").info(
            f"done: {trainer.step} steps, reward {first.get('reward_mean', float('nan')):.3f} -> "
            f"{last.get('reward_mean', float('nan')):.3f}; metrics in {trainer.log.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
