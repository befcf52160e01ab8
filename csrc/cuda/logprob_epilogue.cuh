// CUDA epilogues of the chunked linear_logprobs backend (torch-free: raw pointers, strides, a stream).
//
// Same contract as csrc/cpu/logprob_epilogue.h, on one fp32 chunk of logits [rows, vocab] with row
// stride `ld` in device memory. Launchers enqueue on `stream` and return the launch status; they
// never synchronize. A target id outside [0, vocab) that is not ignore_index cannot be refused
// without a host sync, so the kernels make that row visibly wrong instead: forward writes NaN
// logprob and entropy, backward writes NaN over the whole row of the gradient. With vocab_shard the chunk
// is one vocabulary shard and such an id is another shard's token instead: forward writes logprob 0 and
// the shard's lse and entropy, backward the softmax part of the gradient without the one-hot term (the
// caller passes the full vocabulary's lse and entropy).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace gro {
namespace cuda {

// fp32 scratch the forward needs between its two kernels: rows * forward_splits(vocab) * 3 floats.
int64_t forward_workspace_floats(int64_t rows, int64_t vocab);

// Largest vocabulary the grid layout supports (the V split is a grid dimension capped at 65535).
int64_t max_vocab();

cudaError_t logprob_forward(const float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                            float inv_temperature, int64_t ignore_index, bool vocab_shard, float* logprob,
                            float* entropy, float* lse, float* workspace, cudaStream_t stream);

cudaError_t logit_grad_inplace(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                               float inv_temperature, int64_t ignore_index, bool vocab_shard, const float* lse,
                               const float* entropy, const float* g_logprob, const float* g_entropy,
                               cudaStream_t stream);

}  // namespace cuda
}  // namespace gro
