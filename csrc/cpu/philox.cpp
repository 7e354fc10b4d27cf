// CPU glue of the testing helpers _philox_randint and _gumbel_noise (csrc/include/philox.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../glue.h"
#include "../include/philox.h"
#include "cpu_kernels.h"

#include <algorithm>

namespace epic {
namespace cpu {
namespace {

// seed, offset: int64, same shape, values >= 0 -> int64 words in [0, 2^32), same shape
at::Tensor philox_randint_cpu(const at::Tensor& seed, const at::Tensor& offset) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && offset.scalar_type() == at::kLong,
              "_philox_randint: seed and offset must be int64");
  TORCH_CHECK(seed.sizes() == offset.sizes(), "_philox_randint: seed and offset must have the "
              "same shape, got ", seed.sizes(), " and ", offset.sizes());
  const at::Tensor s = seed.contiguous(), o = offset.contiguous();
  at::Tensor out = at::empty_like(s, s.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t *sp = s.const_data_ptr<int64_t>(), *op = o.const_data_ptr<int64_t>();
  int64_t* wp = out.data_ptr<int64_t>();
  at::parallel_for(0, s.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      wp[i] = philox_randint(static_cast<uint64_t>(sp[i]), static_cast<uint64_t>(op[i]));
  });
  return out;
}

// seeds, streams, positions: (N,) integer -> float32 Gumbel noise (N, vocab)
at::Tensor gumbel_noise_cpu(const at::Tensor& seeds, const at::Tensor& streams,
                            const at::Tensor& positions, int64_t vocab) {
  constexpr const char* op = "_gumbel_noise";
  TORCH_CHECK(vocab >= 0 && vocab < kMaxVocab, op, ": vocab out of range: ", vocab);
  const at::Tensor like = at::empty({seeds.numel(), 1}, seeds.options().dtype(at::kFloat));
  const at::Tensor s = check_key(seeds, like, "seeds", kMaxSeed, op);
  const at::Tensor r = check_key(streams, like, "streams", kMaxStream, op);
  const at::Tensor p = check_key(positions, like, "positions", kMaxPosition, op);
  const int64_t N = s.size(0);
  at::Tensor out = at::empty({N, vocab}, like.options());
  float* g = out.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(vocab, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const NoiseKey key = NoiseKey::make(s.data_ptr<int64_t>()[n], r.data_ptr<int64_t>()[n],
                                          p.data_ptr<int64_t>()[n]);
      gumbel_row_cpu(key, vocab, g + n * vocab);
    }
  });
  return out;
}

// words: int64 holding uint32 Philox words -> float32 Gumbel noise, same shape
at::Tensor gumbel_from_words_cpu(const at::Tensor& words) {
  TORCH_CHECK(words.scalar_type() == at::kLong, "_gumbel_from_words: words must be int64");
  const at::Tensor w = words.contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options().dtype(at::kFloat));
  const int64_t* wp = w.const_data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, (w.numel() + 7) / 8, 512, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * 8, hi = std::min<int64_t>(end * 8, w.numel());
    gumbel_words_cpu(wp + lo, hi - lo, op + lo);
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("_philox_randint", &epic::cpu::philox_randint_cpu);
  m.impl("_gumbel_noise", &epic::cpu::gumbel_noise_cpu);
  m.impl("_gumbel_from_words", &epic::cpu::gumbel_from_words_cpu);
}
