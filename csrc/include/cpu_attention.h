// CPU kernel of the engine's fork (cascade) attention. One task = one (sequence, kv head) and some
// of the sequence's rows: for each block of up to kKeyBlock visible prefix positions (mask, read in
// place from the caller's cache; masked positions are never read), every row of the task and each
// of its G query heads on this kv head runs one online-softmax step over the block's keys below the
// row's limit; then each row does the same over the first fill + 1 keys of its own slot:
//
//   per block:  s_i = (q . k_i) * scale                   for the block's keys i
//               M = max(m, max_i s_i);  f = e^{m - M} (0 for the first block);  m = M
//               p_i = e^{s_i - M};  l = l f + sum_i p_i;  o = o f + sum_i p_i v_i
//   at the end: out = o / l
//
// The block (64 keys and values) stays in L1 while all rows of the task use it; no score buffer
// larger than G x kKeyBlock exists; prefix and suffix need no separate log-sum-exp merge. Every row
// sees at least one key (its own new token at `fill`), so l >= 1 at the end. A row's arithmetic
// depends only on its own inputs (blocks are cut at the same visible positions for every row, then
// at the row's limit), not on which rows share its task: results do not depend on the split.
//
// Plain pointers, no framework types; element type T = accumulate type (float or double). Strides
// are in elements; each key / value / query / output vector (head_dim entries) is contiguous.
//
// Fast path (float, head_dim a multiple of 16; 64 and 128 compiled with the query in registers):
// the scores of W keys at a time, each a dot product over 16 logical lanes, reduced together by
// shuffles in the fixed tree of lanes_sum (lane j + lane j + 8, then + 4, + 2, + 1); the exps are
// cpu_softmax.h's fast_exp; p . V keeps up to 16 vectors of accumulators (64 entries of head_dim
// for several heads) in registers over one pass of the block's values, each entry one chain over
// the keys in order. Horizontal max / sum stay in registers. Every body performs the same per-lane
// arithmetic in the same order, so AVX-512 and AVX2 give identical results (checked bit for bit
// across the three widths when built for one CPU; SSE2, without FMA, may differ in the last bit),
// as for the other CPU kernels. Other cases (float64, other head_dim) use plain loops with the same
// structure.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu_softmax.h"

namespace epic {
namespace cpu {

constexpr int64_t kKeyBlock = 64;  // keys per online-softmax block (a multiple of kLanes)

template <typename T>
struct ForkAttnRow {
  const T* q;        // query of the task's head g at q + q_off + g * q_head
  T* out;            // output of head g at out + out_off + g * out_head
  const T* sk;       // slot key of token t at sk + sk_off + t * sk_pos
  const T* sv;       // slot value of token t at sv + sv_off + t * sv_pos
  int64_t limit;     // prefix positions < limit (in [0, L]) can be visible
  int64_t T_suffix;  // slot tokens [0, T_suffix) are visible (fill + 1)
};

template <typename T>
struct ForkAttnGroup {
  const T* pk;           // prefix key of position j at pk + j * pk_pos (this sequence, kv head)
  int64_t pk_pos;
  const T* pv;           // prefix value of position j at pv + j * pv_pos
  int64_t pv_pos;
  const uint8_t* valid;  // valid[j] != 0: position j is a real token (nullptr: all are)
  int64_t L;
  const ForkAttnRow<T>* rows;
  int64_t n_rows;
  int64_t q_off, q_head, out_off, out_head, sk_off, sk_pos, sv_off, sv_pos;
  int64_t G, D;
  T scale;
  T* scratch;            // at least fork_attn_scratch(G, n_rows) elements
};

inline int64_t fork_attn_scratch(int64_t G, int64_t rows) { return G * (kKeyBlock + 1) + 2 * G * rows; }

// ---- reductions over 16 logical lanes -------------------------------------------------------- //

template <typename T>
EPIC_INLINE T lanes_sum(T* lane) {  // the fixed tree every path uses
  for (int j = 0; j < 8; ++j) lane[j] += lane[j + 8];
  for (int j = 0; j < 4; ++j) lane[j] += lane[j + 4];
  for (int j = 0; j < 2; ++j) lane[j] += lane[j + 2];
  return lane[0] + lane[1];
}

// Horizontal sum / max of 16 logical lanes held in H = 16 / W vectors, in registers (a round trip
// through memory would stall on store forwarding), in the order of lanes_sum for every W.
template <int W, bool MAX>
EPIC_INLINE vf<W> lane_op(vf<W> a, vf<W> b) {
  if constexpr (MAX) {
    return vmax<W>(a, b);
  } else {
    return a + b;
  }
}
template <int W>
EPIC_INLINE vi<W> upper_mask(int k) {  // lane j (< k) reads lane j + k
  vi<W> m;
  for (int j = 0; j < W; ++j) m[j] = j % k + k;
  return m;
}
template <int W, bool MAX>
EPIC_INLINE float reduce16(const vf<W>* v) {
  vf<W> t;
  if constexpr (W == 16) {
    t = lane_op<W, MAX>(v[0], __builtin_shuffle(v[0], upper_mask<W>(8)));  // lanes j + (j + 8)
  } else if constexpr (W == 8) {
    t = lane_op<W, MAX>(v[0], v[1]);
  } else {  // (j + (j + 8)) + ((j + 4) + (j + 12))
    t = lane_op<W, MAX>(lane_op<W, MAX>(v[0], v[2]), lane_op<W, MAX>(v[1], v[3]));
  }
  if constexpr (W >= 8) t = lane_op<W, MAX>(t, __builtin_shuffle(t, upper_mask<W>(4)));  // + 4
  t = lane_op<W, MAX>(t, __builtin_shuffle(t, upper_mask<W>(2)));                        // + 2
  t = lane_op<W, MAX>(t, __builtin_shuffle(t, upper_mask<W>(1)));                        // + 1
  return t[0];
}

// sum of p[0..np), np a multiple of kLanes: lane j takes entries j, j + 16, ...
template <int W>
EPIC_INLINE float sum_lanes(const float* p, int64_t np) {
  constexpr int H = kLanes / W;
  vf<W> acc[H];
  for (int h = 0; h < H; ++h) acc[h] = vsplat<W>(0.0f);
  for (int64_t i = 0; i < np; i += kLanes)
    for (int h = 0; h < H; ++h) acc[h] += vload<W>(p + i + h * W);
  return reduce16<W, false>(acc);
}
template <int W>
EPIC_INLINE double sum_lanes(const double* p, int64_t np) {
  double lane[kLanes] = {};
  for (int64_t i = 0; i < np; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += p[i + j];
  return lanes_sum(lane);
}

// One dot product over 16 logical lanes (general head_dim; the tail goes to lanes 0, 1, ...).
template <typename T>
EPIC_INLINE T dot_lanes(const T* a, const T* b, int64_t D) {
  T lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += a[d + j] * b[d + j];
  for (int j = 0; d < D; ++d, ++j) lane[j] += a[d] * b[d];
  return lanes_sum(lane);
}

// W dot products q . k[i] (i < W), D a multiple of kLanes, each over 16 logical lanes and reduced
// by the lanes_sum tree, done for all W keys at once with shuffles. Returns the W sums in order.
// DV = D / 16 when known at compile time (q then stays in registers), else 0.
//
// Accumulation: acc[i][h] holds logical lanes h W .. h W + W - 1 of key i; lane j takes the
// products of entries j, j + 16, ... in that order.
template <int W, int DV>
EPIC_INLINE void dot_acc(const float* q, const float* const* k, int64_t D, vf<W> (*acc)[kLanes / W]) {
  constexpr int H = kLanes / W;
  if constexpr (DV > 0) {
    vf<W> qv[DV][H];
    for (int dv = 0; dv < DV; ++dv)
      for (int h = 0; h < H; ++h) qv[dv][h] = vload<W>(q + dv * kLanes + h * W);
    for (int i = 0; i < W; ++i) {  // from zero: each step is one fused multiply-add, in order
      const float* ki = k[i];
      for (int h = 0; h < H; ++h) acc[i][h] = vsplat<W>(0.0f);
      for (int dv = 0; dv < DV; ++dv)
        for (int h = 0; h < H; ++h) acc[i][h] += qv[dv][h] * vload<W>(ki + dv * kLanes + h * W);
    }
  } else {
    for (int i = 0; i < W; ++i) {
      const float* ki = k[i];
      for (int h = 0; h < H; ++h) acc[i][h] = vsplat<W>(0.0f);
      for (int64_t d = 0; d < D; d += kLanes)
        for (int h = 0; h < H; ++h) acc[i][h] += vload<W>(q + d + h * W) * vload<W>(ki + d + h * W);
    }
  }
}

template <int W, int DV>
EPIC_INLINE vf<W> dots(const float* q, const float* const* k, int64_t D) {
  if constexpr (W == 16) {
    vf<16> acc[16][1];
    dot_acc<16, DV>(q, k, D, acc);
    // lanes j + (j + 8): key pairs -> [key 2p: 8 lanes | key 2p+1: 8 lanes]
    const vi<16> a1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi<16> b1 = a1 + 8;
    vf<16> u[8];
    for (int p = 0; p < 8; ++p)
      u[p] = __builtin_shuffle(acc[2 * p][0], acc[2 * p + 1][0], a1) +
             __builtin_shuffle(acc[2 * p][0], acc[2 * p + 1][0], b1);
    // + 4: [4 keys x 4 lanes]
    const vi<16> a2 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vi<16> b2 = a2 + 4;
    vf<16> w[4];
    for (int p = 0; p < 4; ++p)
      w[p] = __builtin_shuffle(u[2 * p], u[2 * p + 1], a2) + __builtin_shuffle(u[2 * p], u[2 * p + 1], b2);
    // + 2: [8 keys x 2 lanes]
    const vi<16> a3 = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
    const vi<16> b3 = a3 + 2;
    vf<16> x[2];
    for (int p = 0; p < 2; ++p)
      x[p] = __builtin_shuffle(w[2 * p], w[2 * p + 1], a3) + __builtin_shuffle(w[2 * p], w[2 * p + 1], b3);
    // + 1: [16 keys]
    const vi<16> a4 = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    const vi<16> b4 = a4 + 1;
    return __builtin_shuffle(x[0], x[1], a4) + __builtin_shuffle(x[0], x[1], b4);
  } else if constexpr (W == 8) {
    vf<8> acc[8][2];  // logical lanes 0..7 and 8..15
    dot_acc<8, DV>(q, k, D, acc);
    vf<8> a[8];
    for (int i = 0; i < 8; ++i) a[i] = acc[i][0] + acc[i][1];  // lanes j + (j + 8)
    const vi<8> a2 = {0, 1, 2, 3, 8, 9, 10, 11};
    const vi<8> b2 = a2 + 4;
    vf<8> u[4];
    for (int p = 0; p < 4; ++p)
      u[p] = __builtin_shuffle(a[2 * p], a[2 * p + 1], a2) + __builtin_shuffle(a[2 * p], a[2 * p + 1], b2);
    const vi<8> a3 = {0, 1, 4, 5, 8, 9, 12, 13};
    const vi<8> b3 = a3 + 2;
    vf<8> x[2];
    for (int p = 0; p < 2; ++p)
      x[p] = __builtin_shuffle(u[2 * p], u[2 * p + 1], a3) + __builtin_shuffle(u[2 * p], u[2 * p + 1], b3);
    const vi<8> a4 = {0, 2, 4, 6, 8, 10, 12, 14};
    const vi<8> b4 = a4 + 1;
    return __builtin_shuffle(x[0], x[1], a4) + __builtin_shuffle(x[0], x[1], b4);
  } else {
    static_assert(W == 4, "W must be 4, 8 or 16");
    vf<4> acc[4][4];  // [key][logical lanes 4h..4h+3]
    dot_acc<4, DV>(q, k, D, acc);
    vf<4> a[4];
    for (int i = 0; i < 4; ++i)  // (j + (j + 8)) + ((j + 4) + (j + 12))
      a[i] = (acc[i][0] + acc[i][2]) + (acc[i][1] + acc[i][3]);
    const vi<4> a3 = {0, 1, 4, 5};
    const vi<4> b3 = a3 + 2;
    vf<4> x[2];
    for (int p = 0; p < 2; ++p)
      x[p] = __builtin_shuffle(a[2 * p], a[2 * p + 1], a3) + __builtin_shuffle(a[2 * p], a[2 * p + 1], b3);
    const vi<4> a4 = {0, 2, 4, 6};
    const vi<4> b4 = a4 + 1;
    return __builtin_shuffle(x[0], x[1], a4) + __builtin_shuffle(x[0], x[1], b4);
  }
}

// s[i] = e^{s[i] - m} for i < np (a multiple of kLanes)
template <int W>
EPIC_INLINE void exp_shifted(float* s, int64_t np, float m) {
  const vf<W> floor = vsplat<W>(-86.0f), vm = vsplat<W>(m);
  for (int64_t i = 0; i < np; i += W) {
    const vf<W> e = fast_exp<W>(vmax<W>(floor, vload<W>(s + i) - vm));
    std::memcpy(s + i, &e, sizeof(e));
  }
}
template <int W>
EPIC_INLINE void exp_shifted(double* s, int64_t np, double m) {
  for (int64_t i = 0; i < np; ++i) s[i] = std::exp(s[i] - m);
}

// ---- one block, one task ------------------------------------------------------------------- //
// (Plain functions, not lambdas: a lambda would not inherit the instruction-set target of the
// multiversioned caller.)

// Scores of the n keys kb + idx[i] * ks into s[g * kKeyBlock + i] for the G queries q + g * q_head.
template <int W, int DV>
EPIC_INLINE void block_scores_fast(const float* q, int64_t q_head, int64_t G, int64_t D, float scale,
                                   const float* const* kp, int64_t nw, float* s) {
  const vf<W> sc = vsplat<W>(scale);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i0 = 0; i0 < nw; i0 += W) {
      const vf<W> r = dots<W, DV>(q + g * q_head, kp + i0, D) * sc;
      std::memcpy(s + g * kKeyBlock + i0, &r, sizeof(r));
    }
}

template <int W, typename T>
EPIC_INLINE void block_scores(const T* q, int64_t q_head, int64_t G, int64_t D, T scale,
                              const int32_t* idx, int64_t n, const T* kb, int64_t ks, T* s) {
  if constexpr (std::is_same<T, float>::value) {
    if (D % kLanes == 0) {
      const float* kp[kKeyBlock + kLanes];
      for (int64_t i = 0; i < n; ++i) kp[i] = kb + idx[i] * ks;
      const int64_t nw = (n + W - 1) / W * W;
      for (int64_t i = n; i < nw; ++i) kp[i] = kp[n - 1];  // padding: results unused
      if (D == 64)
        block_scores_fast<W, 4>(q, q_head, G, D, scale, kp, nw, s);
      else if (D == 128)
        block_scores_fast<W, 8>(q, q_head, G, D, scale, kp, nw, s);
      else
        block_scores_fast<W, 0>(q, q_head, G, D, scale, kp, nw, s);
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* k = kb + idx[i] * ks;
    for (int64_t g = 0; g < G; ++g) s[g * kKeyBlock + i] = dot_lanes(q + g * q_head, k, D) * scale;
  }
}

// For GB heads g: o_g[0, NV W) = o_g f_g + sum_i p_g[i] v_i[0, NV W), v_i = vb + idx[i] * vs, the
// sum a chain over i in order (per entry the same arithmetic for every W, NV and GB).
template <int W, int NV, int GB>
EPIC_INLINE void pv_pass(const float* p, int64_t n, const int32_t* idx, const float* vb, int64_t vs,
                         const float* f, float* o, int64_t o_head) {
  vf<W> c[GB][NV];
  for (int g = 0; g < GB; ++g)
    for (int j = 0; j < NV; ++j) c[g][j] = vsplat<W>(0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float* v = vb + idx[i] * vs;
    vf<W> vv[NV];
    for (int j = 0; j < NV; ++j) vv[j] = vload<W>(v + j * W);
    for (int g = 0; g < GB; ++g) {
      const vf<W> pg = vsplat<W>(p[g * kKeyBlock + i]);
      for (int j = 0; j < NV; ++j) c[g][j] += pg * vv[j];
    }
  }
  for (int g = 0; g < GB; ++g) {
    const vf<W> fg = vsplat<W>(f[g]);
    for (int j = 0; j < NV; ++j) {
      const vf<W> r = vload<W>(o + g * o_head + j * W) * fg + c[g][j];
      std::memcpy(o + g * o_head + j * W, &r, sizeof(r));
    }
  }
}

// pv_pass over heads [0, G) in groups of at most GBMAX
template <int W, int NV, int GBMAX>
EPIC_INLINE void pv_heads(const float* p, int64_t G, int64_t n, const int32_t* idx, const float* vb,
                          int64_t vs, const float* f, float* o, int64_t o_head) {
  int64_t g = 0;
  for (; g + GBMAX <= G; g += GBMAX)
    pv_pass<W, NV, GBMAX>(p + g * kKeyBlock, n, idx, vb, vs, f + g, o + g * o_head, o_head);
  const int64_t rest = G - g;  // fewer than GBMAX heads: one pass for all of them
  p += g * kKeyBlock;
  f += g;
  o += g * o_head;
  if constexpr (GBMAX > 3) {
    if (rest == 3) return pv_pass<W, NV, 3>(p, n, idx, vb, vs, f, o, o_head);
  }
  if constexpr (GBMAX > 2) {
    if (rest == 2) return pv_pass<W, NV, 2>(p, n, idx, vb, vs, f, o, o_head);
  }
  for (int64_t r = 0; r < rest; ++r)
    pv_pass<W, NV, 1>(p + r * kKeyBlock, n, idx, vb, vs, f + r, o + r * o_head, o_head);
}

// o_g[0..D) = o_g f_g + sum_i p_g[i] v_i for every head g (v_i = vb + idx[i] * vs)
template <int W, typename T>
EPIC_INLINE void block_pv(const T* p, int64_t G, int64_t n, const int32_t* idx, const T* vb, int64_t vs,
                          const T* f, T* o, int64_t o_head, int64_t D) {
  if constexpr (std::is_same<T, float>::value) {
    if (D % kLanes == 0) {  // 64 entries of head_dim per pass, for up to 16 accumulators
      constexpr int NV = 64 / W, GBMAX = NV >= 16 ? 1 : 16 / NV;
      int64_t d = 0;
      for (; d + 64 <= D; d += 64) pv_heads<W, NV, GBMAX>(p, G, n, idx, vb + d, vs, f, o + d, o_head);
      for (; d < D; d += kLanes)
        pv_heads<W, kLanes / W, (W == 4 ? 4 : 8)>(p, G, n, idx, vb + d, vs, f, o + d, o_head);
      return;
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) {
      T c = T(0);
      for (int64_t i = 0; i < n; ++i) c += p[g * kKeyBlock + i] * vb[idx[i] * vs + d];
      o[g * o_head + d] = o[g * o_head + d] * f[g] + c;
    }
}

// Maximum of p[0..np), np a multiple of kLanes (exact: any order gives the same value).
template <int W>
EPIC_INLINE float max_lanes(const float* p, int64_t np) {
  constexpr int H = kLanes / W;
  vf<W> mx[H];
  for (int h = 0; h < H; ++h) mx[h] = vload<W>(p + h * W);
  for (int64_t i = kLanes; i < np; i += kLanes)
    for (int h = 0; h < H; ++h) mx[h] = vmax<W>(vload<W>(p + i + h * W), mx[h]);
  return reduce16<W, true>(mx);
}
template <int W>
EPIC_INLINE double max_lanes(const double* p, int64_t np) {
  double m = p[0];
  for (int64_t i = 1; i < np; ++i) m = p[i] > m ? p[i] : m;
  return m;
}

// One online-softmax step of one row (its G heads; running max m[g], sum l[g], output o) over the
// keys / values kb + idx[i] * ks, vb + idx[i] * vs, i < n (n >= 1).
template <int W, typename T>
EPIC_INLINE void fork_attention_block(const ForkAttnGroup<T>& a, const ForkAttnRow<T>& row, T* m, T* l,
                                      const int32_t* idx, int64_t n, const T* kb, int64_t ks,
                                      const T* vb, int64_t vs) {
  T* s = a.scratch;              // [G, kKeyBlock] scores, then probabilities
  T* f = s + a.G * kKeyBlock;    // [G] rescale factors of this step
  const int64_t np = (n + kLanes - 1) / kLanes * kLanes;
  block_scores<W>(row.q + a.q_off, a.q_head, a.G, a.D, a.scale, idx, n, kb, ks, s);
  // in phases over the heads, so that the heads' short dependency chains overlap
  for (int64_t g = 0; g < a.G; ++g) {
    T* sg = s + g * kKeyBlock;
    for (int64_t i = n; i < np; ++i) sg[i] = neg_inf<T>();
    f[g] = max_lanes<W>(sg, np);  // the block max, for now
  }
  for (int64_t g = 0; g < a.G; ++g) {
    const T bm = f[g];
    f[g] = T(1);
    if (bm > m[g]) {  // rescale what was accumulated relative to the old max (nothing: f = 0)
      f[g] = m[g] > neg_inf<T>() ? std::exp(m[g] - bm) : T(0);
      m[g] = bm;
    }
  }
  for (int64_t g = 0; g < a.G; ++g) {
    T* sg = s + g * kKeyBlock;
    exp_shifted<W>(sg, np, m[g]);
    for (int64_t i = n; i < np; ++i) sg[i] = T(0);
    l[g] = l[g] * f[g] + sum_lanes<W>(sg, np);
  }
  block_pv<W>(s, a.G, n, idx, vb, vs, f, row.out + a.out_off, a.out_head, a.D);
}

// One block of prefix positions idx[0..n) (ascending) for every row of the task: each row takes
// the keys below its limit.
template <int W, typename T>
EPIC_INLINE void fork_attention_rows(const ForkAttnGroup<T>& a, T* m, T* l, const int32_t* idx, int64_t n) {
  for (int64_t r = 0; r < a.n_rows; ++r) {
    const int64_t nr = std::lower_bound(idx, idx + n, a.rows[r].limit) - idx;
    if (nr > 0)
      fork_attention_block<W>(a, a.rows[r], m + r * a.G, l + r * a.G, idx, nr, a.pk, a.pk_pos, a.pv,
                              a.pv_pos);
  }
}

template <int W, typename T>
EPIC_INLINE void fork_attention_group(const ForkAttnGroup<T>& a) {
  const int64_t G = a.G, D = a.D, R = a.n_rows;
  T* m = a.scratch + G * (kKeyBlock + 1);  // [R, G]
  T* l = m + R * G;                  // [R, G]
  int64_t lim = 0;                   // no row sees a prefix position >= lim
  for (int64_t r = 0; r < R; ++r) {
    lim = std::max(lim, a.rows[r].limit);
    for (int64_t g = 0; g < G; ++g) {
      m[r * G + g] = neg_inf<T>();
      l[r * G + g] = T(0);
      std::memset(a.rows[r].out + a.out_off + g * a.out_head, 0, D * sizeof(T));  // o accumulates there
    }
  }
  int32_t idx[kKeyBlock];
  int64_t n = 0;
  for (int64_t j = 0; j < lim; ++j) {
    if (a.valid != nullptr && a.valid[j] == 0) continue;
    idx[n++] = static_cast<int32_t>(j);
    if (n == kKeyBlock) {
      fork_attention_rows<W>(a, m, l, idx, n);
      n = 0;
    }
  }
  if (n > 0) fork_attention_rows<W>(a, m, l, idx, n);
  for (int64_t r = 0; r < R; ++r) {  // each row's own slot
    const ForkAttnRow<T>& row = a.rows[r];
    for (int64_t t0 = 0; t0 < row.T_suffix; t0 += kKeyBlock) {
      const int64_t nb = std::min(kKeyBlock, row.T_suffix - t0);
      for (int64_t i = 0; i < nb; ++i) idx[i] = static_cast<int32_t>(t0 + i);
      fork_attention_block<W>(a, row, m + r * G, l + r * G, idx, nb, row.sk + a.sk_off, a.sk_pos,
                              row.sv + a.sv_off, a.sv_pos);
    }
    for (int64_t g = 0; g < G; ++g) {
      T* o = row.out + a.out_off + g * a.out_head;
      for (int64_t d = 0; d < D; ++d) o[d] /= l[r * G + g];
    }
  }
}

}  // namespace cpu
}  // namespace epic
