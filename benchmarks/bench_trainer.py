"""Training-step benchmark of the thin GRO trainer: fused loss vs the same trainer with a
materialized-logits loss (`loss_impl: materialized`, gro_loss backend "naive": [tokens, V] logits).

Model: a Llama built in code (hidden 256, 4 layers, V = 32000 by default) with a character tokenizer
over V - 4 code points, so sampled ids always decode; 8 prompts x G = 4 completions of up to 512 new
tokens, GRPO with a k3 KL to a frozen reference (beta 0.04), micro-batches of 8 sequences.

Each implementation runs in its own process (RSS high-water marks never go down; glibc's mmap
threshold is pinned so freed tensors leave the RSS). Reported per implementation, for the last step
(the first is a warm-up): step time and its generation / update parts, the step's peak RSS, the
update phase's peak above the RSS before it, and the loss side alone: peak memory above the inputs and
gradient outputs of gro_loss forward + backward on one micro-batch of decoder hidden states.

    python -m benchmarks.bench_trainer [--new-tokens 512] [--vocab 32000] [--steps 2] [--padding-free]

--padding-free compares the fused trainer on padded rows with the same trainer packing each micro-batch into
one row (GROConfig.padding_free) instead of fused vs materialized; `real_frac` is the share of the padded
[B, P + C] cells that are real tokens (what packing can save).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks import common

IMPLS = ("fused", "materialized")
PACKED_IMPLS = ("fused", "packed")  # --padding-free: "packed" is the fused loss with padding_free=True


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on this shared 2-core box two "
                   "threads with a busy neighbour make small GEMMs ~10x slower)")
    p.add_argument("--repeats", type=int, default=1, help="processes per implementation, interleaved; the "
                   "fastest step is reported (the machine is shared), memory from the first")
    p.add_argument("--out", default=None, help="output path prefix (default benchmarks/results/trainer, "
                   "or .../trainer_padding_free with --padding-free, so the committed fused/materialized table stays)")
    p.add_argument("--padding-free", action="store_true", help="compare padded vs packed (padding_free) "
                   "micro-batches of the fused trainer, instead of fused vs materialized")
    p.add_argument("--probe", choices=IMPLS + PACKED_IMPLS[1:], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args, impl, workdir):
    from gro_kernels.trainer import GROConfig, GROTrainer, tiny
    from gro_kernels.trainer.policy import copy_as_reference

    torch.manual_seed(0)
    alphabet = [chr(0x4E00 + i) for i in range(args.vocab - 4)]
    tok = tiny.char_tokenizer(alphabet)
    model = tiny.tiny_llama(tok, hidden_size=args.hidden, intermediate_size=int(2.75 * args.hidden),
                            num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                            max_position_embeddings=args.new_tokens + 32, attn_implementation="sdpa")
    gen = torch.Generator().manual_seed(1)
    prompts = ["".join(alphabet[int(i)] for i in torch.randint(len(alphabet), (8,), generator=gen))
               for _ in range(4 * args.prompts)]
    cfg = GROConfig(mode="online", preset="grpo", beta=0.04, num_generations=args.generations,
                    prompts_per_step=args.prompts, max_new_tokens=args.new_tokens, max_prompt_length=16,
                    micro_batch_size=args.micro_batch, max_steps=args.steps, learning_rate=1e-5,
                    loss_impl="fused" if impl == "packed" else impl, padding_free=impl == "packed",
                    output_dir=workdir, plot=False, progress_bar=False, save_steps=0)
    reward = lambda prompt, completion, **_: len(set(completion)) / (len(completion) + 1.0)  # noqa: E731
    return GROTrainer(model, copy_as_reference(model), tok, [reward], cfg, prompts)


def instrument(tr, log):
    """Time generation and the update phase; record the update phase's peak above its starting RSS."""
    sample, update = tr.sample_fn, tr._update

    def timed_sample(*a, **k):
        start = time.perf_counter()
        out = sample(*a, **k)
        log["generate_s"] = time.perf_counter() - start
        return out

    def measured_update(batch):
        log["batch"] = batch
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = common.rss_bytes()
        start = time.perf_counter()
        out = update(batch)
        log["update_s"] = time.perf_counter() - start
        log["update_extra_mb"] = (common.rss_high_water_bytes() - base) / common.MB
        return out

    tr.sample_fn, tr._update = timed_sample, measured_update


def loss_side_extra_mb(tr, batch, micro_batch, impl) -> float:
    """Peak MB above inputs and grad outputs of gro_loss fwd+bwd on one micro-batch of hidden states."""
    import gro_kernels
    from gro_kernels.trainer import policy

    from gro_kernels.trainer import packing

    r, rows = batch.rollout, torch.arange(min(micro_batch, batch.num_rows))
    args = (r.input_ids[rows], r.attention_mask[rows], r.completion_mask[rows], r.prompt_width)
    mask, ref, layout = r.completion_mask[rows], batch.ref_logprobs[rows], {}
    with torch.no_grad():
        if impl == "packed":  # the loss on the flat [N_total, H] completion rows, as the packed trainer runs it
            packed = packing.pack(*args)
            h = policy.packed_head_inputs(tr.model, packed)
            mask, ref = packing.flatten(mask, packed.keep), packing.flatten(ref, packed.keep)
            layout = {"cu_seqlens": packed.cu_seqlens}
        else:
            h = policy.head_inputs(tr.model, *args)
    hidden = h.hidden.detach().clone().requires_grad_(True)
    weight = h.weight.detach().clone().requires_grad_(True)
    backend = "naive" if impl == "materialized" else "auto"

    def step():
        out = gro_kernels.gro_loss(hidden, weight, h.targets, config=tr.preset, mask=mask, backend=backend,
                                   advantages=batch.rows["advantages"][rows], ref_logprobs=ref,
                                   temperature=tr.config.temperature, ignore_index=policy.IGNORE_INDEX,
                                   return_entropy=True, **layout)
        out.loss.backward()

    return common.measure_extra_memory(step) / common.MB


def probe(args):
    torch.set_num_threads(args.threads)
    log = {}
    with tempfile.TemporaryDirectory() as workdir:
        tr = build(args, args.probe, workdir)
        instrument(tr, log)
        records = [tr.train_step() for _ in range(args.steps)]
    last = records[-1]
    batch = log.pop("batch")
    return {"impl": args.probe, "step_s": last["step_time_s"], "generate_s": log["generate_s"],
            "update_s": log["update_s"], "step_peak_rss_mb": last.get("peak_mem_mb"),
            "update_extra_mb": log["update_extra_mb"],
            "loss_side_extra_mb": loss_side_extra_mb(tr, batch, args.micro_batch, args.probe),
            "tokens": batch.rollout.num_tokens(), "first_step_grad_norm": records[0]["grad_norm"],
            "real_frac": float(batch.rollout.attention_mask.float().mean())}


def run(args):
    """Both implementations, `args.repeats` interleaved processes each; writes <out>.json / <out>.md.
    Returns (markdown table, one-line summary)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    flags = [f"--hidden={args.hidden}", f"--layers={args.layers}", f"--vocab={args.vocab}",
             f"--prompts={args.prompts}", f"--generations={args.generations}", f"--new-tokens={args.new_tokens}",
             f"--micro-batch={args.micro_batch}", f"--steps={args.steps}", f"--threads={args.threads}"]
    impls = PACKED_IMPLS if args.padding_free else IMPLS
    results = {impl: [] for impl in impls}
    for _, impl in common.progress([(r, impl) for r in range(args.repeats) for impl in impls], "trainer steps"):
        cmd = [sys.executable, "-m", "benchmarks.bench_trainer", f"--probe={impl}", *flags]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"{impl} probe failed: {out.stderr.strip()[-2000:]}")
        results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for impl in impls:
        best = min(results[impl], key=lambda r: r["step_s"])
        rows.append(dict(results[impl][0], **{k: best[k] for k in ("step_s", "generate_s", "update_s")}))
    fused, mat = rows  # mat: the compared row (materialized, or packed with --padding-free)
    summary = {"shape": vars(args) | {"probe": None}, "environment": common.environment(), "rows": rows,
               "loss_side_ratio": mat["loss_side_extra_mb"] / max(fused["loss_side_extra_mb"], 1e-9),
               "update_extra_ratio": mat["update_extra_mb"] / max(fused["update_extra_mb"], 1e-9),
               "step_time_ratio": mat["step_s"] / fused["step_s"],
               "first_step_grad_norm_rel_diff": abs(mat["first_step_grad_norm"] - fused["first_step_grad_norm"])
               / fused["first_step_grad_norm"]}
    columns = [("impl", "loss", None), ("tokens", "tokens", None), ("real_frac", "real frac", "{:.2f}"),
               ("step_s", "step s", "{:.1f}"),
               ("generate_s", "generate s", "{:.1f}"), ("update_s", "update s", "{:.1f}"),
               ("step_peak_rss_mb", "step peak RSS MB", "{:.0f}"), ("update_extra_mb", "update extra MB", "{:.0f}"),
               ("loss_side_extra_mb", "loss-side extra MB", "{:.0f}")]
    table = common.format_table(rows, columns)
    other = impls[1]
    line = (f"loss-side memory: {other} / fused = {summary['loss_side_ratio']:.1f}x; update phase "
            f"{summary['update_extra_ratio']:.1f}x; step time {other} / fused = {summary['step_time_ratio']:.2f}; "
            f"first-step grad norm relative difference = {summary['first_step_grad_norm_rel_diff']:.1e}")
    out = args.out or "benchmarks/results/trainer" + ("_padding_free" if args.padding_free else "")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(out + ".md", "w") as f:
        f.write(table + "\n")
    return table, line


def main(argv=None):
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args)))
        return 0
    table, line = run(args)
    print(table)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
