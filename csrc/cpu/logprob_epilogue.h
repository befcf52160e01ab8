// Native CPU epilogues of the chunked linear_logprobs backend (torch-free).
//
// Both functions take one chunk of logits z [rows, vocab] (fp32, row stride `ld`) that a GEMM just
// wrote, and work row-parallel with OpenMP, vectorized over the vocabulary.
#pragma once

#include <stdint.h>

namespace gro {
namespace cpu {

// One pass over each row (blockwise online max / sum-exp): lse, logprob of the target and, when
// `entropy` is not null, the entropy of softmax(z / tau). Rows whose target equals ignore_index get
// logprob 0 and entropy 0 (their lse is still written). A target outside [0, vocab) that is not
// ignore_index belongs to another vocabulary shard: logprob 0, but lse and entropy of this chunk's
// softmax are written (the caller refuses such ids unless it works on a shard). Any NaN/inf logit
// makes that row's outputs NaN and touches no other row.
void logprob_forward(const float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                     float inv_temperature, int64_t ignore_index, float* logprob, float* entropy, float* lse,
                     int num_threads);

// Overwrites the chunk in place with dLoss/dz for upstream gradients g_logprob and (optionally,
// may be null) g_entropy, given the lse and entropy saved by the forward. Ignored rows become 0. For
// a vocabulary shard the caller passes the full vocabulary's lse and entropy; a row whose target is
// outside [0, vocab) (another shard's) gets the softmax part only, without the one-hot term.
void logit_grad_inplace(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                        float inv_temperature, int64_t ignore_index, const float* lse, const float* entropy,
                        const float* g_logprob, const float* g_entropy, int num_threads);

}  // namespace cpu
}  // namespace gro
