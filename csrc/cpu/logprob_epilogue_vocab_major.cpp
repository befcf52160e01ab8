// Vocab-major chunk epilogues: z(r, v) at logits[v * ld + r], the layout of W h^T [vocab, rows].
//
// Grid: OpenMP splits the vocabulary into one contiguous range per thread. Every inner loop runs
// over the chunk's tokens, which are contiguous in this layout, so it vectorizes without gathers
// and memory is streamed in order. The forward keeps per-token running statistics (max, sum-exp,
// shifted sum) per thread and walks its range in blocks of vocabulary entries small enough to stay
// in L2 between the block's max pass and its exp pass: each logit is read from memory once. The
// threads' statistics are merged per token at the end (row_stats_merge), exactly as the
// token-major epilogue merges its blocks.
#include <vector>

#include "../common/row_math.h"
#include "logprob_epilogue.h"

namespace gro {
namespace cpu {
namespace {

constexpr int64_t kUnroll = 4;

// Vocabulary entries per block: about block_bytes of logits, which stay in L2 between the
// block's max pass and its exp pass; at least kUnroll entries.
int64_t block_entries(int64_t rows) {
  constexpr int64_t block_bytes = 512 * 1024;
  const int64_t entries = block_bytes / (4 * (rows > 0 ? rows : 1));
  return entries > kUnroll ? entries : kUnroll;
}

// One thread's per-token statistics over its vocabulary range, relative to the running max
// (RowStats, as parallel arrays so the loops over tokens vectorize). `poison` turns NaN when a
// token saw a non-finite logit (x * 0 is NaN for NaN and +-inf), so the token's outputs become NaN.
struct TokenStats {
  float* max;
  float* sum_exp;
  float* sum_exp_shift;
  float* poison;
  float* block_max;  // scratch
};

// Vocabulary entries [v0, v1) of every token: a max pass, a move of the running sums to the new
// max, then an exp pass. Both passes take kUnroll vocabulary entries per sweep over the tokens, so
// the per-token arrays are loaded and stored once per kUnroll logits.
void accumulate_block(const float* logits, int64_t rows, int64_t ld, int64_t v0, int64_t v1, float inv_tau,
                      const TokenStats& s) {
  float* block_max = s.block_max;
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) block_max[r] = -INFINITY;
  int64_t v = v0;
  for (; v + kUnroll <= v1; v += kUnroll) {
    const float* z0 = logits + v * ld;
    const float* z1 = z0 + ld;
    const float* z2 = z1 + ld;
    const float* z3 = z2 + ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float a = z0[r] > z1[r] ? z0[r] : z1[r];
      const float b = z2[r] > z3[r] ? z2[r] : z3[r];
      const float m = (a > b ? a : b) * inv_tau;
      block_max[r] = m > block_max[r] ? m : block_max[r];
    }
  }
  for (; v < v1; ++v) {
    const float* z = logits + v * ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float m = z[r] * inv_tau;
      block_max[r] = m > block_max[r] ? m : block_max[r];
    }
  }
  // Move the running sums to the new max (a token with nothing summed yet has nothing to move).
  float* max = s.max;
  float* sum_exp = s.sum_exp;
  float* sum_exp_shift = s.sum_exp_shift;
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    const float new_max = block_max[r] > max[r] ? block_max[r] : max[r];
    const float d = max[r] - new_max;  // <= 0, or -inf before the first block
    const float scale = exp_nonpositive(d);
    const bool started = sum_exp[r] != 0.0f;
    sum_exp_shift[r] = started ? scale * (sum_exp_shift[r] + d * sum_exp[r]) : 0.0f;
    sum_exp[r] = started ? scale * sum_exp[r] : 0.0f;
    max[r] = new_max;
  }
  // The max pass skips NaN (a comparison with NaN is false), and +-inf logits give a NaN or -inf
  // shift here: `shifted * 0` catches all three.
  float* poison = s.poison;
  v = v0;
  for (; v + kUnroll <= v1; v += kUnroll) {
    const float* z0 = logits + v * ld;
    const float* z1 = z0 + ld;
    const float* z2 = z1 + ld;
    const float* z3 = z2 + ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float m = max[r];
      const float s0 = z0[r] * inv_tau - m;
      const float s1 = z1[r] * inv_tau - m;
      const float s2 = z2[r] * inv_tau - m;
      const float s3 = z3[r] * inv_tau - m;
      const float e0 = exp_nonpositive(s0);
      const float e1 = exp_nonpositive(s1);
      const float e2 = exp_nonpositive(s2);
      const float e3 = exp_nonpositive(s3);
      sum_exp[r] += (e0 + e1) + (e2 + e3);
      sum_exp_shift[r] += (e0 * s0 + e1 * s1) + (e2 * s2 + e3 * s3);
      poison[r] += (s0 + s1 + s2 + s3) * 0.0f;
    }
  }
  for (; v < v1; ++v) {
    const float* z = logits + v * ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float shifted = z[r] * inv_tau - max[r];
      const float e = exp_nonpositive(shifted);
      sum_exp[r] += e;
      sum_exp_shift[r] += e * shifted;
      poison[r] += shifted * 0.0f;
    }
  }
}

// dLoss/dz in place for one vocabulary entry's logits z[0, rows) (see logit_grad in row_math.h).
inline void grad_entry(float* z, int64_t rows, float inv_tau, const float* lse, const float* keep, const float* gl,
                       const float* gh, const float* h) {
#pragma omp simd
  for (int64_t r = 0; r < rows; ++r) {
    const float g = logit_grad(z[r], inv_tau, lse[r], gl[r], gh[r], h[r]);
    z[r] = keep[r] != 0.0f ? g : 0.0f;
  }
}

// Without an entropy gradient dLoss/dz = coef * p with coef = -g_logprob / tau (0 for ignored
// tokens), so three per-token arrays are read instead of six; kUnroll entries per sweep.
void grad_entries_no_entropy(float* logits, int64_t rows, int64_t ld, int64_t v0, int64_t v1, float inv_tau,
                             const float* lse, const float* keep, const float* coef) {
  int64_t v = v0;
  for (; v + kUnroll <= v1; v += kUnroll) {
    float* z0 = logits + v * ld;
    float* z1 = z0 + ld;
    float* z2 = z1 + ld;
    float* z3 = z2 + ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float l = lse[r];
      const float c = coef[r];
      const bool k = keep[r] != 0.0f;
      const float g0 = c * exp_nonpositive(z0[r] * inv_tau - l);
      const float g1 = c * exp_nonpositive(z1[r] * inv_tau - l);
      const float g2 = c * exp_nonpositive(z2[r] * inv_tau - l);
      const float g3 = c * exp_nonpositive(z3[r] * inv_tau - l);
      z0[r] = k ? g0 : 0.0f;
      z1[r] = k ? g1 : 0.0f;
      z2[r] = k ? g2 : 0.0f;
      z3[r] = k ? g3 : 0.0f;
    }
  }
  for (; v < v1; ++v) {
    float* z = logits + v * ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const float g = coef[r] * exp_nonpositive(z[r] * inv_tau - lse[r]);
      z[r] = keep[r] != 0.0f ? g : 0.0f;
    }
  }
}

}  // namespace

void logprob_forward_vocab_major(const float* logits, int64_t rows, int64_t vocab, int64_t ld,
                                 const int64_t* targets, float inv_temperature, int64_t ignore_index, float* logprob,
                                 float* entropy, float* lse, int num_threads) {
  const int64_t threads = num_threads > 0 ? num_threads : 1;
  const int64_t span = (vocab + threads - 1) / threads;
  // Per thread: max, sum_exp, sum_exp_shift, poison, block_max; each [rows].
  std::vector<float> stats(static_cast<size_t>(threads * 5 * rows));
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < threads; ++t) {
    float* base = stats.data() + t * 5 * rows;
    const TokenStats s{base, base + rows, base + 2 * rows, base + 3 * rows, base + 4 * rows};
    for (int64_t r = 0; r < rows; ++r) {
      s.max[r] = -INFINITY;
      s.sum_exp[r] = 0.0f;
      s.sum_exp_shift[r] = 0.0f;
      s.poison[r] = 0.0f;
    }
    const int64_t end = (t + 1) * span < vocab ? (t + 1) * span : vocab;
    const int64_t step = block_entries(rows);
    for (int64_t v0 = t * span; v0 < end; v0 += step) {
      accumulate_block(logits, rows, ld, v0, v0 + step < end ? v0 + step : end, inv_temperature, s);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    RowStats acc = row_stats_empty();
    float poison = 0.0f;
    for (int64_t t = 0; t < threads; ++t) {
      const float* base = stats.data() + t * 5 * rows;
      RowStats part;
      part.max = base[r];
      part.sum_exp = base[rows + r];
      part.sum_exp_shift = base[2 * rows + r];
      acc = row_stats_merge(acc, part);
      poison += base[3 * rows + r];
    }
    acc.max += poison;
    acc.sum_exp += poison;
    const float row_lse_value = row_lse(acc);
    lse[r] = row_lse_value;
    const int64_t y = targets[r];
    const bool ignored = y == ignore_index;
    const bool here = !ignored && y >= 0 && y < vocab;  // false: another vocabulary shard's token
    logprob[r] = here ? logits[y * ld + r] * inv_temperature - row_lse_value : 0.0f;
    if (entropy != nullptr) entropy[r] = ignored ? 0.0f : row_entropy(acc);
  }
}

void logit_grad_inplace_vocab_major(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                                    float inv_temperature, int64_t ignore_index, const float* lse,
                                    const float* entropy, const float* g_logprob, const float* g_entropy,
                                    int num_threads) {
  // Per-token factors as contiguous arrays; `keep` is 0 for ignored tokens, whose gradient is
  // exactly 0 even for non-finite logits.
  std::vector<float> factors(static_cast<size_t>(5 * rows));
  float* keep = factors.data();
  float* gl = keep + rows;
  float* coef = gl + rows;
  float* gh = coef + rows;
  float* h = gh + rows;
  for (int64_t r = 0; r < rows; ++r) {
    keep[r] = targets[r] == ignore_index ? 0.0f : 1.0f;
    gl[r] = g_logprob[r];
    coef[r] = -inv_temperature * g_logprob[r] * keep[r];
    gh[r] = g_entropy != nullptr ? g_entropy[r] : 0.0f;
    h[r] = g_entropy != nullptr ? entropy[r] : 0.0f;
  }
  const int64_t step = block_entries(rows);
  const int64_t blocks = (vocab + step - 1) / step;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t v0 = b * step;
    const int64_t v1 = v0 + step < vocab ? v0 + step : vocab;
    if (g_entropy == nullptr) {
      grad_entries_no_entropy(logits, rows, ld, v0, v1, inv_temperature, lse, keep, coef);
    } else {
      for (int64_t v = v0; v < v1; ++v) grad_entry(logits + v * ld, rows, inv_temperature, lse, keep, gl, gh, h);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = targets[r];
    if (y != ignore_index && y >= 0 && y < vocab) logits[y * ld + r] += logit_grad_target_extra(inv_temperature, gl[r]);
  }
}

}  // namespace cpu
}  // namespace gro
