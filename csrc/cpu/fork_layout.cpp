// CPU glue of fork_layout, the fork attention's row layout of one model call: each row's index
// among the rows of its sequence, and the padded (sequence, j) -> row table. Plain loops over int64
// tensors; the readable specification is epic_kernels/ops/fork_layout.py (fork_layout_reference),
// which python_tests/ops/test_plan_rows.py compares with this op.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../glue.h"

namespace epic {
namespace cpu {
namespace {

// row_j[n] = how many earlier rows belong to sequence seq[n]; pad_index[b, j] = the row of
// (sequence b, j), N where sequence b has fewer than j + 1 rows; width max(R, 1), R = the most rows
// of one sequence.
std::tuple<at::Tensor, at::Tensor> fork_layout_cpu(const at::Tensor& seq_in, int64_t B) {
  constexpr const char* kOp = "fork_layout";
  TORCH_CHECK(B >= 0, kOp, ": B must be >= 0, got ", B);
  TORCH_CHECK(seq_in.dim() == 1, kOp, ": seq must have shape (N,), got ", seq_in.sizes());
  const int64_t N = seq_in.size(0);
  const at::Tensor seq_t = check_long(seq_in, kOp, "seq", {N}, "(N,)");
  const int64_t* seq = seq_t.const_data_ptr<int64_t>();
  at::Tensor row_j = longs(N);
  int64_t* pj = row_j.data_ptr<int64_t>();
  std::vector<int64_t> counts(B, 0);
  int64_t R = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = seq[n];
    TORCH_CHECK(b >= 0 && b < B, kOp, ": seq[", n, "] = ", b, " is outside [0, ", B, ")");
    pj[n] = counts[b]++;
    R = std::max(R, counts[b]);
  }
  const int64_t width = std::max<int64_t>(R, 1);
  at::Tensor pad = at::full({B, width}, N, at::TensorOptions().dtype(at::kLong));
  int64_t* pp = pad.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) pp[seq[n] * width + pj[n]] = n;
  return {row_j, pad};
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("fork_layout", &epic::cpu::fork_layout_cpu);
}
