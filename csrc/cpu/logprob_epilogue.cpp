// Token-major backward epilogue. Grid: OpenMP splits the chunk's rows across threads; each row is
// read and written once. (The forward epilogues of both layouts are in logprob_forward.cpp.)
#include "logprob_epilogue.h"

#include "../common/row_math.h"

namespace gro {
namespace cpu {

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
