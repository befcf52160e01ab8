"""Per-rank peak memory of the vocabulary-parallel loss with P = 1, 2, 3 shards (gloo ranks on this CPU).

Each rank is its own process (spawned) holding the replicated hidden states [N, H] and targets and
its shard [V_r, H] of the LM head, and runs linear_logprobs(..., return_entropy=True,
process_group=..., vocab_start=...) forward + backward with random upstream gradients. Memory per rank,
from /proc/self (docs/testing.md, Memory): the RSS high-water mark is reset after a warm-up step, then
  total = peak RSS during the measured step - RSS before the inputs existed (inputs + gradients + work),
  extra = peak RSS during the step - RSS with the inputs in place, minus dhidden and the dW shard that
          any method must allocate (the chunk tiles and the per-token statistics).

    python -m benchmarks.bench_vocab_parallel [--tokens 4096 --hidden 256 --vocab 128256 --ranks 1,2,3]
"""

import argparse
import datetime
import json
import multiprocessing
import os
import tempfile
import time

import torch

from benchmarks import common
from benchmarks.common import rss_bytes, rss_high_water_bytes

MB = 1 << 20


def _rank(rank, world, tmp, shape, out_queue):
    import torch.distributed as dist

    import gro_kernels as gk

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=1800))
    n, h, v = shape
    bounds = [v * r // world for r in range(world + 1)]
    start, size = bounds[rank], bounds[rank + 1] - bounds[rank]
    before_inputs = rss_bytes()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    weight = (torch.randn(size, h, generator=torch.Generator().manual_seed(1 + rank)) / h**0.5).requires_grad_()

    def step():
        lp, ent = gk.linear_logprobs(hidden, weight, targets, return_entropy=True, process_group=dist.group.WORLD,
                                     vocab_start=start)
        ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()

    step()
    hidden.grad = weight.grad = None
    dist.barrier()
    with_inputs = rss_bytes()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    began = time.perf_counter()
    step()
    seconds = time.perf_counter() - began
    peak = rss_high_water_bytes()
    grads = hidden.grad.nbytes + weight.grad.nbytes
    out_queue.put(dict(P=world, rank=rank, shard=size, total_mb=(peak - before_inputs) / MB,
                       extra_mb=(peak - with_inputs - grads) / MB, weight_shard_mb=weight.nbytes / MB,
                       seconds=seconds))
    dist.barrier()
    dist.destroy_process_group()


def run(shape, world, timeout=1800):
    # glibc would keep freed blocks resident (and reuse them), hiding the step's allocations from the RSS;
    # a fixed mmap threshold returns every block over 64 KB to the OS on free, so RSS tracks live memory.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, world, tmp, shape, queue)) for r in range(world)]
        for p in procs:
            p.start()
        rows = [queue.get(timeout=timeout) for _ in range(world)]
        for p in procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
    return sorted(rows, key=lambda row: row["rank"])


def markdown(shape, rows):
    n, h, v = shape
    lines = [f"N={n} H={h} V={v} fp32, linear_logprobs + entropy fwd+bwd per rank", "",
             "| P | rank | V_r | total MB | extra MB | weight shard MB | step s |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['P']} | {r['rank']} | {r['shard']} | {r['total_mb']:.0f} | {r['extra_mb']:.0f} | "
              f"{r['weight_shard_mb']:.0f} | {r['seconds']:.1f} |" for r in rows]
    return "\n".join(lines)


def run_worlds(shape, worlds):
    rows = []
    for world in common.progress(worlds, "vocab-parallel ranks"):
        rows += run(shape, world)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--ranks", default="1,2,3")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    shape = (args.tokens, args.hidden, args.vocab)
    rows = run_worlds(shape, [int(p) for p in args.ranks.split(",")])
    print(markdown(shape, rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(shape=shape, rows=rows, torch=torch.__version__), f, indent=1)


if __name__ == "__main__":
    main()
