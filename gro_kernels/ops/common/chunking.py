"""GRO_CHUNK_SIZE and GRO_LOGIT_STORE_MIB as the chunk loops read them (the public calls check them first, with the
same rules)."""

import os
from typing import Optional


def env_chunk_size() -> Optional[int]:
    """Rows per chunk from GRO_CHUNK_SIZE, or None when unset; a value that is not a positive int raises."""
    raw = os.environ.get("GRO_CHUNK_SIZE")
    if not raw:
        return None
    try:
        rows = int(raw)
    except ValueError:
        rows = 0
    if rows <= 0:
        raise ValueError(f"GRO_CHUNK_SIZE must be a positive int (rows per chunk) or unset, got {raw!r}")
    return rows


# The logit store's default budget: 512 MiB of fp32 logits, all of a V 32000 head's for 4096 tokens (docs/math.md §6,
# "Logit store"). Kept between calls (ops/linear_logprobs/logit_store.py).
DEFAULT_LOGIT_STORE_MIB = 512


def env_logit_store_elements() -> int:
    """fp32 logits the grad-in-forward loss may keep from its forward for its backward, from GRO_LOGIT_STORE_MIB
    (MiB, default DEFAULT_LOGIT_STORE_MIB; 0 turns the store off); a value that is not an int >= 0 raises."""
    raw = os.environ.get("GRO_LOGIT_STORE_MIB")
    if not raw:
        return DEFAULT_LOGIT_STORE_MIB << 18
    try:
        mib = int(raw)
    except ValueError:
        mib = -1
    if mib < 0:
        raise ValueError(f"GRO_LOGIT_STORE_MIB must be an int >= 0 (MiB of fp32 logits; 0: no store) or unset, "
                         f"got {raw!r}")
    return mib << 18
