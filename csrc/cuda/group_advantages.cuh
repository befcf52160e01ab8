// CUDA segmented group advantages (torch-free); math in csrc/common/group_math.h.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/group_math.h"

namespace gro {
namespace cuda {

// Group g holds rewards[offsets[g] .. offsets[g+1]) of `batch` rewards. Offsets live on the device
// and are not checked on the host (that would sync): if any group is malformed (offsets not
// ascending, not starting at 0 or not ending at batch) every advantage is written as NaN.
// `flag` is one int of device scratch. Enqueues on `stream`; never synchronizes.
cudaError_t group_advantages(const float* rewards, const int64_t* offsets, int64_t batch, int64_t num_groups,
                             AdvantageMode mode, float eps, float* advantages, int* flag, cudaStream_t stream);

}  // namespace cuda
}  // namespace gro
