"""backend="triton" on a vocabulary shard, under the interpreter, on 2 spawned gloo ranks (the ranks
inherit TRITON_INTERPRET=1) vs the fp64 full-vocabulary oracle: values, dhidden, dW/db shards."""

import pytest
import torch

from tests.support import dist_workers as W
from tests.support.dist_harness import run_ranks
from tests.support.helpers import assert_close_rel, oracle

pytestmark = pytest.mark.interpreter


def test_triton_vocab_parallel_matches_full_vocab():
    world = 2
    results = run_ranks(world, "tests.support.dist_workers:triton_cases", timeout=150)
    x = W.lp_inputs()
    for case, bias, temperature, with_entropy in (("entropy_bias", x.bias, 0.7, True),
                                                  ("no_entropy", None, 1.0, False)):
        g_ent = x.g_ent if with_entropy else torch.zeros_like(x.g_ent)
        lp, ent, grads = oracle(x.hidden, x.weight, x.targets, bias, x.g_lp, g_ent, temperature=temperature)
        for rank in range(world):
            start, end = W.shard(world, rank)
            got = results[rank][case]
            want = dict(lp=lp, dh=grads[0], dw=grads[1][start:end])
            if with_entropy:
                want.update(ent=ent, db=grads[2][start:end])
            for key, expected in want.items():
                assert_close_rel(got[key], expected, rtol=2e-5, atol=2e-5, what=f"triton {case} rank {rank} {key}")
