// Counter-based randomness shared by the CPU and CUDA kernels: Philox4x32-10 and keyed Gumbel noise.
//
// Bit-identical to epic_kernels/philox.py (and Triton's tl.randint):
//   triton seed   = (stream << 32) | seed_b        key     = (seed_lo, seed_hi)
//   triton offset = (position << 32) | vocab_id    counter = (offset_lo, offset_hi, 0, 0)
//   word = first output word of Philox4x32 with 10 rounds
//   u = ((word >> 9) + 0.5) * 2^-23                in (0, 1), exact in float32
//   G = float(-log(-log(double(u))))               the logs in double, rounded once to float
// No framework headers: usable from host C++ and from CUDA device code.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define EPIC_HD __host__ __device__ __forceinline__
#else
#define EPIC_HD inline
#endif

#if defined(__CUDACC__)
#include <math.h>
#define EPIC_LOG_F64(x) ::log(x)
#else
#include <cmath>
#define EPIC_LOG_F64(x) std::log(x)
#endif

namespace epic {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;

// Largest and smallest Gumbel value the mapping can produce, padded outwards: u ranges over
// [0.5 * 2^-23, 1 - 0.5 * 2^-23], so G lies in [-2.8115, 16.6355]. Used to skip the noise of
// entries that provably cannot win (any larger bound would also be correct, just prune less).
constexpr float kGumbelMaxBound = 16.75f;

// Philox4x32-10, counter (c0, c1, 0, 0), key (k0, k1); returns the first output word.
EPIC_HD uint32_t philox_word(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = static_cast<uint64_t>(kPhiloxRoundB) * c2;   // 32x32 -> 64 bit products
    const uint64_t pa = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}

// tl.randint(seed, offset) for 64-bit seed and offset.
EPIC_HD uint32_t philox_randint(uint64_t seed, uint64_t offset) {
  return philox_word(static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                     static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// u = ((w >> 9) + 0.5) * 2^-23; every step is exact in float.
EPIC_HD float uniform_from_word(uint32_t word) {
  return (static_cast<float>(word >> 9) + 0.5f) * 1.1920928955078125e-07f;
}

// G = -log(-log(u)), both logs in double, rounded once to float.
EPIC_HD float gumbel_from_word(uint32_t word) {
  const double u = static_cast<double>(uniform_from_word(word));
  return static_cast<float>(-EPIC_LOG_F64(-EPIC_LOG_F64(u)));
}

// The noise key of one row: key (seed_b, stream) and counter high word = position.
struct NoiseKey {
  uint32_t k0;   // seed_b (low word of the Triton seed)
  uint32_t k1;   // stream: 0 = step noise, 1 + r = rollout r (high word of the Triton seed)
  uint32_t c1;   // position (high word of the Triton offset)

  // Mirrors (stream << 32) | seed and (position << 32) | v for the ranges the contract allows
  // (seed < 2^32, stream and position < 2^31).
  EPIC_HD static NoiseKey make(int64_t seed, int64_t stream, int64_t position) {
    const uint64_t s = (static_cast<uint64_t>(stream) << 32) | static_cast<uint64_t>(seed);
    const uint64_t o = static_cast<uint64_t>(position) << 32;
    return NoiseKey{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32),
                    static_cast<uint32_t>(o >> 32)};
  }
  EPIC_HD uint32_t word(uint32_t v) const { return philox_word(v, c1, k0, k1); }
  EPIC_HD float gumbel(uint32_t v) const { return gumbel_from_word(word(v)); }
};

}  // namespace epic
