// CUDA epilogues of the chunked linear_logprobs backend. The row math (exp, online lse merge, entropy,
// logit gradient) is csrc/common/row_math.h, the same code the CPU epilogue runs.
//
// A row of the chunk is split into spans of SPAN logits so that the grid has enough blocks even
// when a chunk holds few rows of a large vocabulary (2^24 / 152064 = 110 rows): grid.x = row,
// grid.y = span. Inside a row the logits are read as float4 after a scalar head of up to 3 values
// that reaches 16-byte alignment (rows of an odd vocabulary such as 50257 start misaligned), with
// a scalar tail after the last float4. The split is fixed by V, so results do not depend on the GPU.
#include "../common/row_math.h"
#include "logprob_epilogue.cuh"

namespace gro {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSpan = 8192;  // logits per block and row: 8 float4 per thread
constexpr int kMaxSpans = 65535;  // grid.y limit

int spans_for(int64_t vocab) { return vocab <= kSpan ? 1 : static_cast<int>((vocab + kSpan - 1) / kSpan); }

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fffffff); }

// Scalars before the first 16-byte aligned float4 of a row, and the number of float4s after them.
struct RowLayout {
  int64_t head;
  int64_t body4;
};

__device__ __forceinline__ RowLayout row_layout(const float* row, int64_t vocab) {
  const int64_t misaligned = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) >> 2) & 3);
  RowLayout layout;
  layout.head = misaligned == 0 ? 0 : (4 - misaligned < vocab ? 4 - misaligned : vocab);
  layout.body4 = (vocab - layout.head) >> 2;
  return layout;
}

// Statistics of a few logits, built like the CPU forward: max, then sums relative to it. A NaN or
// +inf logit makes `poison` NaN, so the whole row reports NaN as on the CPU; -inf logits (banned
// tokens) add nothing, and a quad of only -inf is an empty partial state.
// Shifts are (z - max z) / tau: exactly 0 at the max, never positive (see csrc/cpu/logprob_forward.cpp).
__device__ __forceinline__ RowStats quad_stats(float4 z, float inv_tau) {
  const float s[4] = {z.x, z.y, z.z, z.w};
  float m = s[0];
#pragma unroll
  for (int k = 1; k < 4; ++k) m = s[k] > m ? s[k] : m;
  if (m == -INFINITY) return row_stats_empty();
  float sum_exp = 0.0f;
  float sum_exp_shift = 0.0f;
  float poison = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float shifted = clamp_shift((s[k] - m) * inv_tau);
    const float e = exp_nonpositive(shifted);
    sum_exp += e;
    sum_exp_shift += e * shifted;
    poison += shifted * 0.0f;
  }
  RowStats out;
  out.max = m * inv_tau + poison;
  out.sum_exp = sum_exp + poison;
  out.sum_exp_shift = sum_exp_shift;
  return out;
}

__device__ __forceinline__ RowStats scalar_stats(float z, float inv_tau) {
  if (z == -INFINITY) return row_stats_empty();  // a banned token adds nothing; NaN / +inf poison below
  RowStats out;
  out.max = z * inv_tau + z * 0.0f;
  out.sum_exp = 1.0f + z * 0.0f;
  out.sum_exp_shift = 0.0f;
  return out;
}

__device__ __forceinline__ RowStats warp_merge(RowStats s) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    RowStats other;
    other.max = __shfl_down_sync(0xffffffffu, s.max, offset);
    other.sum_exp = __shfl_down_sync(0xffffffffu, s.sum_exp, offset);
    other.sum_exp_shift = __shfl_down_sync(0xffffffffu, s.sum_exp_shift, offset);
    s = row_stats_merge(s, other);
  }
  return s;  // complete in lane 0
}

template <int THREADS>
__device__ __forceinline__ RowStats block_merge(RowStats s) {
  __shared__ RowStats warp_stats[THREADS / 32];
  s = warp_merge(s);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_stats[warp] = s;
  __syncthreads();
  if (warp == 0) s = warp_merge(lane < THREADS / 32 ? warp_stats[lane] : row_stats_empty());
  return s;  // complete in thread 0
}

// Grid: x = row, y = span of SPAN logits; THREADS threads stride over the span's float4s (plus the
// row's scalar head in span 0 and scalar tail in the last span). Thread 0 writes the span's RowStats
// to partials[row, span, 0:3].
template <int THREADS, int SPAN>
__global__ void __launch_bounds__(THREADS)
    row_stats_kernel(const float* logits, float* partials, int64_t vocab, int64_t ld, float inv_tau) {
  const int64_t row = blockIdx.x;
  const int span = blockIdx.y;
  const float* z = logits + row * ld;
  const RowLayout layout = row_layout(z, vocab);
  const float4* body = reinterpret_cast<const float4*>(z + layout.head);
  const int64_t lo = static_cast<int64_t>(span) * (SPAN / 4);
  const int64_t hi = lo + SPAN / 4 < layout.body4 ? lo + SPAN / 4 : layout.body4;
  constexpr int kIters = SPAN / 4 / THREADS;
  // All loads first, then the math: kIters independent 16-byte loads in flight per thread.
  float4 v[kIters];
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t j = lo + it * THREADS + threadIdx.x;
    v[it] = j < hi ? __ldg(body + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  RowStats acc = row_stats_empty();
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    if (lo + it * THREADS + threadIdx.x < hi) acc = row_stats_merge(acc, quad_stats(v[it], inv_tau));
  }
  const int64_t tail_start = layout.head + 4 * layout.body4;
  if (span == 0 && threadIdx.x < layout.head) acc = row_stats_merge(acc, scalar_stats(z[threadIdx.x], inv_tau));
  if (span == gridDim.y - 1 && threadIdx.x < vocab - tail_start) {
    acc = row_stats_merge(acc, scalar_stats(z[tail_start + threadIdx.x], inv_tau));
  }
  acc = block_merge<THREADS>(acc);
  if (threadIdx.x == 0) {
    float* out = partials + (row * gridDim.y + span) * 3;
    out[0] = acc.max;
    out[1] = acc.sum_exp;
    out[2] = acc.sum_exp_shift;
  }
}

// Grid: one thread per row, THREADS rows per block. Merges the row's span statistics in span order
// (deterministic), then writes lse, the target logprob and (when requested) the entropy. On a
// vocabulary shard an out-of-range target is another shard's: logprob 0, the shard's entropy.
template <int THREADS>
__global__ void __launch_bounds__(THREADS)
    finalize_kernel(const float* logits, const int64_t* targets, const float* partials, float* logprob,
                    float* entropy, float* lse, int64_t rows, int64_t vocab, int64_t ld, int spans, float inv_tau,
                    int64_t ignore_index, bool vocab_shard) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * THREADS + threadIdx.x;
  if (row >= rows) return;
  RowStats s = row_stats_empty();
  for (int k = 0; k < spans; ++k) {
    const float* p = partials + (row * spans + k) * 3;
    RowStats part;
    part.max = p[0];
    part.sum_exp = p[1];
    part.sum_exp_shift = p[2];
    s = row_stats_merge(s, part);
  }
  const float row_lse_value = row_lse(s);
  lse[row] = row_lse_value;
  const int64_t y = targets[row];
  float lp = 0.0f;
  float ent = 0.0f;
  if (y != ignore_index) {
    const bool in_range = y >= 0 && y < vocab;
    lp = in_range ? logits[row * ld + y] * inv_tau - row_lse_value : (vocab_shard ? 0.0f : quiet_nan());
    ent = in_range || vocab_shard ? row_entropy(s) : quiet_nan();
  }
  logprob[row] = lp;
  if (entropy != nullptr) entropy[row] = ent;
}

// dLoss/dz of one logit at column `col` of a row that is neither ignored nor out of range.
__device__ __forceinline__ float grad_at(float z, int64_t col, int64_t target, float inv_tau, float lse, float gl,
                                         float gh, float h, float target_extra) {
  const float g = logit_grad(z, inv_tau, lse, gl, gh, h);
  return col == target ? g + target_extra : g;
}

// Grid: x = row, y = span of SPAN logits (same layout as row_stats_kernel); every thread rewrites its
// float4s in place with dLoss/dz. Ignored rows become 0 and out-of-range targets NaN, without reading,
// except on a vocabulary shard, where such a row (another shard's target) matches no column: no one-hot.
template <int THREADS, int SPAN>
__global__ void __launch_bounds__(THREADS)
    logit_grad_kernel(float* logits, const int64_t* targets, const float* lse, const float* entropy,
                      const float* g_logprob, const float* g_entropy, int64_t vocab, int64_t ld, float inv_tau,
                      int64_t ignore_index, bool vocab_shard) {
  const int64_t row = blockIdx.x;
  const int span = blockIdx.y;
  float* z = logits + row * ld;
  const RowLayout layout = row_layout(z, vocab);
  float4* body = reinterpret_cast<float4*>(z + layout.head);
  const int64_t lo = static_cast<int64_t>(span) * (SPAN / 4);
  const int64_t hi = lo + SPAN / 4 < layout.body4 ? lo + SPAN / 4 : layout.body4;
  const int64_t tail_start = layout.head + 4 * layout.body4;
  const bool head_here = span == 0 && threadIdx.x < layout.head;
  const bool tail_here = span == gridDim.y - 1 && threadIdx.x < vocab - tail_start;
  const int64_t y = targets[row];
  if (y == ignore_index || (!vocab_shard && (y < 0 || y >= vocab))) {
    const float fill = y == ignore_index ? 0.0f : quiet_nan();
    for (int64_t j = lo + threadIdx.x; j < hi; j += THREADS) body[j] = make_float4(fill, fill, fill, fill);
    if (head_here) z[threadIdx.x] = fill;
    if (tail_here) z[tail_start + threadIdx.x] = fill;
    return;
  }
  const float row_lse_value = lse[row];
  const float gl = g_logprob[row];
  const float gh = g_entropy != nullptr ? g_entropy[row] : 0.0f;
  const float h = g_entropy != nullptr ? entropy[row] : 0.0f;
  const float extra = logit_grad_target_extra(inv_tau, gl);
  constexpr int kIters = SPAN / 4 / THREADS;
  float4 v[kIters];
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t j = lo + it * THREADS + threadIdx.x;
    v[it] = j < hi ? body[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t j = lo + it * THREADS + threadIdx.x;
    if (j < hi) {
      const int64_t col = layout.head + 4 * j;
      v[it].x = grad_at(v[it].x, col, y, inv_tau, row_lse_value, gl, gh, h, extra);
      v[it].y = grad_at(v[it].y, col + 1, y, inv_tau, row_lse_value, gl, gh, h, extra);
      v[it].z = grad_at(v[it].z, col + 2, y, inv_tau, row_lse_value, gl, gh, h, extra);
      v[it].w = grad_at(v[it].w, col + 3, y, inv_tau, row_lse_value, gl, gh, h, extra);
      body[j] = v[it];
    }
  }
  if (head_here) z[threadIdx.x] = grad_at(z[threadIdx.x], threadIdx.x, y, inv_tau, row_lse_value, gl, gh, h, extra);
  if (tail_here) {
    const int64_t col = tail_start + threadIdx.x;
    z[col] = grad_at(z[col], col, y, inv_tau, row_lse_value, gl, gh, h, extra);
  }
}

}  // namespace

int64_t forward_workspace_floats(int64_t rows, int64_t vocab) { return rows * spans_for(vocab) * 3; }

int64_t max_vocab() { return static_cast<int64_t>(kMaxSpans) * kSpan; }

cudaError_t logprob_forward(const float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                            float inv_temperature, int64_t ignore_index, bool vocab_shard, float* logprob,
                            float* entropy, float* lse, float* workspace, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int spans = spans_for(vocab);
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(spans));
  row_stats_kernel<kThreads, kSpan><<<grid, kThreads, 0, stream>>>(logits, workspace, vocab, ld, inv_temperature);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const unsigned blocks = static_cast<unsigned>((rows + kThreads - 1) / kThreads);
  finalize_kernel<kThreads><<<blocks, kThreads, 0, stream>>>(logits, targets, workspace, logprob, entropy, lse, rows,
                                                             vocab, ld, spans, inv_temperature, ignore_index,
                                                             vocab_shard);
  return cudaGetLastError();
}

cudaError_t logit_grad_inplace(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                               float inv_temperature, int64_t ignore_index, bool vocab_shard, const float* lse,
                               const float* entropy, const float* g_logprob, const float* g_entropy,
                               cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(spans_for(vocab)));
  logit_grad_kernel<kThreads, kSpan><<<grid, kThreads, 0, stream>>>(logits, targets, lse, entropy, g_logprob, g_entropy,
                                                                    vocab, ld, inv_temperature, ignore_index,
                                                                    vocab_shard);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gro
