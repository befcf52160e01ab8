"""Run a test function on P spawned processes joined in a gloo process group, with a hard timeout.

`run_ranks(world, "module:function", ...)` starts `world` fresh interpreters (spawn), each calling
function(rank, world, *args) inside torch.distributed (gloo, file:// rendezvous in a temp dir). Each
rank's return value (tensors, numbers, strings) comes back through torch.save. A rank that raises
reports its traceback; a rank still running at the deadline is killed together with the others, and
the call fails naming the ranks that hung. Collectives also get the same timeout, so a rank left
waiting in a collective errors out instead of hanging.
"""

import datetime
import importlib
import multiprocessing
import os
import tempfile
import time
import traceback

import torch

# Spawned ranks share 2 cores: one intra-op thread each keeps them from oversubscribing the machine.
_RANK_ENV = {"OMP_NUM_THREADS": "1"}


class RankFailure(AssertionError):
    pass


def _entry(rank, world, tmp, target, args, env, timeout):
    out = os.path.join(tmp, f"rank{rank}.pt")
    try:
        os.environ.update(env)
        torch.set_num_threads(1)
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=timeout))
        module, name = target.split(":")
        result = getattr(importlib.import_module(module), name)(rank, world, *args)
        dist.destroy_process_group()
        torch.save({"result": result}, out)
    except BaseException:  # noqa: BLE001  (report everything to the parent)
        torch.save({"error": traceback.format_exc()}, out)


def run_ranks(world, target, *args, timeout=120, env=None):
    """Returns [result of rank 0, ..., rank world-1]; raises RankFailure on an error or a hang."""
    ctx = multiprocessing.get_context("spawn")
    child_env = dict(_RANK_ENV, **(env or {}))
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_entry, args=(r, world, tmp, target, args, child_env, timeout), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        if hung:
            raise RankFailure(f"{target}: rank(s) {hung} still running after {timeout} s (killed)")
        reports = []
        for r in range(world):
            path = os.path.join(tmp, f"rank{r}.pt")
            if not os.path.exists(path):
                raise RankFailure(f"{target}: rank {r} exited with code {procs[r].exitcode} and no report")
            reports.append(torch.load(path, weights_only=False))
    errors = [f"rank {r}:\n{rep['error']}" for r, rep in enumerate(reports) if "error" in rep]
    if errors:
        raise RankFailure(f"{target} failed:\n" + "\n".join(errors))
    return [rep["result"] for rep in reports]
