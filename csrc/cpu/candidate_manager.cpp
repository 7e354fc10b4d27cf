// The candidate-block manager of one EPIC step, for every sequence of a batch at once: admissible
// score bounds, pruning, the exact stopping rule, best-first blocks and the adaptive horizon.
// Python: torch.classes.epic_kernels.CandidateManager, built by
// epic_kernels/ops/candidate_manager.py::make_manager. The specification is PyCandidateManager in
// that file; this is the same logic, decision for decision (python_tests/ops/test_candidate_manager.py
// feeds both the same updates and compares every request). The float slack that keeps the bounds
// admissible is passed in from Python (epic_kernels/core.py: the bound U arrives already inflated,
// ENTROPY_SLACK and SCORE_SLACK as arguments), so its values live in one place.
//
// Candidates are the survivors of the first prune, grouped by sequence (CSR offsets). The engine
// evaluates what next_requests() asks for and reports (known depth, partial RB sum, exact score)
// through update(); winners() holds each sequence's certified winner (candidate index).
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

// Bounds must round like the Python specification: no fused multiply-adds.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace epic {
namespace {

std::vector<int64_t> to_long(const at::Tensor& t) {
  auto c = t.to(at::kLong).contiguous().cpu();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<double> to_double(const at::Tensor& t) {
  auto c = t.to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor from_long(const std::vector<int64_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

// GetRolloutHorizon (docs/algorithm.md): the smallest depth at which the remaining uncertainty
// (horizon - h) * width fits in the gap to the threshold, at least one deeper than known.
int64_t rollout_horizon(double gap, int64_t known, int64_t horizon, double width) {
  if (!(gap > 0) || !(width > 0)) return horizon;
  if (std::isinf(gap)) return std::min(horizon, known + 1);
  const int64_t need = horizon - static_cast<int64_t>(std::floor(gap / width));
  return std::min(horizon, std::max(known + 1, need));
}

}  // namespace

struct CandidateManager : torch::CustomClassHolder {
  std::vector<int64_t> offsets, ids, depth, win, eval_depth1, eval_deeper;
  std::vector<double> z, partial, exact;
  std::vector<char> alive;
  double alpha, U;
  int64_t k, block;
  double entropy_slack, score_slack;

  // offsets: (B + 1) CSR over candidates; ids, z: (M); horizon k; bound: the admissible per-depth
  // entropy bound U (log|supp pi| already inflated: core.admissible_bound); entropy_slack: a
  // partial estimate's interval widens by this * (1 + |P|); score_slack: bounds widen by this *
  // (1 + |z| + |alpha| (|P| + k U)) (core.ENTROPY_SLACK, core.SCORE_SLACK).
  CandidateManager(at::Tensor offsets_t, at::Tensor ids_t, at::Tensor z_t, double alpha_, int64_t horizon,
                   double bound, int64_t block_size, double entropy_slack_, double score_slack_)
      : offsets(to_long(offsets_t)), ids(to_long(ids_t)), z(to_double(z_t)), alpha(alpha_),
        U(bound), k(horizon), block(block_size), entropy_slack(entropy_slack_),
        score_slack(score_slack_) {
    TORCH_CHECK(std::isfinite(bound) && bound >= 0, "bound must be finite and >= 0, got ", bound);
    TORCH_CHECK(entropy_slack >= 0 && score_slack >= 0, "slacks must be >= 0");
    TORCH_CHECK(!offsets.empty() && offsets.front() == 0, "offsets must start at 0");
    TORCH_CHECK(offsets.back() == static_cast<int64_t>(ids.size()) && ids.size() == z.size(),
                "offsets, ids and z disagree on the number of candidates");
    TORCH_CHECK(horizon >= 1 && block_size >= 1, "horizon and block_size must be >= 1");
    const size_t M = ids.size(), B = offsets.size() - 1;
    depth.assign(M, 0);
    partial.assign(M, 0.0);
    exact.assign(M, std::numeric_limits<double>::quiet_NaN());
    alive.assign(M, 1);
    win.assign(B, -1);
    eval_depth1.assign(B, 0);
    eval_deeper.assign(B, 0);
    for (size_t b = 0; b < B; ++b)
      if (offsets[b + 1] - offsets[b] == 1) win[b] = offsets[b];
  }

  void update(at::Tensor idx_t, at::Tensor depth_t, at::Tensor partial_t, at::Tensor exact_t) {
    const auto idx = to_long(idx_t), d = to_long(depth_t);
    const auto p = to_double(partial_t), e = to_double(exact_t);
    TORCH_CHECK(idx.size() == d.size() && d.size() == p.size() && p.size() == e.size(),
                "update: idx, depth, partial and exact must have the same length");
    for (size_t n = 0; n < idx.size(); ++n) {
      TORCH_CHECK(idx[n] >= 0 && idx[n] < static_cast<int64_t>(ids.size()), "update: bad candidate index");
      depth[idx[n]] = d[n];
      partial[idx[n]] = p[n];
      exact[idx[n]] = e[n];
    }
  }

  std::pair<double, double> bounds(int64_t m) const {
    if (depth[m] >= k) return {exact[m], exact[m]};
    const double a = alpha, p = partial[m], zm = z[m];
    const double h_slack = entropy_slack * (1 + std::abs(p));
    const double h_lo = p - h_slack, h_hi = p + (k - depth[m]) * U + h_slack;
    double lo, hi;
    if (a >= 0) {
      lo = zm - a * h_hi;
      hi = zm - a * h_lo;
    } else {
      lo = zm - a * h_lo;
      hi = zm - a * h_hi;
    }
    const double s_slack = score_slack * (1 + std::abs(zm) + std::abs(a) * (std::abs(p) + k * U));
    return {lo - s_slack, hi + s_slack};
  }

  std::tuple<at::Tensor, at::Tensor> next_requests() {
    std::vector<int64_t> req_idx, req_depth;
    const size_t B = win.size();
    for (size_t b = 0; b < B; ++b) {
      if (win[b] >= 0) continue;
      std::vector<int64_t> cands;
      for (int64_t m = offsets[b]; m < offsets[b + 1]; ++m)
        if (alive[m]) cands.push_back(m);
      if (std::all_of(cands.begin(), cands.end(), [&](int64_t m) { return depth[m] == 0; })) {
        for (int64_t m : cands) {  // depth 1 for every survivor
          req_idx.push_back(m);
          req_depth.push_back(1);
        }
        eval_depth1[b] += static_cast<int64_t>(cands.size());
        continue;
      }
      std::vector<double> lb(ids.size()), ub(ids.size());
      double best_lb = -std::numeric_limits<double>::infinity();
      for (int64_t m : cands) {
        std::tie(lb[m], ub[m]) = bounds(m);
        best_lb = std::max(best_lb, lb[m]);
      }
      std::vector<int64_t> kept;  // prune: an upper bound below the best lower bound cannot win
      for (int64_t m : cands) {
        if (ub[m] < best_lb) alive[m] = 0; else kept.push_back(m);
      }
      // stopping rule: the best lower bound (ties: lower id) beats every other upper bound
      int64_t best = kept.front();
      for (int64_t m : kept)
        if (lb[m] > lb[best] || (lb[m] == lb[best] && ids[m] < ids[best])) best = m;
      bool certified = true;
      for (int64_t d : kept) {
        if (d == best) continue;
        if (!(lb[best] > ub[d] || (lb[best] == ub[d] && ids[best] < ids[d]))) { certified = false; break; }
      }
      if (certified) { win[b] = best; continue; }
      std::vector<int64_t> order(kept);  // best first: upper bound descending, lower id on ties
      std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
        return ub[x] > ub[y] || (ub[x] == ub[y] && ids[x] < ids[y]);
      });
      std::vector<int64_t> blk;
      for (int64_t m : order)
        if (depth[m] < k && static_cast<int64_t>(blk.size()) < block) blk.push_back(m);
      double threshold = -std::numeric_limits<double>::infinity();
      for (int64_t m : order)
        if (std::find(blk.begin(), blk.end(), m) == blk.end()) { threshold = ub[m]; break; }
      for (int64_t m : blk) {
        req_idx.push_back(m);
        req_depth.push_back(rollout_horizon(ub[m] - threshold, depth[m], k, std::abs(alpha) * U));
        eval_deeper[b] += 1;
      }
    }
    return {from_long(req_idx), from_long(req_depth)};
  }

  at::Tensor winners() const { return from_long(win); }

  std::tuple<at::Tensor, at::Tensor> stats() const { return {from_long(eval_depth1), from_long(eval_deeper)}; }
};

}  // namespace epic

TORCH_LIBRARY_FRAGMENT(epic_kernels, m) {
  m.class_<epic::CandidateManager>("CandidateManager")
      .def(torch::init<at::Tensor, at::Tensor, at::Tensor, double, int64_t, double, int64_t, double, double>())
      .def("update", &epic::CandidateManager::update)
      .def("next_requests", &epic::CandidateManager::next_requests)
      .def("winners", &epic::CandidateManager::winners)
      .def("stats", &epic::CandidateManager::stats);
}
