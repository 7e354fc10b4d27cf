// CPU glue of plan_rows, the engine's rollout-row bookkeeping of one depth advance: which row of a
// model call belongs to which sequence, candidate, rollout and slot. Plain loops over int64
// tensors; the readable specification is epic_kernels/ops/plan_rows.py (plan_rows_reference),
// which python_tests/ops/test_plan_rows.py compares with this op on random states. Path (m, r)
// is numbered m * K + r (the engine maps it to its runtime path).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../glue.h"

#include <algorithm>
#include <tuple>
#include <vector>

namespace epic {
namespace cpu {
namespace {

using PlanOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Candidate m is pending when depth[m] < goal[m]. Rows: the pending candidates at depth 0
// ("first", ascending; one row in path m K, fill lead, token tokens[m], position base[m]),
// then those at depth d > 0 ("deep", ascending; K rows r = 0..K-1 in paths m K + r, fill
// lead + d, token last[m, r], position base[m] + d). Fan-out: each deep candidate at depth 1
// copies path m K to paths m K + r, r = 1..K-1.
PlanOut plan_rows_cpu(const at::Tensor& depth_in, const at::Tensor& goal_in, const at::Tensor& seq_in,
                      const at::Tensor& tokens_in, const at::Tensor& last_in, const at::Tensor& base_in,
                      int64_t K, int64_t lead) {
  constexpr const char* kOp = "plan_rows";
  TORCH_CHECK(depth_in.dim() == 1, kOp, ": depth must have shape (M,), got ", depth_in.sizes());
  const int64_t M = depth_in.size(0);
  TORCH_CHECK(K >= 1, kOp, ": K (rollouts) must be >= 1, got ", K);
  TORCH_CHECK(lead >= 0, kOp, ": lead must be >= 0, got ", lead);
  const at::Tensor depth_t = check_long(depth_in, kOp, "depth", {M}, "(M,)");
  const at::Tensor goal_t = check_long(goal_in, kOp, "goal", {M}, "(M,)");
  const at::Tensor seq_t = check_long(seq_in, kOp, "seq", {M}, "(M,)");
  const at::Tensor tokens_t = check_long(tokens_in, kOp, "tokens", {M}, "(M,)");
  const at::Tensor last_t = check_long(last_in, kOp, "last", {M, K}, "(M, K)");
  const at::Tensor base_t = check_long(base_in, kOp, "base", {M}, "(M,)");
  const int64_t* depth = depth_t.const_data_ptr<int64_t>();
  const int64_t* goal = goal_t.const_data_ptr<int64_t>();
  const int64_t* seq = seq_t.const_data_ptr<int64_t>();
  const int64_t* tokens = tokens_t.const_data_ptr<int64_t>();
  const int64_t* last = last_t.const_data_ptr<int64_t>();
  const int64_t* base = base_t.const_data_ptr<int64_t>();

  int64_t n1 = 0, nd = 0, nf = 0;
  for (int64_t m = 0; m < M; ++m) {
    TORCH_CHECK(depth[m] >= 0, kOp, ": depth[", m, "] = ", depth[m], " is negative");
    if (depth[m] >= goal[m]) continue;
    if (depth[m] == 0) {
      ++n1;
    } else {
      ++nd;
      nf += depth[m] == 1;
    }
  }
  const int64_t N = n1 + nd * K;
  at::Tensor first = longs(n1), deep = longs(nd), cand = longs(N), rseq = longs(N), slot = longs(N),
             fill = longs(N), rtok = longs(N), pos = longs(N), fsrc = longs(nf * (K - 1)),
             fdst = longs(nf * (K - 1));
  int64_t* pf = first.data_ptr<int64_t>();
  int64_t* pd = deep.data_ptr<int64_t>();
  int64_t* pc = cand.data_ptr<int64_t>();
  int64_t* ps = rseq.data_ptr<int64_t>();
  int64_t* pslot = slot.data_ptr<int64_t>();
  int64_t* pfill = fill.data_ptr<int64_t>();
  int64_t* ptok = rtok.data_ptr<int64_t>();
  int64_t* ppos = pos.data_ptr<int64_t>();
  int64_t* psrc = fsrc.data_ptr<int64_t>();
  int64_t* pdst = fdst.data_ptr<int64_t>();
  int64_t i = 0, j = 0, row = n1, f = 0;  // first, deep, deep row, fan-out copy
  for (int64_t m = 0; m < M; ++m) {
    const int64_t d = depth[m];
    if (d >= goal[m]) continue;
    const int64_t s0 = m * K;
    if (d == 0) {
      pf[i] = pc[i] = m;
      ps[i] = seq[m];
      pslot[i] = s0;
      pfill[i] = lead;
      ptok[i] = tokens[m];
      ppos[i] = base[m];
      ++i;
      continue;
    }
    pd[j++] = m;
    for (int64_t r = 0; r < K; ++r, ++row) {
      pc[row] = m;
      ps[row] = seq[m];
      pslot[row] = s0 + r;
      pfill[row] = lead + d;
      ptok[row] = last[m * K + r];
      ppos[row] = base[m] + d;
    }
    if (d == 1)
      for (int64_t r = 1; r < K; ++r, ++f) {
        psrc[f] = s0;
        pdst[f] = s0 + r;
      }
  }
  return {first, deep, cand, rseq, slot, fill, rtok, pos, fsrc, fdst};
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("plan_rows", &epic::cpu::plan_rows_cpu);
}
