"""linear_logprobs benchmarks: gro-kernels vs naive, bare GEMMs and peers, forward and forward+backward, fp32 and bf16.

fwd+bwd drives backward with a random upstream gradient on every token's logprob, so no method can
know its gradient in forward: the minimum is 4 GEMMs (logits, recompute, dhidden, dweight). TRL's
chunked log-prob function returns per-token logprobs too and gets the same upstream gradient. Peers
that only implement a mean cross-entropy (torch's chunked F.linear_cross_entropy, Liger-Kernel, Cut
Cross-Entropy) are run on that loss instead, which lets them fold the gradient into the forward pass
(3 GEMMs): the comparison favours them, and the table's note says so.

dtypes: every method runs in each dtype of --dtypes (inputs are the same draws, rounded for bf16), and
all methods and dtypes of a shape and mode are timed round-robin in one process. The bare GEMMs run in
the dtype (bf16 in, bf16 out); gro computes bf16 logits in fp32 (ops/common/chunk_buffer.py). Before
timing, each per-token method's logprobs are compared with an fp64 reference on the same (rounded)
inputs ("max |err| vs fp64"); gro must be within LOGPROB_TOLERANCE.

    python -m benchmarks.bench_linear_logprobs [--quick] [--repeats 3] [--dtypes fp32,bf16] [--sweep-dtypes ...]
        [--modes fwd,fwd+bwd] [--no-sweep] [--out bench_results]
"""

import argparse
import functools
import json
import os
import sys

import torch

import gro_kernels
from benchmarks import common

MAIN_SHAPES = {"S1": (4096, 1024, 32000), "S2": (4096, 256, 128256), "qwen0.5b": (4096, 896, 151936)}
SWEEP = {32000: (1024, (1024, 4096, 16384)), 128256: (256, (1024, 4096, 16384))}  # V: (H, Ns)
QUICK_MAIN = {"Q1": (512, 128, 8000)}
QUICK_SWEEP = {8000: (128, (256, 1024))}
METHODS = ("gemm", "naive", "gro", "trl", "torch_chunked_ce", "liger_ce", "cce")
SWEEP_METHODS = ("gemm", "naive", "gro", "torch_chunked_ce")
PER_TOKEN = ("gro", "naive", "trl")  # return per-token logprobs: random upstream gradient, error vs fp64
CE_PEERS = ("torch_chunked_ce", "liger_ce", "cce")  # mean cross-entropy only
DTYPES = common.DTYPES
MODES = ("fwd", "fwd+bwd")
LOGPROB_TOLERANCE = {"fp32": 2e-5, "bf16": 2e-5}  # gro vs fp64, max abs logprob error (issue #13)
CHECK_ROWS = 512  # rows of the fp64 reference check (its [rows, V] fp64 logits must stay small)
CE_NOTE = "mean CE: gradient folded into forward (3 GEMMs)"


def make_inputs(n, h, v, dtype="fp32", seed=0):
    """Leaf hidden [N, H] / weight [V, H] in `dtype`: the same fp32 draws for every dtype, rounded for bf16."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g) * 0.5
    weight = torch.randn(v, h, generator=g) / h ** 0.5
    return dict(hidden=hidden.to(DTYPES[dtype]).requires_grad_(), weight=weight.to(DTYPES[dtype]).requires_grad_(),
                targets=torch.randint(0, v, (n,), generator=g), upstream=torch.randn(n, generator=g))


# ------------------------------------------------------------------------------------------------ peers
def trl_logprobs():
    """TRL 1.16's fused LM head: trl/kernels/chunked_logprob.py, ChunkedLogProbFunction (an autograd.Function),
    forward(ctx, hidden [N, H], weight [V, H], bias, targets [N], temperature, chunk_size,
    final_logit_softcapping=None, logit_scale=1.0, outputs=OPTIONAL_OUTPUTS) -> (logprobs, entropy,
    log_sum_sq_probs, mean_logits, is_top1). Called the way trl/trainer/utils.py add_fused_lm_head's
    _fused_forward calls it: chunk_size=_CHUNKED_LOGPROB_CHUNK_SIZE (32768 vocab columns), outputs=("log_probs",)."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    def logprobs(h, w, t):
        return ChunkedLogProbFunction.apply(h, w, None, t, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                            ("log_probs",))[0]
    return logprobs


def _peer_fn(method):
    """The peer's callable (h, w, t) -> mean CE loss (CE peers) or per-token logprobs (trl)."""
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
    if method == "trl":
        return trl_logprobs()
    raise ValueError(method)


@functools.lru_cache(maxsize=None)
def peer(method, dtype):
    """(callable, None), or (None, why) when the peer is not installed or cannot run in `dtype` on this device.

    Cached: the trial step (and Cut Cross-Entropy's compilation) happens once per process and dtype."""
    if method == "liger_ce" and not torch.cuda.is_available():
        return None, "skipped: Liger's fused linear CE is a Triton kernel, needs a GPU"
    try:
        fn = _peer_fn(method)
    except ImportError as error:
        return None, f"skipped: {error.name or method} not installed (pip install -e .[peers])"
    except AttributeError as error:  # e.g. a torch without LinearCrossEntropyOptions
        return None, f"skipped: {error}"[:90]
    try:
        x = make_inputs(4, 8, 16, dtype)
        out = fn(x["hidden"], x["weight"], x["targets"])
        torch.autograd.backward(out, x["upstream"] if out.dim() else None)
    except Exception as error:  # noqa: BLE001 - any failure means "not runnable here"; the note says why
        return None, f"skipped: fails here ({type(error).__name__}: {error})"[:120]
    return fn, None


# ---------------------------------------------------------------------------------------------- methods
def logprob_fns(method, dtype):
    """(grad_fn, no_grad_fn, None) for a per-token method, each (h, w, t) -> logprobs; (None, None, why) if absent."""
    if method in ("gro", "naive"):
        backend = "auto" if method == "gro" else "naive"
        return (functools.partial(gro_kernels.linear_logprobs, backend=backend),
                functools.partial(gro_kernels.linear_logprobs_no_grad, backend=backend), None)
    fn, why = peer(method, dtype)
    if fn is None:
        return None, None, why

    def no_grad(h, w, t):
        with torch.no_grad():
            return fn(h, w, t)
    return fn, no_grad, None


def _gemm_step(x, backward):
    h, w = x["hidden"], x["weight"]

    def step():
        with torch.no_grad():
            z = h @ w.t()
            if backward:
                z2 = h @ w.t()
                z @ w
                z2.t() @ h
    return step


def make_step(method, mode, x, dtype):
    """(step, None): a zero-argument callable running one step of `method`; (None, why) when unavailable."""
    h, w, t, up = x["hidden"], x["weight"], x["targets"], x["upstream"]
    backward = mode == "fwd+bwd"

    def clear():
        h.grad = None
        w.grad = None

    if method == "gemm":
        return _gemm_step(x, backward), None
    if method in PER_TOKEN:
        grad_fn, no_grad_fn, why = logprob_fns(method, dtype)
        if why:
            return None, why

        def step():
            clear()
            if backward:
                torch.autograd.backward(grad_fn(h, w, t), up)
            else:
                no_grad_fn(h, w, t)
        return step, None
    loss_fn, why = peer(method, dtype)
    if why:
        return None, why

    def step():
        clear()
        if backward:
            loss_fn(h, w, t).backward()
        else:
            with torch.no_grad():
                loss_fn(h, w, t)
    return step, None


# ------------------------------------------------------------------------------------------ measurement
def memory_probe(method, mode, n, h, v, dtype="fp32"):
    x = make_inputs(n, h, v, dtype)
    step, why = make_step(method, mode, x, dtype)
    if step is None:
        raise SystemExit(why)
    grad_bytes = (n * h + v * h) * x["hidden"].element_size() if mode == "fwd+bwd" else 0

    def drop_grads():
        x["hidden"].grad, x["weight"].grad = None, None

    print(json.dumps({"extra_bytes": common.measure_extra_memory(step, drop_grads, grad_bytes)}))


def logprob_errors(n, h, v, dtype, methods):
    """method -> max |logprob - fp64 reference| on CHECK_ROWS rows of the shape; raises if gro's exceeds the tolerance.

    The reference is the materialized fp64 log-softmax of the same inputs (bf16 values upcast exactly), so
    the error is what the method adds, not the rounding of the inputs."""
    x = make_inputs(min(n, CHECK_ROWS), h, v, dtype)
    hidden, weight, targets = x["hidden"].detach(), x["weight"].detach(), x["targets"]
    want = gro_kernels.linear_logprobs_no_grad(hidden.double(), weight.double(), targets, backend="naive")
    errors = {}
    for method in methods:
        if method in PER_TOKEN:
            _, no_grad_fn, why = logprob_fns(method, dtype)
            if no_grad_fn is not None:
                errors[method] = (no_grad_fn(hidden, weight, targets).double() - want).abs().max().item()
    if "gro" in errors and errors["gro"] > LOGPROB_TOLERANCE[dtype]:
        raise AssertionError(f"gro-kernels {dtype} logprobs differ from fp64 by {errors['gro']:.2e} > "
                             f"{LOGPROB_TOLERANCE[dtype]:.0e} at N={n} H={h} V={v}")
    return errors


def _collect_steps(methods, mode, inputs, fits):
    """The runnable steps, keyed (dtype, method), and a note for each method that cannot run."""
    steps, notes = {}, {}
    for dtype, x in inputs.items():
        for method in methods:
            if method in ("naive", "gemm") and not fits:
                notes[(dtype, method)] = "skipped: the [N, V] logits do not fit in memory"
                continue
            step, why = make_step(method, mode, x, dtype)
            if step is None:
                notes[(dtype, method)] = why
            else:
                steps[(dtype, method)] = step
    return steps, notes


def bench_shape(name, n, h, v, methods, dtypes, repeats, with_memory, errors=None, modes=MODES):
    """Rows (one per dtype, method and mode) for one shape: median time, extra memory, ratios, error vs fp64.

    Every method and dtype of a mode runs in one round-robin, so machine noise spreads evenly over them."""
    rows = []
    fits = common.fits_in_memory(5 * n * v * 4)  # naive: logits, softmax, grad at once (fp32), + the GEMMs' two
    errors = errors or {}
    for mode in modes:
        inputs = {dtype: make_inputs(n, h, v, dtype) for dtype in dtypes}
        steps, notes = _collect_steps(methods, mode, inputs, fits)
        times = common.time_round_robin(steps, repeats)
        mode_rows = []
        for dtype in dtypes:
            for method in methods:
                row = dict(shape=name, N=n, H=h, V=v, dtype=dtype, mode=mode, method=method,
                           seconds=times.get((dtype, method)), err=errors.get(dtype, {}).get(method),
                           note=notes.get((dtype, method), CE_NOTE if method in CE_PEERS else None))
                if with_memory and row["seconds"] is not None and method != "gemm":
                    probe = common.run_memory_probe("benchmarks.bench_linear_logprobs",
                                                    [method, mode, n, h, v, dtype])
                    row["extra_mb"] = probe["extra_bytes"] / common.MB if "extra_bytes" in probe else None
                mode_rows.append(row)
        for dtype in dtypes:
            _add_ratios([r for r in mode_rows if r["dtype"] == dtype and r["seconds"] is not None])
        rows += mode_rows
    return rows


def _add_ratios(rows):
    """x bare GEMMs and x naive, within one shape, mode and dtype."""
    by_method = {r["method"]: r for r in rows}
    for row in rows:
        if "naive" in by_method:
            row["vs_naive"] = row["seconds"] / by_method["naive"]["seconds"]
        if "gemm" in by_method:
            row["vs_gemm"] = row["seconds"] / by_method["gemm"]["seconds"]


# ---------------------------------------------------------------------------------------------- output
LINE_STYLES = {"fp32": "-", "bf16": "--"}


def plot(rows, path):
    """fwd+bwd time and extra memory vs N per vocabulary: one colour per method, one line style per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r["shape"].startswith("sweep") and r["mode"] == "fwd+bwd" and r["seconds"]]
    vocabs = sorted({r["V"] for r in sweep})
    if not vocabs:
        return
    fig, axes = plt.subplots(2, len(vocabs), figsize=(6 * len(vocabs), 8), squeeze=False)
    for col, v in enumerate(vocabs):
        for method in METHODS:
            for dtype in DTYPES:
                _plot_line(axes[:, col], [r for r in sweep if r["V"] == v and r["method"] == method
                                          and r["dtype"] == dtype], method, dtype)
        h = next(r["H"] for r in sweep if r["V"] == v)
        axes[0][col].set(title=f"fwd+bwd time, H={h}, V={v}", xlabel="tokens N", ylabel="seconds", xscale="log")
        axes[1][col].set(title=f"extra peak memory, H={h}, V={v}", xlabel="tokens N", ylabel="MiB",
                         xscale="log", yscale="log")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_line(axes, rows, method, dtype):
    pts = sorted((r["N"], r) for r in rows)
    if not pts:
        return
    style = dict(marker="o", label=f"{method} {dtype}", color=f"C{METHODS.index(method)}",
                 linestyle=LINE_STYLES[dtype])
    axes[0].plot([n for n, _ in pts], [r["seconds"] for _, r in pts], **style)
    # Log axis: readings below 1 MiB (allocator noise around 0) are drawn at 1 MiB.
    mem = [(n, max(r["extra_mb"], 1.0)) for n, r in pts if r.get("extra_mb") not in (None, "")]
    if mem:
        axes[1].plot([n for n, _ in mem], [m for _, m in mem], **style)


COLUMNS = [("shape", "shape", None), ("N", "N", None), ("H", "H", None), ("V", "V", None),
           ("dtype", "dtype", None), ("mode", "mode", None), ("method", "method", None),
           ("seconds", "median s", "{:.3f}"), ("vs_gemm", "x bare GEMMs", "{:.2f}"), ("vs_naive", "x naive", "{:.2f}"),
           ("err", "max |err| vs fp64", "{:.1e}"), ("extra_mb", "extra MiB", "{:.0f}"), ("note", "note", None)]


def run(quick=False, repeats=3, sweep=True, out="bench_results", methods=METHODS, dtypes=tuple(DTYPES),
        sweep_dtypes=None, modes=MODES, shapes=None):
    """Main shapes (every method, every dtype; `shapes`: a subset of their names), then the N sweep (plots);
    writes linear_logprobs.csv/.png."""
    main_shapes = QUICK_MAIN if quick else MAIN_SHAPES
    if shapes is not None:
        unknown = sorted(set(shapes) - set(main_shapes))
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; choose from {sorted(main_shapes)}")
        main_shapes = {name: main_shapes[name] for name in shapes}
    sweep_shapes = QUICK_SWEEP if quick else SWEEP
    sweep_dtypes = dtypes if sweep_dtypes is None else sweep_dtypes
    rows = []
    for name, (n, h, v) in common.progress(main_shapes.items(), "linear_logprobs shapes"):
        errors = {dtype: logprob_errors(n, h, v, dtype, methods) for dtype in dtypes}  # before timing
        rows += bench_shape(name, n, h, v, methods, dtypes, repeats, True, errors, modes)
    if sweep and sweep_dtypes:
        points = [(v, h, n) for v, (h, ns) in sweep_shapes.items() for n in ns]
        for v, h, n in common.progress(points, "linear_logprobs N sweep"):
            rows += bench_shape(f"sweep-V{v}", n, h, v, [m for m in SWEEP_METHODS if m in methods], sweep_dtypes,
                                1 if not quick else repeats, True, modes=modes)
    os.makedirs(out, exist_ok=True)
    common.write_csv(os.path.join(out, "linear_logprobs.csv"), rows)
    plot(rows, os.path.join(out, "linear_logprobs.png"))
    return rows


def parse_modes(text):
    """A comma list of MODES (an argparse type)."""
    items = tuple(item for item in text.split(",") if item)
    if not items or set(items) - set(MODES):
        raise argparse.ArgumentTypeError(f"modes must be a comma list of {list(MODES)}")
    return items


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-probe":
        method, mode, n, h, v = argv[1], argv[2], *map(int, argv[3:6])
        return memory_probe(method, mode, n, h, v, *argv[6:7])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", type=common.parse_dtypes, default=tuple(DTYPES))
    parser.add_argument("--sweep-dtypes", type=common.parse_dtypes, default=None,
                        help="dtypes of the N sweep (default: --dtypes)")
    parser.add_argument("--modes", type=parse_modes, default=MODES)
    parser.add_argument("--no-sweep", action="store_true", help="skip the N sweep (plots)")
    parser.add_argument("--shapes", default=None, help=f"comma list of main shapes (default all: {list(MAIN_SHAPES)})")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    print(json.dumps(common.environment()))
    rows = run(args.quick, args.repeats, not args.no_sweep, args.out, dtypes=args.dtypes,
               sweep_dtypes=args.sweep_dtypes, modes=args.modes,
               shapes=None if args.shapes is None else args.shapes.split(","))
    print(common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
