"""Triton kernels of linear_logprobs: logits exist only as [BLOCK_N, BLOCK_V] register tiles.

Forward: each program streams a range of vocabulary tiles for BLOCK_N tokens, forming each logit
tile with tl.dot over H and folding it into an online (max, sum-exp, shifted sum p*z, target logit)
state; a merge kernel combines the vocabulary splits into lse, logprob and entropy (docs/math.md §1).
Backward: one program per (token tile, vocabulary tile) recomputes its logit tile from the saved
lse, forms dLoss/dz in registers and adds dz @ W into dhidden and dz^T @ h into dweight with fp32
atomics (see triton_impl.py for why atomics rather than a lock or split + reduce).

Every loaded value is converted to fp32 before arithmetic (the interpreter treats bf16 as raw
integers); DOT_FP32 selects fp32 tl.dot operands (interpreter, fp32/fp64 inputs) instead of the
input dtype (bf16/fp16 tensor cores).
"""

import triton
import triton.language as tl

from ..common.triton_helpers import offsets_i64

# Initial running max: finite, so `S * (m_old - m_new)` is 0 (not NaN) on the first tile.
_M_INIT = tl.constexpr(-1.0e30)


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr):
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ALLOW_TF32:
        return tl.dot(a, b, acc, input_precision="tf32")
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_dim, stride_hn, stride_wv,
                inv_temperature, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr):
    """(h[rows] @ W[cols]^T + b[cols]) * inv_temperature as an fp32 [BLOCK_N, BLOCK_V] tile."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    h_rows = hidden_ptr + rows[:, None] * stride_hn
    w_rows = weight_ptr + cols[:, None] * stride_wv
    for k0 in range(0, hidden_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden_dim
        h = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = _dot(h, tl.trans(w), acc, DOT_FP32, ALLOW_TF32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temperature


@triton.jit
def _linear_logprobs_fwd_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr, part_ptr,
                                n_rows, vocab, hidden_dim, tiles_per_split, stride_hn, stride_wv,
                                inv_temperature,
                                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                                BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr):
    """Grid (token tiles, vocabulary splits): program (i, s) owns rows [i*BLOCK_N, +BLOCK_N) and the
    vocabulary tiles [s*tiles_per_split, +tiles_per_split); it writes that range's partial
    (max, sum-exp, sum exp*(z-max), target logit) to part[s, 0..3, rows]."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = offsets_i64(pid_n * BLOCK_N, BLOCK_N)
    row_ok = rows < n_rows
    target = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), _M_INIT, tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    u = tl.zeros((BLOCK_N,), tl.float32)
    t_logit = tl.zeros((BLOCK_N,), tl.float32)
    tile0 = split * tiles_per_split
    tile_end = tl.minimum(tile0 + tiles_per_split, tl.cdiv(vocab, BLOCK_V))
    for tile in range(tile0, tile_end):
        cols = offsets_i64(tile * BLOCK_V, BLOCK_V)
        col_ok = cols < vocab
        z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_dim, stride_hn,
                        stride_wv, inv_temperature, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, DOT_FP32, ALLOW_TF32)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        shifted = z - m_new[:, None]
        e = tl.exp(shifted)
        alpha = tl.exp(m - m_new)
        # u is kept relative to the running max: sum e*(z - m). Re-basing adds s*(m_old - m_new).
        # Tail columns and -inf logits (banned tokens) have e = 0 and shifted = -inf: zero them before
        # the product, not after (0 * -inf = NaN). A NaN logit still poisons s through e.
        u = alpha * (u + s * (m - m_new)) + tl.sum(e * tl.where(e > 0.0, shifted, 0.0), axis=1)
        s = alpha * s + tl.sum(e, axis=1)
        m = m_new
        t_logit += tl.sum(tl.where(cols[None, :] == target[:, None], z, 0.0), axis=1)
    out = part_ptr + split.to(tl.int64) * 4 * n_rows + rows
    tl.store(out, m, mask=row_ok)
    tl.store(out + n_rows, s, mask=row_ok)
    tl.store(out + 2 * n_rows, u, mask=row_ok)
    tl.store(out + 3 * n_rows, t_logit, mask=row_ok)


@triton.jit
def _linear_logprobs_merge_kernel(part_ptr, targets_ptr, logprob_ptr, entropy_ptr, lse_ptr,
                                  n_rows, n_splits, ignore_index,
                                  WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (row blocks): program i merges the n_splits partial states of rows [i*BLOCK, +BLOCK)
    into lse = M + log S, logprob = z_y - lse, entropy = log S - U/S (U relative to M)."""
    rows = offsets_i64(tl.program_id(0) * BLOCK, BLOCK)
    row_ok = rows < n_rows
    split_stride = 4 * n_rows.to(tl.int64)
    m_all = tl.full((BLOCK,), _M_INIT, tl.float32)
    for split in range(0, n_splits):
        m_all = tl.maximum(m_all, tl.load(part_ptr + split * split_stride + rows, mask=row_ok, other=_M_INIT))
    s_all = tl.zeros((BLOCK,), tl.float32)
    u_all = tl.zeros((BLOCK,), tl.float32)
    t_all = tl.zeros((BLOCK,), tl.float32)
    for split in range(0, n_splits):
        base = part_ptr + split * split_stride + rows
        m = tl.load(base, mask=row_ok, other=_M_INIT)
        s = tl.load(base + n_rows, mask=row_ok, other=0.0)
        u = tl.load(base + 2 * n_rows, mask=row_ok, other=0.0)
        alpha = tl.exp(m - m_all)
        s_all += alpha * s
        u_all += alpha * (u + s * (m - m_all))
        t_all += tl.load(base + 3 * n_rows, mask=row_ok, other=0.0)
    s_all = tl.where(row_ok, s_all, 1.0)
    log_s = tl.log(s_all)
    lse = m_all + log_s
    valid = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index) != ignore_index
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(logprob_ptr + rows, tl.where(valid, t_all - lse, 0.0), mask=row_ok)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + rows, tl.where(valid, log_s - u_all / s_all, 0.0), mask=row_ok)


@triton.jit
def _linear_logprobs_bwd_kernel(hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, entropy_ptr,
                                grad_lp_ptr, grad_ent_ptr, dh_ptr, dw_ptr, db_ptr,
                                n_rows, vocab, hidden_dim, stride_hn, stride_wv, stride_dhn, stride_dwv,
                                inv_temperature, ignore_index,
                                HAS_BIAS: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr, NEED_DH: tl.constexpr,
                                NEED_DW: tl.constexpr, NEED_DB: tl.constexpr, BLOCK_N: tl.constexpr,
                                BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_N: tl.constexpr,
                                DOT_FP32: tl.constexpr, ALLOW_TF32: tl.constexpr):
    """Grid (token tiles x vocabulary tiles), flattened and grouped GROUP_N token tiles at a time so
    programs running together share dhidden rows and dweight rows in L2. Program (i, j) adds its
    tile's contribution to dh[rows i], dW[cols j], db[cols j] (fp32 workspaces) with atomics."""
    n_tiles_n = tl.cdiv(n_rows, BLOCK_N)
    n_tiles_v = tl.cdiv(vocab, BLOCK_V)
    pid = tl.program_id(0)
    group = pid // (GROUP_N * n_tiles_v)
    first_n = group * GROUP_N
    group_size = tl.minimum(n_tiles_n - first_n, GROUP_N)
    pid_n = first_n + (pid % (GROUP_N * n_tiles_v)) % group_size
    pid_v = (pid % (GROUP_N * n_tiles_v)) // group_size
    rows = offsets_i64(pid_n * BLOCK_N, BLOCK_N)
    cols = offsets_i64(pid_v * BLOCK_V, BLOCK_V)
    row_ok = rows < n_rows
    col_ok = cols < vocab
    target = tl.load(targets_ptr + rows, mask=row_ok, other=ignore_index)
    valid = row_ok & (target != ignore_index)
    g_l = tl.where(valid, tl.load(grad_lp_ptr + rows, mask=row_ok, other=0.0), 0.0)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    z = _logit_tile(hidden_ptr, weight_ptr, bias_ptr, rows, cols, row_ok, col_ok, hidden_dim, stride_hn,
                    stride_wv, inv_temperature, HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, DOT_FP32, ALLOW_TF32)
    # Ignored/tail rows and tail columns get log p = 0, so everything stays finite: those rows have
    # g = 0, and tail columns meet zero-filled W rows in dh and masked atomics in dW and db.
    log_p = tl.where(valid[:, None] & col_ok[None, :], z - lse[:, None], 0.0)
    log_p = tl.where(log_p < -1.0e4, -1.0e4, log_p)  # a -inf logit: p = 0 and p * log_p = 0 (NaN kept)
    p = tl.exp(log_p)
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    dz = g_l[:, None] * (onehot - p)
    if HAS_GRAD_ENTROPY:
        g_h = tl.where(valid, tl.load(grad_ent_ptr + rows, mask=row_ok, other=0.0), 0.0)
        ent = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)
        dz -= g_h[:, None] * p * (log_p + ent[:, None])
    dz = dz * inv_temperature
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_ok)
    dz_op = dz.to(hidden_ptr.dtype.element_ty)
    if DOT_FP32:
        dz_op = dz
    for k0 in range(0, hidden_dim, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden_dim
        if NEED_DH:
            w = tl.load(weight_ptr + cols[:, None] * stride_wv + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                        other=0.0)
            dh = _dot(dz_op, w, tl.zeros((BLOCK_N, BLOCK_K), tl.float32), DOT_FP32, ALLOW_TF32)
            tl.atomic_add(dh_ptr + rows[:, None] * stride_dhn + ks[None, :], dh,
                          mask=row_ok[:, None] & k_ok[None, :])
        if NEED_DW:
            h = tl.load(hidden_ptr + rows[:, None] * stride_hn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            dw = _dot(tl.trans(dz_op), h, tl.zeros((BLOCK_V, BLOCK_K), tl.float32), DOT_FP32, ALLOW_TF32)
            tl.atomic_add(dw_ptr + cols[:, None] * stride_dwv + ks[None, :], dw,
                          mask=col_ok[:, None] & k_ok[None, :])
