// Epilogues of one GEMM tile of the fused bf16 LM head on CPU (python_api/cpu_fused_head.cpp), torch-free.
//
// The fused head never writes a chunk of logits to memory: the micro-kernel computes a small fp32 tile
// z(v, t) = W[v] . h[t] of `entries` vocabulary entries times `tokens` tokens (at most kTileTokens), vocab-major,
// z(i, j) at tile[i * kTileTokens + j], and these functions consume it while it is in L1.
//
// The loops run over groups of 16 tokens held in vector registers (GCC/Clang vector extensions, so they compile
// to AVX-512 here and to narrower vectors elsewhere) with the vocabulary entries inside: every per-token
// accumulator and factor stays in a register for the whole tile. Columns of the tile past `tokens` are computed
// on but never stored; the caller keeps them finite (it zero-fills the tile once).
//
// Forward: running softmax statistics per token, updated tile by tile (an online max: when a tile raises a
// token's max, its sums are rescaled once, docs/math.md §6). Backward: dLoss/dz of the tile (the formulas of
// row_math.h's logit_grad) rounded to bf16 straight into the GEMM operand.
#pragma once

#include <stdint.h>

namespace gro {
namespace cpu {

constexpr int64_t kTileTokens = 64;

// Running statistics of a span of tokens, one array entry per token, relative to the running max of z (in
// logit units, not divided by tau): sum_exp = sum_v exp(s_v - m), sum_exp_shift = sum_v exp(s_v - m)(s_v - m)
// with s = z / tau and m = max / tau (a NaN or +inf logit makes both sums NaN). Start: max -inf, sums 0.
struct TokenStats {
  float* max;
  float* sum_exp;
  float* sum_exp_shift;
};

// Folds the tile into the statistics of its `tokens` tokens (stats point at the tile's first token). Blocked
// summation: the tile's exponentials are summed on their own, then added to the running sums (one sequential
// fp32 sum over a whole vocabulary would lose digits).
void tile_stats_update(const float* tile, int64_t entries, int64_t tokens, float inv_tau, TokenStats stats);

// Merges statistics b into a for `tokens` tokens (another vocabulary range's share of the same tokens).
void token_stats_merge(TokenStats a, TokenStats b, int64_t tokens, float inv_tau);

// The outputs of one token from its statistics (max in logit units): lse, logprob (target_logit null: the
// target is ignored or another shard's, logprob 0) and, when entropy is not null, the entropy (0 for an
// ignored token). A token that only saw -inf logits has no distribution: NaN outputs.
void token_finish(float max, float sum_exp, float sum_exp_shift, const float* target_logit, bool ignored,
                  float inv_tau, float* logprob, float* entropy, float* lse);

// Per-token inputs of the backward tile epilogue, one entry per token (pointing at the tile's first token):
// the saved lse, keep (0 for an ignored token, whose gradient is exactly 0), the upstream logprob gradient,
// target_entry (the row of the token's target in this tile, or -1: the one-hot term inv_tau * g_logprob goes
// there), and g_entropy / entropy (null: no entropy gradient).
struct TokenGradInputs {
  const float* lse;
  const float* keep;
  const float* g_logprob;
  const int32_t* target_entry;
  const float* g_entropy;
  const float* entropy;
};

// out(i, j) = bf16(dLoss/dz(i, j)) (round to nearest even) at out[i * ld_out + j] for i < entries, j < tokens.
// When tile_grad is true the fp32 gradient also replaces the tile (for the bias gradient's column sums).
void tile_logit_grad_bf16(float* tile, int64_t entries, int64_t tokens, float inv_tau, TokenGradInputs inputs,
                          uint16_t* out, int64_t ld_out, bool tile_grad);

}  // namespace cpu
}  // namespace gro
