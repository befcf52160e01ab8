// Grid: OpenMP splits the chunk's rows across threads; each thread walks its row in blocks of
// kBlock logits (L1-resident), so every logit is read from memory once in the forward and read +
// written once in the backward.
#include "logprob_epilogue.h"

#include "../common/row_math.h"

namespace gro {
namespace cpu {
namespace {

constexpr int64_t kBlock = 2048;

RowStats block_stats(const float* z, int64_t n, float inv_tau) {
  float block_max = -INFINITY;
  // Any non-finite logit turns `poison` into NaN (x * 0 is NaN for NaN and +-inf), which is then
  // added to the row's statistics: a bad row reports NaN instead of a plausible wrong number.
  float poison = 0.0f;
#pragma omp simd reduction(max : block_max) reduction(+ : poison)
  for (int64_t v = 0; v < n; ++v) {
    const float s = z[v] * inv_tau;
    block_max = s > block_max ? s : block_max;
    poison += z[v] * 0.0f;
  }
  float sum_exp = 0.0f;
  float sum_exp_shift = 0.0f;
#pragma omp simd reduction(+ : sum_exp, sum_exp_shift)
  for (int64_t v = 0; v < n; ++v) {
    const float shifted = z[v] * inv_tau - block_max;
    const float e = exp_nonpositive(shifted);
    sum_exp += e;
    sum_exp_shift += e * shifted;
  }
  RowStats s;
  s.max = block_max + poison;
  s.sum_exp = sum_exp + poison;
  s.sum_exp_shift = sum_exp_shift;
  return s;
}

RowStats row_forward_stats(const float* z, int64_t vocab, float inv_tau) {
  RowStats acc = row_stats_empty();
  for (int64_t start = 0; start < vocab; start += kBlock) {
    const int64_t n = vocab - start < kBlock ? vocab - start : kBlock;
    RowStats b = block_stats(z + start, n, inv_tau);
    if (b.sum_exp != b.sum_exp) return b;  // NaN: row is poisoned, stop early
    acc = row_stats_merge(acc, b);
  }
  return acc;
}

}  // namespace

void logprob_forward(const float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                     float inv_temperature, int64_t ignore_index, float* logprob, float* entropy, float* lse,
                     int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * ld;
    const RowStats s = row_forward_stats(z, vocab, inv_temperature);
    const float row_lse_value = row_lse(s);
    lse[r] = row_lse_value;
    const int64_t y = targets[r];
    const bool ignored = y == ignore_index;
    const bool here = !ignored && y >= 0 && y < vocab;  // false: another vocabulary shard's token
    logprob[r] = here ? z[y] * inv_temperature - row_lse_value : 0.0f;
    if (entropy != nullptr) entropy[r] = ignored ? 0.0f : row_entropy(s);
  }
}

void logit_grad_inplace(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                        float inv_temperature, int64_t ignore_index, const float* lse, const float* entropy,
                        const float* g_logprob, const float* g_entropy, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    float* z = logits + r * ld;
    const int64_t y = targets[r];
    if (y == ignore_index) {
#pragma omp simd
      for (int64_t v = 0; v < vocab; ++v) z[v] = 0.0f;
      continue;
    }
    const float row_lse_value = lse[r];
    const float gl = g_logprob[r];
    const float gh = g_entropy != nullptr ? g_entropy[r] : 0.0f;
    const float h = g_entropy != nullptr ? entropy[r] : 0.0f;
#pragma omp simd
    for (int64_t v = 0; v < vocab; ++v) {
      z[v] = logit_grad(z[v], inv_temperature, row_lse_value, gl, gh, h);
    }
    if (y >= 0 && y < vocab) z[y] += logit_grad_target_extra(inv_temperature, gl);
  }
}

}  // namespace cpu
}  // namespace gro
