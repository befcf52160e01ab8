"""The study's tasks: prompts generated in code, each with a verifiable reward that gives partial credit (the
policies start from random weights, so an all-or-nothing reward would give every method a zero signal).

sort      "3142>"  -> "1234"   reward: fraction of positions right (the trainer's position_match_reward)
add       "37+85=" -> "122"    answers zero-padded to digits+1 characters; reward: fraction of positions right
expr      "3*4-5=" -> "7"      single-digit operands, + - *, usual precedence; reward: 1 for the exact value, else
                               0.5 * max(0, 1 - |error| / 10) for an integer answer, 0 for one that is not an integer

Held-out prompts are distinct from every training prompt (split by prompt text, not by position).
"""

import random
import re

from gro_kernels.trainer.tasks import position_match_reward

ALPHABET = "0123456789>+-*="
_INTEGER = re.compile(r"-?\d+")


def _sort_prompt(rng, length=3, digits="0123456789"):
    s = "".join(rng.choice(digits) for _ in range(length))
    return s + ">", "".join(sorted(s))


def _add_prompt(rng, digits=2):
    a, b = (rng.randrange(10 ** digits) for _ in range(2))
    return f"{a}+{b}=", str(a + b).zfill(digits + 1)


def _expr_prompt(rng, terms=3, ops="+-*"):
    parts = [str(rng.randrange(10))]
    for _ in range(terms - 1):
        parts += [rng.choice(ops), str(rng.randrange(10))]
    text = "".join(parts)
    return text + "=", str(eval(text))  # digits and + - * only, built above: eval is the arithmetic spec


def expression_reward(prompt: str, completion: str, target: str = "", **_) -> float:
    """1 for the exact value; an integer answer off by e gets 0.5 * max(0, 1 - |e| / 10); anything else 0."""
    if not target:
        raise ValueError("expression_reward needs a non-empty 'target' field in the prompt record")
    if completion == target:
        return 1.0
    if not _INTEGER.fullmatch(completion):
        return 0.0
    return 0.5 * max(0.0, 1.0 - abs(int(completion) - int(target)) / 10.0)


TASKS = {"sort": (_sort_prompt, position_match_reward), "add": (_add_prompt, position_match_reward),
         "expr": (_expr_prompt, expression_reward)}


def make_task(name: str, num_train: int, num_eval: int, seed: int, **options):
    """(train records, held-out records, reward fn). Held-out prompts never occur among the training prompts;
    training prompts may repeat (small prompt spaces), held-out ones do not."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got '{name}'")
    make, reward = TASKS[name]
    rng = random.Random(seed)
    held, seen = [], set()
    for _ in range(100 * num_eval):
        if len(held) == num_eval:
            break
        prompt, target = make(rng, **options)
        if prompt not in seen:
            seen.add(prompt)
            held.append({"prompt": prompt, "target": target})
    if len(held) < num_eval:
        raise ValueError(f"task '{name}' with {options} has too few distinct prompts for num_eval={num_eval}")
    train = []
    for _ in range(1000 * num_train):
        if len(train) == num_train:
            break
        prompt, target = make(rng, **options)
        if prompt not in seen:
            train.append({"prompt": prompt, "target": target})
    if len(train) < num_train:
        raise ValueError(f"task '{name}' with {options}: no room for {num_train} training prompts outside the "
                         f"held-out set")
    return train, held, reward
