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

#include "cpu_noise.h"
#include "online_softmax.h"
#include "philox.h"

namespace epic {
namespace cpu {

constexpr int kLanes = 16;
constexpr int64_t kBlock = 1024;   // entries per block (4 KiB of float: stays in L1 for the re-read)
constexpr int64_t kChunk = 16384;  // entries per parallel task; fixed, so results never depend on
                                   // the number of threads

// 16 float lanes as one GCC/Clang vector: the compiler maps it to 1 AVX-512, 2 AVX2 or 4 SSE
// registers, with the same per-lane arithmetic (and so the same results) in every case.
typedef float vfloat __attribute__((vector_size(64)));
typedef int32_t vint __attribute__((vector_size(64)));
static_assert(sizeof(vfloat) == kLanes * sizeof(float), "one vfloat holds the 16 lanes");

EPIC_INLINE vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}
EPIC_INLINE vfloat vsplat(float x) { return vfloat{} + x; }
EPIC_INLINE bool vany(vint mask) {
  int32_t any = 0;
  for (int j = 0; j < kLanes; ++j) any |= mask[j];
  return any != 0;
}

// e^x for 16 floats with x in [-86, 0] (the caller clamps), as 2^y with y = x log2(e):
// n = round(y) by the 1.5 * 2^23 trick (whose bits also give 2^n), f = y - n in [-0.5, 0.5],
// 2^f by a degree-5 polynomial (fitted for relative error; 3e-7 for x in [-10, 0], 1.3e-6 at
// x = -86). The result is at least e^-86 ~ 4e-38, a normal float: no denormals (slow on x86),
// and a clamped -inf entry adds a negligible 4e-38 to a sum that is >= 1.
EPIC_INLINE vfloat fast_exp_nonpos(vfloat x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat t = x * 1.44269504088896341f + kMagic;
  const vfloat n = t - kMagic;
  const vfloat f = x * 1.44269504088896341f - n;
  vfloat p = vsplat(0.00129156676f);
  p = p * f + 0.0096685309f;
  p = p * f + 0.0555168875f;
  p = p * f + 0.240222648f;
  p = p * f + 0.693146467f;
  p = p * f + 1.0f;
  // the low bits of t hold n: bits of t minus bits of kMagic (0x4B400000) = n; 2^n = (n+127) << 23
  const vint bits = (reinterpret_cast<const vint&>(t) + (127 - 0x4B400000)) << 23;
  return p * reinterpret_cast<const vfloat&>(bits);
}

template <typename acc_t>
constexpr acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Convert n entries to acc_t into buf, padded with -inf up to a multiple of kLanes; returns the
// padded pointer. Full blocks that already are acc_t are used in place.
template <typename T, typename acc_t>
EPIC_INLINE const acc_t* load_block(const T* x, int64_t n, acc_t* buf, int64_t* padded) {
  *padded = (n + kLanes - 1) / kLanes * kLanes;
  if constexpr (std::is_same<T, acc_t>::value) {
    if (n == *padded) return x;
  }
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(x[i]);
  for (int64_t i = n; i < *padded; ++i) buf[i] = neg_inf<acc_t>();
  return buf;
}

template <typename acc_t>
EPIC_INLINE acc_t block_max(const acc_t* p, int64_t np) {
  acc_t mx[kLanes];
  for (int j = 0; j < kLanes; ++j) mx[j] = neg_inf<acc_t>();
  for (int64_t i = 0; i < np; i += kLanes)
    for (int j = 0; j < kLanes; ++j) mx[j] = p[i + j] > mx[j] ? p[i + j] : mx[j];
  acc_t m = mx[0];
  for (int j = 1; j < kLanes; ++j) m = mx[j] > m ? mx[j] : m;
  return m;
}

EPIC_INLINE float block_max(const float* p, int64_t np) {
  vfloat mx = vsplat(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < np; i += kLanes) {
    const vfloat v = vload(p + i);
    mx = v > mx ? v : mx;
  }
  float m = mx[0];
  for (int j = 1; j < kLanes; ++j) m = mx[j] > m ? mx[j] : m;
  return m;
}

template <typename acc_t>
EPIC_INLINE int64_t first_index(const acc_t* p, int64_t np, acc_t value) {
  for (int64_t i = 0; i < np; ++i)
    if (p[i] == value) return i;
  return -1;
}

// s += e^{x - m}, t += e^{x - m} (x - m), lane j taking entries j, j + 16, ...
// (d is clamped at a floor, so -inf entries give a finite e * d, not 0 * -inf = NaN.)
EPIC_INLINE void accumulate(const double* p, int64_t np, double m, double* s, double* t) {
  for (int64_t i = 0; i < np; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      double d = p[i + j] - m;
      d = d < -746.0 ? -746.0 : d;  // std::exp(-746) == 0
      const double e = std::exp(d);
      s[j] += e;
      t[j] += e * d;
    }
  }
}

EPIC_INLINE void accumulate(const float* p, int64_t np, float m, float* s, float* t) {
  vfloat vs = vload(s), vt = vload(t);
  const vfloat floor = vsplat(-86.0f), vm = vsplat(m);
  for (int64_t i = 0; i < np; i += kLanes) {
    vfloat d = vload(p + i) - vm;  // <= 0
    d = d > floor ? d : floor;      // maxps
    const vfloat e = fast_exp_nonpos(d);
    vs += e;
    vt += e * d;
  }
  std::memcpy(s, &vs, sizeof(vs));
  std::memcpy(t, &vt, sizeof(vt));
}

// Could any of the 16 entries p[0..16) reach bound: (p - sub) + add >= bound? (Same arithmetic as
// the per-entry test, so skipping a group skips exactly entries that test false.)
EPIC_INLINE bool group_reaches(const float* p, float sub, float add, float bound) {
  return vany(((vload(p) - sub) + add) >= bound);
}
EPIC_INLINE bool group_reaches(const double* p, double sub, double add, double bound) {
  bool any = false;
  for (int j = 0; j < kLanes; ++j) any |= (p[j] - sub) + add >= bound;
  return any;
}

// Gumbel-max over one block: best = argmax (x_v + G_v), lower id on ties. The noise of an entry is
// drawn only if x_v + Gmax could reach the best so far (exact: x + G <= x + Gmax after rounding);
// the block maximum goes first, as it gives a good bound for the rest. Noise is computed 8 at a time.
template <typename acc_t>
EPIC_INLINE void sample_block(const acc_t* p, int64_t np, int64_t v0, acc_t bm, const NoiseKey& key,
                              Cand<acc_t>& best) {
  const acc_t gmax = static_cast<acc_t>(kGumbelMaxBound);
  if (bm + gmax < best.val) return;
  alignas(64) int32_t idx[kBlock + 8];
  alignas(64) float g[kBlock + 8];
  const int32_t top = static_cast<int32_t>(first_index(p, np, bm));
  const Cand<acc_t> c0{bm + static_cast<acc_t>(gumbel_one(key, v0 + top)), v0 + top};
  if (better(c0, best)) best = c0;
  int64_t n = 0;
  for (int64_t i0 = 0; i0 < np; i0 += kLanes) {  // padding entries are -inf
    if (!group_reaches(p + i0, acc_t(0), gmax, best.val)) continue;
    for (int64_t i = i0; i < i0 + kLanes; ++i) {
      idx[n] = static_cast<int32_t>(i);
      n += (p[i] > neg_inf<acc_t>() && p[i] + gmax >= best.val) ? 1 : 0;
    }
  }
  for (int64_t j = n; j < n + 8; ++j) idx[j] = 0;
  gumbel_batch(key, v0, idx, n, g);
  for (int64_t j = 0; j < n; ++j) {
    const Cand<acc_t> c{p[idx[j]] + static_cast<acc_t>(g[j]), v0 + idx[j]};
    if (better(c, best)) best = c;
  }
}

// Online softmax statistics of x[0..n) (entries v0.., for the noise key) and, when key is given,
// the Gumbel-max candidate of the piece. st and best are overwritten.
template <typename T, typename acc_t>
EPIC_INLINE void softmax_piece(const T* x, int64_t n, int64_t v0, const NoiseKey* key,
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
    if (key != nullptr) sample_block(p, np, v0 + b0, bm, *key, *best);
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
