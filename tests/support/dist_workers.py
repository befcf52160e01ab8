"""Rank-side code of the distributed tests (run by dist_harness.run_ranks in spawned processes), and the
input builders that the single-process references in tests/distributed/ share with it.

Every rank builds the same inputs from fixed seeds (hidden states and targets are replicated in
vocabulary parallelism) and keeps the rows [start, end) of each head given by SHARDS.
"""

from types import SimpleNamespace

import torch
import torch.distributed as dist

import gro_kernels as gk

V = 103
# Uneven contiguous shards of [0, V) per world size.
SHARDS = {1: [0, V], 2: [0, 30, V], 3: [0, 20, 61, V]}
# Targets placed on both edges of every shard, so every rank owns some.
EDGE_TARGETS = (0, 19, 20, 29, 30, 60, 61, 102)


def shard(world, rank):
    bounds = SHARDS[world]
    return bounds[rank], bounds[rank + 1]


def lp_inputs(n=45, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (n,), generator=g)
    targets[: len(EDGE_TARGETS)] = torch.tensor(EDGE_TARGETS)
    targets[[9, 17]] = -100
    return SimpleNamespace(hidden=torch.randn(n, h, generator=g), weight=torch.randn(V, h, generator=g) / h**0.5,
                           bias=torch.randn(V, generator=g) * 0.5, targets=targets,
                           g_lp=torch.randn(n, generator=g), g_ent=torch.randn(n, generator=g),
                           ref_hidden=torch.randn(n, h + 3, generator=g),
                           ref_weight=torch.randn(V, h + 3, generator=g) / h**0.5,
                           ref_bias=torch.randn(V, generator=g) * 0.5, mask=torch.rand(n, generator=g) > 0.2)


def gro_inputs(seed=1, b=4, t=9, h=16):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (b, t), generator=g)
    targets[0, : len(EDGE_TARGETS)] = torch.tensor(EDGE_TARGETS)
    targets[1, 6:] = -100
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[2, 7:] = False
    return SimpleNamespace(hidden=torch.randn(b, t, h, generator=g), weight=torch.randn(V, h, generator=g) / h**0.5,
                           ref_hidden=torch.randn(b, t, h, generator=g),
                           ref_weight=torch.randn(V, h, generator=g) / h**0.5, targets=targets, mask=mask,
                           rewards=torch.tensor([1.0, 0.0, 0.5, 2.0]),
                           old_logprobs=-4.6 + 0.3 * torch.randn(b, t, generator=g))


# Options of the gro_loss cases: (preset, keyword options). The batch tensors come from gro_inputs.
GRO_CASES = {
    "grpo_ref_head_entropy": ("grpo", dict(beta=0.04, entropy_coef=0.01, use_ref_head=True)),
    "dapo_exact_kl": ("dapo", dict(beta=0.1, kl_estimator="exact", use_ref_head=True, temperature=0.8)),
    "dpo": ("dpo", dict(beta=0.1, use_ref_head=True, pair_ids=torch.tensor([0, 0, 1, 1]),
                        chosen=torch.tensor([True, False, False, True]))),
}


def gro_call(x, weight, ref_weight, preset, options, **extra):
    """gro_loss on the batch x with the given (full or shard) heads; returns GROOutput."""
    options = dict(options)
    use_ref = options.pop("use_ref_head", False)
    batch = dict(mask=x.mask, old_logprobs=x.old_logprobs)
    if preset != "dpo":
        batch.update(rewards=x.rewards, group_size=2)
    if use_ref:
        batch.update(ref_hidden=x.ref_hidden, ref_weight=ref_weight)
    return gk.gro_loss(x.hidden_leaf, weight, x.targets, preset=preset, **batch, **options, **extra)


def _leaf(t, requires_grad=True):
    return t.detach().clone().requires_grad_(requires_grad)


def _lp_case(rank, world, *, backend="chunked", with_entropy=True, bias=True, temperature=0.7, chunk_size=8,
             batch_shape=None, frozen_head=False):
    x = lp_inputs()
    start, end = shard(world, rank)
    h = _leaf(x.hidden)
    w = _leaf(x.weight[start:end], not frozen_head)
    b = _leaf(x.bias[start:end]) if bias else None
    hidden, targets = h, x.targets
    if batch_shape is not None:
        hidden, targets = h.reshape(*batch_shape, -1), x.targets.reshape(batch_shape)
    out = gk.linear_logprobs(hidden, w, targets, b, temperature=temperature, return_entropy=with_entropy,
                             backend=backend, chunk_size=chunk_size, process_group=dist.group.WORLD,
                             vocab_start=start)
    lp, ent = out if with_entropy else (out, None)
    lp, ent = lp.reshape(-1), None if ent is None else ent.reshape(-1)
    objective = (lp * x.g_lp).sum() + ((ent * x.g_ent).sum() if with_entropy else 0.0)
    objective.backward()
    return dict(lp=lp.detach(), ent=None if ent is None else ent.detach(), dh=h.grad, dw=w.grad,
                db=None if b is None else b.grad)


def _kl_case(rank, world, *, bias=True, mask=True, temperature=0.8, chunk_size=7):
    x = lp_inputs()
    start, end = shard(world, rank)
    h, w = _leaf(x.hidden), _leaf(x.weight[start:end])
    b = _leaf(x.bias[start:end]) if bias else None
    kl = gk.exact_kl(h, w, x.ref_hidden, x.ref_weight[start:end], bias=b,
                     ref_bias=x.ref_bias[start:end] if bias else None, mask=x.mask if mask else None,
                     temperature=temperature, chunk_size=chunk_size, process_group=dist.group.WORLD,
                     vocab_start=start)
    (kl * x.g_lp).sum().backward()
    return dict(kl=kl.detach(), dh=h.grad, dw=w.grad, db=None if b is None else b.grad)


def _gro_case(rank, world, name):
    preset, options = GRO_CASES[name]
    x = gro_inputs()
    start, end = shard(world, rank)
    x.hidden_leaf = _leaf(x.hidden)
    w = _leaf(x.weight[start:end])
    out = gro_call(x, w, x.ref_weight[start:end], preset, options, process_group=dist.group.WORLD,
                   vocab_start=start)
    (out.loss * 1.7).backward()
    return dict(loss=out.loss.detach(), metrics={k: m.detach() for k, m in out.metrics.items()},
                lp=out.logprobs, dh=x.hidden_leaf.grad, dw=w.grad)


LP_CASES = {
    "chunked_native": dict(),
    "chunked_torch_epilogue": dict(env={"GRO_DISABLE_NATIVE": "1"}),
    "naive": dict(backend="naive"),
    "batch_shape_default_chunk": dict(batch_shape=(3, 15), chunk_size=None, temperature=1.0),
    "no_entropy_no_bias_frozen_head": dict(with_entropy=False, bias=False, frozen_head=True),
}


def vocab_parallel_cases(rank, world):
    """Every vocab-parallel value/gradient case on this rank: {case name: dict of tensors}."""
    import os

    results = {}
    for name, options in LP_CASES.items():
        options = dict(options)
        env = options.pop("env", {})
        os.environ.update(env)
        results["lp/" + name] = _lp_case(rank, world, **options)
        for key in env:
            del os.environ[key]
    results["kl/bias_mask"] = _kl_case(rank, world)
    results["kl/plain"] = _kl_case(rank, world, bias=False, mask=False, temperature=1.0, chunk_size=None)
    for name in GRO_CASES:
        results["gro/" + name] = _gro_case(rank, world, name)
    return results


def _attempt(fn):
    try:
        fn()
    except (ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def bad_input_cases(rank, world):
    """Each bad call on this rank -> the error it raised (every rank must raise, none may hang)."""
    x = lp_inputs()
    start, end = shard(world, rank)
    group = dist.group.WORLD
    last = rank == world - 1

    def call(weight, vocab_start, targets=x.targets, **kw):
        return gk.linear_logprobs(x.hidden, weight, targets, process_group=group, vocab_start=vocab_start, **kw)

    out = {
        # the last shard starts one id late: ids [end of the previous shard] is nobody's
        "gap": _attempt(lambda: call(x.weight[start + last:end], start + last)),
        # rank 1 starts one id early: overlaps rank 0
        "overlap": _attempt(lambda: call(x.weight[start - (rank == 1):end], start - (rank == 1))),
        "not_from_zero": _attempt(lambda: call(x.weight[start:end], start + 1)),
        "empty_shard": _attempt(lambda: call(x.weight[start:start + (rank != 0) * (end - start)], start)),
        "bad_dtype_on_rank_1": _attempt(lambda: call(x.weight[start:end].double() if rank == 1 else
                                                     x.weight[start:end], start)),
        "negative_vocab_start_on_last": _attempt(lambda: call(x.weight[start:end], -1 if last else start)),
        "target_out_of_range": _attempt(lambda: call(x.weight[start:end], start,
                                                     targets=torch.where(x.targets == 102, V, x.targets))),
        "targets_differ": _attempt(lambda: call(x.weight[start:end], start, targets=x.targets.roll(rank))),
        "grad_in_forward": _attempt(lambda: gk.gro_loss(x.hidden.reshape(5, 9, -1), x.weight[start:end],
                                                        x.targets.reshape(5, 9), preset="bnpo",
                                                        advantages=torch.ones(5), grad_in_forward=True,
                                                        process_group=group, vocab_start=start)),
    }
    # The group is still in step after all those errors: a good call works.
    out["after"] = call(x.weight[start:end], start)
    return out


def all_masked_case(rank, world):
    """Every target ignored: zeros, zero gradients, and every rank still joins both collectives."""
    x = lp_inputs()
    start, end = shard(world, rank)
    h, w = _leaf(x.hidden), _leaf(x.weight[start:end])
    lp, ent = gk.linear_logprobs(h, w, torch.full_like(x.targets, -100), return_entropy=True,
                                 process_group=dist.group.WORLD, vocab_start=start)
    (lp.sum() + ent.sum()).backward()
    return dict(lp=lp.detach(), ent=ent.detach(), dh=h.grad, dw=w.grad)


def triton_cases(rank, world):
    """The Triton backend on a shard (run under TRITON_INTERPRET=1 by the interpreter-marked tests)."""
    return {"entropy_bias": _lp_case(rank, world, backend="triton"),
            "no_entropy": _lp_case(rank, world, backend="triton", with_entropy=False, bias=False, temperature=1.0)}


# ----- data-parallel trainer and FSDP2 -------------------------------------------------------------

PROMPTS = ["31415", "27182", "14142", "17320", "22360", "24494", "26457", "28284", "30000", "31622", "33166",
           "34641"]


def digit_reward(prompt, completion, **fields):
    return completion.count("7") + 0.25 * completion.count("1") - 0.05 * len(completion)


def fake_sampler(masked_prompts):
    """A deterministic stand-in for model.generate: completion j of a prompt is a function of the prompt's
    ids (so one process and P ranks sample the same rows); prompts p with masked_prompts(p, n) get an
    all-masked completion."""
    from gro_kernels.trainer import rollout as ro

    def sample(model, tokenizer, prompt_ids, num_generations, *, temperature, top_p, max_new_tokens, greedy=False):
        eos, pad = ro.special_ids(tokenizer)
        ids, mask = ro.pad_left(prompt_ids, pad, next(model.parameters()).device)
        digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
        rows, index = [], []
        for p, prompt in enumerate(prompt_ids):
            for j in range(num_generations):
                seed = sum(prompt) * 7 + j * 13
                toks = [digits[(seed + 3 * t + t * t * j) % 10] for t in range(max_new_tokens)]
                toks[1 + seed % (max_new_tokens - 1)] = eos
                rows.append(toks)
                index.append(p)
        out = ro.assemble(tokenizer, ids.repeat_interleave(num_generations, 0),
                          mask.repeat_interleave(num_generations, 0), torch.tensor(rows), index)
        for r, p in enumerate(index):
            if masked_prompts(p, len(prompt_ids)):
                out.completion_mask[r] = 0.0
                out.attention_mask[r, out.prompt_width:] = 0
        return out

    return sample


def trainer_gradients(preset, prompts_per_step, output_dir, masked_prompts=lambda p, n: False):
    """One GROTrainer step on the tiny model; the gradient it applied, by parameter name.
    preset "name:scale" runs preset `name` with loss_options scale_rewards=scale."""
    from gro_kernels.trainer import GROConfig, GROTrainer
    from gro_kernels.trainer.tiny import char_tokenizer, tiny_llama

    preset, _, scale = preset.partition(":")

    tok = char_tokenizer("0123456789")
    torch.manual_seed(0)
    model = tiny_llama(tok, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    cfg = GROConfig(preset=preset, prompts_per_step=prompts_per_step, num_generations=2, micro_batch_size=3,
                    max_new_tokens=6, max_steps=1, learning_rate=1e-3, output_dir=str(output_dir), plot=False,
                    progress_bar=False, save_steps=0, max_grad_norm=None,
                    loss_options={"scale_rewards": scale} if scale else {})
    trainer = GROTrainer(model, None, tok, digit_reward, cfg, PROMPTS)
    trainer.sample_fn = fake_sampler(masked_prompts)
    trainer.train_step()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def ddp_trainer_case(rank, world, preset, mask_last_rank, output_dir):
    """The trainer under DDP (this process group): rank `world - 1` may get an all-masked batch."""
    masked = (lambda p, n: True) if mask_last_rank and rank == world - 1 else (lambda p, n: False)
    return trainer_gradients(preset, 2, f"{output_dir}/rank{rank}", masked)


def _tiny_batch(seed, rows, width=7):
    from gro_kernels.trainer.tiny import char_tokenizer

    g = torch.Generator().manual_seed(seed)
    vocab = len(char_tokenizer("0123456789"))
    ids = torch.randint(4, vocab, (rows, width), generator=g)
    targets = torch.cat([ids[:, 1:], torch.full((rows, 1), -100)], 1)
    targets[0, 4:] = -100
    return ids, targets, torch.randn(rows, generator=g)


def fsdp2_case(rank, world):
    """fully_shard decoder layers + GROModelLoss as root: each rank its own rows; returns the full gradient
    (gathered from the shards) and the error of the unsupported layout (the head sharded on its own)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from gro_kernels.trainer.tiny import char_tokenizer, tiny_llama

    mesh = init_device_mesh("cpu", (world,))
    ids, targets, adv = _tiny_batch(rank, 3)
    out = {}
    for layout in ("supported", "head_alone"):
        torch.manual_seed(0)
        model = tiny_llama(char_tokenizer("0123456789"), hidden_size=32, intermediate_size=64, num_hidden_layers=2)
        loss_module = gk.GROModelLoss(model, "dapo", global_token_count=fsdp_token_count(world))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        if layout == "head_alone":
            fully_shard(model.lm_head, mesh=mesh)
        fully_shard(loss_module, mesh=mesh)
        out[layout + "_grad_in_forward"] = loss_module._grad_in_forward(None)
        try:
            result = loss_module(ids, targets=targets, advantages=adv)
        except RuntimeError as exc:
            out[layout] = str(exc)
            continue
        (result.loss * world).backward()  # FSDP2 averages gradients over ranks; the loss is this rank's share
        out[layout] = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    return out


def fsdp_token_count(world):
    """token_mean denominator of the whole data-parallel batch (every rank's valid targets)."""
    return float(sum(int((_tiny_batch(r, 3)[1] != -100).sum()) for r in range(world)))


PACKED_LENGTHS = (9, 6, 7, 9)  # the rows of gro_inputs() cut where their ignored / masked tail starts


def packed_view(x):
    """gro_inputs() as a packed batch: the first PACKED_LENGTHS[i] tokens of row i, and its cu_seqlens."""
    keep = torch.arange(x.targets.shape[1])[None, :] < torch.tensor(PACKED_LENGTHS)[:, None]
    cu = torch.tensor((0,) + tuple(torch.tensor(PACKED_LENGTHS).cumsum(0).tolist()))
    return keep, cu


def packed_gro_case(rank, world):
    """grpo with a streamed reference head, packed (cu_seqlens) on a vocabulary-sharded head."""
    x = gro_inputs()
    keep, cu = packed_view(x)
    start, end = shard(world, rank)
    hidden = _leaf(x.hidden[keep])
    w = _leaf(x.weight[start:end])
    out = gk.gro_loss(hidden, w, x.targets[keep], preset="grpo", mask=x.mask[keep], old_logprobs=x.old_logprobs[keep],
                      rewards=x.rewards, group_size=2, beta=0.04, ref_hidden=x.ref_hidden[keep],
                      ref_weight=x.ref_weight[start:end], cu_seqlens=cu, process_group=dist.group.WORLD,
                      vocab_start=start)
    (out.loss * 1.7).backward()
    return dict(loss=out.loss.detach(), lp=out.logprobs, dh=hidden.grad, dw=w.grad)
