"""Vocabulary-parallel linear_logprobs / exact_kl / gro_loss on 2 and 3 spawned gloo ranks vs the
single-process full-vocabulary results: values, dhidden, and each rank's dweight/dbias shard against
the matching rows of the full gradient. Uneven shards; targets on both edges of every shard; ignored
rows. Every spawn has a hard timeout (dist_harness), so a hang fails the test instead of blocking CI.
"""

import pytest
import torch

from tests.support import dist_workers as W
import gro_kernels as gk
from tests.support.dist_harness import run_ranks
from gro_kernels.ops.exact_kl.naive import exact_kl_naive
from tests.support.helpers import assert_close_rel, error_mentions, oracle

TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module", params=[2, 3], ids=["P2", "P3"])
def vp(request):
    world = request.param
    return world, run_ranks(world, "tests.support.dist_workers:vocab_parallel_cases", timeout=150)


def _check_rank(got, want, world, rank, what):
    """got: one rank's dict; want: full-vocabulary dict (dw/db full, sliced here to the rank's shard)."""
    start, end = W.shard(world, rank)
    for key, expected in want.items():
        if expected is None:
            assert got[key] is None, f"{what} rank {rank}: {key} should be None"
            continue
        if key in ("dw", "db"):
            expected = expected[start:end]
        assert got[key].shape == expected.shape, f"{what} rank {rank}: {key} shape {got[key].shape}"
        assert_close_rel(got[key], expected, what=f"{what} rank {rank} {key}", **TOL)


@pytest.mark.parametrize("case", list(W.LP_CASES))
def test_linear_logprobs_matches_full_vocab(vp, case):
    world, results = vp
    options = W.LP_CASES[case]
    x = W.lp_inputs()
    with_entropy = options.get("with_entropy", True)
    bias = x.bias if options.get("bias", True) else None
    g_ent = x.g_ent if with_entropy else torch.zeros_like(x.g_ent)
    lp, ent, grads = oracle(x.hidden, x.weight, x.targets, bias, x.g_lp, g_ent,
                            temperature=options.get("temperature", 0.7))
    want = dict(lp=lp, ent=ent if with_entropy else None, dh=grads[0],
                dw=None if options.get("frozen_head") else grads[1], db=grads[2] if bias is not None else None)
    for rank in range(world):
        _check_rank(results[rank]["lp/" + case], want, world, rank, f"P={world} {case}")


@pytest.mark.parametrize("case", ["bias_mask", "plain"])
def test_exact_kl_matches_full_vocab(vp, case):
    world, results = vp
    x = W.lp_inputs()
    full = case == "bias_mask"
    leaves = [t.double().requires_grad_() for t in (x.hidden, x.weight, x.bias)]
    kl = exact_kl_naive(leaves[0], leaves[1], x.ref_hidden.double(), x.ref_weight.double(),
                        leaves[2] if full else None, x.ref_bias.double() if full else None,
                        temperature=0.8 if full else 1.0, mask=x.mask if full else None)
    grads = torch.autograd.grad((kl * x.g_lp.double()).sum(), leaves, allow_unused=True)
    want = dict(kl=kl.detach(), dh=grads[0], dw=grads[1], db=grads[2] if full else None)
    for rank in range(world):
        _check_rank(results[rank]["kl/" + case], want, world, rank, f"P={world} exact_kl {case}")


@pytest.mark.parametrize("case", list(W.GRO_CASES))
def test_gro_loss_matches_single_process(vp, case):
    world, results = vp
    preset, options = W.GRO_CASES[case]
    x = W.gro_inputs()
    x.hidden_leaf = x.hidden.clone().requires_grad_()
    w = x.weight.clone().requires_grad_()
    out = W.gro_call(x, w, x.ref_weight, preset, options)
    (out.loss * 1.7).backward()
    want = dict(loss=out.loss.detach(), lp=out.logprobs, dh=x.hidden_leaf.grad, dw=w.grad)
    for rank in range(world):
        got = results[rank]["gro/" + case]
        _check_rank(got, want, world, rank, f"P={world} gro_loss {case}")
        assert got["metrics"].keys() == out.metrics.keys()
        for name, value in out.metrics.items():
            assert_close_rel(got["metrics"][name], value, what=f"{case} metric {name}", **TOL)


# Bad call -> words every rank's error must contain (the rank at fault names its own problem; the
# others say which rank stopped the call).
BAD = {
    "gap": ["tile", "gap"],
    "overlap": ["tile", "overlap"],
    "not_from_zero": ["tile", "gap at id 0"],
    "empty_shard": ["non-empty", "rank(s) [0]"],
    "negative_vocab_start_on_last": [],
    "bad_dtype_on_rank_1": [],
    "target_out_of_range": ["[0, 103)", "got 103"],
    "targets_differ": ["same (replicated) targets"],
    "grad_in_forward": ["grad_in_forward", "process_group"],
}


@pytest.mark.parametrize("world", [2, 3])
def test_bad_inputs_raise_on_every_rank(world):
    results = run_ranks(world, "tests.support.dist_workers:bad_input_cases", timeout=120)
    for case, words in BAD.items():
        for rank, got in enumerate(results):
            message = got[case]
            assert message != "no error", f"P={world} {case}: rank {rank} raised nothing"
            for word in words:
                assert word in message, f"P={world} {case} rank {rank}: {message!r} lacks {word!r}"
    for rank, got in enumerate(results):
        for case, fault_rank, fault in (("bad_dtype_on_rank_1", 1, "TypeError: weight must have the dtype"),
                                        ("negative_vocab_start_on_last", world - 1, "TypeError: vocab_start")):
            expected = fault if rank == fault_rank else f"rank(s) [{fault_rank}] rejected their inputs"
            assert expected in got[case], f"P={world} {case} rank {rank}: {got[case]!r}"
    x = W.lp_inputs()
    expected = gk.linear_logprobs(x.hidden, x.weight, x.targets)
    for got in results:
        assert_close_rel(got["after"], expected, what="call after the errors", **TOL)


def test_all_masked_batch_joins_collectives():
    results = run_ranks(2, "tests.support.dist_workers:all_masked_case", timeout=90)
    for rank, got in enumerate(results):
        for key in ("lp", "ent", "dh", "dw"):
            assert torch.equal(got[key], torch.zeros_like(got[key])), f"rank {rank} {key} not zero"


def test_vocab_start_without_process_group():
    x = W.lp_inputs()
    with pytest.raises(ValueError) as info:
        gk.linear_logprobs(x.hidden, x.weight[:30], x.targets, vocab_start=0)
    error_mentions(info, "vocab_start", "process_group")


def test_process_group_needs_initialized_distributed():
    x = W.lp_inputs()
    if torch.distributed.is_initialized():
        pytest.fail("this test process must not have a default process group")
    with pytest.raises(RuntimeError) as info:
        gk.linear_logprobs(x.hidden, x.weight, x.targets, process_group=object(), vocab_start=0)
    error_mentions(info, "init_process_group")


# ----- data parallelism: the trainer under DDP, and FSDP2 through GROModelLoss ---------------------

# reinforce_pp (token whitening over the batch) and grpo with scale_rewards="batch": batch-wide statistics,
# which the trainer computes on the union of every rank's rows.
@pytest.mark.parametrize("world,preset,mask_last_rank", [(2, "grpo", False), (2, "dapo", True), (3, "dapo", True),
                                                         (2, "reinforce_pp", False), (3, "grpo:batch", False)],
                         ids=["P2-grpo", "P2-dapo-last-rank-all-masked", "P3-dapo-last-rank-all-masked",
                              "P2-reinforce_pp-global-whitening", "P3-grpo-batch-std"])
def test_ddp_trainer_step_equals_single_process_union_batch(world, preset, mask_last_rank, tmp_path):
    results = run_ranks(world, "tests.support.dist_workers:ddp_trainer_case", preset, mask_last_rank, str(tmp_path),
                        timeout=180)
    per_rank = 2
    masked = (lambda p, n: p >= per_rank * (world - 1)) if mask_last_rank else (lambda p, n: False)
    want = W.trainer_gradients(preset, per_rank * world, tmp_path / "single", masked)
    for rank, got in enumerate(results):
        assert got.keys() == want.keys(), f"rank {rank}: parameters with gradients differ"
        for name, expected in want.items():
            assert_close_rel(got[name], expected, rtol=1e-5, atol=1e-8, what=f"P={world} {preset} rank {rank} {name}")


def test_fsdp2_fully_shard_trains_through_gro_model_loss():
    from gro_kernels.trainer.tiny import char_tokenizer, tiny_llama

    world = 2
    results = run_ranks(world, "tests.support.dist_workers:fsdp2_case", timeout=180)
    torch.manual_seed(0)
    model = tiny_llama(char_tokenizer("0123456789"), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    batches = [W._tiny_batch(r, 3) for r in range(world)]
    ids, targets, adv = (torch.cat(parts) for parts in zip(*batches))
    loss_module = gk.GROModelLoss(model, "dapo", global_token_count=W.fsdp_token_count(world))
    loss_module(ids, targets=targets, advantages=adv).loss.backward()
    for rank, got in enumerate(results):
        assert got["supported_grad_in_forward"] is False, "grad_in_forward must be off under fully_shard"
        for name, p in model.named_parameters():
            assert_close_rel(got["supported"][name], p.grad, rtol=1e-5, atol=1e-8, what=f"FSDP2 rank {rank} {name}")
        assert "sharded DTensor" in got["head_alone"], f"rank {rank}: {got['head_alone']!r}"


def test_packed_batch_on_a_vocabulary_sharded_head():
    """cu_seqlens and process_group together: each rank's packed loss, logprobs, dhidden and dweight shard equal
    the single-process padded batch's at the real tokens."""
    world = 2
    results = run_ranks(world, "tests.support.dist_workers:packed_gro_case", timeout=120)
    x = W.gro_inputs()
    keep, _ = W.packed_view(x)
    h, w = x.hidden.clone().requires_grad_(), x.weight.clone().requires_grad_()
    out = gk.gro_loss(h, w, x.targets, preset="grpo", mask=x.mask, old_logprobs=x.old_logprobs, rewards=x.rewards,
                      group_size=2, beta=0.04, ref_hidden=x.ref_hidden, ref_weight=x.ref_weight)
    (out.loss * 1.7).backward()
    for rank in range(world):
        got, (start, end) = results[rank], W.shard(world, rank)
        assert_close_rel(got["loss"], out.loss.detach(), what=f"rank {rank} loss", **TOL)
        assert_close_rel(got["lp"], out.logprobs[keep], what=f"rank {rank} logprobs", **TOL)
        assert_close_rel(got["dh"], h.grad[keep], what=f"rank {rank} dhidden", **TOL)
        assert_close_rel(got["dw"], w.grad[start:end], what=f"rank {rank} dweight shard", **TOL)
