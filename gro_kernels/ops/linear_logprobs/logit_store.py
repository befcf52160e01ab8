"""The logit store of the grad-in-forward loss with the fused bf16 CPU head (docs/math.md §6, "Logit store").

The forward writes the fp32 logit tiles of the head's first vocabulary blocks into it, and the backward, run in the
same call, reads them instead of recomputing them. Layout [blocks, panels, 64, 64]: block b (64 vocabulary entries)
and token panel p (64 tokens) at [b, p], vocab-major as the fused head's tiles (python_api/cpu_fused_head.cpp).

The memory is kept between calls and reused (`borrowed`): a training loop calls the loss every step with similar
shapes, and on the machines measured fresh memory costs as much as the store saves (first touch of 256 MiB: 67 ms
in 4 KiB pages, 28-180 ms in huge pages depending on the kernel's compaction, 20 ms to rewrite memory already
touched). `release()` (public: gro_kernels.release_logit_store) gives it back.
"""

import contextlib
import threading

import torch

from ..common.chunk_buffer import fused_head_available
from ..common.tiled_grads import backward_tiles

STORE_TILE = 64  # tokens per panel and vocabulary entries per block (logprob_tiles.h kTileTokens)

_lock = threading.Lock()
_cached = []  # at most one flat fp32 buffer, absent while a call holds it


def store_shape(hidden, weight, bias, chunk_size, budget_elements):
    """(blocks, panels) of the store for these operands within budget_elements fp32 values, or None where it
    cannot serve: no fused head, a backward of several row blocks (the store holds the whole batch's panels), or
    a budget under one block."""
    n, vocab = hidden.shape[0], weight.shape[0]
    if n == 0 or not fused_head_available(hidden, weight, bias):
        return None
    if backward_tiles(n, vocab, chunk_size, bf16_operand=True)[0] < n:  # the fused backward's row blocks
        return None
    panels = -(-n // STORE_TILE)
    blocks = min(-(-vocab // STORE_TILE), budget_elements // (panels * STORE_TILE * STORE_TILE))
    return (blocks, panels) if blocks > 0 else None


def new(hidden, weight, bias, chunk_size, budget_elements):
    """A fresh store (uninitialized; in huge pages where the kernel allows), or None (store_shape)."""
    shape = store_shape(hidden, weight, bias, chunk_size, budget_elements)
    return None if shape is None else torch.ops.gro_C.new_logit_store(*shape)


@contextlib.contextmanager
def borrowed(hidden, weight, bias, chunk_size, budget_elements):
    """The store (or None) for the duration of a call, in the kept buffer when it is large enough. A call made
    while another holds the buffer (another thread) gets its own; a buffer larger than the budget (lowered since)
    is dropped."""
    shape = store_shape(hidden, weight, bias, chunk_size, budget_elements)
    with _lock:
        buffer = _cached.pop() if _cached else None
    if buffer is not None and buffer.numel() > budget_elements:
        buffer = None
    if shape is None:
        if buffer is not None:
            _keep(buffer)
        yield None
        return
    need = shape[0] * shape[1] * STORE_TILE * STORE_TILE
    if buffer is None or buffer.numel() < need:
        buffer = None  # freed before the larger one is mapped
        buffer = torch.ops.gro_C.new_logit_store(*shape).view(-1)
    try:
        yield buffer[:need].view(shape[0], shape[1], STORE_TILE, STORE_TILE)
    finally:
        _keep(buffer)


def _keep(buffer):
    """Keeps the larger of buffer and the one kept (two calls that overlapped both give theirs back)."""
    with _lock:
        if not _cached or _cached[0].numel() < buffer.numel():
            _cached[:] = [buffer]


def release():
    """Frees the kept logit store (the next grad-in-forward call maps a new one)."""
    with _lock:
        _cached.clear()
