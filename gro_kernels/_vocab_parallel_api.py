"""Bodies of the vocabulary-parallel public calls (functional.linear_logprobs / exact_kl with process_group=).

Every rank validates its own inputs, then all ranks exchange their shard layout in one small collective,
so a bad shard, offset or input on any rank raises a clear error on every rank instead of leaving the
others waiting in the next collective.
"""

import torch

from . import _distributed as dist_utils
from . import _validate as v
from . import functional as F
from .ops.exact_kl import vocab_parallel as _kl_vp
from .ops.linear_logprobs import function as _lp
from .ops.linear_logprobs import vocab_parallel as _lp_vp


def _check_vocab_start(vocab_start):
    if not isinstance(vocab_start, int) or isinstance(vocab_start, bool) or vocab_start < 0:
        raise TypeError(f"vocab_start must be an int >= 0 (the first vocabulary id of this rank's shard), "
                        f"got {vocab_start!r}")


def require_group(process_group, vocab_start):
    if process_group is None:
        raise ValueError("vocab_start= is only meaningful with process_group= (the group the vocabulary is "
                         "sharded over)")
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("process_group= needs an initialized torch.distributed (init_process_group)")


def _layout(process_group, vocab_start, checked, hidden, targets, ignore_index, error):
    """Exchange the layout whether or not this rank's checks passed (see module doc)."""
    if error is None:
        try:
            _check_vocab_start(vocab_start)
        except TypeError as exc:
            error = exc
    if error is None:
        hidden, weight, targets = checked
        return dist_utils.exchange_layout(process_group, vocab_start, weight.shape[0], hidden, targets, ignore_index)
    return dist_utils.exchange_layout(process_group, None, None, hidden, None, ignore_index, local_error=error)


def linear_logprobs(hidden, weight, targets, bias, *, process_group, vocab_start, temperature, ignore_index,
                    return_entropy, backend, chunk_size):
    """functional.linear_logprobs on a vocabulary shard: weight [V_r, H] (bias [V_r]) holds ids
    [vocab_start, vocab_start + V_r); targets are global ids; hidden and targets replicated."""
    require_group(process_group, vocab_start)
    checked, error = None, None
    try:
        hidden_f, weight, targets_f, bias, lead_shape = F._check_linear_inputs(hidden, weight, targets, bias)
        v.require_positive_finite("temperature", temperature)
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        F._check_chunk_size(chunk_size)
        resolved = _lp.resolve_backend(backend, hidden_f.device)
        checked = (hidden_f, weight, targets_f)
    except (TypeError, ValueError) as exc:
        error = exc
    shard = _layout(process_group, vocab_start, checked, hidden, targets, ignore_index, error)
    logprobs, entropy = _lp_vp.linear_logprobs(hidden_f, weight, bias, targets_f, shard, temperature=temperature,
                                               ignore_index=ignore_index, with_entropy=return_entropy,
                                               chunk_size=chunk_size, backend=resolved)
    logprobs = logprobs.reshape(lead_shape)
    return (logprobs, entropy.reshape(lead_shape)) if return_entropy else logprobs


def exact_kl(hidden, weight, ref_hidden, ref_weight, *, bias, ref_bias, mask, temperature, chunk_size,
             process_group, vocab_start):
    """functional.exact_kl with both heads sharded the same way: weight [V_r, H], ref_weight [V_r, H']."""
    require_group(process_group, vocab_start)
    checked, error = None, None
    try:
        hidden_f, weight, bias, ref_f, ref_weight, ref_bias, mask_f, lead_shape = F._check_kl_inputs(
            hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size)
        checked = (hidden_f, weight, torch.zeros(0, dtype=torch.int64, device=hidden_f.device))
    except (TypeError, ValueError) as exc:
        error = exc
    shard = _layout(process_group, vocab_start, checked, hidden, None, -100, error)
    kl = _kl_vp.exact_kl(hidden_f, weight, bias, ref_f, ref_weight, ref_bias, mask_f, shard, temperature=temperature,
                         chunk_size=chunk_size)
    return kl.reshape(lead_shape)
