"""Roofline of the Triton kernels on H100 / H200 for real model shapes (a paper model, no GPU here).

`python -m benchmarks.roofline` prints the table and writes benchmarks/results/roofline.md.

Per kernel: FLOPs, HBM bytes, L2 atomic bytes (backward), arithmetic intensity, and the time each
resource alone would take at peak; the largest is the expected bound. Traffic model (stated so it
can be checked against a profile on a GPU):
- forward: hidden read once; the programs in flight walk the vocabulary tiles together, so W is
  read from HBM about once per wave of SMs programs; 16 B/token of partial state per split.
- backward: programs run in groups of GROUP_N token tiles; each group sweeps all of W (HBM) and
  read-modify-writes the dW rows in fp32 once (its dh rows stay in L2); every (token tile, vocab
  tile) pair adds (BLOCK_N + BLOCK_V) * H fp32 atomics in L2.
"""

import argparse
import math
import os

from benchmarks import common
from gro_kernels.ops.linear_logprobs.triton_impl import CONFIGS, GROUP_N

# Dense bf16 tensor-core peak, HBM bandwidth (datasheet figures, SXM parts), SM count.
HARDWARE = {
    "H100-SXM": dict(tflops=989.0, hbm_tbs=3.35, sms=132),
    "H200-SXM": dict(tflops=989.0, hbm_tbs=4.8, sms=132),
}
# fp32 atomic throughput of L2 is not a datasheet number: an assumption (roughly half of the
# ~5.5 TB/s L2 read bandwidth reported for H100), to be replaced by a measurement.
L2_ATOMIC_TBS = 2.75
MODELS = {"Qwen2.5-7B": (3584, 152064), "Llama-3-8B": (4096, 128256)}
TOKENS = (4096, 16384, 32768)
# Per-token epilogue (policy loss): 7 fp32 inputs + mask byte, 3 fp32 outputs + 4 metric columns.
POLICY_BYTES_PER_TOKEN = 7 * 4 + 1 + 3 * 4 + 16
POLICY_FLOPS_PER_TOKEN = 40
LAUNCH_US = 4.0


def forward_cost(n, h, v, hw):
    cfg = CONFIGS["sm90"]["fwd"]
    tiles_n = math.ceil(n / cfg.block_n)
    waves = max(1.0, tiles_n / hw["sms"])
    flops = 2.0 * n * v * h
    hbm = n * h * 2 + waves * v * h * 2 + 16 * n * 2 + 12 * n
    return flops, hbm, 0.0


def backward_cost(n, h, v, hw):
    cfg = CONFIGS["sm90"]["bwd"]
    groups = max(1.0, n / (cfg.block_n * GROUP_N))
    flops = 6.0 * n * v * h  # logit recompute, dz @ W, dz^T @ h
    hbm = n * h * 2 + groups * v * h * 2 + groups * v * h * 4 * 2 + n * h * 4 * 2 + (n * h + v * h) * (4 + 2)
    atomics = 4.0 * n * v * h * (1.0 / cfg.block_n + 1.0 / cfg.block_v)
    return flops, hbm, atomics


def rows():
    out = []
    for hw_name, hw in HARDWARE.items():
        for model, (h, v) in MODELS.items():
            for n in TOKENS:
                for kernel, cost in (("linear_logprobs fwd", forward_cost), ("linear_logprobs bwd", backward_cost)):
                    flops, hbm, atomics = cost(n, h, v, hw)
                    times = {"compute": flops / (hw["tflops"] * 1e12), "HBM": hbm / (hw["hbm_tbs"] * 1e12),
                             "L2 atomics": atomics / (L2_ATOMIC_TBS * 1e12)}
                    bound = max(times, key=times.get)
                    out.append((hw_name, kernel, model, n, h, v, flops, hbm, atomics, times, bound))
            n = 32768
            flops, hbm = POLICY_FLOPS_PER_TOKEN * n, POLICY_BYTES_PER_TOKEN * n
            times = {"compute": flops / (hw["tflops"] * 1e12), "HBM": hbm / (hw["hbm_tbs"] * 1e12),
                     "L2 atomics": 0.0}
            out.append((hw_name, "policy token epilogue", model, n, h, v, flops, hbm, 0.0, times, "launch latency"))
    return out


def markdown(table) -> str:
    lines = ["| GPU | kernel | model | N | H | V | GFLOP | HBM GB | L2 atomic GB | FLOP/HBM byte | "
             "t compute ms | t HBM ms | t atomics ms | expected bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for hw, kernel, model, n, h, v, flops, hbm, atomics, t, bound in table:
        if kernel == "policy token epilogue" and (hw, kernel) in seen:
            continue
        seen.add((hw, kernel))
        shape = (model, n, h, v) if kernel != "policy token epilogue" else ("any", n, "-", "-")
        lines.append(f"| {hw} | {kernel} | {shape[0]} | {shape[1]} | {shape[2]} | {shape[3]} | {flops / 1e9:,.0f} | "
                     f"{hbm / 1e9:.2f} | {atomics / 1e9:,.0f} | {flops / hbm:,.0f} | {t['compute'] * 1e3:.2f} | "
                     f"{t['HBM'] * 1e3:.3f} | {t['L2 atomics'] * 1e3:.1f} | {bound} |")
    note = (f"\nAssumptions: bf16 inputs, default sm_90 tiles (fwd {CONFIGS['sm90']['fwd']}, bwd "
            f"{CONFIGS['sm90']['bwd']}), GROUP_N={GROUP_N}; peak {HARDWARE['H100-SXM']['tflops']:.0f} TFLOP/s dense "
            f"bf16; fp32 L2 atomics at an assumed {L2_ATOMIC_TBS} TB/s (not a datasheet figure). The policy "
            f"epilogue moves {POLICY_BYTES_PER_TOKEN} B/token: microseconds of HBM time, below the ~{LAUNCH_US:.0f} "
            f"us launch latency.\n")
    return "\n".join(lines) + "\n" + note


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "roofline.md"))
    args = parser.parse_args()
    common.write_text(args.out, markdown(rows()))


if __name__ == "__main__":
    main()
