"""TRL GRPO training steps on CPU: TRL's own head + loss vs gro tier 1 vs gro tier 2 (gro_loss=True).

    python -m benchmarks.bench_trl [--quick] [--dtypes fp32,bf16] [--repeats 3] [--out benchmarks/results/trl_grpo]

One step is TRL's GRPOTrainer.training_step (the loss forward + backward through the whole tiny decoder) on a
fixed batch of sampled completions: generation is replaced by fixed random completions (full length, or
ragged with --ragged; random advantages), since it is the same for every method and would dominate a CPU
step. TRL 1.16 always runs its chunked head (4 head GEMMs: logits, recomputed logits, dhidden, dW); tier 2
runs gro_loss's grad-in-forward loop (3 GEMMs). Tier 1 (gro_kernels.integrations.trl.GROGRPOTrainer, gro's
head under TRL's loss) is timed when that module is importable, else its row says so.

Rows: fp32 (fp32 model, bf16=False) and bf16 (fp32 model, bf16=True: TRL's default autocast). Time: median
over repeats, methods round-robin in one process, after a check that each method's loss and lm_head
gradient agree with TRL's. Memory: each method in a fresh interpreter; "step extra MB" is the RSS high-water
mark of one step above the RSS with the model, its gradients and the batch already allocated
(docs/testing.md, Memory).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

from benchmarks import common

METHODS = ("trl_head", "gro_tier1", "gro_tier2")
TIER1_MISSING = "gro_kernels.integrations.trl not in this branch"
COLUMNS = [("dtype", "dtype", None), ("method", "method", None), ("tokens", "completion tokens", None),
           ("step_s", "step s", "{:.2f}"), ("vs_trl", "TRL / method", "{:.2f}"),
           ("extra_mb", "step extra MB", "{:.0f}"), ("loss_rel_diff", "loss rel diff", "{:.1e}"),
           ("dw_rel_diff", "dW rel diff", "{:.1e}"), ("note", "note", None)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--sequences", type=int, default=8, help="completions per micro-batch (4 prompts x 2)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=512)
    p.add_argument("--ragged", action="store_true", help="completion lengths uniform in [C/2, C] (default: all C)")
    p.add_argument("--loss-type", default="dapo", help="TRL's default")
    p.add_argument("--beta", type=float, default=0.0, help="TRL's default")
    p.add_argument("--dtypes", type=common.parse_dtypes, default=tuple(common.DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/trl_grpo")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.vocab, args.hidden, args.layers, args.completion_len, args.repeats = 4096, 64, 1, 128, 2
    return args


def tier1_class():
    """The tier-1 trainer class, or None while gro_kernels.integrations.trl is not there."""
    try:
        from gro_kernels.integrations.trl import GROGRPOTrainer
    except ImportError:
        return None
    return GROGRPOTrainer


def save_model(args, path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(29)]  # generation is not run: any small vocab
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=args.prompt_len + args.completion_len, pad_token_id=0,
                         eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)


def build_trainer(args, method, path, dtype):
    """A GRPOTrainer for `method` whose training_step scores the fixed batch instead of generating one."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from gro_kernels.integrations.trl_gro_loss import install_gro_loss

    cls = GRPOTrainer
    if method == "gro_tier1":
        cls = tier1_class()
        if cls is None:
            return None
    config = GRPOConfig(output_dir=os.path.join(path, "out"), per_device_train_batch_size=args.sequences,
                        num_generations=2, max_completion_length=args.completion_len, report_to=[], use_cpu=True,
                        save_strategy="no", bf16=dtype == "bf16", loss_type=args.loss_type, beta=args.beta,
                        use_bias_correction_kl=False, disable_tqdm=True)
    trainer = cls(model=path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=config,
                  train_dataset=Dataset.from_dict({"prompt": ["w3 w4"] * args.sequences}),
                  processing_class=PreTrainedTokenizerFast.from_pretrained(path))
    if method == "gro_tier2":
        install_gro_loss(trainer)
    trainer._prepare_inputs = lambda batch: batch  # the fixed batch is the prepared micro-batch
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def fixed_batch(args):
    """Sampled completions: random ids, full length C (--ragged: uniform in [C/2, C]), advantages ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(0)
    b, p, c = args.sequences, args.prompt_len, args.completion_len
    lengths = torch.randint(c // 2, c + 1, (b,), generator=gen) if args.ragged else torch.full((b,), c)
    completion_mask = (torch.arange(c)[None, :] < lengths[:, None]).long()
    batch = {"prompt_ids": torch.randint(3, args.vocab, (b, p), generator=gen),
             "prompt_mask": torch.ones(b, p, dtype=torch.long),
             "completion_ids": torch.randint(3, args.vocab, (b, c), generator=gen) * completion_mask,
             "completion_mask": completion_mask,
             "advantages": torch.randn(b, generator=gen),
             "num_items_in_batch": completion_mask.sum()}
    if args.beta != 0.0:
        batch["ref_per_token_logps"] = -math.log(args.vocab) + 0.1 * torch.randn(b, c, generator=gen)
    return batch


def step_fn(trainer, batch):
    def step():
        trainer.training_step(trainer.model, batch, None)
    return step


def head_weight(trainer):
    return trainer.model.get_output_embeddings().weight


def loss_and_dw(trainer, batch):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.training_step(trainer.model, batch, None)
    return float(loss), head_weight(trainer).grad.detach().clone()


def probe(args):
    """One method in this fresh process: peak extra RSS of one step (JSON line on stdout)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as path:
        save_model(args, path)
        trainer = build_trainer(args, args.method, path, args.dtype)
        batch = fixed_batch(args)
        extra = common.measure_extra_memory(step_fn(trainer, batch),
                                            reset=lambda: trainer.model.zero_grad(set_to_none=False))
    return {"extra_mb": extra / common.MB}


def time_dtype(args, dtype, path):
    trainers = {m: build_trainer(args, m, path, dtype) for m in METHODS}
    trainers = {m: t for m, t in trainers.items() if t is not None}
    batch = fixed_batch(args)
    want_loss, want_dw = loss_and_dw(trainers["trl_head"], batch)
    checks = {}
    for method, trainer in trainers.items():
        loss, dw = loss_and_dw(trainer, batch)
        checks[method] = (abs(loss - want_loss) / max(abs(want_loss), 1e-12),
                          float((dw - want_dw).norm() / want_dw.norm()))
    times = common.time_round_robin({m: step_fn(t, batch) for m, t in trainers.items()}, args.repeats)
    return times, checks, int(batch["completion_mask"].sum())


def run(args):
    torch.set_num_threads(args.threads)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    rows = []
    with tempfile.TemporaryDirectory() as path:
        save_model(args, path)
        for dtype in args.dtypes:
            times, checks, tokens = time_dtype(args, dtype, path)
            for method in METHODS:
                row = {"dtype": dtype, "method": method, "tokens": tokens}
                if method not in times:
                    rows.append(dict(row, note=TIER1_MISSING))
                    continue
                flags = _flags(args) + [f"--method={method}", f"--dtype={dtype}"]
                cmd = [sys.executable, "-m", "benchmarks.bench_trl", "--memory-probe", *flags]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
                memory = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else \
                    {"note": "memory probe failed: " + out.stderr.strip()[-200:]}
                rows.append(dict(row, step_s=times[method], vs_trl=times["trl_head"] / times[method],
                                 loss_rel_diff=checks[method][0], dw_rel_diff=checks[method][1], **memory))
    return rows


def _flags(args):
    return [f"--vocab={args.vocab}", f"--hidden={args.hidden}", f"--layers={args.layers}",
            f"--sequences={args.sequences}", f"--prompt-len={args.prompt_len}",
            f"--completion-len={args.completion_len}", *(["--ragged"] if args.ragged else []),
            f"--loss-type={args.loss_type}", f"--beta={args.beta}", f"--threads={args.threads}"]


def markdown(args, rows):
    shape = (f"tiny Llama: V={args.vocab}, H={args.hidden}, {args.layers} layers; {args.sequences} completions x "
             f"{args.completion_len} tokens ({'ragged, lengths in [C/2, C]' if args.ragged else 'full length'}) + "
             f"{args.prompt_len}-token prompts; "
             f"loss_type={args.loss_type}, beta={args.beta}; {args.threads} threads; median of {args.repeats}; "
             f"load average at the end {os.getloadavg()[0]:.1f}")
    return shape + "\n\n" + common.format_table(rows, COLUMNS) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(probe(args)))
        return
    rows = run(args)
    common.write_csv(args.out + ".csv", rows)
    common.write_text(args.out + ".md", markdown(args, rows))


if __name__ == "__main__":
    main()
