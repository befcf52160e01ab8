// Grid: OpenMP splits the groups across threads; each group is two passes over its rewards (sum,
// then centred sum of squares, both in double) and one pass writing the advantages.
#include "group_advantages.h"

namespace gro {
namespace cpu {

void group_advantages(const float* rewards, const int64_t* offsets, int64_t num_groups, AdvantageMode mode,
                      float eps, float* advantages, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t begin = offsets[g];
    const int64_t n = offsets[g + 1] - begin;
    const float* r = rewards + begin;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += r[i];
    const double mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
    double centred_sq_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = r[i] - mean;
      centred_sq_sum += d * d;
    }
    const GroupMoments moments = group_moments(n, mean, centred_sq_sum, mode, eps);
    for (int64_t i = 0; i < n; ++i) advantages[begin + i] = group_advantage(r[i], moments);
  }
}

}  // namespace cpu
}  // namespace gro
