"""The benchmark runner: every op family against its baselines on the device present.

    python -m benchmarks.run [--quick] [--only linear_logprobs,losses,roofline] [--repeats 3] [--out bench_results]

Writes <out>/summary.md (every table, with the environment it was measured in), the per-family
CSV files and PNG plots. `make bench` runs it after installing the package and the optional peers.
"""

import argparse
import json
import os
import time

from benchmarks import bench_linear_logprobs, bench_losses, common, roofline

FAMILIES = ("linear_logprobs", "losses", "roofline")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run of every family")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma list of {FAMILIES}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    families = [f for f in args.only.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    os.makedirs(args.out, exist_ok=True)
    env = common.environment()
    print(json.dumps(env), flush=True)
    sections = [f"# gro-kernels benchmarks\n\nEnvironment: `{json.dumps(env)}`\n"]
    start = time.time()
    if "linear_logprobs" in families:
        rows = bench_linear_logprobs.run(args.quick, args.repeats, True, args.out)
        table = common.format_table(rows, bench_linear_logprobs.COLUMNS)
        sections.append("## linear_logprobs (fp32)\n\n" + table + "\n")
        print(table, flush=True)
    if "losses" in families:
        rows = bench_losses.run(args.out, ("grpo", "dpo"), args.repeats, args.quick)
        table = bench_losses.format_table(rows)
        sections.append("## GRO losses (fp32, hidden -> loss, fwd+bwd)\n\n" + table + "\n")
        print(table, flush=True)
    if "roofline" in families:
        table = roofline.markdown(roofline.rows())
        sections.append("## Triton kernels on H100/H200 (paper roofline, not measured here)\n\n" + table + "\n")
        print(table, flush=True)
    sections.append(f"Total benchmark time: {time.time() - start:.0f} s; load average at the end: "
                    f"{os.getloadavg()[0]:.2f}\n")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(sections))
    print(f"wrote {args.out}/summary.md", flush=True)


if __name__ == "__main__":
    main()
