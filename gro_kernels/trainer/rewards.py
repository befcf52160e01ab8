"""Reward scoring: a weighted sum of per-sample reward functions, with errors that say where they came from.

A reward function is `fn(prompt: str, completion: str, **fields) -> float`, where `fields` are the other
keys of the prompt record (e.g. the reference answer). It is called once per completion.
"""

import importlib
import math
from typing import Callable, List, Optional, Sequence

import torch

from . import tasks


class RewardError(RuntimeError):
    """A reward function raised or returned a non-finite value. Names the function and the prompt."""


def resolve(spec, name: str = "reward") -> Callable:
    """A callable, a built-in task name (e.g. "sort_digits"), or a "package.module:function" spec.
    `name` is where the spec came from (e.g. "rewards[1]"), for the error message."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a callable or a 'module:function' str, got {spec!r} ({type(spec).__name__})")
    if spec in tasks.TASKS:
        return tasks.TASKS[spec]
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{name} '{spec}' must be a built-in task name {sorted(tasks.TASKS)} "
                         f"or 'package.module:function'")
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:  # also a missing dependency of the module: the message says which
        raise ValueError(f"{name} '{spec}': cannot import module '{module}' ({type(err).__name__}: {err}); "
                         f"expected 'package.module:function' importable from sys.path") from err
    fn = getattr(loaded, attr, None)
    if not callable(fn):
        raise ValueError(f"{name} '{spec}': module '{module}' has no callable '{attr}'"
                         + (f" (it is a {type(fn).__name__})" if fn is not None else ""))
    return fn


def fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def check_weights(reward_fns: Sequence[Callable], weights: Optional[Sequence[float]]) -> List[float]:
    if len(reward_fns) == 0:
        raise ValueError("reward_fns must hold at least one reward function")
    if weights is None:
        return [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise ValueError(f"reward_weights must have one weight per reward function ({len(reward_fns)}), "
                         f"got {len(weights)}")
    return [float(w) for w in weights]


def score(reward_fns: Sequence[Callable], weights: Sequence[float], records: List[dict], completions: List[str],
          prompt_index: List[int], dataset_index: Optional[List[int]] = None) -> torch.Tensor:
    """Weighted reward per completion, fp32 [B]. `records[prompt_index[r]]` is the prompt record of row r;
    `dataset_index[k]` is the index of batch prompt k in the training prompts (for error messages)."""
    total = torch.zeros(len(completions), dtype=torch.float32)
    for fn, w in zip(reward_fns, weights):
        for r, text in enumerate(completions):
            record = records[prompt_index[r]]
            k = prompt_index[r]
            where = f"prompt index {k if dataset_index is None else dataset_index[k]} (completion row {r})"
            fields = {k: v for k, v in record.items() if k != "prompt"}
            try:
                value = fn(record["prompt"], text, **fields)
            except Exception as err:
                raise RewardError(f"reward function '{fn_name(fn)}' raised {type(err).__name__}: {err} "
                                  f"on {where}") from err
            try:
                value = float(value)
            except (TypeError, ValueError) as err:
                raise RewardError(f"reward function '{fn_name(fn)}' returned {value!r} (not a number) "
                                  f"on {where}") from err
            if not math.isfinite(value):
                raise RewardError(f"reward function '{fn_name(fn)}' returned {value} (non-finite reward) on {where}")
            total[r] += w * value
    return total
