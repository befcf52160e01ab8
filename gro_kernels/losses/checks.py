"""Input checks of the loss layer: shapes and dtypes always; values (NaN rewards, group and pair
structure) only eagerly (_validate.checking_values()), since they read tensor data."""

import math
import numbers

import torch

from .. import _validate as v
from ..ops.common import dispatch


def row_tensor(name, t, batch, *, floating=True, device=None):
    """A per-row tensor [B]; None passes through."""
    if t is None:
        return None
    v.require_tensor(name, t)
    v.require_data(name, t)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(f"{name} must have one entry per row: shape ({batch},), got {v.describe(t)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor of shape ({batch},), got {v.describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {v.describe(t)}")
    return t


def token_tensor(name, t, shape, *, device=None):
    """A per-token floating tensor of `shape` [B, T]; None passes through."""
    if t is None:
        return None
    v.require_tensor(name, t)
    v.require_data(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (one value per token), got {v.describe(t)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {v.describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {v.describe(t)}")
    return t


def ref_hidden_tensor(t, lead_shape):
    """ref_hidden: hidden's leading shape ([B, T], or [N_total] for a packed batch) and its own width H'. Checked
    here, since the reference stream would otherwise blame targets for the mismatch."""
    if t is None:
        return None
    v.require_tensor("ref_hidden", t)
    if t.dim() != len(lead_shape) + 1 or tuple(t.shape[:-1]) != tuple(lead_shape):
        raise ValueError(f"ref_hidden must have the leading shape of hidden {tuple(lead_shape)} (plus its own "
                         f"width H'), got {v.describe(t)}")
    return t


def bool_tensor(name, t, shape):
    if t is None:
        return None
    v.require_tensor(name, t)
    v.require_data(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {v.describe(t)}")
    if t.dtype != torch.bool and t.is_floating_point():
        if v.checking_values() and bool(((t != 0) & (t != 1)).any()):
            raise ValueError(f"{name} must be bool or 0/1 valued, got other values ({v.describe(t)})")
    return t.to(torch.bool)


def advantages_tensor(advantages, batch, shape):
    v.require_tensor("advantages", advantages)
    v.require_data("advantages", advantages)
    if advantages.dim() == 1 and advantages.shape[0] == batch:
        ok = True
    else:
        ok = tuple(advantages.shape) == tuple(shape)
    if not ok:
        raise ValueError(f"advantages must have shape ({batch},) (per sequence) or {tuple(shape)} (per token) "
                         f"to match the batch, got {v.describe(advantages)}")
    if not advantages.is_floating_point():
        raise TypeError(f"advantages must be a floating tensor, got {v.describe(advantages)}")
    return advantages


def no_nan_rows(name, t, rows=None):
    """Reject NaN/inf values naming the first bad row (only rows where `rows` is true count)."""
    if t is None or not v.checking_values():
        return
    bad = ~torch.isfinite(t)
    if bad.dim() > 1:
        bad = bad.flatten(1).any(1)  # not reshape(B, -1): that cannot infer -1 for an empty batch
    if rows is not None:
        bad = bad & rows
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} must be finite; row {row} has {t[row].tolist()}")


def nonneg(name, value):
    v.require_nonnegative(name, value)


def epsilon_value(name, value):
    if value is None:
        return
    v.require_nonnegative(name, value)


def group_index(batch, group_ids, group_size, device):
    """Dense group index [B] in [0, G) and G from ids (any ints, ragged) or sizes (int G or a list)."""
    if group_ids is not None and group_size is not None:
        raise ValueError("pass either group_ids or group_size, not both")
    if group_ids is not None:
        group_ids = _uid_index(group_ids)
        v.require_tensor("group_ids", group_ids)
        if group_ids.dim() != 1 or group_ids.shape[0] != batch:
            raise ValueError(f"group_ids must give a group to every row: shape ({batch},), got "
                             f"{v.describe(group_ids)}")
        if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
            raise TypeError(f"group_ids must be an integer tensor, got {v.describe(group_ids)}")
        uniq, index = torch.unique(group_ids.to(device), return_inverse=True)
        return index, uniq.shape[0]
    if group_size is None:
        return None, 0
    sizes = _group_sizes(group_size)
    if isinstance(sizes, int):
        if sizes <= 0 or batch % sizes:
            raise ValueError(f"group_size={sizes} must be > 0 and divide the batch of {batch} rows "
                             f"(pass a list of sizes or group_ids for ragged groups)")
        return torch.arange(batch, device=device) // sizes, batch // sizes
    if sizes.dim() != 1 or bool((sizes <= 0).any()) or int(sizes.sum()) != batch:
        raise ValueError(f"group_size as sizes must be positive and sum to the batch of {batch} rows, "
                         f"got {sizes.tolist()}")
    index = torch.repeat_interleave(torch.arange(sizes.shape[0]), sizes).to(device)
    return index, sizes.shape[0]


def _uid_index(group_ids):
    """Group ids given as a list / tuple / numpy array of hashable uids (verl passes a numpy object array of uid
    strings) -> int64 ids numbered by first appearance; a tensor passes through. Only rows with equal uids share
    a group, so the numbering does not change any advantage."""
    if isinstance(group_ids, torch.Tensor) or not (isinstance(group_ids, (list, tuple)) or
                                                   type(group_ids).__module__ == "numpy"):
        return group_ids
    if getattr(group_ids, "ndim", 1) != 1:
        raise ValueError(f"group_ids as an array must be 1-D (one uid per row), got shape {group_ids.shape}")
    numbers = {}
    uids = group_ids.tolist() if hasattr(group_ids, "tolist") else list(group_ids)
    try:
        ids = [numbers.setdefault(uid, len(numbers)) for uid in uids]
    except TypeError as err:  # an unhashable uid (a list, ...)
        raise TypeError(f"group_ids uids must be hashable (str or int), got {err}") from None
    bad = [uid for uid in numbers if isinstance(uid, float) or uid is None]
    if bad:
        raise TypeError(f"group_ids uids must be str or int, got {bad[0]!r}")
    return torch.tensor(ids, dtype=torch.int64)


def _group_sizes(group_size):
    """group_size as an int, or its list of sizes as an int64 tensor. Anything else is a TypeError: a string
    would reach torch as a dtype error, and float sizes would be truncated to ints without a word."""
    if _is_int(group_size):
        return int(group_size)
    if isinstance(group_size, torch.Tensor):
        if group_size.dim() == 1 and not group_size.is_floating_point() and group_size.dtype != torch.bool:
            return group_size.to(device="cpu", dtype=torch.int64)
    elif isinstance(group_size, (list, tuple)):
        if all(_is_int(s) for s in group_size):
            return torch.tensor([int(s) for s in group_size], dtype=torch.int64).reshape(-1)
    raise TypeError(f"group_size must be an int (the size of every group) or a list of int sizes, got "
                    f"{type(group_size).__name__} {group_size!r}")


def _is_int(value) -> bool:
    """An int, numpy ints included; not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_pairs(pair_ids, chosen, offline):
    """Every pair id of an offline row appears on exactly two offline rows, exactly one chosen."""
    if not v.checking_values():
        return
    ids, ch = pair_ids[offline], chosen[offline]
    if ids.numel() == 0:
        return
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    n_chosen = torch.zeros_like(counts).index_add_(0, inverse, ch.to(counts.dtype))
    bad = (counts != 2) | (n_chosen != 1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"pair_ids: pair {int(uniq[k])} has {int(counts[k])} rows with {int(n_chosen[k])} chosen; "
                         "every pair needs exactly two rows, one chosen=True and one chosen=False")


def finite_float(name, value):
    if not v.is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def loss_ops_backend(name, t):
    """GRO_BACKEND steers the loss-layer kernels too (ops/common/dispatch.py): with "triton" they launch Triton
    kernels, so `t` (the call's anchor tensor) must be where Triton runs. Checked up front, not in a launcher."""
    if dispatch.requested_backend() == "triton":
        v.require_triton_device(name, t, "GRO_BACKEND=triton")


def count_option(name, value):
    """global_token_count / max_completion_length / num_sequences: a positive finite number, or a 0-d tensor
    (e.g. an all-reduced count, whose value is left unread: reading it would cost a host sync)."""
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must be a positive number or a one-element tensor, got {v.describe(value)}")
        return
    v.require_positive_finite(name, value)


def kto_z0_value(kto_z0):
    """KTO's reference point: a finite number or a one-element floating tensor (None: the batch estimate)."""
    if kto_z0 is None:
        return
    if isinstance(kto_z0, torch.Tensor):
        if kto_z0.numel() != 1 or not kto_z0.is_floating_point():
            raise ValueError(f"kto_z0 must be a number or a one-element floating tensor, got {v.describe(kto_z0)}")
        return
    finite_float("kto_z0", kto_z0)
