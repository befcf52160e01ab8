"""Triton backend of linear_logprobs: launchers, default configs per target, torch.library ops.

Reduction across tiles in backward: fp32 atomics. Each (token tile, vocabulary tile) program owns
one dz tile, so dhidden[rows] sums over V/BLOCK_V programs and dweight[cols] over N/BLOCK_N.
- split + reduce would need a [V/BLOCK_V, N, H] (or [N/BLOCK_N, V, H]) partial buffer, far more
  memory than the logits we avoid, or a second logit recompute with owned accumulators (4 GEMMs of
  work instead of 3, and the same read-modify-write traffic on the accumulators);
- a lock per output row block serializes exactly the programs that run together;
- atomics keep the minimum of 3 GEMMs (recompute, dh, dW); the grouped launch order keeps the
  accumulated rows of the programs in flight L2-resident. Cost: fp32 summation order varies run
  to run (not bitwise deterministic), and 4*N*V*H*(1/BLOCK_N + 1/BLOCK_V) bytes of atomic traffic
  (benchmarks/roofline.py).
Env: GRO_AUTOTUNE=1 tunes BLOCK_K / warps / stages at first launch (block sizes of the token and
vocabulary tiles stay at the defaults, which fixes the forward's split layout).
"""

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from ..common import triton_helpers as tc
from . import triton_kernels as k


@dataclass(frozen=True)
class TileConfig:
    block_n: int
    block_v: int
    block_k: int
    num_warps: int
    num_stages: int


# Chosen on paper, checked with ptxas (benchmarks/results/triton_resources.md): sm_80 has 164 KB
# shared memory and 64K registers per SM, sm_90 228 KB. A 128x128 fp32 logit tile is 64 registers per thread at
# 8 warps; the forward's softmax temporaries and the backward's two [128, BLOCK_K] products fill
# the rest, so 128x256 tiles spill. The backward keeps 128x128 (not 64x128): atomic traffic scales
# with 1/BLOCK_N + 1/BLOCK_V, and BLOCK_K=32 is what keeps it spill-free on both targets.
# fp32/fp64 inputs feed 4-byte dot operands: half the BLOCK_K keeps the same shared memory (the
# sm_80 backward with BLOCK_K=32 would need 176 KB and spill).
CONFIGS = {
    "sm80": {"fwd": TileConfig(128, 128, 32, 8, 3), "bwd": TileConfig(128, 128, 32, 8, 2),
             "fwd_fp32": TileConfig(128, 128, 16, 8, 3), "bwd_fp32": TileConfig(128, 128, 16, 8, 2)},
    "sm90": {"fwd": TileConfig(128, 128, 64, 8, 3), "bwd": TileConfig(128, 128, 32, 8, 2),
             "fwd_fp32": TileConfig(128, 128, 32, 8, 3), "bwd_fp32": TileConfig(128, 128, 32, 8, 2)},
    # The interpreter costs ~0.3 ms per program per loop step: few, small programs.
    "interpreter": {"fwd": TileConfig(16, 64, 32, 1, 1), "bwd": TileConfig(16, 64, 32, 1, 1)},
}
MERGE_BLOCK = 256
# Backward launch order: programs in flight form a ~GROUP_N x (SMs / GROUP_N) block of tiles; near
# square (about sqrt(108..132)) minimizes the dh + dW rows they accumulate into, which stay in L2.
GROUP_N = 10
# Programs per SM the forward's vocabulary split aims for (small N otherwise leaves SMs idle).
_PROGRAMS_PER_SM = 2
_INTERPRETER_SMS = 4


def available() -> bool:
    """Triton importable (it is, if this module imported) and a CUDA device present."""
    return torch.cuda.is_available()


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """tl.dot operands in fp32 for fp32/fp64 inputs, and for bf16 under the interpreter (its bf16 is
    raw integers); otherwise the input dtype feeds the tensor cores with fp32 accumulation."""
    return dtype in (torch.float32, torch.float64) or (tc.interpreting() and dtype == torch.bfloat16)


def tile_config(target: str, which: str, dtype: torch.dtype) -> TileConfig:
    """Default tiles of kernel `which` ("fwd"/"bwd") on `target` for inputs of `dtype`."""
    table = CONFIGS[target]
    if dot_in_fp32(dtype) and f"{which}_fp32" in table:
        return table[f"{which}_fp32"]
    return table[which]


def _allow_tf32(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and not tc.interpreting() and torch.backends.cuda.matmul.allow_tf32


def _sm_count(device: torch.device) -> int:
    if tc.interpreting():
        return _INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def vocab_splits(n_rows: int, vocab: int, cfg: TileConfig, sms: int) -> tuple[int, int]:
    """(splits, tiles_per_split): enough (token tile, split) programs to fill the SMs."""
    n_tiles_n = triton.cdiv(n_rows, cfg.block_n)
    n_tiles_v = triton.cdiv(vocab, cfg.block_v)
    wanted = min(n_tiles_v, triton.cdiv(_PROGRAMS_PER_SM * sms, n_tiles_n))
    per_split = triton.cdiv(n_tiles_v, max(wanted, 1))
    return triton.cdiv(n_tiles_v, per_split), per_split


def _check(hidden, weight, bias, targets):
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        tc.require_launchable(name, t)
    if hidden.stride(1) != 1 or weight.stride(1) != 1 or (bias is not None and not bias.is_contiguous()):
        raise ValueError("backend='triton' needs hidden, weight and bias with unit stride in the last dim")


def forward(hidden, weight, bias, targets, *, inv_temperature, ignore_index, with_entropy, chunk_size):
    """Returns (logprobs [N] fp32, entropy [N] fp32 or empty [0], lse [N] fp32).

    chunk_size is unused: the tiled kernels never form a chunk; extra memory is 4 fp32 per token
    per vocabulary split."""
    _check(hidden, weight, bias, targets)
    n, vocab = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    logprobs, lse = torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    if n == 0:
        return logprobs, entropy, lse
    cfg = tile_config(tc.target_key(hidden.device), "fwd", hidden.dtype)
    splits, per_split = vocab_splits(n, vocab, cfg, _sm_count(hidden.device))
    part = torch.empty(splits, 4, n, **f32)
    bias_arg = bias if bias is not None else hidden
    flags = dict(HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v,
                 DOT_FP32=dot_in_fp32(hidden.dtype), ALLOW_TF32=_allow_tf32(hidden.dtype))
    grid = (triton.cdiv(n, cfg.block_n), splits)
    args = (hidden, weight, bias_arg, targets, part, n, vocab, hidden.shape[1], per_split, hidden.stride(0),
            weight.stride(0), float(inv_temperature))
    _launch("fwd", grid, args, flags, cfg)
    entropy_arg = entropy if with_entropy else lse
    torch.library.wrap_triton(k._linear_logprobs_merge_kernel)[(triton.cdiv(n, MERGE_BLOCK),)](
        part, targets, logprobs, entropy_arg, lse, n, splits, int(ignore_index),
        WITH_ENTROPY=bool(with_entropy), BLOCK=MERGE_BLOCK)
    return logprobs, entropy, lse


def backward(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, *,
             inv_temperature, ignore_index, chunk_size, needs_hidden, needs_weight, needs_bias):
    """Returns (dhidden or None, dweight or None, dbias or None) in the input dtype."""
    _check(hidden, weight, bias, targets)
    n, vocab = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    dh = torch.zeros(hidden.shape if needs_hidden else (0, 0), **f32)
    dw = torch.zeros(weight.shape if needs_weight else (0, 0), **f32)
    db = torch.zeros(vocab if needs_bias else 0, **f32)
    if n > 0 and (needs_hidden or needs_weight or needs_bias):
        cfg = tile_config(tc.target_key(hidden.device), "bwd", hidden.dtype)
        has_ge = grad_entropy is not None
        flags = dict(HAS_BIAS=bias is not None, HAS_GRAD_ENTROPY=has_ge, NEED_DH=needs_hidden, NEED_DW=needs_weight,
                     NEED_DB=needs_bias, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, GROUP_N=GROUP_N,
                     DOT_FP32=dot_in_fp32(hidden.dtype), ALLOW_TF32=_allow_tf32(hidden.dtype))
        grid = (triton.cdiv(n, cfg.block_n) * triton.cdiv(vocab, cfg.block_v),)
        args = (hidden, weight, bias if bias is not None else hidden, targets, lse,
                entropy if has_ge else lse, grad_logprobs, grad_entropy if has_ge else grad_logprobs,
                dh, dw, db, n, vocab, hidden.shape[1], hidden.stride(0), weight.stride(0),
                max(dh.stride(0), 1), max(dw.stride(0), 1), float(inv_temperature), int(ignore_index))
        _launch("bwd", grid, args, flags, cfg)

    def out(t, needed):
        return t.to(hidden.dtype) if needed else None

    return out(dh, needs_hidden), out(dw, needs_weight), out(db, needs_bias)


@torch.library.triton_op("gro::linear_logprobs_triton_fwd", mutates_args=())
def fwd_op(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
           temperature: float, ignore_index: int, with_entropy: bool, chunk_size: int, backend: str
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """forward() as a triton_op: torch.compile traces into its kernels. Same schema as
    gro::linear_logprobs_fwd so function.py reuses its autograd glue (backend is "triton")."""
    return forward(hidden, weight, bias, targets, inv_temperature=1.0 / temperature, ignore_index=ignore_index,
                   with_entropy=with_entropy, chunk_size=chunk_size)


@torch.library.triton_op("gro::linear_logprobs_triton_bwd", mutates_args=())
def bwd_op(grad_logprobs: torch.Tensor, grad_entropy: Optional[torch.Tensor], hidden: torch.Tensor,
           weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor, lse: torch.Tensor,
           entropy: torch.Tensor, temperature: float, ignore_index: int, chunk_size: int, backend: str,
           needs_hidden: bool, needs_weight: bool, needs_bias: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """backward() as a triton_op, schema of gro::linear_logprobs_bwd; unneeded gradients are empty."""
    grads = backward(grad_logprobs.float().contiguous(),
                     None if grad_entropy is None else grad_entropy.float().contiguous(), hidden, weight, bias,
                     targets, lse, entropy, inv_temperature=1.0 / temperature, ignore_index=ignore_index,
                     chunk_size=chunk_size, needs_hidden=needs_hidden, needs_weight=needs_weight,
                     needs_bias=needs_bias)
    return tuple(g if g is not None else hidden.new_empty(0) for g in grads)


def _launch(which, grid, args, flags, cfg):
    kernel = k._linear_logprobs_fwd_kernel if which == "fwd" else k._linear_logprobs_bwd_kernel
    if tc.autotune_enabled() and not tc.interpreting():
        torch.library.wrap_triton(_autotuned(which))[grid](*args, **flags)
        return
    torch.library.wrap_triton(kernel)[grid](*args, **flags, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                                            num_stages=cfg.num_stages)


@functools.cache
def _autotuned(which):
    """The kernel wrapped in triton.autotune over BLOCK_K x warps x stages (GRO_AUTOTUNE=1)."""
    configs = [triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s)
               for bk in (32, 64) for w in (4, 8) for s in (2, 3, 4)]
    if which == "fwd":
        return triton.autotune(configs, key=["hidden_dim", "vocab"])(k._linear_logprobs_fwd_kernel)
    # Atomic accumulators must be re-zeroed between timed trials.
    return triton.autotune(configs, key=["hidden_dim", "vocab"],
                           reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"])(k._linear_logprobs_bwd_kernel)


_TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_specs(target: str, dtype: torch.dtype = torch.bfloat16):
    """Every kernel variant with the default config of `target` ("sm80"/"sm90"), for AOT tests.

    Sizes and strides are i32 in the signature, as Triton specializes them for values < 2^31;
    every product with a stride is formed in int64 inside the kernels."""
    from ..common.triton_aot import KernelSpec

    fwd, bwd = tile_config(target, "fwd", dtype), tile_config(target, "bwd", dtype)
    t = _TORCH_TO_TRITON[dtype]
    dot32 = dot_in_fp32(dtype)
    fwd_types = dict(hidden_ptr=f"*{t}", weight_ptr=f"*{t}", bias_ptr=f"*{t}", targets_ptr="*i64", part_ptr="*fp32",
                     n_rows="i32", vocab="i32", hidden_dim="i32", tiles_per_split="i32", stride_hn="i32",
                     stride_wv="i32", inv_temperature="fp32")
    fwd_aligned = ("hidden_ptr", "weight_ptr", "bias_ptr", "targets_ptr", "part_ptr", "hidden_dim", "stride_hn",
                   "stride_wv")
    bwd_types = dict(fwd_types, lse_ptr="*fp32", entropy_ptr="*fp32", grad_lp_ptr="*fp32", grad_ent_ptr="*fp32",
                     dh_ptr="*fp32", dw_ptr="*fp32", db_ptr="*fp32", stride_dhn="i32", stride_dwv="i32",
                     ignore_index="i32")
    for name in ("part_ptr", "tiles_per_split"):
        bwd_types.pop(name)
    bwd_aligned = ("hidden_ptr", "weight_ptr", "bias_ptr", "targets_ptr", "lse_ptr", "entropy_ptr", "grad_lp_ptr",
                   "grad_ent_ptr", "dh_ptr", "dw_ptr", "db_ptr", "hidden_dim", "stride_hn", "stride_wv",
                   "stride_dhn", "stride_dwv")
    specs = []
    for bias in (False, True):
        consts = dict(HAS_BIAS=bias, BLOCK_N=fwd.block_n, BLOCK_V=fwd.block_v, BLOCK_K=fwd.block_k, DOT_FP32=dot32,
                      ALLOW_TF32=dtype == torch.float32)
        specs.append(KernelSpec(f"lp_fwd[{t}{',bias' if bias else ''}]", k._linear_logprobs_fwd_kernel, fwd_types,
                                consts, fwd_aligned, fwd.num_warps, fwd.num_stages))
    merge_types = dict(part_ptr="*fp32", targets_ptr="*i64", logprob_ptr="*fp32", entropy_ptr="*fp32",
                       lse_ptr="*fp32", n_rows="i32", n_splits="i32", ignore_index="i32")
    specs.append(KernelSpec("lp_fwd_merge", k._linear_logprobs_merge_kernel, merge_types,
                            dict(WITH_ENTROPY=True, BLOCK=MERGE_BLOCK), ("part_ptr", "targets_ptr", "logprob_ptr",
                                                                          "entropy_ptr", "lse_ptr"), 4, 1))
    for bias, entropy in ((False, False), (True, True)):
        consts = dict(HAS_BIAS=bias, HAS_GRAD_ENTROPY=entropy, NEED_DH=True, NEED_DW=True, NEED_DB=bias,
                      BLOCK_N=bwd.block_n, BLOCK_V=bwd.block_v, BLOCK_K=bwd.block_k, GROUP_N=GROUP_N,
                      DOT_FP32=dot32, ALLOW_TF32=dtype == torch.float32)
        tag = t + (",bias" if bias else "") + (",entropy" if entropy else "")
        specs.append(KernelSpec(f"lp_bwd[{tag}]", k._linear_logprobs_bwd_kernel, bwd_types, consts, bwd_aligned,
                                bwd.num_warps, bwd.num_stages))
    return specs
