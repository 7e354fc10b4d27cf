// CPU kernels over one contiguous piece of a row: online softmax statistics (entropy, logsumexp)
// and, in the same pass, the keyed Gumbel-max sample. Plain pointers, no framework types: the
// element type T only needs a conversion to the accumulate type acc_t (float or double).
//
// Layout of the work: a piece is walked in blocks of kBlock entries. Per block, (1) the block
// maximum, (2) if it raises the running maximum m, the 16 lane accumulators are rescaled once,
// (3) s += e^{x - m}, t += e^{x - m} (x - m) over 16 independent lanes (vectorizes; the lane
// structure also fixes the summation order, so results do not depend on the SIMD width), and
// (4) the Gumbel-max candidates of the block, which re-reads the block from L1. Memory is read once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "online_softmax.h"
#include "philox.h"

namespace epic {
namespace cpu {

constexpr int kLanes = 16;
constexpr int64_t kBlock = 1024;   // entries per block (4 KiB of float: stays in L1 for the re-read)
constexpr int64_t kChunk = 16384;  // entries per parallel task; fixed, so results never depend on
                                   // the number of threads

// e^x in float for x in [-86, 88], relative error ~1 ulp (Cephes polynomial, Cody-Waite reduction);
// exactly 0 below -86. Branch-free so that loops calling it vectorize; never produces denormals.
inline float fast_expf(float x) {
  const float xc = x < -86.0f ? -86.0f : (x > 88.0f ? 88.0f : x);
  float n = xc * 1.44269504088896341f;
  n = (n + 12582912.0f) - 12582912.0f;  // round to nearest integer (1.5 * 2^23 trick)
  float r = xc - n * 0.693359375f;      // ln 2 split in two parts: r = x - n ln 2 exactly enough
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -86.0f ? 0.0f : y * scale;
}

// Per accumulate type: the exp used in the hot loop and the floor below which e^d is exactly 0
// (clamping d there keeps e * d = 0 for -inf entries instead of 0 * -inf = NaN).
template <typename acc_t>
struct ExpOps;
template <>
struct ExpOps<float> {
  static constexpr float kFloor = -87.0f;
  static inline float exp(float d) { return fast_expf(d); }
};
template <>
struct ExpOps<double> {
  static constexpr double kFloor = -746.0;  // std::exp(-746) == 0
  static inline double exp(double d) { return std::exp(d); }
};

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Convert n entries to acc_t into buf, padded with -inf up to a multiple of kLanes; returns the
// padded pointer. Full blocks that already are acc_t are used in place.
template <typename T, typename acc_t>
inline const acc_t* load_block(const T* x, int64_t n, acc_t* buf, int64_t* padded) {
  *padded = (n + kLanes - 1) / kLanes * kLanes;
  if constexpr (std::is_same<T, acc_t>::value) {
    if (n == *padded) return x;
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(x[i]);
  for (int64_t i = n; i < *padded; ++i) buf[i] = neg_inf<acc_t>();
  return buf;
}

template <typename acc_t>
inline acc_t block_max(const acc_t* p, int64_t np) {
  acc_t mx[kLanes];
  for (int j = 0; j < kLanes; ++j) mx[j] = neg_inf<acc_t>();
  for (int64_t i = 0; i < np; i += kLanes)
    for (int j = 0; j < kLanes; ++j) mx[j] = p[i + j] > mx[j] ? p[i + j] : mx[j];
  acc_t m = mx[0];
  for (int j = 1; j < kLanes; ++j) m = mx[j] > m ? mx[j] : m;
  return m;
}

template <typename acc_t>
inline int64_t first_index(const acc_t* p, int64_t np, acc_t value) {
  for (int64_t i = 0; i < np; ++i)
    if (p[i] == value) return i;
  return -1;
}

// s += e^{x - m}, t += e^{x - m} (x - m), lane j taking entries j, j + 16, ...
template <typename acc_t>
inline void accumulate(const acc_t* p, int64_t np, acc_t m, acc_t* s, acc_t* t) {
  for (int64_t i = 0; i < np; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      acc_t d = p[i + j] - m;
      d = d < ExpOps<acc_t>::kFloor ? ExpOps<acc_t>::kFloor : d;
      const acc_t e = ExpOps<acc_t>::exp(d);
      s[j] += e;
      t[j] += e * d;
    }
  }
}

// Gumbel-max over one block: best = argmax (x_v + G_v), lower id on ties. The noise of an entry is
// drawn only if x_v + Gmax could reach the current best (exact: x + G <= x + Gmax after rounding).
template <typename acc_t>
inline void sample_block(const acc_t* p, int64_t nb, int64_t v0, acc_t bm, const NoiseKey& key,
                         Cand<acc_t>& best) {
  const acc_t gmax = static_cast<acc_t>(kGumbelMaxBound);
  if (bm + gmax < best.val) return;
  auto consider = [&](int64_t i) {
    if (!(p[i] > neg_inf<acc_t>())) return;
    const int64_t v = v0 + i;
    const Cand<acc_t> c{p[i] + static_cast<acc_t>(key.gumbel(static_cast<uint32_t>(v))), v};
    if (better(c, best)) best = c;
  };
  consider(first_index(p, nb, bm));  // the block maximum first: a good bound for the rest
  for (int64_t i = 0; i < nb; ++i)
    if (p[i] + gmax >= best.val) consider(i);
}

// Online softmax statistics of x[0..n) (entries v0.., for the noise key) and, when key is given,
// the Gumbel-max candidate of the piece. st and best are overwritten.
template <typename T, typename acc_t>
inline void softmax_piece(const T* x, int64_t n, int64_t v0, const NoiseKey* key,
                          RowState<acc_t>* st, Cand<acc_t>* best) {
  alignas(64) acc_t buf[kBlock];
  acc_t s[kLanes], t[kLanes];
  for (int j = 0; j < kLanes; ++j) s[j] = t[j] = acc_t(0);
  acc_t m = neg_inf<acc_t>();
  int64_t arg = -1;
  *best = no_cand<acc_t>();
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    int64_t np;
    const acc_t* p = load_block(x + b0, nb, buf, &np);
    const acc_t bm = block_max(p, np);
    if (!(bm > neg_inf<acc_t>())) continue;  // only -inf entries: they contribute nothing
    if (bm > m) {
      if (m > neg_inf<acc_t>()) {  // rescale the lanes to the new maximum
        const acc_t d = m - bm, f = std::exp(d);
        for (int j = 0; j < kLanes; ++j) {
          t[j] = f * (t[j] + s[j] * d);
          s[j] = f * s[j];
        }
      }
      m = bm;
      arg = v0 + b0 + first_index(p, np, bm);
    }
    accumulate(p, np, m, s, t);
    if (key != nullptr) sample_block(p, nb, v0 + b0, bm, *key, *best);
  }
  acc_t ss = 0, tt = 0;
  for (int j = 0; j < kLanes; ++j) {
    ss += s[j];
    tt += t[j];
  }
  *st = RowState<acc_t>{m, ss, tt, arg};
}

}  // namespace cpu
}  // namespace epic
