"""GRO_CHUNK_SIZE and GRO_LOGIT_STORE_MIB as the chunk loops read them (the public calls check them first, with the
same rules)."""

import os
from typing import Optional


def _env_int(name: str, minimum: int, meaning: str) -> Optional[int]:
    """The int in environment variable `name`, or None when unset; anything else than an int >= minimum raises."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name} must be {meaning} or unset, got {raw!r}")
    return value


def env_chunk_size() -> Optional[int]:
    """Rows per chunk from GRO_CHUNK_SIZE, or None when unset; a value that is not a positive int raises."""
    return _env_int("GRO_CHUNK_SIZE", 1, "a positive int (rows per chunk)")


# The logit store's default budget: 512 MiB of fp32 logits, all of a V 32000 head's for 4096 tokens (docs/math.md §6,
# "Logit store"). Kept between calls (ops/linear_logprobs/logit_store.py).
DEFAULT_LOGIT_STORE_MIB = 512


def env_logit_store_elements() -> int:
    """fp32 logits the grad-in-forward loss may keep from its forward for its backward, from GRO_LOGIT_STORE_MIB
    (MiB, default DEFAULT_LOGIT_STORE_MIB; 0 turns the store off); a value that is not an int >= 0 raises."""
    mib = _env_int("GRO_LOGIT_STORE_MIB", 0, "an int >= 0 (MiB of fp32 logits; 0: no store)")
    return (DEFAULT_LOGIT_STORE_MIB if mib is None else mib) << 18
