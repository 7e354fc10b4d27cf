// CUDA kernels of softmax_entropy and softmax_entropy_sample (mirror of the CPU path), and the
// testing helpers _philox_randint / _gumbel_noise.
//
// Grid (rows, splits): block (n, s) walks entries [s * span, (s + 1) * span) of row n with a
// thread stride (coalesced loads), keeping the online state (m, s, t) and, when sampling, the
// best (x + G, id) per thread; the block merges them (fixed tree) into one partial per (n, s).
// A second kernel merges each row's partials in split order and writes entropy, lse and tokens.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../glue.h"
#include "../include/online_softmax.h"
#include "../include/philox.h"
#include "cuda_common.cuh"

namespace epic {
namespace cuda {
namespace {

// Add entry x (id v) to a thread's online state: one exp per entry, a rescale when x is a new max.
template <typename acc_t>
__device__ __forceinline__ void push_entry(RowState<acc_t>& st, acc_t x, int64_t v) {
  if (!(x > -std::numeric_limits<acc_t>::infinity())) return;  // -inf: probability 0
  if (x > st.m) {
    st.rescale_to(x);
    st.s += acc_t(1);
    st.arg = v;
  } else {
    const acc_t d = x - st.m;
    const acc_t e = acc_exp(d);
    st.s += e;
    st.t += e * d;
  }
}

// x_ptr: (N, V) rows with row_stride; keys (seeds_ptr, streams_ptr, positions_ptr): (N,) or null.
// Writes one RowState and one Cand per (row, split) to states_ptr / bests_ptr ((N, splits)).
template <typename T, typename acc_t>
__global__ void softmax_partial_kernel(const T* __restrict__ x_ptr, int64_t row_stride, int64_t V,
                                       int64_t span, const int64_t* __restrict__ seeds_ptr,
                                       const int64_t* __restrict__ streams_ptr,
                                       const int64_t* __restrict__ positions_ptr,
                                       RowState<acc_t>* __restrict__ states_ptr,
                                       Cand<acc_t>* __restrict__ bests_ptr) {
  const int64_t row = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t v0 = split * span, v1 = v0 + span < V ? v0 + span : V;
  const T* x = x_ptr + row * row_stride;
  const bool sample = seeds_ptr != nullptr;
  NoiseKey key{0, 0, 0};
  if (sample) key = NoiseKey::make(seeds_ptr[row], streams_ptr[row], positions_ptr[row]);
  const acc_t gmax = static_cast<acc_t>(kGumbelMaxBound);
  RowState<acc_t> st = RowState<acc_t>::empty();
  Cand<acc_t> best = no_cand<acc_t>();
  for (int64_t v = v0 + threadIdx.x; v < v1; v += blockDim.x) {
    const acc_t xv = static_cast<acc_t>(x[v]);
    push_entry(st, xv, v);
    // noise only where x + Gmax can still reach this thread's best (exact, see philox.h)
    if (sample && xv > -std::numeric_limits<acc_t>::infinity() && xv + gmax >= best.val) {
      const Cand<acc_t> c{xv + static_cast<acc_t>(key.gumbel(static_cast<uint32_t>(v))), v};
      if (better(c, best)) best = c;
    }
  }
  st = block_merge_states(st);
  if (sample) best = block_best(best);
  if (threadIdx.x == 0) {
    states_ptr[row * splits + split] = st;
    if (sample) bests_ptr[row * splits + split] = best;
  }
}

// One thread per row: merge the row's partials in split order.
template <typename acc_t>
__global__ void softmax_finalize_kernel(const RowState<acc_t>* __restrict__ states_ptr,
                                        const Cand<acc_t>* __restrict__ bests_ptr, int64_t N,
                                        int64_t splits, acc_t* __restrict__ entropy_ptr,
                                        acc_t* __restrict__ lse_ptr,
                                        int64_t* __restrict__ tokens_ptr) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= N) return;
  RowState<acc_t> st = states_ptr[row * splits];
  for (int64_t s = 1; s < splits; ++s) st = merge_states(st, states_ptr[row * splits + s]);
  entropy_ptr[row] = st.entropy();
  lse_ptr[row] = st.lse();
  if (tokens_ptr != nullptr) {
    Cand<acc_t> best = bests_ptr[row * splits];
    for (int64_t s = 1; s < splits; ++s)
      if (better(bests_ptr[row * splits + s], best)) best = bests_ptr[row * splits + s];
    tokens_ptr[row] = best.id >= 0 ? best.id : 0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_common_cuda(const at::Tensor& logits_in,
                                                                   const at::Tensor* seeds,
                                                                   const at::Tensor* streams,
                                                                   const at::Tensor* positions,
                                                                   const char* op) {
  const at::Tensor logits = check_logits(logits_in, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), V = logits.size(1);
  at::Tensor s, r, p;
  if (seeds) {
    s = check_key(*seeds, logits, "seeds", kMaxSeed, op);
    r = check_key(*streams, logits, "streams", kMaxStream, op);
    p = check_key(*positions, logits, "positions", kMaxPosition, op);
  }
  const auto acc = acc_type(logits);
  at::Tensor entropy = at::empty({N}, logits.options().dtype(acc));
  at::Tensor lse = at::empty({N}, logits.options().dtype(acc));
  at::Tensor tokens = at::empty({seeds ? N : 0}, logits.options().dtype(at::kLong));
  if (N == 0) return {entropy, lse, tokens};
  const int sms = multiprocessor_count(logits.get_device());
  const int64_t splits = choose_splits(N, V, sms), span = (V + splits - 1) / splits;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const bool is_double = acc == at::kDouble;
  const int64_t state_bytes = is_double ? sizeof(RowState<double>) : sizeof(RowState<float>);
  const int64_t cand_bytes = is_double ? sizeof(Cand<double>) : sizeof(Cand<float>);
  at::Tensor work = at::empty({N * splits * (state_bytes + cand_bytes)}, logits.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_entropy_cuda", [&] {
    using acc_t = acc_type_of<scalar_t>;
    auto* states = reinterpret_cast<RowState<acc_t>*>(work.data_ptr<uint8_t>());
    auto* bests = reinterpret_cast<Cand<acc_t>*>(work.data_ptr<uint8_t>() + N * splits * state_bytes);
    softmax_partial_kernel<scalar_t, acc_t><<<dim3(N, splits), kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), logits.stride(0), V, span,
        seeds ? s.const_data_ptr<int64_t>() : nullptr, seeds ? r.const_data_ptr<int64_t>() : nullptr,
        seeds ? p.const_data_ptr<int64_t>() : nullptr, states, bests);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    softmax_finalize_kernel<acc_t><<<(N + 127) / 128, 128, 0, stream>>>(
        states, bests, N, splits, entropy.data_ptr<acc_t>(), lse.data_ptr<acc_t>(),
        seeds ? tokens.data_ptr<int64_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {entropy, lse, tokens};
}

// logits: (N, V) float16 | bfloat16 | float32 | float64 -> entropy (N), lse (N) in acc dtype
std::tuple<at::Tensor, at::Tensor> softmax_entropy_cuda(const at::Tensor& logits) {
  auto out = softmax_common_cuda(logits, nullptr, nullptr, nullptr, "softmax_entropy");
  return {std::get<0>(out), std::get<1>(out)};
}

// logits: (N, V); seeds, positions: (N,) integer; streams: (N,) or (N, S) integer
// -> entropy, lse (N), tokens int64 of the shape of streams. Unlike the CPU kernel, (N, S) streams
// simply run the one-stream kernel once per column (S softmax passes; same results).
std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_entropy_sample_cuda(
    const at::Tensor& logits, const at::Tensor& seeds, const at::Tensor& streams,
    const at::Tensor& positions) {
  const char* op = "softmax_entropy_sample";
  if (streams.dim() != 2) return softmax_common_cuda(logits, &seeds, &streams, &positions, op);
  check_logits(logits, op);
  const at::Tensor r = check_streams(streams, logits, op);  // (N, S), S >= 1
  const int64_t S = r.size(1);
  at::Tensor entropy, lse;
  at::Tensor tokens = at::empty({logits.size(0), S}, r.options());
  for (int64_t k = 0; k < S; ++k) {
    const at::Tensor col = r.select(1, k).contiguous();
    auto out = softmax_common_cuda(logits, &seeds, &col, &positions, op);
    if (k == 0) {
      entropy = std::get<0>(out);
      lse = std::get<1>(out);
    }
    tokens.select(1, k).copy_(std::get<2>(out));
  }
  return {entropy, lse, tokens};
}

// ---- testing helpers -------------------------------------------------------------------------

__global__ void philox_randint_kernel(const int64_t* __restrict__ seed_ptr,
                                      const int64_t* __restrict__ offset_ptr, int64_t n,
                                      int64_t* __restrict__ out_ptr) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n)
    out_ptr[i] = philox_randint(static_cast<uint64_t>(seed_ptr[i]), static_cast<uint64_t>(offset_ptr[i]));
}

__global__ void gumbel_noise_kernel(const int64_t* __restrict__ seeds_ptr,
                                    const int64_t* __restrict__ streams_ptr,
                                    const int64_t* __restrict__ positions_ptr, int64_t N,
                                    int64_t vocab, float* __restrict__ out_ptr) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N * vocab) return;
  const int64_t n = i / vocab, v = i % vocab;
  out_ptr[i] = NoiseKey::make(seeds_ptr[n], streams_ptr[n], positions_ptr[n]).gumbel(static_cast<uint32_t>(v));
}

__global__ void gumbel_from_words_kernel(const int64_t* __restrict__ words_ptr, int64_t n,
                                         float* __restrict__ out_ptr) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out_ptr[i] = gumbel_from_word(static_cast<uint32_t>(words_ptr[i]));
}

// seed, offset: int64, same shape -> int64 words, same shape
at::Tensor philox_randint_cuda(const at::Tensor& seed, const at::Tensor& offset) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && offset.scalar_type() == at::kLong,
              "_philox_randint: seed and offset must be int64");
  TORCH_CHECK(seed.sizes() == offset.sizes(), "_philox_randint: seed and offset must have the same shape");
  const c10::cuda::CUDAGuard guard(seed.device());
  const at::Tensor s = seed.contiguous(), o = offset.to(seed.device()).contiguous();
  at::Tensor out = at::empty(s.sizes(), s.options());
  const int64_t n = s.numel();
  if (n > 0) {
    philox_randint_kernel<<<(n + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        s.const_data_ptr<int64_t>(), o.const_data_ptr<int64_t>(), n, out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// seeds, streams, positions: (N,) integer -> float32 Gumbel noise (N, vocab)
at::Tensor gumbel_noise_cuda(const at::Tensor& seeds, const at::Tensor& streams,
                             const at::Tensor& positions, int64_t vocab) {
  constexpr const char* op = "_gumbel_noise";
  TORCH_CHECK(vocab >= 0 && vocab < kMaxVocab, op, ": vocab out of range: ", vocab);
  const c10::cuda::CUDAGuard guard(seeds.device());
  const at::Tensor like = at::empty({seeds.numel(), 1}, seeds.options().dtype(at::kFloat));
  const at::Tensor s = check_key(seeds, like, "seeds", kMaxSeed, op);
  const at::Tensor r = check_key(streams, like, "streams", kMaxStream, op);
  const at::Tensor p = check_key(positions, like, "positions", kMaxPosition, op);
  const int64_t N = s.size(0);
  at::Tensor out = at::empty({N, vocab}, like.options());
  if (N * vocab > 0) {
    gumbel_noise_kernel<<<(N * vocab + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        s.const_data_ptr<int64_t>(), r.const_data_ptr<int64_t>(), p.const_data_ptr<int64_t>(), N,
        vocab, out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// words: int64 holding uint32 words -> float32 Gumbel noise, same shape
at::Tensor gumbel_from_words_cuda(const at::Tensor& words) {
  TORCH_CHECK(words.scalar_type() == at::kLong, "_gumbel_from_words: words must be int64");
  const c10::cuda::CUDAGuard guard(words.device());
  const at::Tensor w = words.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options().dtype(at::kFloat));
  const int64_t n = w.numel();
  if (n > 0) {
    gumbel_from_words_kernel<<<(n + 255) / 256, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        w.const_data_ptr<int64_t>(), n, out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace
}  // namespace cuda
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CUDA, m) {
  m.impl("softmax_entropy", &epic::cuda::softmax_entropy_cuda);
  m.impl("softmax_entropy_sample", &epic::cuda::softmax_entropy_sample_cuda);
  m.impl("_philox_randint", &epic::cuda::philox_randint_cuda);
  m.impl("_gumbel_noise", &epic::cuda::gumbel_noise_cuda);
  m.impl("_gumbel_from_words", &epic::cuda::gumbel_from_words_cuda);
}
