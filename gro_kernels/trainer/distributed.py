"""Data-parallel training under torchrun (DDP over gloo on CPU, NCCL on GPU), exact w.r.t. one process.

- Each rank samples its own prompts: rank r takes items [r*k, (r+1)*k) of the step's P*k items of the
  seeded prompt stream, so the union over ranks is the batch one process with P*k prompts would see.
- Advantages are computed on the union of every rank's rollout rows (gather_rows), so batch-wide
  statistics (REINFORCE++ whitening, scale_rewards="batch") are global; KTO's z0 is a global mean.
- The loss runs inside DDP's forward (gro_kernels.GROModelLoss: decoder + fused loss in one module).
- The denominators of a mini-batch (online rows and tokens, offline rows) are summed over ranks with one
  all_reduce per optimizer step, so each rank's loss is its share of the global loss; DDP averages
  gradients over ranks, so the loss is scaled by P before backward. Then the summed gradient, the
  clipped norm and the AdamW step equal those of one process on the union batch.
- Only the last micro-batch of a mini-batch synchronizes (DDP no_sync before), and a rank whose rows are
  all masked still runs its forward/backward: every rank joins every collective.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

import gro_kernels


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1


def detect(device) -> DataParallel:
    """The default process group's rank and size. Under torchrun (WORLD_SIZE > 1 in the environment) the
    group is initialized here if the caller has not: gloo for a CPU model, NCCL for a CUDA one (place the
    model on cuda:LOCAL_RANK first)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if dist.is_available() and launched and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return DataParallel(dist.get_rank(), dist.get_world_size())
    return DataParallel()


def loss_module(model, dp: DataParallel, **options):
    """GROModelLoss(model, **options); DDP-wrapped (parameters broadcast from rank 0) when data-parallel."""
    module = gro_kernels.GROModelLoss(model, **options)
    if not dp.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def rank_slice(indices, dp: DataParallel):
    """This rank's share of the step's world-wide items."""
    k = len(indices) // dp.world
    return indices[dp.rank * k:(dp.rank + 1) * k]


def global_normalizers(norms: dict, dp: DataParallel, device) -> dict:
    """The mini-batch denominators summed over ranks (one all_reduce)."""
    if not dp.enabled:
        return norms
    keys = ("online_rows", "online_tokens", "offline_rows")
    total = torch.tensor([float(norms[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    out = dict(zip(keys, total.tolist()))
    return dict(out, online_rows=int(out["online_rows"]), offline_rows=int(out["offline_rows"]))


def every_rank(flag: bool, dp: DataParallel, device) -> bool:
    """True when `flag` holds on every rank (one all_reduce); ranks then take the same branch."""
    if not dp.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def sync_context(module, last: bool):
    """DDP's no_sync for all but the last micro-batch of a mini-batch (gradients accumulate locally)."""
    return contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()


def gather_rows(tensors: dict, dp: DataParallel) -> tuple:
    """(union, counts): each tensor [B_r] or [B_r, T_r] concatenated over ranks in rank order ([B, T] ones
    right-padded with zeros to the widest T), and every rank's row count B_r.

    Batch-wide statistics (REINFORCE++ whitening, scale_rewards="batch") computed on the union equal the
    single-process ones, whatever the ranks' batch sizes and widths."""
    first = next(iter(tensors.values()))
    device, rows = first.device, first.shape[0]
    width = max([t.shape[1] for t in tensors.values() if t.dim() == 2], default=0)
    sizes = torch.tensor([rows, width], dtype=torch.long, device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(dp.world)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s[0]) for s in all_sizes]
    widest, most = max(int(s[1]) for s in all_sizes), max(counts)
    union = {}
    for name, t in tensors.items():
        padded = t.new_zeros((most,) + ((widest,) if t.dim() == 2 else ()))
        padded[(slice(0, rows),) + ((slice(0, t.shape[1]),) if t.dim() == 2 else ())] = t
        parts = [torch.empty_like(padded) for _ in range(dp.world)]
        dist.all_gather(parts, padded)
        union[name] = torch.cat([part[:n] for part, n in zip(parts, counts)])
    return union, counts
