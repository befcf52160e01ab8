"""Ragged RL batches: GRPO forward + backward on a long-tailed batch, padded vs packed vs the dense floor.

    python -m benchmarks.bench_ragged [--repeats 3] [--dtypes fp32,bf16] [--quick] [--out bench_results]

The batch: B = 16 sequences (2 prompts x G 8) whose completion lengths follow a log-normal law with
median ~1/4 of the cap (cap 2048), clipped to [16, cap], so a few reach the cap and the padded [B, cap]
batch is mostly padding; H 1024, V 32000. The loss is gro_loss preset grpo with given advantages and old
logprobs (grad-in-forward). Methods, round-robin in one process:
- gro padded + mask: [B, cap, H] hidden, mask False on padding (padding rows are compacted away);
- gro packed: the valid tokens only, [N_valid, H] with cu_seqlens;
- dense floor: the same valid tokens as a dense [1, N_valid] batch (the least work any layout can do);
- gro padded, every row computed: mask=None on the padded batch (padding gets advantage 0), i.e. the work
  of the padded path before compaction;
- naive padded: materialized [B, cap, V] logits, plain autograd;
- Liger-Kernel's LigerFusedLinearGRPOLoss on the padded batch, when installed.
The valid fraction is printed with the table; each row is its time and its ratio to the dense floor.
"""

import argparse
import math
import os

import torch

import gro_kernels
from benchmarks import bench_linear_logprobs, common

DTYPES = common.DTYPES
EPS = 0.2


def ragged_lengths(batch, cap, seed=0):
    """Completion lengths: log-normal, median cap / 4, a long tail clipped at the cap."""
    g = torch.Generator().manual_seed(seed)
    draw = torch.exp(torch.randn(batch, generator=g) * 0.9 + math.log(cap / 4))
    return draw.round().clamp(16, cap).long()


def make_batch(lengths, cap, hidden_size, vocab, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    mask = torch.arange(cap)[None, :] < lengths[:, None]
    hidden = (torch.randn(b, cap, hidden_size, generator=g) * 0.5).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size ** 0.5).to(dtype)
    targets = torch.randint(0, vocab, (b, cap), generator=g)
    old = -torch.rand(b, cap, generator=g) * 3
    adv = torch.randn(b, generator=g)
    cu = torch.zeros(b + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, old=old, adv=adv, cu_seqlens=cu)


def _leaf(t):
    return t.detach().clone().requires_grad_()


def methods(x):
    """name -> step(): one fwd+bwd of that method on fresh leaf copies of the batch's tensors."""
    m = x["mask"]
    flat = dict(hidden=x["hidden"][m], targets=x["targets"][m], old=x["old"][m],
                adv_tok=x["adv"][:, None].expand_as(m)[m])
    table = {}

    def padded():
        h, w = _leaf(x["hidden"]), _leaf(x["weight"])
        gro_kernels.gro_loss(h, w, x["targets"], preset="grpo", mask=m, advantages=x["adv"],
                             old_logprobs=x["old"]).loss.backward()

    def packed():
        h, w = _leaf(flat["hidden"]), _leaf(x["weight"])
        gro_kernels.gro_loss(h, w, flat["targets"], preset="grpo", cu_seqlens=x["cu_seqlens"], advantages=x["adv"],
                             old_logprobs=flat["old"]).loss.backward()

    def floor():
        h, w = _leaf(flat["hidden"][None]), _leaf(x["weight"])
        gro_kernels.gro_loss(h, w, flat["targets"][None], preset="grpo", advantages=flat["adv_tok"][None],
                             old_logprobs=flat["old"][None]).loss.backward()

    def every_row():
        h, w = _leaf(x["hidden"]), _leaf(x["weight"])
        adv = torch.where(m, x["adv"][:, None], 0.0)
        gro_kernels.gro_loss(h, w, x["targets"], preset="grpo", advantages=adv, old_logprobs=x["old"]).loss.backward()

    def naive():
        h, w = _leaf(x["hidden"]), _leaf(x["weight"])
        logp = torch.log_softmax((h @ w.t()).float(), -1).gather(-1, x["targets"][..., None])[..., 0]
        _grpo_loss(logp, x).backward()

    table.update({"gro padded + mask": padded, "gro packed (cu_seqlens)": packed, "dense floor": floor,
                  "gro padded, every row computed": every_row})
    logits_bytes = m.numel() * x["weight"].shape[0] * 4 * 3  # logits, log-softmax, their gradient (fp32)
    if common.fits_in_memory(logits_bytes):
        table["naive padded"] = naive
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception:  # not installed, or incompatible with this torch / triton
        LigerFusedLinearGRPOLoss = None
    if LigerFusedLinearGRPOLoss is not None:
        module = LigerFusedLinearGRPOLoss(beta=0.0, epsilon_low=EPS, epsilon_high=EPS, loss_type="grpo",
                                          use_ref_model=False)

        def liger():
            h, w = _leaf(x["hidden"]), _leaf(x["weight"])
            out = module(h, w, x["targets"], m.long(), x["adv"], old_per_token_logps=x["old"])
            (out[0] if isinstance(out, tuple) else out).backward()

        table["Liger GRPO padded"] = liger
    try:
        trl_logprobs = bench_linear_logprobs.trl_logprobs()
    except Exception:  # trl not installed
        trl_logprobs = None
    if trl_logprobs is not None:
        def trl():
            # TRL 1.16's own head on CPU scores every padded position; the GRPO loss on top as in naive().
            h, w = _leaf(x["hidden"]), _leaf(x["weight"])
            logp = trl_logprobs(h.reshape(-1, h.shape[-1]), w, x["targets"].reshape(-1)).view(m.shape)
            _grpo_loss(logp, x).backward()

        table["TRL ChunkedLogProb head padded"] = trl
    return table


def _grpo_loss(logp, x):
    m = x["mask"].float()
    ratio = torch.exp(torch.clamp(logp.float() - x["old"], -20, 20))
    adv = x["adv"][:, None]
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - EPS, 1 + EPS) * adv)
    return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def check_agreement(x):
    """Padded and packed give the same loss (checked before timing)."""
    m = x["mask"]
    pad = gro_kernels.gro_loss(x["hidden"], x["weight"], x["targets"], preset="grpo", mask=m, advantages=x["adv"],
                               old_logprobs=x["old"]).loss
    pack = gro_kernels.gro_loss(x["hidden"][m], x["weight"], x["targets"][m], preset="grpo",
                                cu_seqlens=x["cu_seqlens"], advantages=x["adv"], old_logprobs=x["old"][m]).loss
    return float((pad - pack).abs() / pad.abs().clamp(min=1e-12))


def run(dtypes=("fp32", "bf16"), repeats=3, quick=False, out="bench_results", only=None, csv_name="ragged.csv"):
    """only: method names to time (with the floor always); csv_name: the result file in `out`."""
    cap, hidden_size, vocab, batch = (256, 128, 4096, 16) if quick else (2048, 1024, 32000, 16)
    lengths = ragged_lengths(batch, cap)
    rows = []
    for name in common.progress(dtypes, "ragged dtypes"):
        x = make_batch(lengths, cap, hidden_size, vocab, DTYPES[name])
        valid = float(x["mask"].float().mean())
        rel = check_agreement(x)
        table = methods(x)
        if only is not None:
            table = {k: v for k, v in table.items() if k in only or k == "dense floor"}
        times = common.time_round_robin(table, repeats)
        floor = times["dense floor"]
        for method, seconds in times.items():
            rows.append(dict(dtype=name, method=method, B=batch, cap=cap, H=hidden_size, V=vocab,
                             valid_tokens=int(lengths.sum()), valid_fraction=valid, seconds=seconds,
                             x_floor=seconds / floor, packed_vs_padded_rel_diff=rel))
    os.makedirs(out, exist_ok=True)
    common.write_csv(os.path.join(out, csv_name), rows)
    return rows


COLUMNS = [("dtype", "dtype", None), ("method", "method", None), ("valid_tokens", "valid tokens", None),
           ("valid_fraction", "valid fraction", "{:.3f}"), ("seconds", "median s", "{:.3f}"),
           ("x_floor", "x dense floor", "{:.2f}")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", type=common.parse_dtypes, default=tuple(DTYPES))
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--out", default="bench_results")
    parser.add_argument("--methods", default=None, help="comma list of method names to time (the floor always runs)")
    parser.add_argument("--csv", default="ragged.csv", help="result file name in --out")
    args = parser.parse_args(argv)
    rows = run(args.dtypes, args.repeats, args.quick, args.out,
               None if args.methods is None else args.methods.split(","), args.csv)
    print(common.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
