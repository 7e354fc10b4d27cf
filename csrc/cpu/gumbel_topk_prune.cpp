// CPU glue of gumbel_topk_prune. Pass 1 (parallel over rows x pieces): logsumexp and the row's
// argmax. Pass 2 (same split): perturbed scores, piece front-runners, top-k heaps and window
// candidates, drawing noise only where it can matter. Then per row: merge fronts and heaps, cut
// the window at the final front, and write the survivors compacted (CSR, ascending id).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../glue.h"
#include "cpu_kernels.h"
#include "cpu_parallel.h"

namespace epic {
namespace cpu {
namespace {

using PruneOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename scalar_t, typename acc_t>
PruneOutputs run_prune(const at::Tensor& logits, const std::vector<NoiseKey>& keys,
                       const acc_t* width, int64_t top_k) {
  const int64_t B = logits.size(0), V = logits.size(1), row_stride = logits.stride(0);
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  const int64_t pieces = (V + kChunk - 1) / kChunk;
  const auto acc_opts = logits.options().dtype(acc_type(logits));
  const auto long_opts = logits.options().dtype(at::kLong);

  // pass 1: lse and argmax of each row
  std::vector<RowState<acc_t>> states(B * pieces);
  for_each_task(B * pieces, std::min(V, kChunk), [&](int64_t task) {
    const int64_t row = task / pieces, v0 = (task % pieces) * kChunk;
    softmax_piece_cpu(x + row * row_stride + v0, std::min(kChunk, V - v0), v0, nullptr, 0,
                      nullptr, &states[task], nullptr);
  });
  at::Tensor lse = at::empty({B}, acc_opts);
  acc_t* lse_p = lse.data_ptr<acc_t>();
  std::vector<Cand<acc_t>> seeds(B);
  for (int64_t row = 0; row < B; ++row) {
    RowState<acc_t> st = states[row * pieces];
    for (int64_t p = 1; p < pieces; ++p) st = merge_states(st, states[row * pieces + p]);
    lse_p[row] = st.lse();
    seeds[row] = no_cand<acc_t>();
    if (st.arg >= 0) {  // z of the row's largest logit: a lower bound of the front-runner
      const acc_t xa = static_cast<acc_t>(x[row * row_stride + st.arg]);
      const acc_t g = static_cast<acc_t>(gumbel_one_cpu(keys[row], st.arg));
      seeds[row] = Cand<acc_t>{(xa - lse_p[row]) + g, st.arg};
    }
  }

  // pass 2: perturbed scores per piece
  std::vector<PrunePiece<acc_t>> out(B * pieces);
  for_each_task(B * pieces, std::min(V, kChunk), [&](int64_t task) {
    const int64_t row = task / pieces, v0 = (task % pieces) * kChunk;
    prune_piece_cpu(x + row * row_stride + v0, std::min(kChunk, V - v0), v0, keys[row],
                    lse_p[row], width[row], seeds[row], top_k, &out[task]);
  });

  // per row: front, window cut, top-k
  at::Tensor counts = at::empty({B}, long_opts), front_ids = at::empty({B}, long_opts);
  at::Tensor front_scores = at::empty({B}, acc_opts);
  at::Tensor topk_ids = at::empty({B, top_k}, long_opts), topk_scores = at::empty({B, top_k}, acc_opts);
  int64_t* counts_p = counts.data_ptr<int64_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    std::vector<Cand<acc_t>> all;
    for (int64_t row = begin; row < end; ++row) {
      PrunePiece<acc_t>* piece = &out[row * pieces];
      Cand<acc_t> front = seeds[row];
      for (int64_t p = 0; p < pieces; ++p)
        if (better(piece[p].front, front)) front = piece[p].front;
      front_ids.data_ptr<int64_t>()[row] = front.id >= 0 ? front.id : 0;
      front_scores.data_ptr<acc_t>()[row] = front.val;
      const acc_t lo = front.val - width[row];
      int64_t count = 0;
      all.clear();
      for (int64_t p = 0; p < pieces; ++p) {
        auto& kept = piece[p].kept;
        kept.erase(std::remove_if(kept.begin(), kept.end(),
                                  [lo](const Cand<acc_t>& c) { return !(c.val >= lo); }),
                   kept.end());
        count += static_cast<int64_t>(kept.size());
        all.insert(all.end(), piece[p].heap.begin(), piece[p].heap.end());
      }
      counts_p[row] = count;
      const int64_t kk = std::min<int64_t>(top_k, static_cast<int64_t>(all.size()));
      std::partial_sort(all.begin(), all.begin() + kk, all.end(),
                        [](const Cand<acc_t>& a, const Cand<acc_t>& b) { return better(a, b); });
      int64_t* ti = topk_ids.data_ptr<int64_t>() + row * top_k;
      acc_t* ts = topk_scores.data_ptr<acc_t>() + row * top_k;
      for (int64_t j = 0; j < top_k; ++j) {
        ti[j] = j < kk ? all[j].id : -1;
        ts[j] = j < kk ? all[j].val : neg_inf<acc_t>();
      }
    }
  });

  // compaction: CSR offsets, then every row writes its survivors in ascending id order
  at::Tensor offsets = at::empty({B + 1}, long_opts);
  int64_t* off = offsets.data_ptr<int64_t>();
  off[0] = 0;
  for (int64_t row = 0; row < B; ++row) off[row + 1] = off[row] + counts_p[row];
  at::Tensor ids = at::empty({off[B]}, long_opts), scores = at::empty({off[B]}, acc_opts);
  int64_t* ids_p = ids.data_ptr<int64_t>();
  acc_t* scores_p = scores.data_ptr<acc_t>();
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t o = off[row];
      for (int64_t p = 0; p < pieces; ++p)
        for (const auto& c : out[row * pieces + p].kept) {
          ids_p[o] = c.id;
          scores_p[o++] = c.val;
        }
    }
  });
  return {ids, scores, counts, offsets, front_ids, front_scores, topk_ids, topk_scores, lse};
}

// logits: (B, V) float16 | bfloat16 | float32 | float64; seeds, positions: (B,) integer;
// width: (B,) or one value, floating; top_k >= 1. Output layout: reference.PruneResult.
PruneOutputs gumbel_topk_prune_cpu(const at::Tensor& logits_in, const at::Tensor& seeds,
                                   const at::Tensor& positions, const at::Tensor& width,
                                   int64_t top_k) {
  constexpr const char* op = "gumbel_topk_prune";
  const at::Tensor logits = check_logits(logits_in, op);
  TORCH_CHECK(top_k >= 1, op, ": top_k must be >= 1, got ", top_k);
  const int64_t B = logits.size(0);
  const at::Tensor s = check_key(seeds, logits, "seeds", kMaxSeed, op);
  const at::Tensor p = check_key(positions, logits, "positions", kMaxPosition, op);
  const at::Tensor w = check_width(width, logits, acc_type(logits), op);
  std::vector<NoiseKey> keys(B);
  for (int64_t b = 0; b < B; ++b)  // step noise: stream 0
    keys[b] = NoiseKey::make(s.data_ptr<int64_t>()[b], 0, p.data_ptr<int64_t>()[b]);
  PruneOutputs result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_prune", [&] {
    using acc_t = acc_type_of<scalar_t>;
    result = run_prune<scalar_t, acc_t>(logits, keys, w.data_ptr<acc_t>(), top_k);
  });
  return result;
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("gumbel_topk_prune", &epic::cpu::gumbel_topk_prune_cpu);
}
