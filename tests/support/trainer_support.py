"""Tiny models, prompts and trainers for the trainer tests (CPU, fp32, built in code, no downloads)."""

import copy

import torch

from gro_kernels.trainer import GROConfig, GROTrainer, tasks, tiny

TOKENIZER = None


def tokenizer():
    global TOKENIZER
    if TOKENIZER is None:
        TOKENIZER = tiny.char_tokenizer(tasks.ALPHABET)
    return TOKENIZER


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    options = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=32)
    options.update(overrides)
    return tiny.tiny_llama(tokenizer(), **options)


def prompts(n=16, length=3):
    return tasks.digit_task("sort_digits", num_prompts=n, length=length, seed=7)


OFFLINE_PAIRS = [{"prompt": "31>", "chosen": "13", "rejected": "31"},
                 {"prompt": "520>", "chosen": "025", "rejected": "52"},
                 {"prompt": "99>", "chosen": "99", "rejected": ""}]
OFFLINE_LABELS = [{"prompt": "31>", "completion": "13", "label": True},
                  {"prompt": "520>", "completion": "52", "label": False},
                  {"prompt": "88>", "completion": "88", "label": True}]


def config(tmp_path, **changes):
    base = dict(prompts_per_step=3, num_generations=4, max_new_tokens=5, max_prompt_length=8, micro_batch_size=64,
                learning_rate=1e-3, max_steps=2, output_dir=str(tmp_path / "run"), plot=False, progress_bar=False,
                save_steps=0, seed=0)
    base.update(changes)
    return GROConfig(**base)


def make_trainer(tmp_path, model=None, ref=None, reward=tasks.position_match_reward, offline=None, records=None,
                 **changes):
    cfg = config(tmp_path, **changes)
    model = model if model is not None else tiny_model()
    return GROTrainer(model, ref, tokenizer(), [reward], cfg, records or prompts(), offline_data=offline)


def frozen_copy(model):
    return copy.deepcopy(model).eval().requires_grad_(False)
