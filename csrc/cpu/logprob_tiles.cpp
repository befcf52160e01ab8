// Tile epilogues of the fused bf16 LM head (see logprob_tiles.h).
#include "logprob_tiles.h"

#include <algorithm>

#include "vec16.h"

namespace gro {
namespace cpu {
namespace {

// `width` <= 16 entries of src, padded with `pad`, as one vector.
Vec16 load_padded(const float* src, int64_t width, float pad) {
  float lanes[kLanes];
  std::fill_n(lanes, kLanes, pad);
  std::copy_n(src, width, lanes);
  return load16(lanes);
}

void store_partial(float* dst, Vec16 v, int64_t width) {
  float lanes[kLanes];
  store16(lanes, v);
  std::copy_n(lanes, width, dst);
}

// `width` lanes of a row of the dLoss/dz operand (streaming stores measured no faster).
inline void store_bf16(uint16_t* dst, Half16 v, int64_t width) {
  memcpy(dst, &v, static_cast<size_t>(width) * sizeof(uint16_t));
}

}  // namespace

void tile_stats_update(const float* tile, int64_t entries, int64_t tokens, float inv_tau, TokenStats stats) {
  for (int64_t j0 = 0; j0 < tokens; j0 += kLanes) {
    const int64_t width = std::min(kLanes, tokens - j0);
    const float* column = tile + j0;
    const Vec16 old_max = load_padded(stats.max + j0, width, -INFINITY);
    Vec16 max = old_max;
    for (int64_t i = 0; i < entries; ++i) {
      const Vec16 z = load16(column + i * kTileTokens);
      max = select(z > max, z, max);  // a NaN logit is skipped here (and poisons below)
    }
    // Shifts against the new max; while a token has seen only -inf logits, against 0, so that a -inf logit
    // gives a clamped shift (exp 0) instead of -inf - -inf = NaN.
    const Vec16 ref = select(max == -INFINITY, splat(0.0f), max);
    // Shifts in base 2, t = (z - max) / tau * log2(e): (z - max) first, so exactly 0 at the max and never
    // positive (z / tau - max / tau contracted into an FMA would keep the product's rounding error, row_math.h).
    const float to_base2 = inv_tau * kExpLog2e;
    Vec16 block_exp = splat(0.0f), block_shift = splat(0.0f);
    for (int64_t i = 0; i < entries; ++i) {
      // A NaN logit (skipped by the max), or +inf (max +inf, shift inf - inf), makes the shift NaN, and the
      // NaN reaches the token's sums, hence all its outputs.
      const Vec16 t = clamp_shift2_16((load16(column + i * kTileTokens) - ref) * to_base2);
      const Vec16 e = exp2_clamped16<5>(t);
      block_exp += e;
      block_shift += e * t;
    }
    // The sums so far were taken against the old max: rescale by exp(d), shifts + d, d = (old - new) / tau <= 0.
    // An old max of -inf had no mass (sums 0): d is clamped, not NaN.
    const Vec16 d2 = clamp_shift2_16(select(old_max == -INFINITY, splat(-INFINITY), (old_max - ref) * to_base2));
    const Vec16 scale = exp2_clamped16<5>(d2);
    const Vec16 old_exp = load_padded(stats.sum_exp + j0, width, 0.0f);
    const Vec16 old_shift = load_padded(stats.sum_exp_shift + j0, width, 0.0f);
    store_partial(stats.sum_exp + j0, scale * old_exp + block_exp, width);
    store_partial(stats.sum_exp_shift + j0, scale * (old_shift + d2 * kLn2 * old_exp) + block_shift * kLn2, width);
    store_partial(stats.max + j0, max, width);
  }
}

void token_stats_merge(TokenStats a, TokenStats b, int64_t tokens, float inv_tau) {
  for (int64_t j = 0; j < tokens; ++j) {
    RowStats x, y;
    x.max = a.max[j] * inv_tau;
    x.sum_exp = a.sum_exp[j];
    x.sum_exp_shift = a.sum_exp_shift[j];
    y.max = b.max[j] * inv_tau;
    y.sum_exp = b.sum_exp[j];
    y.sum_exp_shift = b.sum_exp_shift[j];
    const RowStats m = row_stats_merge(x, y);
    a.max[j] = a.max[j] > b.max[j] ? a.max[j] : b.max[j];
    a.sum_exp[j] = m.sum_exp;
    a.sum_exp_shift[j] = m.sum_exp_shift;
  }
}

void token_finish(float max, float sum_exp, float sum_exp_shift, const float* target_logit, bool ignored,
                  float inv_tau, float* logprob, float* entropy, float* lse) {
  const float poison = max == -INFINITY ? NAN : 0.0f;  // every logit -inf: no distribution
  RowStats s;
  s.max = max * inv_tau + poison;
  s.sum_exp = sum_exp + poison;
  s.sum_exp_shift = sum_exp_shift;
  *lse = row_lse(s);
  *logprob = target_logit != nullptr ? *target_logit * inv_tau - *lse : 0.0f;
  if (entropy != nullptr) *entropy = ignored ? 0.0f : row_entropy(s);
}

namespace {

template <bool kEntropy>
void grad_columns(float* tile, int64_t entries, int64_t j0, int64_t width, float inv_tau, TokenGradInputs in,
                  uint16_t* out, int64_t ld_out, bool tile_grad) {
  const Vec16 lse = load_padded(in.lse + j0, width, 0.0f);
  const Int16 keep = load_padded(in.keep + j0, width, 0.0f) != 0.0f;
  const Vec16 g_logprob = select(keep, load_padded(in.g_logprob + j0, width, 0.0f), splat(0.0f));
  const Vec16 coef = -inv_tau * g_logprob;
  const Vec16 one_hot = inv_tau * g_logprob;  // logit_grad_target_extra
  int32_t entry_lanes[kLanes];
  std::fill_n(entry_lanes, kLanes, -1);
  std::copy_n(in.target_entry + j0, width, entry_lanes);
  const Int16 target_entry = load16i(entry_lanes);
  Vec16 g_entropy = splat(0.0f), entropy = splat(0.0f);
  if (kEntropy) {
    g_entropy = load_padded(in.g_entropy + j0, width, 0.0f);
    entropy = load_padded(in.entropy + j0, width, 0.0f);
  }
  // log p in base 2: z / tau * log2(e) - lse * log2(e), one FMA per logit (as logit_grad's z * inv_tau - lse).
  const float to_base2 = inv_tau * kExpLog2e;
  const Vec16 lse2 = lse * kExpLog2e;
  for (int64_t i = 0; i < entries; ++i) {
    float* z = tile + i * kTileTokens + j0;
    const Vec16 log2_p = clamp_shift2_16(load16(z) * to_base2 - lse2);  // a -inf logit: p = 0, log p clamped
    const Vec16 p = exp2_clamped16<4>(log2_p);
    Vec16 g;
    if (kEntropy) {
      // logit_grad (row_math.h): (1/tau) p (-g_l - g_H (log p + H))
      g = inv_tau * p * (-g_logprob - g_entropy * (log2_p * kLn2 + entropy));
    } else {
      g = coef * p;
    }
    g = select(keep, g, splat(0.0f));  // exact zeros for an ignored token, even for non-finite logits
    g += select(target_entry == static_cast<int32_t>(i), one_hot, splat(0.0f));
    if (tile_grad) store16(z, g);
    store_bf16(out + i * ld_out + j0, to_bf16(g), width);
  }
}

}  // namespace

void tile_logit_grad_bf16(float* tile, int64_t entries, int64_t tokens, float inv_tau, TokenGradInputs inputs,
                          uint16_t* out, int64_t ld_out, bool tile_grad) {
  for (int64_t j0 = 0; j0 < tokens; j0 += kLanes) {
    const int64_t width = std::min(kLanes, tokens - j0);
    if (inputs.g_entropy != nullptr) {
      grad_columns<true>(tile, entries, j0, width, inv_tau, inputs, out, ld_out, tile_grad);
    } else {
      grad_columns<false>(tile, entries, j0, width, inv_tau, inputs, out, ld_out, tile_grad);
    }
  }
}

}  // namespace cpu
}  // namespace gro
