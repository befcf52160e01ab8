"""linear_logprobs benchmarks: gro-kernels vs naive, bare GEMMs and peers, forward and forward+backward.

fwd+bwd drives backward with a random upstream gradient on every token's logprob, so no method can
know its gradient in forward: the minimum is 4 GEMMs (logits, recompute, dhidden, dweight). Peers that
only implement a mean cross-entropy (torch's chunked F.linear_cross_entropy, Liger-Kernel, Cut
Cross-Entropy) are run on that loss instead, which lets them fold the gradient into the forward pass
(3 GEMMs): the comparison favours them, and the table says so.

    python -m benchmarks.bench_linear_logprobs [--quick] [--repeats 3] [--no-sweep] [--out bench_results]
"""

import argparse
import json
import os
import sys

import torch

import gro_kernels
from benchmarks import common

MAIN_SHAPES = {"S1": (4096, 1024, 32000), "S2": (4096, 256, 128256)}
SWEEP = {32000: (1024, (1024, 4096, 16384)), 128256: (256, (1024, 4096, 16384))}  # V: (H, Ns)
QUICK_MAIN = {"Q1": (512, 128, 8000)}
QUICK_SWEEP = {8000: (128, (256, 1024))}
METHODS = ("gemm", "naive", "gro", "torch_chunked_ce", "liger_ce", "cce")


def make_inputs(n, h, v, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden=(torch.randn(n, h, generator=g) * 0.5).requires_grad_(),
                weight=(torch.randn(v, h, generator=g) / h ** 0.5).requires_grad_(),
                targets=torch.randint(0, v, (n,), generator=g), upstream=torch.randn(n, generator=g))


def _peer(method):
    """The peer's loss callable, or None when it is not installed or cannot run on this device."""
    fn = _peer_loss(method)
    if fn is None:
        return None
    try:  # e.g. Liger's fused linear CE launches a Triton kernel, which needs a GPU
        h, w = torch.randn(4, 8, requires_grad=True), torch.randn(16, 8, requires_grad=True)
        fn(h, w, torch.randint(0, 16, (4,))).backward()
    except Exception:  # noqa: BLE001 - any failure means "not runnable here"
        return None
    return fn


def _peer_loss(method):
    try:
        if method == "torch_chunked_ce":
            options = torch.nn.LinearCrossEntropyOptions()
            return lambda h, w, t: torch.nn.functional.linear_cross_entropy(h, w, t, options=options)
        if method == "liger_ce":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            loss = LigerFusedLinearCrossEntropyLoss()
            return lambda h, w, t: loss(w, h, t)
        if method == "cce":
            from cut_cross_entropy import linear_cross_entropy

            return lambda h, w, t: linear_cross_entropy(h, w, t, impl="torch_compile")
    except (ImportError, AttributeError):
        return None
    raise ValueError(method)


def make_step(method, mode, x):
    """A zero-argument callable running one step of `method`, or None if unavailable."""
    h, w, t, up = x["hidden"], x["weight"], x["targets"], x["upstream"]
    backward = mode == "fwd+bwd"

    def clear():
        h.grad = None
        w.grad = None

    if method == "gemm":
        def step():
            with torch.no_grad():
                z = h @ w.t()
                if backward:
                    z2 = h @ w.t()
                    z @ w
                    z2.t() @ h
        return step
    if method in ("gro", "naive"):
        backend = "auto" if method == "gro" else "naive"

        def step():
            clear()
            if backward:
                torch.autograd.backward(gro_kernels.linear_logprobs(h, w, t, backend=backend), up)
            else:
                gro_kernels.linear_logprobs_no_grad(h, w, t, backend=backend)
        return step
    loss_fn = _peer(method)
    if loss_fn is None:
        return None

    def step():
        clear()
        if backward:
            loss_fn(h, w, t).backward()
        else:
            with torch.no_grad():
                loss_fn(h, w, t)
    return step


def memory_probe(method, mode, n, h, v):
    x = make_inputs(n, h, v)
    step = make_step(method, mode, x)
    grad_bytes = (n * h + v * h) * 4 if mode == "fwd+bwd" else 0

    def drop_grads():
        x["hidden"].grad, x["weight"].grad = None, None

    print(json.dumps({"extra_bytes": common.measure_extra_memory(step, drop_grads, grad_bytes)}))


def check_correctness(n, h, v):
    x = make_inputs(min(n, 512), h, v)
    got = gro_kernels.linear_logprobs_no_grad(x["hidden"], x["weight"], x["targets"])
    want = gro_kernels.linear_logprobs_no_grad(x["hidden"].double(), x["weight"].double(), x["targets"],
                                               backend="naive")
    err = (got.double() - want.double()).abs().max().item()
    if err > 1e-3:
        raise AssertionError(f"gro-kernels logprobs differ from naive by {err:.2e} at N={n} H={h} V={v}")


def bench_shape(name, n, h, v, methods, repeats, with_memory):
    """Rows (one per method and mode) for one shape: median time, extra memory, ratios."""
    rows = []
    naive_bytes = 3 * n * v * 4  # logits, softmax, grad: what the naive path holds at once
    for mode in ("fwd", "fwd+bwd"):
        x = make_inputs(n, h, v)
        steps = {}
        for method in methods:
            if method in ("naive", "gemm") and not common.fits_in_memory(naive_bytes + 2 * n * v * 4):
                continue
            step = make_step(method, mode, x)
            if step is not None:
                steps[method] = step
        times = common.time_round_robin(steps, repeats)
        for method, seconds in times.items():
            row = dict(shape=name, N=n, H=h, V=v, mode=mode, method=method, seconds=seconds)
            if with_memory and method != "gemm":
                probe = common.run_memory_probe("benchmarks.bench_linear_logprobs", [method, mode, n, h, v])
                row["extra_mb"] = probe["extra_bytes"] / common.MB if "extra_bytes" in probe else None
            rows.append(row)
        _add_ratios([r for r in rows if r["mode"] == mode])
    return rows


def _add_ratios(rows):
    by_method = {r["method"]: r for r in rows}
    for row in rows:
        if "naive" in by_method:
            row["vs_naive"] = row["seconds"] / by_method["naive"]["seconds"]
        if "gemm" in by_method:
            row["vs_gemm"] = row["seconds"] / by_method["gemm"]["seconds"]


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["shape"].startswith("sweep") and r["mode"] == "fwd+bwd"]
    vocabs = sorted({r["V"] for r in sweep})
    if not vocabs:
        return
    fig, axes = plt.subplots(2, len(vocabs), figsize=(6 * len(vocabs), 8), squeeze=False)
    for col, v in enumerate(vocabs):
        for method in METHODS:
            pts = sorted((r["N"], r) for r in sweep if r["V"] == v and r["method"] == method)
            if not pts:
                continue
            ns = [n for n, _ in pts]
            style = dict(marker="o", label=method, color=f"C{METHODS.index(method)}")
            axes[0][col].plot(ns, [r["seconds"] for _, r in pts], **style)
            # Log axis: readings below 1 MiB (allocator noise around 0) are drawn at 1 MiB.
            mem = [(n, max(r["extra_mb"], 1.0)) for n, r in pts if r.get("extra_mb") not in (None, "")]
            if mem:
                axes[1][col].plot([n for n, _ in mem], [m for _, m in mem], **style)
        h = sweep[[r["V"] for r in sweep].index(v)]["H"]
        axes[0][col].set(title=f"fwd+bwd time, H={h}, V={v}", xlabel="tokens N", ylabel="seconds", xscale="log")
        axes[1][col].set(title=f"extra peak memory, H={h}, V={v}", xlabel="tokens N", ylabel="MiB",
                         xscale="log", yscale="log")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = [("shape", "shape", None), ("N", "N", None), ("H", "H", None), ("V", "V", None), ("mode", "mode", None),
           ("method", "method", None), ("seconds", "median s", "{:.3f}"), ("vs_gemm", "x bare GEMMs", "{:.2f}"),
           ("vs_naive", "x naive", "{:.2f}"), ("extra_mb", "extra MiB", "{:.0f}")]


def run(quick=False, repeats=3, sweep=True, out="bench_results", methods=METHODS):
    main_shapes = QUICK_MAIN if quick else MAIN_SHAPES
    sweep_shapes = QUICK_SWEEP if quick else SWEEP
    rows = []
    for name, (n, h, v) in common.progress(main_shapes.items(), "linear_logprobs shapes"):
        check_correctness(n, h, v)
        rows += bench_shape(name, n, h, v, methods, repeats, with_memory=True)
    if sweep:
        points = [(v, h, n) for v, (h, ns) in sweep_shapes.items() for n in ns]
        for v, h, n in common.progress(points, "linear_logprobs N sweep"):
            rows += bench_shape(f"sweep-V{v}", n, h, v, ("gemm", "naive", "gro", "torch_chunked_ce"),
                                1 if not quick else repeats, with_memory=True)
    os.makedirs(out, exist_ok=True)
    common.write_csv(os.path.join(out, "linear_logprobs.csv"), rows)
    plot(rows, os.path.join(out, "linear_logprobs.png"))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-probe":
        method, mode, n, h, v = argv[1], argv[2], *map(int, argv[3:6])
        return memory_probe(method, mode, n, h, v)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true", help="skip the N sweep (plots)")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    print(json.dumps(common.environment()))
    rows = run(args.quick, args.repeats, not args.no_sweep, args.out)
    print(common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
