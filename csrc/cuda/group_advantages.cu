// Segmented group advantages: one warp per group, so ragged groups of any size cost one pass each
// and no atomics touch the sums (results are deterministic).
#include "group_advantages.cuh"

namespace gro {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;  // every lane holds the total
}

// Grid: THREADS/32 groups per block, one warp per group; lanes stride over the group's rewards for
// the sum, the centred sum of squares (both double) and the write. A malformed group sets *flag.
template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    group_advantages_kernel(const float* rewards, const int64_t* offsets, float* advantages, int* flag, int64_t batch,
                            int64_t num_groups, float eps, AdvantageMode mode) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (g >= num_groups) return;
  const int64_t begin = offsets[g];
  const int64_t end = offsets[g + 1];
  const bool malformed = begin < 0 || end < begin || end > batch || (g == 0 && begin != 0) ||
                         (g == num_groups - 1 && end != batch);
  if (malformed) {
    if (lane == 0) *flag = 1;
    return;
  }
  const int64_t n = end - begin;
  double sum = 0.0;
  for (int64_t i = begin + lane; i < end; i += 32) sum += rewards[i];
  const double mean = n > 0 ? warp_sum(sum) / static_cast<double>(n) : 0.0;
  double centred_sq_sum = 0.0;
  for (int64_t i = begin + lane; i < end; i += 32) {
    const double d = rewards[i] - mean;
    centred_sq_sum += d * d;
  }
  const GroupMoments moments = group_moments(n, mean, warp_sum(centred_sq_sum), mode, eps);
  for (int64_t i = begin + lane; i < end; i += 32) advantages[i] = group_advantage(rewards[i], moments);
}

// Grid: one thread per advantage. Runs after the main kernel on the same stream.
template <int THREADS>
__global__ void __launch_bounds__(THREADS) poison_if_flagged_kernel(float* advantages, const int* flag, int64_t batch) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  if (i < batch && *flag != 0) advantages[i] = __int_as_float(0x7fffffff);
}

}  // namespace

cudaError_t group_advantages(const float* rewards, const int64_t* offsets, int64_t batch, int64_t num_groups,
                             AdvantageMode mode, float eps, float* advantages, int* flag, cudaStream_t stream) {
  cudaError_t status = cudaMemsetAsync(flag, 0, sizeof(int), stream);
  if (status != cudaSuccess || num_groups == 0) return status;
  const unsigned group_blocks = static_cast<unsigned>((num_groups + kThreads / 32 - 1) / (kThreads / 32));
  group_advantages_kernel<kThreads><<<group_blocks, kThreads, 0, stream>>>(rewards, offsets, advantages, flag, batch,
                                                                          num_groups, eps, mode);
  status = cudaGetLastError();
  if (status != cudaSuccess || batch == 0) return status;
  const unsigned blocks = static_cast<unsigned>((batch + kThreads - 1) / kThreads);
  poison_if_flagged_kernel<kThreads><<<blocks, kThreads, 0, stream>>>(advantages, flag, batch);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gro
