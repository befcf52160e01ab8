// Native CPU segmented group advantages (torch-free); math in csrc/common/group_math.h.
#pragma once

#include <stdint.h>

#include "../common/group_math.h"

namespace gro {
namespace cpu {

// Group g holds rewards[offsets[g] .. offsets[g+1]) (offsets: num_groups + 1 ascending values,
// already validated). Writes one fp32 advantage per reward.
void group_advantages(const float* rewards, const int64_t* offsets, int64_t num_groups, AdvantageMode mode,
                      float eps, float* advantages, int num_threads);

}  // namespace cpu
}  // namespace gro
