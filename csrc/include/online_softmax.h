// Online softmax statistics of a row (or a piece of one), shared by the CPU and CUDA kernels.
//
// For entries x_v of a row with running maximum m:
//   s = sum_v e^{x_v - m},  t = sum_v e^{x_v - m} (x_v - m)
//   lse = m + log s,        H = -sum_v p_v log p_v = log s - t / s
// Two partial states over disjoint entries merge exactly (up to rounding) by rescaling both to the
// larger maximum M:  s' = e^{m - M} s,  t' = e^{m - M} (t + s (m - M)).
// A state with m = -inf covers only -inf entries (s = t = 0) and is the identity of the merge.
#pragma once

#include <cstdint>
#include <limits>

#include "philox.h"

namespace epic {

#if defined(__CUDACC__)
EPIC_HD float acc_exp(float x) { return expf(x); }
EPIC_HD double acc_exp(double x) { return exp(x); }
EPIC_HD float acc_log(float x) { return logf(x); }
EPIC_HD double acc_log(double x) { return log(x); }
#else
inline float acc_exp(float x) { return std::exp(x); }
inline double acc_exp(double x) { return std::exp(x); }
inline float acc_log(float x) { return std::log(x); }
inline double acc_log(double x) { return std::log(x); }
#endif

template <typename acc_t>
struct RowState {
  acc_t m;      // running maximum (-inf: no finite entry yet)
  acc_t s;      // sum of e^{x - m}
  acc_t t;      // sum of e^{x - m} (x - m)
  int64_t arg;  // lowest index holding the maximum (-1 while m = -inf)

  EPIC_HD static RowState empty() {
    return RowState{-std::numeric_limits<acc_t>::infinity(), acc_t(0), acc_t(0), -1};
  }
  // Rescale (s, t) to a maximum M >= m.
  EPIC_HD void rescale_to(acc_t M) {
    if (m == M) return;
    if (m == -std::numeric_limits<acc_t>::infinity()) {  // nothing accumulated yet
      s = acc_t(0);
      t = acc_t(0);
    } else {
      const acc_t d = m - M;
      const acc_t f = acc_exp(d);
      t = f * (t + s * d);
      s = f * s;
    }
    m = M;
  }
  EPIC_HD acc_t lse() const { return m + acc_log(s); }
  EPIC_HD acc_t entropy() const { return acc_log(s) - t / s; }
};

// Merge b into a. Deterministic for a fixed merge order; ties of the maximum keep the lower index.
template <typename acc_t>
// A NaN sum (a piece that held a NaN entry: cpu_softmax.h) stays NaN, whatever the maxima, so a
// row with a NaN anywhere gets a non-finite lse.
EPIC_HD RowState<acc_t> merge_states(RowState<acc_t> a, RowState<acc_t> b) {
  if (a.s != a.s || b.s != b.s) {
    RowState<acc_t> r = a.s != a.s ? a : b;
    r.t = r.s;
    return r;
  }
  const acc_t M = a.m > b.m ? a.m : b.m;
  if (M == -std::numeric_limits<acc_t>::infinity()) return a.arg >= 0 ? a : b;
  int64_t arg;
  if (a.m == b.m) {
    arg = (a.arg >= 0 && (b.arg < 0 || a.arg < b.arg)) ? a.arg : b.arg;
  } else {
    arg = a.m > b.m ? a.arg : b.arg;
  }
  a.rescale_to(M);
  b.rescale_to(M);
  return RowState<acc_t>{M, a.s + b.s, a.t + b.t, arg};
}

// A scored token: perturbed value and id. Order: higher value first, lower id on ties.
template <typename acc_t>
struct Cand {
  acc_t val;
  int64_t id;  // -1: none
};

template <typename acc_t>
EPIC_HD bool better(const Cand<acc_t>& a, const Cand<acc_t>& b) {
  return a.val > b.val || (a.val == b.val && a.id >= 0 && (b.id < 0 || a.id < b.id));
}

template <typename acc_t>
EPIC_HD Cand<acc_t> no_cand() {
  return Cand<acc_t>{-std::numeric_limits<acc_t>::infinity(), -1};
}

}  // namespace epic
