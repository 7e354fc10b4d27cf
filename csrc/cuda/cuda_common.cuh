// Block-level helpers for the CUDA kernels: warp-shuffle reductions of the online softmax state
// and of (value, id) candidates, and an exclusive block scan for ordered compaction.
// Every reduction uses a fixed tree, so results are deterministic for a given launch shape.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../include/online_softmax.h"

namespace epic {
namespace cuda {

constexpr int kThreads = 256;  // threads per block (multiple of 32)
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ RowState<acc_t> shfl_down_state(const RowState<acc_t>& s, int delta) {
  return RowState<acc_t>{__shfl_down_sync(kFull, s.m, delta), __shfl_down_sync(kFull, s.s, delta),
                         __shfl_down_sync(kFull, s.t, delta),
                         static_cast<int64_t>(__shfl_down_sync(
                             kFull, static_cast<long long>(s.arg), delta))};
}

template <typename acc_t>
__device__ __forceinline__ Cand<acc_t> shfl_down_cand(const Cand<acc_t>& c, int delta) {
  return Cand<acc_t>{__shfl_down_sync(kFull, c.val, delta),
                     static_cast<int64_t>(
                         __shfl_down_sync(kFull, static_cast<long long>(c.id), delta))};
}

// Merge the states of all threads of the block; the result is valid in thread 0.
template <typename acc_t>
__device__ RowState<acc_t> block_merge_states(RowState<acc_t> st) {
  __shared__ RowState<acc_t> warp_states[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int delta = 16; delta > 0; delta /= 2) st = merge_states(st, shfl_down_state(st, delta));
  if (lane == 0) warp_states[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? warp_states[lane] : RowState<acc_t>::empty();
    for (int delta = 16; delta > 0; delta /= 2) st = merge_states(st, shfl_down_state(st, delta));
  }
  __syncthreads();  // warp_states may be reused by a following call
  return st;
}

// Best candidate of the block (higher value, then lower id); valid in thread 0.
template <typename acc_t>
__device__ Cand<acc_t> block_best(Cand<acc_t> c) {
  __shared__ Cand<acc_t> warp_best[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int delta = 16; delta > 0; delta /= 2) {
    const Cand<acc_t> o = shfl_down_cand(c, delta);
    if (better(o, c)) c = o;
  }
  if (lane == 0) warp_best[warp] = c;
  __syncthreads();
  if (warp == 0) {
    c = lane < kWarps ? warp_best[lane] : no_cand<acc_t>();
    for (int delta = 16; delta > 0; delta /= 2) {
      const Cand<acc_t> o = shfl_down_cand(c, delta);
      if (better(o, c)) c = o;
    }
  }
  __syncthreads();
  return c;
}

// Sum over the block; valid in thread 0.
__device__ inline int64_t block_sum(int64_t v) {
  __shared__ long long warp_sum[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  long long x = v;
  for (int delta = 16; delta > 0; delta /= 2) x += __shfl_down_sync(kFull, x, delta);
  if (lane == 0) warp_sum[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kWarps ? warp_sum[lane] : 0;
    for (int delta = 16; delta > 0; delta /= 2) x += __shfl_down_sync(kFull, x, delta);
  }
  __syncthreads();
  return x;
}

// Exclusive prefix sum of flag over the block's threads (in thread order); *total = block sum.
__device__ inline int block_exclusive_scan(int flag, int* total) {
  __shared__ int warp_tot[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int x = flag;
  for (int delta = 1; delta < 32; delta *= 2) {
    const int y = __shfl_up_sync(kFull, x, delta);
    if (lane >= delta) x += y;
  }
  if (lane == 31) warp_tot[warp] = x;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < warp ? warp_tot[w] : 0;
    all += warp_tot[w];
  }
  __syncthreads();
  *total = all;
  return before + x - flag;
}

// Number of SMs of a device (cached per device: the query is not free).
inline int multiprocessor_count(int device) {
  static int cached[64] = {0};
  if (device < 0 || device >= 64) return 108;
  if (cached[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) n = 108;
    cached[device] = n;
  }
  return cached[device];
}

// Split of a row of V entries over `splits` blocks: enough blocks in flight to fill the GPU
// (about two per SM), pieces of at least min_span entries.
inline int64_t choose_splits(int64_t rows, int64_t V, int sms, int64_t min_span = 2048) {
  if (rows <= 0) return 1;
  int64_t want = (2 * static_cast<int64_t>(sms) + rows - 1) / rows;
  int64_t most = (V + min_span - 1) / min_span;
  int64_t s = want < most ? want : most;
  return s < 1 ? 1 : s;
}

}  // namespace cuda
}  // namespace epic
