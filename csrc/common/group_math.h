// Per-group advantage math shared by the CPU and CUDA group_advantages kernels (docs/math.md §2).
//
// A group is a contiguous run of n rewards. Sums are taken in double: n identical fp32 rewards then
// sum to exactly n*r, the mean is exactly r, and every deviation is exactly 0, so identical rewards
// give A = 0 (never NaN, whatever eps is). Scalar __host__ __device__ functions only.
#pragma once

#include <math.h>
#include <stdint.h>

#include "row_math.h"  // GRO_HD

namespace gro {

enum class AdvantageMode : int32_t { kGrpo = 0, kDrGrpo = 1, kRloo = 2 };

// What a kernel needs to turn one reward of a group into its advantage.
struct GroupMoments {
  double mean;   // mean_g r
  double scale;  // multiplier applied to (r - mean): 1/(std + eps), 1, or n/(n-1); 0 for an empty result
};

// mean and scale from n, sum r and sum (r - mean)^2 (the second, centred pass).
GRO_HD GroupMoments group_moments(int64_t n, double mean, double centred_sq_sum, AdvantageMode mode, float eps) {
  GroupMoments g;
  g.mean = mean;
  if (mode == AdvantageMode::kDrGrpo) {
    g.scale = 1.0;
  } else if (n < 2) {
    g.scale = 0.0;  // a group of one has no baseline but itself: A = 0 (grpo and rloo)
  } else if (mode == AdvantageMode::kRloo) {
    // r - mean_{j != i} r_j = n/(n-1) * (r - mean)
    g.scale = static_cast<double>(n) / static_cast<double>(n - 1);
  } else {
    const double std_unbiased = sqrt(centred_sq_sum / static_cast<double>(n - 1));
    // std == 0 means every deviation is exactly 0 (see above), so A = 0 even when eps == 0.
    g.scale = std_unbiased > 0.0 ? 1.0 / (std_unbiased + static_cast<double>(eps)) : 0.0;
  }
  return g;
}

GRO_HD float group_advantage(float reward, GroupMoments g) {
  const double deviation = static_cast<double>(reward) - g.mean;
  // 0 * deviation stays 0 for finite rewards; a NaN/inf reward still poisons its own advantage.
  return static_cast<float>(deviation == 0.0 ? 0.0 : deviation * g.scale);
}

}  // namespace gro
