"""Loss benchmarks (issues #3, #13): hidden states -> GRO loss, forward + backward, fp32 and bf16.

Suites: `grpo` (GRPO preset with given advantages, old and reference logprobs; B=4, T=1024) and `dpo`
(DPO preset, one chosen/rejected pair of T=2048 with given reference logprobs), H=1024, V=32000.
Methods: gro-kernels (grad-in-forward and plain), the naive materialized loss, Liger-Kernel's chunked
losses (eager and compiled, when installed) and the bare GEMMs (3 for grad-in-forward, 4 otherwise).

dtypes (--dtypes fp32,bf16): hidden, weight (and DPO's ref_hidden) in the dtype, the bf16 ones the fp32
draws rounded; advantages and old/ref logprobs stay fp32. The bare GEMMs run in the dtype (bf16 in and
out), the naive loss forms bf16 logits (what a plain trainer does), gro computes them in fp32. Before
timing, every loss is compared with the fp64 loss of the same (rounded) inputs (rel_err_vs_fp64; gro's
must be <= LOSS_RTOL) and gro's gradients with fp64 autograd on a small shape (GRAD_TOL).

Times: one process runs every method and dtype of a suite round-robin (noise of the shared CPU spreads evenly
over the methods), medians over repeats. Memory: each method in its own process, one warm-up step
then one measured step; extra = peak RSS (VmHWM after /proc/self/clear_refs) above the RSS before the
step, minus the gradient outputs (dhidden, dweight) that every method must allocate.

    python -m benchmarks.bench_losses [--suites grpo,dpo] [--dtypes fp32,bf16] [--repeats 3] [--quick] [--out ...]
                                      [--head HxV]
(run from the repository root; benchmarks.run calls `run` below). --head replaces H and V of every suite, e.g.
256x128256 (S2) or 896x151936 (the Qwen2.5-0.5B head).
"""

import argparse
import json
import os

import torch

import gro_kernels
from benchmarks import common

SHAPES = {"grpo": dict(B=4, T=1024, H=1024, V=32000), "dpo": dict(B=2, T=2048, H=1024, V=32000)}
QUICK_SHAPES = {"grpo": dict(B=2, T=128, H=128, V=4000), "dpo": dict(B=2, T=128, H=128, V=4000)}
GRPO_BETA, DPO_BETA, EPS = 0.04, 0.1, 0.2
BARE = {"grpo": "bare_gemm3", "dpo": "bare_gemm4"}
LOSS_RTOL = 1e-4  # gro's loss vs the fp64 loss, relative, either dtype (its logits are fp32)
# gro's dhidden/dweight vs fp64 autograd: fp32 as tight as before; bf16 gradients are rounded to bf16 (2^-9
# relative) after GEMMs that read a bf16 copy of dLoss/dlogits, so relative to the gradient's largest entry.
GRAD_TOL = {"fp32": dict(rtol=1e-4, atol=1e-6), "bf16": dict(rtol=2e-2, atol=2e-2)}
REFERENCE_ROWS = 512  # rows per fp64 block of the reference loss (bounds its [rows, V] fp64 logits)


# ----------------------------------------------------------------------------------------------- inputs
def make_inputs(suite, shape, seed=0, dtype="fp32"):
    """Leaf hidden [B, T, H] / weight [V, H] in `dtype` (requires grad) and the suite's fp32 per-token constants.

    The same generator draws for every dtype, so bf16 inputs are the fp32 ones rounded."""
    B, T, H, V = shape["B"], shape["T"], shape["H"], shape["V"]
    g = torch.Generator().manual_seed(seed)
    dt = common.DTYPES[dtype]
    hidden = (torch.randn(B, T, H, generator=g) * 0.5).to(dt).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / H ** 0.5).to(dt).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(int(0.8 * T), T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    with torch.no_grad():
        current = gro_kernels.linear_logprobs(hidden, weight, targets)
    inputs = dict(hidden=hidden, weight=weight, targets=targets, mask=mask)
    if suite == "grpo":
        inputs["advantages"] = torch.randn(B, generator=g)
        inputs["old_logprobs"] = current + 0.15 * torch.randn(B, T, generator=g)
        inputs["ref_logprobs"] = current + 0.1 * torch.randn(B, T, generator=g)
    else:
        inputs["pair_ids"], inputs["chosen"] = torch.zeros(B, dtype=torch.long), torch.tensor([True, False])
        # A reference head (same weight, perturbed hidden states) and the logprobs it gives, so that the
        # methods taking reference logprobs and those streaming the reference head agree.
        inputs["ref_hidden"] = (hidden.detach().float() + 0.05 * torch.randn(B, T, H, generator=g)).to(dt)
        inputs["ref_logprobs"] = gro_kernels.linear_logprobs_no_grad(inputs["ref_hidden"], weight.detach(), targets)
    return inputs


def naive_token_logprobs(x):
    """Logits in the input dtype (bf16 rounds them, as a plain trainer does), log-softmax in fp32 (fp64 for fp64)."""
    logits = x["hidden"] @ x["weight"].t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, dim=-1).gather(-1, x["targets"].unsqueeze(-1)).squeeze(-1)


def reference_token_logprobs(x):
    """fp64 logprobs of x's (possibly rounded) inputs, REFERENCE_ROWS rows at a time: the accuracy reference."""
    hidden, weight = x["hidden"].detach().double(), x["weight"].detach().double()
    rows, targets = hidden.reshape(-1, hidden.shape[-1]), x["targets"].reshape(-1)
    with torch.no_grad():
        blocks = [naive_token_logprobs(dict(hidden=rows[i:i + REFERENCE_ROWS], weight=weight,
                                            targets=targets[i:i + REFERENCE_ROWS]))
                  for i in range(0, rows.shape[0], REFERENCE_ROWS)]
    return torch.cat(blocks).view(x["targets"].shape)


def reference_loss(suite, x):
    """The suite's loss in fp64 on x's inputs (given old/ref logprobs as they are)."""
    naive = naive_grpo_loss if suite == "grpo" else naive_dpo_loss
    with torch.no_grad():
        return float(naive(x, reference_token_logprobs(x)))


def naive_grpo_loss(x, logp=None):
    """GRPO (docs/math.md §3): clipped surrogate + beta * k3, seq_mean_token_mean, materialized logits
    (or the given per-token logprobs `logp`)."""
    logp = naive_token_logprobs(x) if logp is None else logp
    ratio = torch.exp(torch.clamp(logp - x["old_logprobs"], -20, 20))
    adv = x["advantages"].unsqueeze(1)
    surrogate = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - EPS, 1 + EPS) * adv)
    d = logp - x["ref_logprobs"]
    per_token = surrogate + GRPO_BETA * (torch.exp(-d) + d - 1)
    m = x["mask"].float()
    return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def naive_dpo_loss(x, logp=None):
    """DPO (docs/math.md §4) on masked sequence sums, materialized logits (or the given `logp`); row 0 chosen,
    row 1 rejected."""
    logp = naive_token_logprobs(x) if logp is None else logp
    m = x["mask"].float()
    g = ((logp - x["ref_logprobs"]) * m).sum(1)
    return -torch.nn.functional.logsigmoid(DPO_BETA * (g[0] - g[1]))


# ---------------------------------------------------------------------------------------------- methods
def _gro(x, suite, **options):
    common = dict(mask=x["mask"], ref_logprobs=x["ref_logprobs"])
    if suite == "grpo":
        common.update(advantages=x["advantages"], old_logprobs=x["old_logprobs"], beta=GRPO_BETA)
    else:
        common.update(pair_ids=x["pair_ids"], chosen=x["chosen"], beta=DPO_BETA)
    common.update(options)
    return gro_kernels.gro_loss(x["hidden"], x["weight"], x["targets"], preset=suite, **common).loss


def _liger(x, suite, compiled):
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss, LigerFusedLinearGRPOLoss

    if suite == "grpo":
        module = LigerFusedLinearGRPOLoss(beta=GRPO_BETA, compiled=compiled, epsilon_low=EPS, epsilon_high=EPS,
                                          loss_type="grpo")
        out = module(x["hidden"], x["weight"], x["targets"], x["mask"].long(), x["advantages"],
                     ref_per_token_logps=x["ref_logprobs"], old_per_token_logps=x["old_logprobs"])
    else:
        # Liger's DPO has no given-reference-logprobs input: its reference is a streamed second head.
        module = LigerFusedLinearDPOLoss(beta=DPO_BETA, compiled=compiled, use_ref_model=True)
        targets = torch.where(x["mask"], x["targets"], -100)
        out = module(x["weight"], x["hidden"], targets, ref_input=x["ref_hidden"], ref_weight=x["weight"].detach())
    return out[0] if isinstance(out, tuple) else out


def method_table(suite):
    """name -> (description, fn(inputs) -> loss or None)."""
    naive = naive_grpo_loss if suite == "grpo" else naive_dpo_loss
    table = {"naive": ("naive materialized loss (autograd)", naive)}
    if suite == "grpo":
        table["gro_fused"] = ("gro_loss, grad-in-forward (3 GEMMs)", lambda x: _gro(x, suite, grad_in_forward=True))
        table["gro_plain"] = ("gro_loss, plain path (4 GEMMs)", lambda x: _gro(x, suite, grad_in_forward=False))
    else:
        table["gro"] = ("gro_loss, ref logprobs given (4 GEMMs)", lambda x: _gro(x, suite))
        table["gro_ref_head"] = ("gro_loss, reference streamed from ref_hidden (5 GEMMs)",
                                 lambda x: _gro(x, suite, ref_logprobs=None, ref_hidden=x["ref_hidden"],
                                                ref_weight=x["weight"].detach()))
    if liger_available():
        table["liger_eager"] = ("Liger-Kernel chunked loss, eager", lambda x: _liger(x, suite, compiled=False))
        table["liger_compiled"] = ("Liger-Kernel chunked loss, compiled", lambda x: _liger(x, suite, compiled=True))
    return table


def liger_available():
    try:
        import liger_kernel.chunked_loss  # noqa: F401
    except Exception:  # not installed, or incompatible with this torch/triton
        return False
    return True


def _step(fn, x):
    x["hidden"].grad, x["weight"].grad = None, None
    loss = fn(x)
    loss.backward()
    return float(loss.detach())


def _fp64_leaves(x):
    """x with hidden and weight as fp64 leaves of the same values (the only 16-bit inputs the naive losses read)."""
    y = dict(x)
    for key in ("hidden", "weight"):
        y[key] = x[key].detach().double().requires_grad_()
    return y


def check_gradients(suite, dtype="fp32", seed=1):
    """Before timing: gro-kernels' dhidden/dweight equal fp64 autograd's on a small shape of the suite.

    bf16: the tolerance is scaled by the largest entry of each fp64 gradient (GRAD_TOL)."""
    shape = dict(QUICK_SHAPES[suite], T=64, V=1000)
    reference = _fp64_leaves(make_inputs(suite, shape, seed, dtype))
    _step(naive_grpo_loss if suite == "grpo" else naive_dpo_loss, reference)
    for name, (_, fn) in method_table(suite).items():
        if not name.startswith("gro"):
            continue
        x = make_inputs(suite, shape, seed, dtype)
        _step(fn, x)
        for key in ("hidden", "weight"):
            want = reference[key].grad
            tol = GRAD_TOL[dtype] if dtype == "fp32" else \
                dict(rtol=GRAD_TOL[dtype]["rtol"], atol=GRAD_TOL[dtype]["atol"] * want.abs().max().item())
            torch.testing.assert_close(x[key].grad.double(), want, **tol, msg=f"{suite}/{name} {dtype} d{key}")


# ----------------------------------------------------------------------------------------- measurement
def time_suite(suite, shape, repeats, dtypes=("fp32",)):
    """Warm-up + loss check against the fp64 loss, then every method and dtype timed round-robin.

    Returns (dtype, name) -> (median s, loss) and dtype -> the fp64 reference loss."""
    runs, references = {}, {}
    for dtype in dtypes:
        x = make_inputs(suite, shape, dtype=dtype)
        references[dtype] = reference_loss(suite, x)
        runs.update({(dtype, name): (lambda fn=fn, x=x: _step(fn, x)) for name, (_, fn) in method_table(suite).items()})
        runs[(dtype, BARE[suite])] = common.bare_gemms(x, 3 if suite == "grpo" else 4)
    losses = {key: run() for key, run in runs.items()}
    for (dtype, name), value in losses.items():
        # Only gro's loss is held to LOSS_RTOL; naive (bf16 logits) and Liger report theirs (rel_err_vs_fp64).
        want = references[dtype]
        if name.startswith("gro") and abs(value - want) > LOSS_RTOL * max(1.0, abs(want)):
            raise RuntimeError(f"{suite} {dtype}: {name} loss {value} != fp64 loss {want}")
    times = common.time_round_robin(runs, repeats, warmup=0)  # the loss check above was the warm-up
    return {key: (times[key], losses[key]) for key in runs}, references


def extra_memory(suite, name, shape, dtype="fp32"):
    """Peak bytes of one fwd+bwd step above the RSS before it, minus dhidden and dweight (run in its own process)."""
    x = make_inputs(suite, shape, dtype=dtype)
    fn = method_table(suite)[name][1]

    def drop_grads():  # the warm-up's gradients must not sit in the RSS the measured step starts from
        x["hidden"].grad, x["weight"].grad = None, None

    grad_bytes = sum(t.numel() * t.element_size() for t in (x["hidden"], x["weight"]))
    return common.measure_extra_memory(lambda: _step(fn, x), drop_grads, grad_bytes)


def memory_in_subprocess(suite, name, shape, dtype="fp32"):
    probe = common.run_memory_probe("benchmarks.bench_losses", [suite, name, json.dumps(shape), dtype])
    if "error" in probe:
        raise RuntimeError(f"memory probe {suite}/{name} {dtype} failed: {probe['error']}")
    return probe["extra_bytes"]


def run_suite(suite, shape, repeats, dtypes=("fp32",)):
    """Rows (dicts) of one suite, per dtype: time, extra memory, ratios to that dtype's bare GEMMs and gro,
    error of the loss relative to the fp64 loss."""
    for dtype in dtypes:
        check_gradients(suite, dtype)
    timed, references = time_suite(suite, shape, repeats, dtypes)
    table = method_table(suite)
    ours = "gro_fused" if suite == "grpo" else "gro"
    rows = []
    for (dtype, name), (seconds, loss) in timed.items():
        memory = None if name == BARE[suite] else memory_in_subprocess(suite, name, shape, dtype)
        is_bare, want = name == BARE[suite], references[dtype]
        rows.append(dict(suite=suite, dtype=dtype, method=name, what=table[name][0] if name in table else
                         "bare GEMMs only", tokens=shape["B"] * shape["T"], H=shape["H"], V=shape["V"],
                         seconds=seconds, extra_mb=None if memory is None else memory / 2 ** 20,
                         loss=None if is_bare else loss,
                         rel_err_vs_fp64=None if is_bare else abs(loss - want) / max(abs(want), 1e-30),
                         x_bare_gemms=seconds / timed[(dtype, BARE[suite])][0],
                         ours_speedup=seconds / timed[(dtype, ours)][0]))
    return rows


# ---------------------------------------------------------------------------------------------- output
COLUMNS = ["suite", "dtype", "method", "tokens", "H", "V", "seconds", "x_bare_gemms", "ours_speedup", "extra_mb",
           "loss", "rel_err_vs_fp64", "what"]


def format_table(rows):
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


DTYPE_COLOURS = {"fp32": "tab:blue", "bf16": "tab:orange"}


def write_plot(rows, path):
    """Per suite: time and extra peak memory of each method (bars). Skipped when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    suites = sorted({r["suite"] for r in rows})
    fig, axes = plt.subplots(len(suites), 2, figsize=(12, 3.5 * len(suites)), squeeze=False)
    for i, suite in enumerate(suites):
        sub = [r for r in rows if r["suite"] == suite]
        names = [f"{r['method']} {r['dtype']}" for r in sub]
        axes[i][0].barh(names, [r["seconds"] for r in sub], color=[DTYPE_COLOURS[r["dtype"]] for r in sub])
        axes[i][0].set_xlabel("fwd+bwd seconds (median)")
        axes[i][0].set_title(f"{suite}: N={sub[0]['tokens']} H={sub[0]['H']} V={sub[0]['V']}")
        mem = [r for r in sub if r["extra_mb"] is not None]
        axes[i][1].barh([f"{r['method']} {r['dtype']}" for r in mem], [r["extra_mb"] for r in mem],
                        color=[DTYPE_COLOURS[r["dtype"]] for r in mem])
        axes[i][1].set_xlabel("extra peak memory, MB (above inputs and grads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_head(text):
    """'HxV' -> dict(H=..., V=...), both positive ints."""
    try:
        h, v = (int(part) for part in text.lower().split("x"))
    except ValueError:
        h = v = 0
    if h <= 0 or v <= 0:
        raise argparse.ArgumentTypeError(f"--head must be HxV with positive ints (e.g. 896x151936), got {text!r}")
    return dict(H=h, V=v)


def run(out_dir="bench_results", suites=("grpo", "dpo"), repeats=3, quick=False, dtypes=tuple(common.DTYPES),
        head=None):
    """Run the loss suites; write losses.csv, losses.png and losses.json into out_dir; return the rows.
    head: None or dict(H=, V=) replacing every suite's head."""
    os.makedirs(out_dir, exist_ok=True)
    shapes = QUICK_SHAPES if quick else SHAPES
    if head is not None:
        shapes = {suite: dict(shape, **head) for suite, shape in shapes.items()}
    env = dict(common.environment(), load_avg_start=os.getloadavg())
    rows = []
    # Results are written after each suite, so a late failure keeps the earlier ones.
    for suite in common.progress(suites, "loss suites"):
        rows += run_suite(suite, shapes[suite], repeats, dtypes)
        env["load_avg_end"] = os.getloadavg()
        common.write_csv(os.path.join(out_dir, "losses.csv"), [{c: r[c] for c in COLUMNS} for r in rows])
        write_plot(rows, os.path.join(out_dir, "losses.png"))
        with open(os.path.join(out_dir, "losses.json"), "w") as f:
            json.dump(dict(environment=env, rows=rows), f, indent=1)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default="grpo,dpo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", type=common.parse_dtypes, default=tuple(common.DTYPES))
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--head", type=parse_head, default=None, help="HxV replacing the suites' head")
    parser.add_argument("--memory-probe", nargs=4, metavar=("SUITE", "METHOD", "SHAPE_JSON", "DTYPE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        suite, method, shape, dtype = args.memory_probe
        print(json.dumps({"extra_bytes": extra_memory(suite, method, json.loads(shape), dtype)}))
        return
    rows = run(args.out, tuple(args.suites.split(",")), args.repeats, args.quick, args.dtypes, args.head)
    print(format_table(rows))
    print(json.dumps(common.environment()))


if __name__ == "__main__":
    main()
