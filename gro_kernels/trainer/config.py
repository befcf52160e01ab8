"""GROConfig: the one place where trainer defaults live, plus loading from YAML/JSON with strict keys."""

import dataclasses
import difflib
import functools
import inspect
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import tasks

MODES = ("online", "iterative_dpo", "rejection_sampling", "hybrid")
ONLINE_PRESETS = ("grpo", "bnpo", "dapo", "dr_grpo", "rloo", "remax", "reinforce_pp", "ppo", "gspo", "cispo")
PAIR_PRESETS = ("dpo", "ipo")
SCHEDULERS = ("constant", "linear", "cosine")
DTYPES = ("float32", "bfloat16", "float16")
# Names other trainers (TRL, verl) use for a GROConfig field, for the "unknown key" hint.
SYNONYMS = {"group_size": "num_generations", "n_samples": "num_generations", "max_completion_length": "max_new_tokens",
            "num_train_epochs": "max_steps", "gradient_accumulation_steps": "mini_batch_size"}
ONLINE_PART = ("online", "rejection_sampling", "hybrid")
# Fields that only some modes read: set (to anything but the default) in another mode they would do nothing.
MODE_ONLY = {"rejection_keep": ("rejection_sampling",), "rejection_min_reward": ("rejection_sampling",),
             "ref_refresh_steps": ("iterative_dpo",), "offline_per_step": ("hybrid",), "offline_preset": ("hybrid",),
             "offline_file": ("hybrid",), "offline_weight": ("hybrid",),
             "epsilon": ONLINE_PART, "epsilon_high": ONLINE_PART}


@dataclass
class GROConfig:
    """Every knob of the trainer. Unknown keys are rejected by `from_dict`, naming the key."""

    # What to train (read by the CLI; the Python API takes the objects themselves).
    model: str = "tiny-llama"          # "tiny-llama" (built from tiny_model, no download) or a local HF path
    tiny_model: dict = field(default_factory=dict)   # LlamaConfig overrides for "tiny-llama"
    task: str = "sort_digits"          # built-in demo task giving prompts and a reward (see tasks.py)
    task_options: dict = field(default_factory=dict)
    rewards: list = field(default_factory=list)      # "module:function" specs; empty = the task's reward
    reward_weights: Optional[list] = None            # one weight per reward function (default all 1)
    offline_file: Optional[str] = None               # hybrid: .jsonl/.json of offline records (CLI)

    # Algorithm.
    mode: str = "online"               # online | iterative_dpo | rejection_sampling | hybrid
    preset: str = "grpo"               # GRO preset of the online part (dpo/ipo for iterative_dpo)
    num_generations: int = 4           # G completions per prompt
    prompts_per_step: int = 8
    num_iterations: int = 1            # optimisation epochs over each rollout batch
    micro_batch_size: int = 8          # sequences per forward/backward (pairs count two)
    mini_batch_size: Optional[int] = None  # sequences per optimizer update; None = the whole rollout batch
    beta: float = 0.0                  # KL coefficient (online) or DPO/IPO beta
    epsilon: Optional[float] = None    # lower clip of the policy ratio (and the upper one for symmetric presets);
    epsilon_high: Optional[float] = None  # upper clip. None: the preset's own range (grpo 0.2, dapo 0.2/0.28)
    loss_options: dict = field(default_factory=dict)  # extra keyword arguments for gro_loss
    rejection_keep: int = 1            # rejection sampling: best k per prompt get weight 1
    rejection_min_reward: Optional[float] = None      # ... and only if their reward reaches this
    ref_refresh_steps: int = 1         # iterative DPO: steps per round (reference := policy each round)
    offline_per_step: int = 4          # hybrid: offline records mixed into each batch
    offline_preset: str = "dpo"        # hybrid: GRO preset of the offline rows
    offline_weight: float = 1.0        # hybrid: loss = online mean + offline_weight * offline mean (the mixing weight)

    # Sampling.
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    max_prompt_length: int = 64
    truncate_prompts: bool = True      # False: a prompt over max_prompt_length is an error

    # Optimisation.
    max_steps: int = 100
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    lr_scheduler: str = "constant"     # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    loss_impl: str = "fused"           # fused | materialized (builds [tokens, V] logits; for comparison)
    padding_free: bool = False         # pack each micro-batch into one row, no padding (eager/sdpa attention)

    # Runtime, logging and checkpoints.
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None  # torch intra-op threads (1 is fastest for tiny models on a busy CPU)
    dtype: str = "float32"
    output_dir: str = "runs/gro"
    metrics_file: str = "metrics.jsonl"
    plot: bool = True
    progress_bar: bool = True
    save_steps: int = 50               # 0 disables periodic checkpoints (a final one is still written)
    save_total_limit: int = 2          # keep the last k checkpoints
    resume: bool = False               # continue from the newest intact checkpoint in output_dir
    overwrite_output_dir: bool = False  # a fresh run into a non-empty output_dir: delete its checkpoints/metrics

    def __post_init__(self):
        _check_types(self)  # first: the value checks below assume the declared types
        self.adam_betas = tuple(self.adam_betas)
        _validate(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GROConfig":
        if not isinstance(data, dict):
            raise TypeError(f"a GRO config must be a mapping, got {type(data).__name__}")
        return cls(**data)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    def replace(self, **changes) -> "GROConfig":
        return GROConfig.from_dict({**self.to_dict(), **changes})


def _known_keys(init):
    """GROConfig(**kwargs) and from_dict both reject an unknown key by name, with the closest field as a hint."""
    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        names = [f.name for f in dataclasses.fields(GROConfig)]
        for key in kwargs:
            if key not in names:
                raise ValueError(f"unknown GRO config key '{key}'{_did_you_mean(key, names)}")
        init(self, *args, **kwargs)
    return checked


GROConfig.__init__ = _known_keys(GROConfig.__init__)


def load_config(path, overrides: Optional[dict] = None) -> GROConfig:
    """Read a GROConfig from a .yaml/.yml/.json file, then apply `overrides` (same strict keys)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"config file must end in .yaml, .yml or .json, got '{path.name}'")
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping at top level, got {type(data).__name__}")
    return GROConfig.from_dict({**data, **(overrides or {})})


def _validate(c: GROConfig):
    _check_choices(c)
    _mode_only(c)
    _check_counts(c)
    _check_numbers(c)
    _check_lists(c)
    _check_task(c.task, c.task_options)
    if c.resume and c.overwrite_output_dir:
        raise ValueError("resume=True and overwrite_output_dir=True contradict each other: resume continues the "
                         "run in output_dir, overwrite_output_dir deletes it; set one")
    try:
        torch.device(c.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {c.device!r}") from None


def _check_choices(c: GROConfig):
    _choice("mode", c.mode, MODES)
    allowed = PAIR_PRESETS if c.mode == "iterative_dpo" else ONLINE_PRESETS
    _choice("preset", c.preset, allowed, f" for mode '{c.mode}'")
    if c.mode == "hybrid":
        _choice("offline_preset", c.offline_preset, ("dpo", "ipo", "simpo", "kto", "cpl"))
    _choice("lr_scheduler", c.lr_scheduler, SCHEDULERS)
    _choice("dtype", c.dtype, DTYPES)
    _choice("loss_impl", c.loss_impl, ("fused", "materialized"))


def _check_counts(c: GROConfig):
    for name in ("num_generations", "prompts_per_step", "num_iterations", "micro_batch_size", "max_steps",
                 "max_new_tokens", "max_prompt_length", "rejection_keep", "ref_refresh_steps", "save_total_limit"):
        _int_at_least(name, getattr(c, name), 1)
    for name in ("warmup_steps", "save_steps", "offline_per_step", "seed"):
        _int_at_least(name, getattr(c, name), 0)
    for name in ("num_threads", "mini_batch_size"):
        if getattr(c, name) is not None:
            _int_at_least(name, getattr(c, name), 1)
    if c.mode in ("online", "hybrid") and c.preset != "remax" and c.num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 for preset '{c.preset}' (group baselines), "
                         f"got {c.num_generations}")
    if c.mode == "iterative_dpo" and c.num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 to form best/worst pairs, got {c.num_generations}")
    if c.mode == "rejection_sampling" and c.rejection_keep > c.num_generations:
        raise ValueError(f"rejection_keep ({c.rejection_keep}) must be <= num_generations ({c.num_generations})")


def _check_numbers(c: GROConfig):
    for name in ("temperature", "learning_rate", "adam_eps", "max_grad_norm"):
        if getattr(c, name) is not None:
            _positive(name, getattr(c, name))
    if not 0.0 < c.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {c.top_p}")
    for name in ("beta", "epsilon", "epsilon_high", "weight_decay", "offline_weight"):
        if getattr(c, name) is not None:
            _nonnegative(name, getattr(c, name))
    if c.rejection_min_reward is not None and not math.isfinite(c.rejection_min_reward):
        raise ValueError(f"rejection_min_reward must be a finite number or None, got {c.rejection_min_reward}")


def _check_lists(c: GROConfig):
    _items("adam_betas", c.adam_betas, _NUMBER)
    if len(c.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in c.adam_betas):
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {list(c.adam_betas)}")
    if c.reward_weights is not None:
        _items("reward_weights", c.reward_weights, _NUMBER)
        if not all(math.isfinite(w) for w in c.reward_weights):
            raise ValueError(f"reward_weights must be finite numbers, got {c.reward_weights}")
    _items("rewards", c.rewards, (str, "a 'package.module:function' str or a built-in task name"))


_NUMBER = ((int, float), "a number")
# How a field's declared type reads in an error message (adam_betas is declared a tuple, given as a list).
_EXPECTED = {bool: "a bool (true/false)", int: "an int", float: "a number", str: "a str", dict: "a mapping",
             list: "a list", tuple: "a list"}
_EXPECTED_BY_NAME = {"adam_betas": "a pair of numbers [beta1, beta2]", "reward_weights": "a list of numbers or None"}


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_types(c: GROConfig):
    """Every field against its declared type, so a value of the wrong type (a quoted YAML number, a bare 0.9 for a
    pair, "false" for a bool) is a TypeError naming the field rather than a surprise further down."""
    for name, hint in _field_types(type(c)).items():
        value = getattr(c, name)
        optional = type(None) in typing.get_args(hint)
        kind = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        if (optional and value is None) or _is(kind, value):
            continue
        expected = _EXPECTED_BY_NAME.get(name) or _EXPECTED[kind] + (" or None" if optional else "")
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}){_quoted_hint(value)}")


def _is(kind, value) -> bool:
    if isinstance(value, bool):  # bool is an int in Python; as a config value it is neither an int nor a number
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    if kind in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _quoted_hint(value) -> str:
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return "; YAML reads a quoted number, or one like 1e-5 (no dot), as a string: write 1.0e-5"


def _items(name, values, spec):
    kinds, expected = spec
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise TypeError(f"{name}[{i}] must be {expected}, got {v!r} ({type(v).__name__}){_quoted_hint(v)}")


def _mode_only(c: GROConfig):
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    for name, modes in MODE_ONLY.items():
        value = getattr(c, name)
        if c.mode not in modes and value != defaults[name]:
            only = " or ".join(", ".join(f"'{m}'" for m in modes).rsplit(", ", 1))
            raise ValueError(f"{name}={value!r} is not used by mode '{c.mode}' (only by {only}); remove it or "
                             f"change mode")


def _check_task(task: str, options: dict):
    """A built-in task name (options: digit_task's keywords), or a .json/.jsonl prompts file (read by the CLI)."""
    if task.endswith((".json", ".jsonl")):
        if options:
            raise ValueError(f"task_options {options} apply to the built-in tasks only, not to the prompts file "
                             f"'{task}'")
        return
    if task not in tasks.TASKS:
        raise ValueError(f"task must be a built-in task {sorted(tasks.TASKS)} or a .json/.jsonl prompts file, "
                         f"got '{task}'{_did_you_mean(task, list(tasks.TASKS))}")
    allowed = [p for p in inspect.signature(tasks.digit_task).parameters if p != "kind"]
    for key in options:
        if key not in allowed:
            raise ValueError(f"task_options has unknown key '{key}'{_did_you_mean(key, allowed)}; allowed: {allowed}")


def _did_you_mean(key, names) -> str:
    close = SYNONYMS.get(key) or (difflib.get_close_matches(str(key), names, n=1) or [None])[0]
    return f" (did you mean '{close}'?)" if close else ""


def _choice(name, value, allowed, suffix=""):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}{suffix}, got '{value}'")


def _int_at_least(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _positive(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _nonnegative(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
