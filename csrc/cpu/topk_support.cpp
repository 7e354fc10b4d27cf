// CPU glue of topk_support, the rollout policy's and the top-k truncation's support: the k largest
// logits of each row, ties at the boundary to the lower id, returned in ascending id order. One pass
// per row with a k-entry heap whose top is the worst kept entry; blocks of 64 logits that hold
// nothing better than it are skipped with one vectorizable comparison each (the common case: after
// the first few thousand entries almost every block). The readable specification is
// epic_kernels/ops/topk_support.py (topk_support_reference), which python_tests/ops/test_topk_support.py
// compares with this op.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_parallel.h"

namespace epic {
namespace cpu {
namespace {

// Does (av, ai) rank before (bv, bi)? Larger value first (NaN above every number, as torch.topk
// orders it), then the lower id.
template <typename T>
inline bool ranks_before(T av, int64_t ai, T bv, int64_t bi) {
  const bool an = av != av, bn = bv != bv;
  if (an || bn) return an && bn ? ai < bi : an;
  if (av != bv) return av > bv;
  return ai < bi;
}

template <typename T>
void topk_row(const T* x, int64_t V, int64_t k, T* out_v, int64_t* out_i,
              std::vector<std::pair<T, int64_t>>& heap) {
  // a max-heap under "ranks before" keeps the worst kept entry on top
  const auto cmp = [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) {
    return ranks_before(a.first, a.second, b.first, b.second);
  };
  heap.clear();
  for (int64_t j = 0; j < k; ++j) heap.emplace_back(x[j], j);
  std::make_heap(heap.begin(), heap.end(), cmp);
  constexpr int64_t kBlock = 64;
  T thr = heap.front().first;             // the worst kept value
  for (int64_t j = k; j < V && thr == thr; j += kBlock) {   // (k NaNs kept: nothing later ranks before them)
    const int64_t end = std::min(V, j + kBlock);
    // a later entry (higher id) enters only if it is NaN or strictly larger than the worst kept
    int hit = 0;
    for (int64_t t = j; t < end; ++t) hit |= static_cast<int>(x[t] > thr) | static_cast<int>(x[t] != x[t]);
    if (!hit) continue;
    for (int64_t t = j; t < end && thr == thr; ++t) {
      const T v = x[t];
      if (!(v > thr || v != v)) continue;
      std::pop_heap(heap.begin(), heap.end(), cmp);
      heap.back() = {v, t};
      std::push_heap(heap.begin(), heap.end(), cmp);
      thr = heap.front().first;
    }
  }
  std::sort(heap.begin(), heap.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  for (int64_t i = 0; i < k; ++i) {
    out_v[i] = heap[i].first;
    out_i[i] = heap[i].second;
  }
}

// logits (N, V) float32 / float64, 1 <= k < V -> (values (N, k) of logits' dtype, ids (N, k) int64)
std::tuple<at::Tensor, at::Tensor> topk_support_cpu(const at::Tensor& logits, int64_t k) {
  constexpr const char* kOp = "topk_support";
  TORCH_CHECK(logits.dim() == 2, kOp, ": logits must have shape (N, V), got ", logits.sizes());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble, kOp,
              ": logits must be float32 or float64, got ", logits.scalar_type());
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK(k >= 1 && k < V, kOp, ": need 1 <= k < V, got k=", k, " and V=", V);
  const at::Tensor x = logits.contiguous();
  at::Tensor values = at::empty({N, k}, x.options());
  at::Tensor ids = at::empty({N, k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "topk_support_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* vp = values.data_ptr<scalar_t>();
    int64_t* ip = ids.data_ptr<int64_t>();
    at::parallel_for(0, N, task_grain(V), [&](int64_t begin, int64_t end) {
      std::vector<std::pair<scalar_t, int64_t>> heap;
      heap.reserve(k);
      for (int64_t n = begin; n < end; ++n) topk_row(xp + n * V, V, k, vp + n * k, ip + n * k, heap);
    });
  });
  return {values, ids};
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) { m.impl("topk_support", &epic::cpu::topk_support_cpu); }
