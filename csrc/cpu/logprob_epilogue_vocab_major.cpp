// Vocab-major backward epilogue: z(r, v) at logits[v * ld + r], the layout of W h^T [vocab, rows].
//
// Grid: OpenMP splits the vocabulary into blocks. Every inner loop runs over the chunk's tokens,
// which are contiguous in this layout, so it vectorizes without gathers and memory is streamed in
// order; kUnroll vocabulary entries per sweep load the per-token factors once per kUnroll logits.
// (The forward epilogues of both layouts are in logprob_forward.cpp.)
#include <vector>

#include "../common/row_math.h"
#include "logprob_epilogue.h"

namespace gro {
namespace cpu {
namespace {

constexpr int64_t kUnroll = 4;

// Vocabulary entries per block of the thread grid: about block_bytes of logits, at least kUnroll.
int64_t block_entries(int64_t rows) {
  constexpr int64_t block_bytes = 512 * 1024;
  const int64_t entries = block_bytes / (4 * (rows > 0 ? rows : 1));
  return entries > kUnroll ? entries : kUnroll;
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
