"""GRO_CHUNK_SIZE as the chunk loops read it (the public calls check it first, with the same rule)."""

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
