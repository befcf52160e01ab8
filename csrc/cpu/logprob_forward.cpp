// Forward chunk epilogues (lse, target logprob, entropy), in both layouts, with or without leaving
// E = exp(z/tau - max) in the chunk for grad-in-forward.
//
// Two passes over each token's logits: the max of z (read only), then the exp pass taking
// sum E and sum E (s - max) in blocks of kSumBlock entries, with s - max formed as (z - max z) / tau:
// exactly 0 at the max and never positive (z / tau - max / tau, contracted into an FMA, keeps the
// product's rounding error: hundreds at tau = 1e-9, which would zero or overflow every exponential) (a sequential fp32 sum over a whole
// vocabulary range would lose ~4 digits); the target logit is read between the passes. The
// variant that writes E (logprob_forward_exp) runs the very same arithmetic, so its logprobs are
// bit-identical to logprob_forward's: old and reference logprobs computed without grad then give
// a ratio of exactly 1 against the grad-in-forward path.
// Threads: token-major splits the rows; vocab-major splits the vocabulary into one range per thread
// (inner loops over the contiguous tokens) and adds the threads' partial sums per token in thread
// order.
#include <vector>

#include "../common/row_math.h"
#include "logprob_epilogue.h"

namespace gro {
namespace cpu {
namespace {

constexpr int64_t kSumBlock = 128;

// Per token: sum E, sum E * (s - max), and the poison of non-finite logits: shifted * 0 is NaN for
// a NaN logit (also skipped by the max) and for +inf (max +inf, shifted NaN), so either makes that
// token's outputs NaN. A -inf logit is a token of probability 0 (a banned token): its shift is
// clamped (clamp_shift), so it adds exactly 0 to every sum. A row of -inf only has no distribution: NaN.
struct ExpSums {
  float sum_exp = 0.0f;
  float sum_exp_shift = 0.0f;
  float poison = 0.0f;
};

// The outputs of one token from its max of z/tau, its sums and its target logit (null: the target
// is ignored, or another vocabulary shard's token; logprob 0). Not inlined: one copy of this
// arithmetic for every variant, so FMA contraction cannot differ between the E-writing and the
// plain forward (their logprobs must be bit-identical).
__attribute__((noinline)) void finish_token(float max, ExpSums sums, const float* target_logit, int64_t target, int64_t ignore_index,
                  float inv_tau, float* logprob, float* entropy, float* lse, float* exp_scale) {
  RowStats s;
  s.max = max + sums.poison;
  s.sum_exp = sums.sum_exp + sums.poison;
  s.sum_exp_shift = sums.sum_exp_shift;
  const bool ignored = target == ignore_index;
  *lse = row_lse(s);
  *logprob = target_logit != nullptr ? *target_logit * inv_tau - *lse : 0.0f;
  if (entropy != nullptr) *entropy = ignored ? 0.0f : row_entropy(s);
  if (exp_scale != nullptr) *exp_scale = ignored ? 0.0f : 1.0f / s.sum_exp;
}

bool owns_target(int64_t target, int64_t ignore_index, int64_t vocab) {
  return target != ignore_index && target >= 0 && target < vocab;
}

template <bool kWriteExp>
void token_major(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets, float inv_tau,
                 int64_t ignore_index, float* logprob, float* entropy, float* lse, float* exp_scale,
                 int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t r = 0; r < rows; ++r) {
    float* z = logits + r * ld;
    const bool keep = targets[r] != ignore_index;
    float max = -INFINITY;
#pragma omp simd reduction(max : max)
    for (int64_t v = 0; v < vocab; ++v) max = z[v] > max ? z[v] : max;
    const bool here = owns_target(targets[r], ignore_index, vocab);
    const float target_logit = here ? z[targets[r]] : 0.0f;
    ExpSums sums;
    float poison = 0.0f;
    // The exponentials of a block go to a small scratch first and are summed by a loop of their own:
    // the summation (whose order a vectorizer may pick differently for a loop that also stores to z)
    // is then the same code in both variants, so their logprobs are bit-identical.
    float shifted[kSumBlock], e[kSumBlock];
    for (int64_t v0 = 0; v0 < vocab; v0 += kSumBlock) {
      const int64_t width = v0 + kSumBlock < vocab ? kSumBlock : vocab - v0;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        shifted[j] = clamp_shift((z[v0 + j] - max) * inv_tau);
        e[j] = exp_nonpositive(shifted[j]);
      }
      float block_exp = 0.0f, block_shift = 0.0f;
#pragma omp simd reduction(+ : block_exp, block_shift, poison)
      for (int64_t j = 0; j < width; ++j) {
        block_exp += e[j];
        block_shift += e[j] * shifted[j];
        poison += shifted[j] * 0.0f;
      }
      if (kWriteExp) {
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) z[v0 + j] = keep ? e[j] : 0.0f;
      }
      sums.sum_exp += block_exp;
      sums.sum_exp_shift += block_shift;
    }
    sums.poison = poison;
    finish_token(max * inv_tau, sums, here ? &target_logit : nullptr, targets[r], ignore_index, inv_tau, logprob + r,
                 entropy != nullptr ? entropy + r : nullptr, lse + r, kWriteExp ? exp_scale + r : nullptr);
  }
}

template <bool kWriteExp>
void vocab_major(float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets, float inv_tau,
                 int64_t ignore_index, float* logprob, float* entropy, float* lse, float* exp_scale,
                 int num_threads) {
  const int64_t threads = num_threads > 0 ? num_threads : 1;
  const int64_t span = (vocab + threads - 1) / threads;
  // Per thread, per token: max (pass 1), then sum_exp, sum_exp_shift, poison (pass 2).
  std::vector<float> part(static_cast<size_t>(threads * 4 * rows));
  std::vector<float> max(static_cast<size_t>(rows), -INFINITY);
  std::vector<float> keep(static_cast<size_t>(rows));
  std::vector<float> target_logit(static_cast<size_t>(rows), 0.0f);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < threads; ++t) {
    float* m = part.data() + t * 4 * rows;
    for (int64_t r = 0; r < rows; ++r) m[r] = -INFINITY;
    const int64_t end = (t + 1) * span < vocab ? (t + 1) * span : vocab;
    for (int64_t v = t * span; v < end; ++v) {
      const float* z = logits + v * ld;
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r) m[r] = z[r] > m[r] ? z[r] : m[r];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < threads; ++t) {
      const float m = part[t * 4 * rows + r];
      max[r] = m > max[r] ? m : max[r];
    }
    keep[r] = targets[r] != ignore_index ? 1.0f : 0.0f;
    if (owns_target(targets[r], ignore_index, vocab)) target_logit[r] = logits[targets[r] * ld + r];
  }
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < threads; ++t) {
    float* sum_exp = part.data() + t * 4 * rows + rows;
    float* sum_exp_shift = sum_exp + rows;
    float* poison = sum_exp_shift + rows;
    std::vector<float> block(static_cast<size_t>(2 * rows));
    float* block_exp = block.data();
    float* block_shift = block_exp + rows;
    for (int64_t r = 0; r < rows; ++r) sum_exp[r] = sum_exp_shift[r] = poison[r] = 0.0f;
    const int64_t end = (t + 1) * span < vocab ? (t + 1) * span : vocab;
    const float* m = max.data();
    const float* k = keep.data();
    for (int64_t v0 = t * span; v0 < end; v0 += kSumBlock) {
      const int64_t v1 = v0 + kSumBlock < end ? v0 + kSumBlock : end;
      for (int64_t r = 0; r < rows; ++r) block_exp[r] = block_shift[r] = 0.0f;
      for (int64_t v = v0; v < v1; ++v) {
        float* z = logits + v * ld;
#pragma omp simd
        for (int64_t r = 0; r < rows; ++r) {
          const float shifted = clamp_shift((z[r] - m[r]) * inv_tau);
          const float e = exp_nonpositive(shifted);
          block_exp[r] += e;
          block_shift[r] += e * shifted;
          poison[r] += shifted * 0.0f;
          if (kWriteExp) z[r] = k[r] != 0.0f ? e : 0.0f;
        }
      }
#pragma omp simd
      for (int64_t r = 0; r < rows; ++r) {
        sum_exp[r] += block_exp[r];
        sum_exp_shift[r] += block_shift[r];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    ExpSums sums;
    for (int64_t t = 0; t < threads; ++t) {
      const float* base = part.data() + t * 4 * rows;
      sums.sum_exp += base[rows + r];
      sums.sum_exp_shift += base[2 * rows + r];
      sums.poison += base[3 * rows + r];
    }
    const bool here = owns_target(targets[r], ignore_index, vocab);
    finish_token(max[r] * inv_tau, sums, here ? &target_logit[r] : nullptr, targets[r], ignore_index, inv_tau,
                 logprob + r,
                 entropy != nullptr ? entropy + r : nullptr, lse + r, kWriteExp ? exp_scale + r : nullptr);
  }
}

}  // namespace

void logprob_forward(const float* logits, int64_t rows, int64_t vocab, int64_t ld, const int64_t* targets,
                     float inv_temperature, int64_t ignore_index, float* logprob, float* entropy, float* lse,
                     int num_threads) {
  // kWriteExp = false never writes through the pointer.
  token_major<false>(const_cast<float*>(logits), rows, vocab, ld, targets, inv_temperature, ignore_index, logprob,
                     entropy, lse, nullptr, num_threads);
}

void logprob_forward_vocab_major(const float* logits, int64_t rows, int64_t vocab, int64_t ld,
                                 const int64_t* targets, float inv_temperature, int64_t ignore_index, float* logprob,
                                 float* entropy, float* lse, int num_threads) {
  vocab_major<false>(const_cast<float*>(logits), rows, vocab, ld, targets, inv_temperature, ignore_index, logprob,
                     entropy, lse, nullptr, num_threads);
}

void logprob_forward_exp(float* logits, int64_t rows, int64_t vocab, int64_t ld, bool vocab_major_layout,
                         const int64_t* targets, float inv_temperature, int64_t ignore_index, float* logprob,
                         float* entropy, float* lse, float* exp_scale, int num_threads) {
  const auto epilogue = vocab_major_layout ? &vocab_major<true> : &token_major<true>;
  epilogue(logits, rows, vocab, ld, targets, inv_temperature, ignore_index, logprob, entropy, lse, exp_scale,
           num_threads);
}

}  // namespace cpu
}  // namespace gro
