"""Input checks of the loss layer: shapes and dtypes always; values (NaN rewards, group and pair
structure) only eagerly (_validate.checking_values()), since they read tensor data."""

import math

import torch

from .. import _validate as v


def row_tensor(name, t, batch, *, floating=True, device=None):
    """A per-row tensor [B]; None passes through."""
    if t is None:
        return None
    v.require_tensor(name, t)
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
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (one value per token), got {v.describe(t)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {v.describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {v.describe(t)}")
    return t


def bool_tensor(name, t, shape):
    if t is None:
        return None
    v.require_tensor(name, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {v.describe(t)}")
    if t.dtype != torch.bool and t.is_floating_point():
        if v.checking_values() and bool(((t != 0) & (t != 1)).any()):
            raise ValueError(f"{name} must be bool or 0/1 valued, got other values ({v.describe(t)})")
    return t.to(torch.bool)


def advantages_tensor(advantages, batch, shape):
    v.require_tensor("advantages", advantages)
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
        bad = bad.reshape(bad.shape[0], -1).any(1)
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
    if isinstance(group_size, int) and not isinstance(group_size, bool):
        if group_size <= 0 or batch % group_size:
            raise ValueError(f"group_size={group_size} must be > 0 and divide the batch of {batch} rows "
                             f"(pass a list of sizes or group_ids for ragged groups)")
        return torch.arange(batch, device=device) // group_size, batch // group_size
    sizes = torch.as_tensor(group_size, dtype=torch.int64)
    if sizes.dim() != 1 or bool((sizes <= 0).any()) or int(sizes.sum()) != batch:
        raise ValueError(f"group_size as sizes must be positive and sum to the batch of {batch} rows, "
                         f"got {sizes.tolist()}")
    index = torch.repeat_interleave(torch.arange(sizes.shape[0]), sizes).to(device)
    return index, sizes.shape[0]


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
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
