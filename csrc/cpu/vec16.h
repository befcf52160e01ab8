// 16 fp32 lanes as a GCC/Clang vector type (AVX-512 with -march=native here, split into narrower vectors
// where the CPU has none), and the row_math.h functions the tile epilogues need on it (logprob_tiles.cpp).
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

// clamp_shift per lane: [-88, 0], NaN kept.
inline Vec16 clamp_shift16(Vec16 x) {
#if defined(__AVX512F__)
  // max/min return their second operand when either is NaN: x, then the NaN result.
  return _mm512_min_ps(_mm512_set1_ps(0.0f), _mm512_max_ps(_mm512_set1_ps(-88.0f), x));
#else
  const Vec16 lo = select(x < -88.0f, splat(-88.0f), x);  // both compares are false for NaN
  return select(lo > 0.0f, splat(0.0f), lo);
#endif
}

// exp_nonpositive of a value already clamped by clamp_shift16: the same reduction and polynomial (row_math.h),
// exactly 0 at -88.
inline Vec16 exp_clamped16(Vec16 xc) {
  const Vec16 n = (xc * kExpLog2e + kExpRoundMagic) - kExpRoundMagic;
  const Vec16 r = (xc - n * kExpLn2Hi) - n * kExpLn2Lo;
  Vec16 p = splat(kExpP0);
  p = p * r + kExpP1;
  p = p * r + kExpP2;
  p = p * r + kExpP3;
  p = p * r + kExpP4;
  p = p * r + kExpP5;
  p = p * r * r + r + 1.0f;
  const Int16 bits = (__builtin_convertvector(n, Int16) + 127) << 23;
  return p * reinterpret_cast<const Vec16&>(bits);
}

inline Vec16 exp_nonpositive16(Vec16 x) { return exp_clamped16(clamp_shift16(x)); }

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
