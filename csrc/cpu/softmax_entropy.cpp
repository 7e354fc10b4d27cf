// CPU glue of softmax_entropy and softmax_entropy_sample: validate, split every row into fixed
// pieces of kChunk entries, run the pieces in parallel (at::parallel_for over rows x pieces, so a
// small batch still uses every thread), merge each row's pieces in order. The fixed split makes
// the results identical for any number of threads. With streams (N, S), each piece yields the
// candidates of all S streams from one softmax pass; they merge per stream in piece order.
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

// logits: (N, V) scalar_t; keys: nullptr or N x S noise keys (row-major: S streams per row).
// Writes entropy, lse (N, acc_t) and, with keys, tokens (N x S, int64, row-major).
template <typename scalar_t, typename acc_t>
void run_softmax(const at::Tensor& logits, const NoiseKey* keys, int64_t S, acc_t* entropy,
                 acc_t* lse, int64_t* tokens) {
  const int64_t N = logits.size(0), V = logits.size(1), row_stride = logits.stride(0);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t pieces = (V + kChunk - 1) / kChunk;
  if (!keys) S = 0;
  std::vector<RowState<acc_t>> states(N * pieces);
  std::vector<Cand<acc_t>> bests(N * pieces * S);  // [row][piece][stream]
  for_each_task_in_order(N * pieces, std::min(V, kChunk), [&](int64_t task, bool follows) {
    const int64_t row = task / pieces, piece = task % pieces, v0 = piece * kChunk;
    // A piece run right after the previous piece of its row starts from that piece's candidates,
    // so it skips the noise of entries that cannot beat them (without it, every piece would draw
    // noise for all entries within 16.75 of its own maximum). Exact: the skipped entries could not
    // win, and the seed is itself a candidate of the row; which pieces get a seed depends on the
    // thread split, the result does not.
    const Cand<acc_t>* seed = keys && follows && piece > 0 ? bests.data() + (task - 1) * S : nullptr;
    softmax_piece_cpu(x + row * row_stride + v0, std::min(kChunk, V - v0), v0,
                      keys ? keys + row * S : nullptr, S, seed, &states[task],
                      keys ? bests.data() + task * S : nullptr);
  });
  for (int64_t row = 0; row < N; ++row) {
    RowState<acc_t> st = states[row * pieces];
    for (int64_t p = 1; p < pieces; ++p) st = merge_states(st, states[row * pieces + p]);
    entropy[row] = st.entropy();
    lse[row] = st.lse();
    for (int64_t k = 0; k < S; ++k) {  // pieces in order, as for one stream
      Cand<acc_t> best = bests[(row * pieces) * S + k];
      for (int64_t p = 1; p < pieces; ++p)
        if (better(bests[(row * pieces + p) * S + k], best)) best = bests[(row * pieces + p) * S + k];
      tokens[row * S + k] = best.id >= 0 ? best.id : 0;  // no finite entry: 0, like argmax
    }
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
  int64_t S = 0;
  if (seeds) {
    const at::Tensor s = check_key(*seeds, logits, "seeds", kMaxSeed, op);
    const at::Tensor r = check_streams(*streams, logits, op);  // (N, S)
    const at::Tensor p = check_key(*positions, logits, "positions", kMaxPosition, op);
    S = r.size(1);
    keys.resize(N * S);
    const int64_t *sp = s.data_ptr<int64_t>(), *rp = r.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < S; ++k) keys[n * S + k] = NoiseKey::make(sp[n], rp[n * S + k], pp[n]);
  }
  const auto opts = logits.options().dtype(acc_type(logits));
  at::Tensor entropy = at::empty({N}, opts), lse = at::empty({N}, opts);
  const auto long_opts = logits.options().dtype(at::kLong);
  // tokens: (N,) for streams (N,), (N, S) for streams (N, S); empty without seeds
  at::Tensor tokens = !seeds                 ? at::empty({0}, long_opts)
                      : streams->dim() == 1 ? at::empty({N}, long_opts)
                                            : at::empty({N, S}, long_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_entropy", [&] {
    using acc_t = acc_type_of<scalar_t>;
    run_softmax<scalar_t, acc_t>(logits, seeds ? keys.data() : nullptr, S,
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

// logits: (N, V); seeds, positions: (N,) integer; streams: (N,) or (N, S) integer
// -> entropy, lse (N) acc, tokens int64 of the shape of streams (S samples per row in one pass)
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
