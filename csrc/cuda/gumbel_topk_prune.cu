// CUDA kernels of gumbel_topk_prune (mirror of the CPU path, kept straightforward).
//
//  1. softmax partial/finalize (as softmax_entropy): lse per row.
//  2. scores:  grid (B, splits); z = (x - lse) + G for every finite entry (-inf otherwise) into a
//              (B, V) workspace, and the best (z, id) of each block.
//  3. count:   grid (B, splits); each block reduces the row's block fronts (front-runner), counts
//              its survivors z >= front - width; block (b, 0) writes front_ids / front_scores.
//  4. host:    CSR offsets from the per-block counts (one device->host copy: the output size).
//  5. write:   grid (B, splits); ordered compaction (block scan) -> ascending ids per row.
//  6. top-k:   one block per row, top_k rounds of "best entry worse than the previous pick"
//              (O(top_k * V), fine for small top_k); top_k > 64 uses a stable sort instead.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "../glue.h"
#include "../include/online_softmax.h"
#include "../include/philox.h"
#include "cuda_common.cuh"

namespace epic {
namespace cuda {
namespace {

constexpr int64_t kSelectTopK = 64;  // largest top_k done by selection rounds

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// x_ptr: (B, V) rows with row_stride -> lse: (B,) acc_t (one block per (row, split), then merge)
template <typename T, typename acc_t>
__global__ void lse_partial_kernel(const T* __restrict__ x_ptr, int64_t row_stride, int64_t V,
                                   int64_t span, RowState<acc_t>* __restrict__ states_ptr) {
  const int64_t row = blockIdx.x, split = blockIdx.y;
  const int64_t v0 = split * span, v1 = v0 + span < V ? v0 + span : V;
  const T* x = x_ptr + row * row_stride;
  RowState<acc_t> st = RowState<acc_t>::empty();
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const acc_t xv = static_cast<acc_t>(x[v]);
    if (!(xv > neg_inf<acc_t>())) continue;
    if (xv > st.m) {
      st.rescale_to(xv);
      st.s += acc_t(1);
      st.arg = v;
    } else {
      st.s += acc_exp(xv - st.m);
    }
  }
  st = block_merge_states(st);
  if (threadIdx.x == 0) states_ptr[row * gridDim.y + split] = st;
}

template <typename acc_t>
__global__ void lse_finalize_kernel(const RowState<acc_t>* __restrict__ states_ptr, int64_t B,
                                    int64_t splits, acc_t* __restrict__ lse_ptr) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= B) return;
  RowState<acc_t> st = states_ptr[row * splits];
  for (int64_t s = 1; s < splits; ++s) st = merge_states(st, states_ptr[row * splits + s]);
  lse_ptr[row] = st.lse();
}

// z_ptr: (B, V) acc_t workspace; fronts_ptr: (B, splits) best (z, id) per block
template <typename T, typename acc_t>
__global__ void scores_kernel(const T* __restrict__ x_ptr, int64_t row_stride, int64_t V,
                              int64_t span, const int64_t* __restrict__ seeds_ptr,
                              const int64_t* __restrict__ positions_ptr,
                              const acc_t* __restrict__ lse_ptr, acc_t* __restrict__ z_ptr,
                              Cand<acc_t>* __restrict__ fronts_ptr) {
  const int64_t row = blockIdx.x, split = blockIdx.y;
  const int64_t v0 = split * span, v1 = v0 + span < V ? v0 + span : V;
  const T* x = x_ptr + row * row_stride;
  const NoiseKey key = NoiseKey::make(seeds_ptr[row], 0, positions_ptr[row]);  // step stream
  const acc_t lse = lse_ptr[row];
  Cand<acc_t> best = no_cand<acc_t>();
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const acc_t xv = static_cast<acc_t>(x[v]);
    acc_t z = neg_inf<acc_t>();
    if (xv > neg_inf<acc_t>()) {
      z = (xv - lse) + static_cast<acc_t>(key.gumbel(static_cast<uint32_t>(v)));
      const Cand<acc_t> c{z, v};
      if (better(c, best)) best = c;
    }
    z_ptr[row * V + v] = z;
  }
  best = block_best(best);
  if (threadIdx.x == 0) fronts_ptr[row * gridDim.y + split] = best;
}

template <typename acc_t>
__device__ __forceinline__ Cand<acc_t> row_front(const Cand<acc_t>* fronts, int64_t splits) {
  Cand<acc_t> f = fronts[0];
  for (int64_t s = 1; s < splits; ++s)
    if (better(fronts[s], f)) f = fronts[s];
  return f;
}

// counts_ptr: (B, splits) survivors per block; front_ids / front_scores: (B,)
template <typename acc_t>
__global__ void count_kernel(const acc_t* __restrict__ z_ptr, int64_t V, int64_t span,
                             const Cand<acc_t>* __restrict__ fronts_ptr,
                             const acc_t* __restrict__ width_ptr, int64_t* __restrict__ counts_ptr,
                             int64_t* __restrict__ front_ids_ptr,
                             acc_t* __restrict__ front_scores_ptr) {
  const int64_t row = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t v0 = split * span, v1 = v0 + span < V ? v0 + span : V;
  const Cand<acc_t> front = row_front(fronts_ptr + row * splits, splits);
  const acc_t lo = front.val - width_ptr[row];
  int64_t count = 0;
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const acc_t z = z_ptr[row * V + v];
    count += (z > neg_inf<acc_t>() && z >= lo) ? 1 : 0;
  }
  count = block_sum(count);
  if (threadIdx.x == 0) {
    counts_ptr[row * splits + split] = count;
    if (split == 0) {
      front_ids_ptr[row] = front.id >= 0 ? front.id : 0;
      front_scores_ptr[row] = front.val;
    }
  }
}

// block_offsets_ptr: (B, splits) exclusive offsets of each block's survivors in ids / scores
template <typename acc_t>
__global__ void write_kernel(const acc_t* __restrict__ z_ptr, int64_t V, int64_t span,
                             const Cand<acc_t>* __restrict__ fronts_ptr,
                             const acc_t* __restrict__ width_ptr,
                             const int64_t* __restrict__ block_offsets_ptr,
                             int64_t* __restrict__ ids_ptr, acc_t* __restrict__ scores_ptr) {
  const int64_t row = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t v0 = split * span, v1 = v0 + span < V ? v0 + span : V;
  const Cand<acc_t> front = row_front(fronts_ptr + row * splits, splits);
  const acc_t lo = front.val - width_ptr[row];
  int64_t out = block_offsets_ptr[row * splits + split];
  for (int64_t tile = v0; tile < v1; tile += blockDim.x) {  // ordered compaction, tile by tile
    const int64_t v = tile + threadIdx.x;
    const acc_t z = v < v1 ? z_ptr[row * V + v] : neg_inf<acc_t>();
    const int keep = (z > neg_inf<acc_t>() && z >= lo) ? 1 : 0;
    int total;
    const int pos = block_exclusive_scan(keep, &total);
    if (keep) {
      ids_ptr[out + pos] = v;
      scores_ptr[out + pos] = z;
    }
    out += total;
  }
}

// One block per row: round j picks the best finite entry strictly worse than pick j-1.
template <typename acc_t>
__global__ void topk_select_kernel(const acc_t* __restrict__ z_ptr, int64_t V, int64_t top_k,
                                   int64_t* __restrict__ topk_ids_ptr,
                                   acc_t* __restrict__ topk_scores_ptr) {
  __shared__ Cand<acc_t> prev;
  const int64_t row = blockIdx.x;
  const acc_t* z = z_ptr + row * V;
  for (int64_t j = 0; j < top_k; ++j) {
    Cand<acc_t> best = no_cand<acc_t>();
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const Cand<acc_t> c{z[v], v};
      if (c.val > neg_inf<acc_t>() && (j == 0 || better(prev, c)) && better(c, best)) best = c;
    }
    best = block_best(best);
    if (threadIdx.x == 0) {
      prev = best;
      topk_ids_ptr[row * top_k + j] = best.id;  // -1 / -inf once the finite entries run out
      topk_scores_ptr[row * top_k + j] = best.val;
    }
    __syncthreads();
  }
}

using PruneOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// logits: (B, V) float16 | bfloat16 | float32 | float64; seeds, positions: (B,) integer;
// width: (B,) or one value, floating; top_k >= 1. Output layout: reference.PruneResult.
PruneOutputs gumbel_topk_prune_cuda(const at::Tensor& logits_in, const at::Tensor& seeds,
                                    const at::Tensor& positions, const at::Tensor& width,
                                    int64_t top_k) {
  constexpr const char* op = "gumbel_topk_prune";
  const at::Tensor logits = check_logits(logits_in, op);
  TORCH_CHECK(top_k >= 1, op, ": top_k must be >= 1, got ", top_k);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  const auto acc = acc_type(logits);
  const at::Tensor s = check_key(seeds, logits, "seeds", kMaxSeed, op);
  const at::Tensor p = check_key(positions, logits, "positions", kMaxPosition, op);
  const at::Tensor w = check_width(width, logits, acc, op);
  const auto long_opts = logits.options().dtype(at::kLong), acc_opts = logits.options().dtype(acc);
  const int64_t splits = choose_splits(B, V, multiprocessor_count(logits.get_device()));
  const int64_t span = (V + splits - 1) / splits;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(B > 0 ? B : 1, splits);

  at::Tensor lse = at::empty({B}, acc_opts), z = at::empty({B, V}, acc_opts);
  at::Tensor block_counts = at::empty({B, splits}, long_opts);
  at::Tensor front_ids = at::empty({B}, long_opts), front_scores = at::empty({B}, acc_opts);
  at::Tensor topk_ids = at::empty({B, top_k}, long_opts), topk_scores = at::empty({B, top_k}, acc_opts);
  const int64_t state_bytes = acc == at::kDouble ? sizeof(RowState<double>) : sizeof(RowState<float>);
  const int64_t cand_bytes = acc == at::kDouble ? sizeof(Cand<double>) : sizeof(Cand<float>);
  at::Tensor work = at::empty({B * splits * (state_bytes + cand_bytes)}, logits.options().dtype(at::kByte));
  at::Tensor ids, scores, counts, offsets;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_topk_prune_cuda", [&] {
    using acc_t = acc_type_of<scalar_t>;
    auto* states = reinterpret_cast<RowState<acc_t>*>(work.data_ptr<uint8_t>());
    auto* fronts = reinterpret_cast<Cand<acc_t>*>(work.data_ptr<uint8_t>() + B * splits * state_bytes);
    if (B > 0) {
      lse_partial_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          logits.const_data_ptr<scalar_t>(), logits.stride(0), V, span, states);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      lse_finalize_kernel<acc_t><<<(B + 127) / 128, 128, 0, stream>>>(states, B, splits, lse.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      scores_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          logits.const_data_ptr<scalar_t>(), logits.stride(0), V, span, s.const_data_ptr<int64_t>(),
          p.const_data_ptr<int64_t>(), lse.const_data_ptr<acc_t>(), z.data_ptr<acc_t>(), fronts);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      count_kernel<acc_t><<<grid, kThreads, 0, stream>>>(
          z.const_data_ptr<acc_t>(), V, span, fronts, w.const_data_ptr<acc_t>(),
          block_counts.data_ptr<int64_t>(), front_ids.data_ptr<int64_t>(), front_scores.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // CSR layout: per-row counts and offsets, per-block exclusive offsets, total (host sync)
    counts = block_counts.sum(1);
    offsets = at::empty({B + 1}, long_opts);
    offsets.narrow(0, 0, 1).zero_();
    offsets.narrow(0, 1, B).copy_(at::cumsum(counts, 0));
    const at::Tensor flat_counts = block_counts.reshape({-1});
    const at::Tensor block_offsets = at::cumsum(flat_counts, 0).sub(flat_counts).contiguous();
    const int64_t total = offsets[B].item<int64_t>();
    ids = at::empty({total}, long_opts);
    scores = at::empty({total}, acc_opts);
    if (B > 0 && total > 0) {
      write_kernel<acc_t><<<grid, kThreads, 0, stream>>>(
          z.const_data_ptr<acc_t>(), V, span, fronts, w.const_data_ptr<acc_t>(),
          block_offsets.const_data_ptr<int64_t>(), ids.data_ptr<int64_t>(), scores.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (B > 0 && top_k <= kSelectTopK) {
      topk_select_kernel<acc_t><<<B, kThreads, 0, stream>>>(
          z.const_data_ptr<acc_t>(), V, top_k, topk_ids.data_ptr<int64_t>(), topk_scores.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  if (B > 0 && top_k > kSelectTopK) {  // stable sort: ties keep the lower id first
    const auto sorted = at::sort(z, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
    const int64_t kk = top_k < V ? top_k : V;
    at::Tensor vals = std::get<0>(sorted).narrow(1, 0, kk), idx = std::get<1>(sorted).narrow(1, 0, kk);
    topk_scores.fill_(-std::numeric_limits<double>::infinity());
    topk_ids.fill_(-1);
    topk_scores.narrow(1, 0, kk).copy_(vals);
    topk_ids.narrow(1, 0, kk).copy_(at::where(vals.isfinite(), idx, at::full({}, -1, long_opts)));
  }
  return {ids, scores, counts, offsets, front_ids, front_scores, topk_ids, topk_scores, lse};
}

}  // namespace
}  // namespace cuda
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CUDA, m) {
  m.impl("gumbel_topk_prune", &epic::cuda::gumbel_topk_prune_cuda);
}
