// Row math shared by the CPU and CUDA epilogues of linear_logprobs (docs/math.md §1).
//
// Everything here is a scalar, branch-light, __host__ __device__ function of floats, so that
// the CPU code can auto-vectorize it inside `#pragma omp simd` loops and the CUDA code can call
// it per thread. No torch, no std:: containers, no allocation.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define GRO_HD __host__ __device__ __forceinline__
#else
#define GRO_HD inline
#endif

namespace gro {

// Reinterpret an int's bits as a float without going through memory (a union or memcpy through
// the stack stops GCC from vectorizing the loops that call exp_nonpositive).
GRO_HD float bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  return __builtin_bit_cast(float, i);
#endif
}

// x clamped to [-88, 0], NaN kept (both compares are false for NaN). Every exponent below is a logit
// minus a running max or an lse, so it is <= 0 in exact arithmetic; in fp32 it can come out slightly
// positive (FMA contraction of z * inv_tau - max keeps the unrounded product: +64 at tau = 1e-9),
// and -inf (a banned token, e.g. a -inf bias) must give probability 0 and a product e * x of 0, not
// 0 * -inf = NaN. Below -88, exp(x) is 0 in fp32 anyway.
GRO_HD float clamp_shift(float x) {
  const float lo = x < -88.0f ? -88.0f : x;
  return lo > 0.0f ? 0.0f : lo;
}

// exp(x) for x <= 0 (every call site passes a value minus a running max), written without calls,
// tables or data-dependent selects so that GCC vectorizes it into straight-line code (selects on x
// made it compute under masks, at half the speed): Cody-Waite reduction x = n*ln2 + r,
// |r| <= ln2/2 (n rounded to nearest), then a degree-7 polynomial for exp(r) (relative error
// ~1e-7, about 1 ulp), then a 2^n scale built from the exponent bits. x is clamped at -88, where
// n = -127, whose biased exponent bits are those of +0.0: inputs below about -87.3 (where exp(x)
// is subnormal or 0) give exactly 0, -inf included; x > 0 gives 1. NaN gives NaN.
// Two of its constants are shared with the base-2 exp of the CPU tile epilogues (csrc/cpu/vec16.h).
constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to nearest

GRO_HD float exp_nonpositive(float x) {
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const float xc = clamp_shift(x);  // NaN compares false and stays NaN
  // Round to nearest by adding and subtracting 1.5 * 2^23 (floorf would block vectorization).
  // xc >= -88 puts n >= round(-126.96) = -127.
  const float n = (xc * kExpLog2e + kExpRoundMagic) - kExpRoundMagic;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // n = -127 gives the bits of +0.0 (exactly 0 out); a NaN n gives some bits, and p is NaN anyway.
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// Running softmax statistics of one row, relative to the running max m of z/tau:
//   sum_exp = sum_v exp(s_v - m),  sum_exp_shift = sum_v exp(s_v - m) * (s_v - m)
// Keeping the second sum relative to m (not as sum e*s) avoids the cancellation in
// entropy = lse - E[s] when logits are large.
struct RowStats {
  float max;
  float sum_exp;
  float sum_exp_shift;
};

GRO_HD RowStats row_stats_empty() {
  RowStats s;
  s.max = -INFINITY;
  s.sum_exp = 0.0f;
  s.sum_exp_shift = 0.0f;
  return s;
}

// Merge two partial statistics (a block, or another thread's share) into one.
GRO_HD RowStats row_stats_merge(RowStats a, RowStats b) {
  if (a.sum_exp == 0.0f) return b;
  if (b.sum_exp == 0.0f) return a;
  const float m = a.max > b.max ? a.max : b.max;
  const float da = a.max - m;  // <= 0
  const float db = b.max - m;
  const float ea = exp_nonpositive(da);
  const float eb = exp_nonpositive(db);
  RowStats out;
  out.max = m;
  out.sum_exp = a.sum_exp * ea + b.sum_exp * eb;
  // sum e_v (s_v - m) = scale * (sum e_v (s_v - m_old) + (m_old - m) * sum e_v)
  out.sum_exp_shift = ea * (a.sum_exp_shift + da * a.sum_exp) + eb * (b.sum_exp_shift + db * b.sum_exp);
  return out;
}

GRO_HD float row_lse(RowStats s) { return s.max + logf(s.sum_exp); }

// Shannon entropy of softmax(s): log S - E[s - m].
GRO_HD float row_entropy(RowStats s) { return logf(s.sum_exp) - s.sum_exp_shift / s.sum_exp; }

// d loss / d z_v for one vocabulary entry that is not the target (docs/math.md §1 backward):
//   (1/tau) * [ -g_l * p  -  g_H * p * (log p + H) ],  log p = z_v/tau - lse.
// The target entry adds g_l / tau on top (see logit_grad_target_extra).
GRO_HD float logit_grad(float z, float inv_tau, float lse, float g_logprob, float g_entropy, float entropy) {
  const float log_p = clamp_shift(z * inv_tau - lse);  // a -inf logit: p = 0 and p * log_p = 0
  const float p = exp_nonpositive(log_p);
  return inv_tau * p * (-g_logprob - g_entropy * (log_p + entropy));
}

GRO_HD float logit_grad_target_extra(float inv_tau, float g_logprob) { return inv_tau * g_logprob; }

}  // namespace gro
