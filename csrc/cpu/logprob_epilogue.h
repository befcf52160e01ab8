// Native CPU epilogues of the chunked linear_logprobs backend (torch-free).
//
// Each function takes one chunk of logits z [rows, vocab] (fp32) that a GEMM just wrote, in one of
// two layouts:
// - token-major: z(r, v) at logits[r * ld + v] (ld >= vocab); row-parallel with OpenMP,
//   vectorized over the vocabulary;
// - vocab-major: z(r, v) at logits[v * ld + r] (ld >= rows), i.e. the GEMM wrote W h^T [vocab, rows];
//   vocabulary-parallel with OpenMP, vectorized over the tokens. On CPU the BLAS writes this layout
//   at the speed of one unchunked GEMM, and the token-major [rows, vocab] layout ~10% slower (the
//   backward GEMMs read either layout at full speed), so the chunked backend uses this one on CPU.
// Both layouts compute the same quantities with the same formulas (row_math.h); they may differ
// in fp32 rounding only (a different blocking of the vocabulary sums).
#pragma once

#include <stdint.h>

namespace gro {
namespace cpu {

// lse, logprob of the target and, when `entropy` is not null, the entropy of softmax(z / tau), from
// a max pass and an exp pass over each row (logprob_forward.cpp). inv_temperature must be > 0. Rows
// whose target equals ignore_index get logprob 0 and entropy 0 (their lse is still written). A target
// outside [0, vocab) that is not ignore_index belongs to another vocabulary shard: logprob 0, but lse
// and entropy of this chunk's softmax are written (the caller refuses such ids unless it works on a
// shard). Any NaN/inf logit makes that row's outputs NaN and touches no other row.
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

// The same two epilogues on a vocab-major chunk (see the top of this file); same contracts.
void logprob_forward_vocab_major(const float* logits, int64_t rows, int64_t vocab, int64_t ld,
                                 const int64_t* targets, float inv_temperature, int64_t ignore_index, float* logprob,
                                 float* entropy, float* lse, int num_threads);

void logit_grad_inplace_vocab_major(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                                    float inv_temperature, int64_t ignore_index, const float* lse,
                                    const float* entropy, const float* g_logprob, const float* g_entropy,
                                    int num_threads);

// Forward for grad-in-forward: the outputs of logprob_forward (same arithmetic, so the same logprobs
// bit for bit; logprob_forward.cpp), and the chunk overwritten with E = exp(z/tau - max_v z/tau)
// (0 on ignored rows) and exp_scale = 1 / sum_v E per row, so that softmax(z/tau) = E * exp_scale.
// Either layout (vocab_major picks which; ld as in the other functions). Every target must be
// ignore_index or in [0, vocab).
void logprob_forward_exp(float* logits, int64_t rows, int64_t vocab, int64_t ld, bool vocab_major,
                         const int64_t* targets, float inv_temperature, int64_t ignore_index, float* logprob,
                         float* entropy, float* lse, float* exp_scale, int num_threads);

}  // namespace cpu
}  // namespace gro
