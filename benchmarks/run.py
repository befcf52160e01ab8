"""The benchmark runner: every benchmark family against its baselines on the device present.

    python -m benchmarks.run [--quick] [--only linear_logprobs,losses,...] [--dtypes fp32,bf16] [--repeats 3]
        [--out bench_results]

Families: linear_logprobs (the fused primitive vs bare GEMMs, naive and the peers), losses (GRO losses
vs bare GEMMs, naive and Liger), both with a row per method and dtype of --dtypes in one table; ragged
(a long-tailed GRPO batch padded vs packed vs the dense floor, fp32 and bf16); vocab_parallel (per-rank
memory with the head sharded over 1-3 gloo ranks, fp32), trainer (GRO trainer steps, fused vs
materialized loss), trl (TRL GRPOTrainer steps: TRL's head vs gro tier 1 vs tier 2), roofline (the Triton
kernels on paper).
Each family's table is printed once, when it finishes; a progress bar (stderr) follows the long loops.
Writes <out>/summary.md (every table, with the environment it was measured in) and the per-family
CSV/JSON files and PNG plots. `make bench` runs it after installing the package and the optional peers.
"""

import argparse
import json
import os
import time

from benchmarks import (bench_linear_logprobs, bench_losses, bench_ragged, bench_trainer, bench_trl,
                        bench_vocab_parallel, common, roofline)


def _linear_logprobs(args):
    rows = bench_linear_logprobs.run(args.quick, args.repeats, True, args.out, dtypes=args.dtypes)
    return f"linear_logprobs ({', '.join(args.dtypes)})", common.format_table(rows, bench_linear_logprobs.COLUMNS)


def _losses(args):
    rows = bench_losses.run(args.out, ("grpo", "dpo"), args.repeats, args.quick, args.dtypes)
    return f"GRO losses ({', '.join(args.dtypes)}, hidden -> loss, fwd+bwd)", bench_losses.format_table(rows)


def _ragged(args):
    rows = bench_ragged.run(args.dtypes, repeats=args.repeats, quick=args.quick, out=args.out)
    return "Ragged GRPO batch: padded vs packed vs the dense floor", common.format_table(rows, bench_ragged.COLUMNS)


def _vocab_parallel(args):
    shape = (512, 64, 8192) if args.quick else (4096, 256, 128256)
    rows = bench_vocab_parallel.run_worlds(shape, [1, 2] if args.quick else [1, 2, 3])
    with open(os.path.join(args.out, "vocab_parallel.json"), "w") as f:
        json.dump(dict(shape=shape, rows=rows), f, indent=1)
    return "Vocabulary-parallel head (per-rank memory, gloo ranks)", bench_vocab_parallel.markdown(shape, rows)


def _trainer(args):
    small = ["--hidden=64", "--layers=1", "--vocab=2048", "--prompts=2", "--generations=2", "--new-tokens=32",
             "--micro-batch=4", "--steps=1"]
    options = small if args.quick else [f"--repeats={max(1, args.repeats // 2)}"]
    table, line = bench_trainer.run(bench_trainer.parse_args(options + [f"--out={args.out}/trainer"]))
    return "GRO trainer step (fused vs materialized loss)", table + "\n\n" + line


def _trl(args):
    options = (["--quick"] if args.quick else []) + [f"--repeats={args.repeats}", f"--dtypes={','.join(args.dtypes)}",
                                                     f"--out={args.out}/trl_grpo"]
    bench_args = bench_trl.parse_args(options)
    rows = bench_trl.run(bench_args)
    common.write_csv(bench_args.out + ".csv", rows)
    title = "TRL GRPO training step: TRL's head vs gro tier 1 vs tier 2 (gro_loss=True)"
    return title, bench_trl.markdown(bench_args, rows)


def _roofline(args):
    return "Triton kernels on H100/H200 (paper roofline, not measured here)", roofline.markdown(roofline.rows())


FAMILIES = {"linear_logprobs": _linear_logprobs, "losses": _losses, "ragged": _ragged,
            "vocab_parallel": _vocab_parallel,
            "trainer": _trainer, "trl": _trl, "roofline": _roofline}


def _write_summary(out, sections):
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(sections))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run of every family")
    parser.add_argument("--only", default=",".join(FAMILIES), help=f"comma list of {list(FAMILIES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", type=common.parse_dtypes, default=tuple(common.DTYPES),
                        help="dtypes of the linear_logprobs and losses rows (comma list of fp32, bf16)")
    parser.add_argument("--out", default="bench_results")
    args = parser.parse_args(argv)
    families = [f for f in args.only.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {list(FAMILIES)}")
    os.makedirs(args.out, exist_ok=True)
    env = common.environment()
    print(json.dumps(env), flush=True)
    sections = [f"# gro-kernels benchmarks\n\nEnvironment: `{json.dumps(env)}`\n"]
    start = time.time()
    for name in common.progress(families, "benchmark families"):
        title, table = FAMILIES[name](args)
        sections.append(f"## {title}\n\n{table}\n")
        print(f"\n## {title}\n\n{table}\n", flush=True)
        _write_summary(args.out, sections)  # after each family, so a cut-short run keeps what it measured
    sections.append(f"Total benchmark time: {time.time() - start:.0f} s; load average at the end: "
                    f"{os.getloadavg()[0]:.2f}\n")
    _write_summary(args.out, sections)
    print(f"wrote {args.out}/summary.md", flush=True)


if __name__ == "__main__":
    main()
