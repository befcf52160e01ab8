"""Rank functions for tests/integrations/test_hf_fsdp2.py (run through tests/support/dist_harness.py)."""

import torch

from tests.integrations.tiny_models import BASE, batch, tiny_causal_lm

FAMILY = "llama"


def rank_batch(rank):
    """Each rank's own rows (different seeds), with padding and prompt labels."""
    return batch(BASE["vocab_size"], b=2, t=13, seed=10 + rank)


def objective_weights(rank, shape):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def objective(out, rank):
    w_lp, w_ent = objective_weights(rank, out.log_probs.shape)
    return (out.log_probs * w_lp).sum() + (out.entropy * w_ent).sum()


def patched_fsdp2_case(rank, world):
    """patch_causal_lm, then fully_shard: decoder layers + root, and also the head sharded on its own.
    Returns each layout's full (gathered) gradients and the per-token logprobs of this rank's rows."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from gro_kernels.integrations.hf import patch_causal_lm

    mesh = init_device_mesh("cpu", (world,))
    ids, mask, labels = rank_batch(rank)
    results = {}
    for layout in ("layers_and_root", "head_alone"):
        model = patch_causal_lm(tiny_causal_lm(FAMILY).train())
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        if layout == "head_alone":
            fully_shard(model.lm_head, mesh=mesh)
        fully_shard(model, mesh=mesh)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        (objective(out, rank) * world).backward()  # FSDP2 averages gradients over ranks
        results[layout] = {
            "log_probs": out.log_probs.detach(),
            "sharded": type(model.lm_head.weight).__name__,
            "grads": {name: p.grad.full_tensor() for name, p in model.named_parameters()},
        }
    return results
