// 16 fp32 lanes as a GCC/Clang vector type (AVX-512 with -march=native here, split into narrower vectors
// where the CPU has none), and the exp the tile epilogues need on it (logprob_tiles.cpp): base 2, the same
// clamp-to-exact-zero contract as row_math.h's exp_nonpositive.
// Written with vector types, not `#pragma omp simd`, so that per-token accumulators provably stay in
// registers across a loop over vocabulary entries.
#pragma once

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../common/row_math.h"

namespace gro {
namespace cpu {

typedef float Vec16 __attribute__((vector_size(64)));
typedef int32_t Int16 __attribute__((vector_size(64)));
typedef uint32_t Uint16 __attribute__((vector_size(64)));
typedef uint16_t Half16 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 16;

inline Vec16 splat(float x) { return Vec16{} + x; }
inline Vec16 load16(const float* p) {
  Vec16 v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, Vec16 v) { memcpy(p, &v, sizeof(v)); }
inline Int16 load16i(const int32_t* p) {
  Int16 v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline Vec16 select(Int16 mask, Vec16 a, Vec16 b) { return mask ? a : b; }
inline Uint16 select(Int16 mask, Uint16 a, Uint16 b) { return mask ? a : b; }

// Base 2: the tile epilogues work on t = s * log2(e) (s a shifted logit), which saves the Cody-Waite step.
constexpr float kLn2 = 0.693147180559945309f;

// t clamped to [-127, 0], NaN kept (exp2 of it is exactly 0 at -127, as exp_nonpositive's at -88).
inline Vec16 clamp_shift2_16(Vec16 t) {
#if defined(__AVX512F__)
  return _mm512_min_ps(_mm512_set1_ps(0.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), t));
#else
  const Vec16 lo = select(t < -127.0f, splat(-127.0f), t);
  return select(lo > 0.0f, splat(0.0f), lo);
#endif
}

// 2^t for t in [-127, 0] (clamp_shift2_16): t = n + f with n = round(t), |f| <= 1/2, 2^f a polynomial in f, times
// 2^n from the exponent bits (n = -127 gives the bits of +0.0: exactly 0). kDegree 5: relative error 1.8e-7 (the
// forward's sums); 4: 3.1e-6, for gradients rounded to bf16 (2^-9) anyway. Coefficients: least squares in
// relative error on 2000 Chebyshev nodes of [-1/2, 1/2], constant term fixed at 1 (errors measured in fp32 on 2e5
// points).
template <int kDegree>
inline Vec16 exp2_clamped16(Vec16 t) {
  static_assert(kDegree == 4 || kDegree == 5, "exp2_clamped16: degree 4 or 5");
#if defined(__AVX512F__)
  const Vec16 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const Vec16 n = (t + kExpRoundMagic) - kExpRoundMagic;
#endif
  const Vec16 f = t - n;
  Vec16 p;
  if (kDegree == 5) {
    p = splat(1.3218672247603536e-3f);
    p = p * f + 9.671698324382305e-3f;
    p = p * f + 5.550893023610115e-2f;
    p = p * f + 2.4022237956523895e-1f;
    p = p * f + 6.931468844413757e-1f;
  } else {
    p = splat(9.60039533674717e-3f);
    p = p * f + 5.591689422726631e-2f;
    p = p * f + 2.4023719131946564e-1f;
    p = p * f + 6.931219696998596e-1f;
  }
  p = p * f + 1.0f;
  const Int16 bits = (__builtin_convertvector(n, Int16) + 127) << 23;
  return p * reinterpret_cast<const Vec16&>(bits);
}

// fp32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
inline Half16 to_bf16(Vec16 x) {
#if defined(__AVX512BF16__)
  const __m256bh rounded = _mm512_cvtneps_pbh(x);
  return reinterpret_cast<const Half16&>(rounded);
#else
  const Uint16 bits = reinterpret_cast<const Uint16&>(x);
  const Uint16 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return __builtin_convertvector(select(x != x, Uint16{} + 0x7FC0u, rounded), Half16);
#endif
}

}  // namespace cpu
}  // namespace gro
