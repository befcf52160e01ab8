"""patch_causal_lm under FSDP2 (fully_shard) on 2 gloo ranks: the same logprobs and the unsharded
gradients, also with the LM head sharded on its own (the head runs inside its module's call, so FSDP2's
hooks gather its weight and reduce its gradient)."""

import pytest
import torch

pytest.importorskip("transformers")

from gro_kernels.integrations.hf import patch_causal_lm  # noqa: E402
from tests.integrations import fsdp_workers as W  # noqa: E402
from tests.integrations.tiny_models import tiny_causal_lm  # noqa: E402
from tests.support.dist_harness import run_ranks  # noqa: E402


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def test_fully_shard_gives_the_unsharded_gradients():
    world = 2
    results = run_ranks(world, "tests.integrations.fsdp_workers:patched_fsdp2_case", timeout=240)
    model = patch_causal_lm(tiny_causal_lm(W.FAMILY).train())
    total, log_probs = 0.0, []
    for rank in range(world):
        ids, mask, labels = W.rank_batch(rank)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        total = total + W.objective(out, rank)
        log_probs.append(out.log_probs.detach())
    total.backward()
    reference = {name: p.grad for name, p in model.named_parameters()}
    for rank, got in enumerate(results):
        for layout, result in got.items():
            assert result["sharded"] == "DTensor", layout  # the head's weight really is sharded outside forward
            assert (result["log_probs"] - log_probs[rank]).abs().max() <= 1e-5, (rank, layout)
            assert result["grads"].keys() == reference.keys()
            for name, grad in reference.items():
                assert _rel(result["grads"][name], grad) <= 1e-5, (rank, layout, name)
    assert torch.count_nonzero(reference["lm_head.weight"]) > 0
