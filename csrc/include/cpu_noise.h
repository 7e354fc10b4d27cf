// Keyed Gumbel noise for 8 entries at a time on the CPU: Philox4x32-10 and the two double-precision
// logs in SIMD lanes (GCC/Clang vector extensions), bit-identical words and the same float noise as
// philox.h's scalar gumbel() up to the log's last bit (see fast_log below).
#pragma once

#include <cstdint>
#include <cstring>

#include "philox.h"

// Force inlining, so that the whole kernel is compiled for the instruction set of the function
// that calls it (each multiversioned body in csrc/cpu/cpu_kernels.cpp).
#if defined(__GNUC__)
#define EPIC_INLINE inline __attribute__((always_inline))
#else
#define EPIC_INLINE inline
#endif

namespace epic {
namespace cpu {

typedef uint32_t vu32x8 __attribute__((vector_size(32)));
typedef int32_t vi32x8 __attribute__((vector_size(32)));
typedef uint64_t vu64x8 __attribute__((vector_size(64)));
typedef int64_t vi64x8 __attribute__((vector_size(64)));
typedef double vf64x8 __attribute__((vector_size(64)));
typedef float vf32x8 __attribute__((vector_size(32)));

// Natural log of 8 positive normal doubles, fdlibm's e_log.c algorithm (no table, error < 1 ulp):
// x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), s = f / (2 + f),
// log(1 + f) = f - hfsq + s (hfsq + R(s^2)), hfsq = f^2 / 2, R a degree-7 polynomial.
EPIC_INLINE vf64x8 fast_log(vf64x8 x) {
  constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  constexpr double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                   Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                   Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                   Lg7 = 1.479819860511658591e-01;
  vu64x8 ix;
  std::memcpy(&ix, &x, sizeof(ix));
  ix += 0x3ff0000000000000ull - 0x3fe6a09e00000000ull;  // exponent of 1+f moved into [sqrt2/2, sqrt2)
  const vi32x8 k = __builtin_convertvector(reinterpret_cast<const vi64x8&>(ix) >> 52, vi32x8) - 0x3ff;
  ix = (ix & 0x000fffffffffffffull) + 0x3fe6a09e00000000ull;
  vf64x8 m;
  std::memcpy(&m, &ix, sizeof(m));
  const vf64x8 f = m - 1.0;
  const vf64x8 hfsq = 0.5 * f * f;
  const vf64x8 s = f / (2.0 + f);
  const vf64x8 z = s * s, w = z * z;
  const vf64x8 t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
  const vf64x8 t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
  const vf64x8 r = t2 + t1;
  const vf64x8 dk = __builtin_convertvector(k, vf64x8);
  return s * (hfsq + r) + dk * ln2_lo - hfsq + f + dk * ln2_hi;
}

// Gumbel noise from 8 Philox words: u = ((w >> 9) + 0.5) 2^-23 (exact), G = float(-log(-log u)).
EPIC_INLINE vf32x8 gumbel_from_words8(vu32x8 words) {
  const vf64x8 u = (__builtin_convertvector(words >> 9, vf64x8) + 0.5) * 1.1920928955078125e-07;
  return __builtin_convertvector(-fast_log(-fast_log(u)), vf32x8);
}

// g[j] = noise of entry v0 + idx[j] of the row keyed by key, for j < n <= kNoiseBatch. idx must
// have room for n rounded up to a multiple of 8 (the padding lanes are computed and discarded).
// The Philox words come from a plain loop, which compilers vectorize with 32x32->64 bit multiplies
// (pmuludq); written with vector extensions it becomes a slower 64x64 bit multiply.
constexpr int64_t kNoiseBatch = 1024;

EPIC_INLINE void gumbel_batch(const NoiseKey& key, int64_t v0, const int32_t* __restrict idx,
                              int64_t n, float* __restrict g) {
  alignas(64) uint32_t words[kNoiseBatch + 8];
  const int64_t padded = (n + 7) / 8 * 8;
  const uint32_t base = static_cast<uint32_t>(v0);
  for (int64_t j = 0; j < padded; ++j)
    words[j] = philox_word(base + static_cast<uint32_t>(idx[j]), key.c1, key.k0, key.k1);
  for (int64_t j = 0; j < padded; j += 8) {
    vu32x8 w;
    std::memcpy(&w, words + j, sizeof(w));
    const vf32x8 noise = gumbel_from_words8(w);
    std::memcpy(g + j, &noise, sizeof(noise));
  }
}

// Noise of the single entry v (lane 0 of a batch, so it equals what gumbel_batch gives).
EPIC_INLINE float gumbel_one(const NoiseKey& key, int64_t v) {
  const uint32_t word = philox_word(static_cast<uint32_t>(v), key.c1, key.k0, key.k1);
  return gumbel_from_words8(vu32x8{} + word)[0];
}

}  // namespace cpu
}  // namespace epic
