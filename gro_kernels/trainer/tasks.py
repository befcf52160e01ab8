"""Built-in verifiable demo tasks: prompts with a known answer and a reward that checks it."""

import random

ALPHABET = "0123456789>"


def digit_task(kind: str = "sort_digits", num_prompts: int = 256, length: int = 4, digits: str = "0123456789",
               seed: int = 1234) -> list:
    """Prompt records {"prompt": "3142>", "target": "1234"} for `kind` in sort_digits / echo_digits."""
    if kind not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got '{kind}'")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"task length must be an int >= 1, got {length!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(num_prompts):
        s = "".join(rng.choice(digits) for _ in range(length))
        target = "".join(sorted(s)) if kind == "sort_digits" else s
        records.append({"prompt": s + ">", "target": target})
    return records


def position_match_reward(prompt: str, completion: str, target: str = "", **_) -> float:
    """Fraction of positions where the completion matches `target`; extra or missing characters count as
    misses, so only the exact answer scores 1."""
    if not target:
        raise ValueError("position_match_reward needs a non-empty 'target' field in the prompt record")
    hits = sum(a == b for a, b in zip(completion, target))
    return hits / max(len(completion), len(target))


TASKS = {"sort_digits": position_match_reward, "echo_digits": position_match_reward}
