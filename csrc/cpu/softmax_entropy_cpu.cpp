// CPU glue of softmax_entropy and softmax_entropy_sample: validate, split every row into fixed
// pieces of kChunk entries, run the pieces in parallel (at::parallel_for over rows x pieces, so a
// small batch still uses every thread), merge each row's pieces in order. The fixed split makes
// the results identical for any number of threads.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../glue.h"
#include "cpu_kernels.h"
#include "cpu_parallel.h"

namespace epic {
namespace cpu {
namespace {

// logits: (N, V) scalar_t; keys: nullptr or N noise keys. Writes entropy, lse (N, acc_t) and,
// with keys, tokens (N, int64).
template <typename scalar_t, typename acc_t>
void run_softmax(const at::Tensor& logits, const NoiseKey* keys, acc_t* entropy, acc_t* lse,
                 int64_t* tokens) {
  const int64_t N = logits.size(0), V = logits.size(1), row_stride = logits.stride(0);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t pieces = (V + kChunk - 1) / kChunk;
  std::vector<RowState<acc_t>> states(N * pieces);
  std::vector<Cand<acc_t>> bests(N * pieces);
  for_each_task(N * pieces, std::min(V, kChunk), [&](int64_t task) {
    const int64_t row = task / pieces, v0 = (task % pieces) * kChunk;
    softmax_piece_cpu(x + row * row_stride + v0, std::min(kChunk, V - v0), v0,
                      keys ? keys + row : nullptr, &states[task], &bests[task]);
  });
  for (int64_t row = 0; row < N; ++row) {
    RowState<acc_t> st = states[row * pieces];
    Cand<acc_t> best = bests[row * pieces];
    for (int64_t p = 1; p < pieces; ++p) {
      st = merge_states(st, states[row * pieces + p]);
      if (better(bests[row * pieces + p], best)) best = bests[row * pieces + p];
    }
    entropy[row] = st.entropy();
    lse[row] = st.lse();
    if (tokens) tokens[row] = best.id >= 0 ? best.id : 0;  // no finite entry: 0, like argmax
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_common(const at::Tensor& logits_in,
                                                              const at::Tensor* seeds,
                                                              const at::Tensor* streams,
                                                              const at::Tensor* positions,
                                                              const char* op) {
  const at::Tensor logits = check_logits(logits_in, op);
  const int64_t N = logits.size(0);
  std::vector<NoiseKey> keys;
  if (seeds) {
    const at::Tensor s = check_key(*seeds, logits, "seeds", kMaxSeed, op);
    const at::Tensor r = check_key(*streams, logits, "streams", kMaxStream, op);
    const at::Tensor p = check_key(*positions, logits, "positions", kMaxPosition, op);
    keys.resize(N);
    for (int64_t n = 0; n < N; ++n)
      keys[n] = NoiseKey::make(s.data_ptr<int64_t>()[n], r.data_ptr<int64_t>()[n],
                               p.data_ptr<int64_t>()[n]);
  }
  const auto opts = logits.options().dtype(acc_type(logits));
  at::Tensor entropy = at::empty({N}, opts), lse = at::empty({N}, opts);
  at::Tensor tokens = at::empty({seeds ? N : 0}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_entropy", [&] {
    using acc_t = acc_type_of<scalar_t>;
    run_softmax<scalar_t, acc_t>(logits, seeds ? keys.data() : nullptr,
                                 entropy.data_ptr<acc_t>(), lse.data_ptr<acc_t>(),
                                 seeds ? tokens.data_ptr<int64_t>() : nullptr);
  });
  return {entropy, lse, tokens};
}

// logits: (N, V) float16 | bfloat16 | float32 | float64 -> entropy (N), lse (N) in acc dtype
std::tuple<at::Tensor, at::Tensor> softmax_entropy_cpu(const at::Tensor& logits) {
  auto out = softmax_common(logits, nullptr, nullptr, nullptr, "softmax_entropy");
  return {std::get<0>(out), std::get<1>(out)};
}

// logits: (N, V); seeds, streams, positions: (N,) integer -> entropy, lse (N) acc, tokens (N) int64
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_entropy_sample_cpu(
    const at::Tensor& logits, const at::Tensor& seeds, const at::Tensor& streams,
    const at::Tensor& positions) {
  return softmax_common(logits, &seeds, &streams, &positions, "softmax_entropy_sample");
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("softmax_entropy", &epic::cpu::softmax_entropy_cpu);
  m.impl("softmax_entropy_sample", &epic::cpu::softmax_entropy_sample_cpu);
}
