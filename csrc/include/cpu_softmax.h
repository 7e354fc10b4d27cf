// CPU kernels over one contiguous piece of a row: online softmax statistics (entropy, logsumexp)
// and, in the same pass, the keyed Gumbel-max sample. Plain pointers, no framework types: the
// element type T only needs a conversion to the accumulate type acc_t (float or double).
//
// Layout of the work: a piece is walked in blocks of kBlock entries. Per block, in one pass over
// memory: the block maximum and s += e^{x - m}, t += e^{x - m} (x - m) relative to the running
// maximum m (for the first block, the max of its first 16 entries), over 16 independent lanes (an
// entry above m gives a factor > 1, fine up to x - m = 60; a block that raises m further is redone
// from L1 relative to its own maximum). If the block raised m, the lanes are rescaled once (after
// the pass, so the result equals the two-pass one up to rounding). Then the Gumbel-max candidates of
// the block for each of the S noise keys (streams) of the row, re-reading it from L1. Loading a block overlaps with the exp arithmetic of the last.
//
// The float loops use GCC/Clang vector extensions of W floats (W = 4, 8 or 16: SSE, AVX2, AVX-512;
// csrc/cpu/cpu_kernels.cpp instantiates one per instruction set). The 16 logical lanes are 16 / W
// vectors, so every W performs the same per-lane arithmetic in the same order: the results do
// not depend on the SIMD width.
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

template <int W>
struct VecTypes;
template <>
struct VecTypes<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
  static constexpr i bit = {1, 2, 4, 8};  // lane j: 1 << j
};
template <>
struct VecTypes<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
  static constexpr i bit = {1, 2, 4, 8, 16, 32, 64, 128};
};
template <>
struct VecTypes<16> {
  typedef float f __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
  static constexpr i bit = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
};
template <int W>
using vf = typename VecTypes<W>::f;  // W float lanes
template <int W>
using vi = typename VecTypes<W>::i;  // W int32 lanes (comparison masks)

template <int W>
EPIC_INLINE vf<W> vload(const float* p) {
  vf<W> v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}
template <int W>
EPIC_INLINE vf<W> vsplat(float x) {
  return vf<W>{} + x;
}
template <int W>
EPIC_INLINE vf<W> vmax(vf<W> a, vf<W> b) {  // b if either is NaN
  return a > b ? a : b;
}
template <int W>
EPIC_INLINE bool vany(vi<W> mask) {
  int32_t any = 0;
  for (int j = 0; j < W; ++j) any |= mask[j];
  return any != 0;
}
// Bit j set iff lane j of a comparison mask is set: the lanes' own bits ORed together, which the
// compilers reduce in a few vector steps. (Other forms, e.g. narrowing the mask to bytes, or the
// AND of two masks, are scalarized by GCC 12 inside the target("arch=...") bodies of
// cpu_kernels.cpp, even where they vectorize with -march: check the assembly when changing this.)
template <int W>
EPIC_INLINE uint32_t mask_bits(vi<W> mask) {
  const vi<W> w = mask & VecTypes<W>::bit;
  int32_t bits = 0;
  for (int j = 0; j < W; ++j) bits |= w[j];
  return static_cast<uint32_t>(bits);
}

// e^x for W floats with x in [-86, 64] (the caller clamps below), as 2^y with y = x log2(e):
// n = round(y) by the 1.5 * 2^23 trick (whose bits also give 2^n), f = y - n in [-0.5, 0.5],
// 2^f by a degree-5 polynomial (fitted for relative error; 3e-7 for x in [-10, 0], 1.3e-6 at
// x = -86). The result is at least e^-86 ~ 4e-38, a normal float: no denormals (slow on x86),
// and a clamped -inf entry adds a negligible 4e-38 to a sum that is >= 1.
template <int W>
EPIC_INLINE vf<W> fast_exp(vf<W> x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vf<W> t = x * 1.44269504088896341f + kMagic;
  const vf<W> n = t - kMagic;
  const vf<W> f = x * 1.44269504088896341f - n;
  vf<W> p = vsplat<W>(0.00129156676f);
  p = p * f + 0.0096685309f;
  p = p * f + 0.0555168875f;
  p = p * f + 0.240222648f;
  p = p * f + 0.693146467f;
  p = p * f + 1.0f;
  // the low bits of t hold n: bits of t minus bits of kMagic (0x4B400000) = n; 2^n = (n+127) << 23
  const vi<W> bits = (reinterpret_cast<const vi<W>&>(t) + (127 - 0x4B400000)) << 23;
  return p * reinterpret_cast<const vf<W>&>(bits);
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

template <int W>
EPIC_INLINE double block_max(const double* p, int64_t np) {
  double mx[kLanes];
  for (int j = 0; j < kLanes; ++j) mx[j] = neg_inf<double>();
  for (int64_t i = 0; i < np; i += kLanes)
    for (int j = 0; j < kLanes; ++j) mx[j] = p[i + j] > mx[j] ? p[i + j] : mx[j];
  double m = mx[0];
  for (int j = 1; j < kLanes; ++j) m = mx[j] > m ? mx[j] : m;
  return m;
}

template <int W>
EPIC_INLINE float block_max(const float* p, int64_t np) {
  constexpr int H = kLanes / W;
  vf<W> mx[H];
  for (int h = 0; h < H; ++h) mx[h] = vsplat<W>(neg_inf<float>());
  for (int64_t i = 0; i < np; i += kLanes)
    for (int h = 0; h < H; ++h) mx[h] = vmax<W>(vload<W>(p + i + h * W), mx[h]);
  for (int h = 1; h < H; ++h) mx[0] = vmax<W>(mx[h], mx[0]);
  float m = mx[0][0];
  for (int j = 1; j < W; ++j) m = mx[0][j] > m ? mx[0][j] : m;
  return m;
}

// s += e^{x - m}, t += e^{x - m} (x - m), lane j taking entries j, j + 16, ...
// (d is clamped at a floor, so -inf entries give a finite e * d, not 0 * -inf = NaN.)
template <int W>
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

// s += e^{x - m}, t += e^{x - m} (x - m) relative to the current maximum m (the float form of
// accumulate(), lanes as there), and the block maximum, in one pass: the
// entries are loaded once, so reading them from memory overlaps with the exp arithmetic. Entries
// above m give e^{x - m} > 1, exact as long as x - m <= 64 (the caller redoes the block otherwise).
template <int W>
EPIC_INLINE float accumulate_max(const float* p, int64_t np, float m, float* s, float* t) {
  constexpr int H = kLanes / W;
  vf<W> vs[H], vt[H], mx[H];
  for (int h = 0; h < H; ++h) {
    vs[h] = vload<W>(s + h * W);
    vt[h] = vload<W>(t + h * W);
    mx[h] = vsplat<W>(neg_inf<float>());
  }
  const vf<W> floor = vsplat<W>(-86.0f), vm = vsplat<W>(m);
  for (int64_t i = 0; i < np; i += kLanes) {
    for (int h = 0; h < H; ++h) {
      const vf<W> x = vload<W>(p + i + h * W);
      mx[h] = vmax<W>(x, mx[h]);
      const vf<W> d = vmax<W>(floor, x - vm);  // NaN stays NaN
      const vf<W> e = fast_exp<W>(d);
      vs[h] += e;
      vt[h] += e * d;
    }
  }
  for (int h = 0; h < H; ++h) {
    std::memcpy(s + h * W, &vs[h], sizeof(vs[h]));
    std::memcpy(t + h * W, &vt[h], sizeof(vt[h]));
  }
  for (int h = 1; h < H; ++h) mx[0] = vmax<W>(mx[h], mx[0]);
  float bm = mx[0][0];
  for (int j = 1; j < W; ++j) bm = mx[0][j] > bm ? mx[0][j] : bm;
  return bm;
}

// Could any of the 16 entries p[0..16) reach bound: (p - sub) + add >= bound? (Same arithmetic as
// the per-entry test, so skipping a group skips exactly entries that test false.)
template <int W>
EPIC_INLINE bool group_reaches(const float* p, float sub, float add, float bound) {
  constexpr int H = kLanes / W;
  vi<W> any = ((vload<W>(p) - sub) + add) >= bound;
  for (int h = 1; h < H; ++h) any |= ((vload<W>(p + h * W) - sub) + add) >= bound;
  return vany<W>(any);
}
template <int W>
EPIC_INLINE bool group_reaches(const double* p, double sub, double add, double bound) {
  bool any = false;
  for (int j = 0; j < kLanes; ++j) any |= (p[j] - sub) + add >= bound;
  return any;
}

// Bit j set iff (p[j] - sub) + add >= bound, for the 16 entries p[0..16) (the same arithmetic as a
// per-entry test): which entries of a group need their noise. A -inf entry never passes, as bound
// (a candidate's value) is never -inf; neither does NaN.
template <int W>
EPIC_INLINE uint32_t group_bits(const float* p, float sub, float add, float bound) {
  constexpr int H = kLanes / W;
  uint32_t bits = 0;
  for (int h = 0; h < H; ++h)
    bits |= mask_bits<W>(((vload<W>(p + h * W) - sub) + add) >= bound) << (h * W);
  return bits;
}
template <int W>
EPIC_INLINE uint32_t group_bits(const double* p, double sub, double add, double bound) {
  uint32_t bits = 0;
  for (int j = 0; j < kLanes; ++j) bits |= static_cast<uint32_t>((p[j] - sub) + add >= bound) << j;
  return bits;
}

// kCompress.pos[b] lists the set bits of the byte b, ascending (then zeros), count[b] how many
// (a table rather than popcount, which the baseline x86-64 body would call from libgcc); 9 KiB.
struct CompressTable {
  alignas(32) int32_t pos[256][8];
  int32_t count[256];
  constexpr CompressTable() : pos{}, count{} {
    for (int b = 0; b < 256; ++b) {
      int n = 0;
      for (int j = 0; j < 8; ++j)
        if (b >> j & 1) pos[b][n++] = j;
      count[b] = n;
    }
  }
};
inline constexpr CompressTable kCompress{};

typedef int32_t vi32x8v __attribute__((vector_size(32)));

// Append i0 + j to idx[n..] for every set bit j of the 16 bits, ascending, without branches: per 8
// bits, one table row stored (8 slots written, popcount kept). idx must have 16 slots of room past
// n. Returns the new n.
EPIC_INLINE int64_t append_bits(uint32_t bits, int64_t i0, int32_t* idx, int64_t n) {
  for (int k = 0; k < kLanes; k += 8) {
    const uint32_t b = (bits >> k) & 0xffu;
    vi32x8v v;
    std::memcpy(&v, kCompress.pos[b], sizeof(v));
    v += static_cast<int32_t>(i0 + k);
    std::memcpy(idx + n, &v, sizeof(v));
    n += kCompress.count[b];
  }
  return n;
}

template <typename acc_t>
EPIC_INLINE int64_t first_index(const acc_t* p, int64_t np, acc_t value) {
  for (int64_t i = 0; i < np; ++i)
    if (p[i] == value) return i;
  return -1;
}
// The same for float, 16 entries per compare (np a multiple of 16).
template <int W>
EPIC_INLINE int64_t first_index_v(const float* p, int64_t np, float value) {
  constexpr int H = kLanes / W;
  for (int64_t i0 = 0; i0 < np; i0 += kLanes) {
    uint32_t bits = 0;
    for (int h = 0; h < H; ++h) bits |= mask_bits<W>(vload<W>(p + i0 + h * W) == value) << (h * W);
    if (bits != 0) return i0 + __builtin_ctz(bits);
  }
  return -1;
}
template <int W>
EPIC_INLINE int64_t first_index_v(const double* p, int64_t np, double value) {
  return first_index(p, np, value);
}

// Gumbel-max over one block: best = argmax (x_v + G_v), lower id on ties. The noise of an entry is
// drawn only if x_v + Gmax could reach the best so far (exact: x + G <= x + Gmax after rounding);
// the block maximum goes first, as it gives a good bound for the rest. The entries that pass are
// listed with vector compares and a table (group_bits, append_bits: no per-entry branch or scalar
// test), then their noise is computed 8 at a time. top caches the block maximum's index for the
// next stream of the same block (-1: not yet known).
template <int W, typename acc_t>
EPIC_INLINE void sample_block(const acc_t* p, int64_t np, int64_t v0, acc_t bm, int64_t& top,
                              const NoiseKey& key, Cand<acc_t>& best) {
  const acc_t gmax = static_cast<acc_t>(kGumbelMaxBound);
  if (bm + gmax < best.val) return;
  alignas(64) int32_t idx[kBlock + kLanes];
  alignas(64) float g[kBlock + kLanes];
  if (top < 0) top = first_index_v<W>(p, np, bm);
  const Cand<acc_t> c0{bm + static_cast<acc_t>(gumbel_one(key, v0 + top)), v0 + top};
  if (better(c0, best)) best = c0;
  int64_t n = 0;
  for (int64_t i0 = 0; i0 < np; i0 += kLanes)  // padding entries are -inf
    n = append_bits(group_bits<W>(p + i0, acc_t(0), gmax, best.val), i0, idx, n);
  for (int64_t j = n; j < n + 8; ++j) idx[j] = 0;
  gumbel_batch(key, v0, idx, n, g);
  for (int64_t j = 0; j < n; ++j) {
    const Cand<acc_t> c{p[idx[j]] + static_cast<acc_t>(g[j]), v0 + idx[j]};
    if (better(c, best)) best = c;
  }
}

// True if any of p[0..np) is NaN. Only called for blocks whose maximum is not above -inf (every
// entry -inf or NaN): the vector maximum drops NaN, so such a block would otherwise vanish from the
// statistics, and a NaN row would give a finite lse. Poisoning the sums instead makes every row
// that holds a NaN (or +inf: inf - inf) give a non-finite lse, which the public op's validation
// reads instead of scanning the logits again (epic_kernels/ops/softmax_entropy.py).
template <typename acc_t>
EPIC_INLINE bool any_nan(const acc_t* p, int64_t np) {
  bool nan = false;
  for (int64_t i = 0; i < np; ++i) nan |= p[i] != p[i];
  return nan;
}

// Online softmax statistics of x[0..n) (entries v0.., for the noise keys) and, when keys is given,
// the Gumbel-max candidate of the piece for each of the S keys keys[0..S) (one per stream), into
// best[0..S). The statistics are computed once; each block, still in L1, is then searched once per
// key, as S separate calls with one key each would: the candidates are bit-identical to those
// calls. seed (S candidates, or nullptr) starts the search: pass candidates of the same row and
// streams (an earlier piece's result), so that entries that cannot beat them skip their noise;
// best[k] is then the better of seed[k] and the piece's own candidate, and the row's final maximum
// is unchanged. st and best[0..S) are overwritten; with keys == nullptr, S, seed and best are
// ignored.
template <int W, typename T, typename acc_t>
EPIC_INLINE void softmax_piece(const T* x, int64_t n, int64_t v0, const NoiseKey* keys, int64_t S,
                               const Cand<acc_t>* seed, RowState<acc_t>* st, Cand<acc_t>* best) {
  alignas(64) acc_t buf[kBlock];
  acc_t s[kLanes], t[kLanes];
  for (int j = 0; j < kLanes; ++j) s[j] = t[j] = acc_t(0);
  acc_t m = neg_inf<acc_t>();
  int64_t arg = -1;
  if (keys != nullptr)
    for (int64_t k = 0; k < S; ++k) best[k] = seed != nullptr ? seed[k] : no_cand<acc_t>();
  auto rescale = [&](acc_t from, acc_t to) {  // lanes relative to `from` -> relative to `to`
    if (!(from > neg_inf<acc_t>()) || from == to) return;  // nothing accumulated yet / no change
    const acc_t d = from - to, f = std::exp(d);
    for (int j = 0; j < kLanes; ++j) {
      t[j] = f * (t[j] + s[j] * d);
      s[j] = f * s[j];
    }
  };
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    int64_t np;
    const acc_t* p = load_block(x + b0, nb, buf, &np);
    acc_t bm;
    if constexpr (std::is_same<acc_t, float>::value) {
      // One pass relative to a reference ref <= the block max: the running max, or for the first
      // block the max of its first 16 entries. Redo the block if its max is far above ref.
      acc_t ref = m;
      if (!(ref > neg_inf<acc_t>())) {
        for (int j = 0; j < kLanes; ++j) ref = p[j] > ref ? p[j] : ref;
        if (!(ref > neg_inf<acc_t>())) ref = block_max<W>(p, np);
        if (!(ref > neg_inf<acc_t>())) {  // only -inf entries: they contribute nothing
          if (any_nan(p, np)) s[0] = std::numeric_limits<acc_t>::quiet_NaN();
          continue;
        }
      }
      acc_t s0[kLanes], t0[kLanes];
      std::copy(s, s + kLanes, s0);
      std::copy(t, t + kLanes, t0);
      bm = accumulate_max<W>(p, np, ref, s, t);
      if (!(bm > neg_inf<acc_t>())) {  // only -inf entries: undo their (tiny) clamped terms
        std::copy(s0, s0 + kLanes, s);
        std::copy(t0, t0 + kLanes, t);
        if (any_nan(p, np)) s[0] = std::numeric_limits<acc_t>::quiet_NaN();
        continue;
      }
      if (bm - ref > acc_t(60)) {  // factors up to e^60 are fine; beyond, redo relative to bm
        std::copy(s0, s0 + kLanes, s);
        std::copy(t0, t0 + kLanes, t);
        rescale(m, bm);
        accumulate_max<W>(p, np, bm, s, t);  // the block maximum is bm already
      } else if (bm > ref) {
        rescale(ref, bm);
      }
      if (bm > m) {
        m = bm;
        arg = v0 + b0 + first_index_v<W>(p, np, bm);
      }
    } else {  // double: max first, then the accumulation (scalar exp dominates anyway)
      bm = block_max<W>(p, np);
      if (!(bm > neg_inf<acc_t>())) {
        if (any_nan(p, np)) s[0] = std::numeric_limits<acc_t>::quiet_NaN();
        continue;
      }
      if (bm > m) {
        rescale(m, bm);
        m = bm;
        arg = v0 + b0 + first_index_v<W>(p, np, bm);
      }
      accumulate<W>(p, np, m, s, t);
    }
    if (keys != nullptr) {
      int64_t top = -1;  // index of bm in the block, found by the first stream that needs it
      for (int64_t k = 0; k < S; ++k) sample_block<W>(p, np, v0 + b0, bm, top, keys[k], best[k]);
    }
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
