// Instantiations of the plain-pointer CPU kernels (csrc/kernels/cpu_*.h), multiversioned.
#include "cpu_kernels.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(EPIC_NO_MULTIVERSION)
// One clone per x86-64 level, chosen at load time from the CPU's features (ifunc).
#define EPIC_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EPIC_MULTIVERSION
#endif

namespace epic {
namespace cpu {

#define EPIC_DEFINE_PIECES(T, acc_t)                                                            \
  EPIC_MULTIVERSION void softmax_piece_cpu(const T* x, int64_t n, int64_t v0,                   \
                                           const NoiseKey* key, RowState<acc_t>* st,            \
                                           Cand<acc_t>* best) {                                 \
    softmax_piece<T, acc_t>(x, n, v0, key, st, best);                                           \
  }                                                                                             \
  EPIC_MULTIVERSION void prune_piece_cpu(const T* x, int64_t n, int64_t v0, const NoiseKey& key, \
                                         acc_t lse, acc_t width, Cand<acc_t> seed,              \
                                         int64_t top_k, PrunePiece<acc_t>* out) {               \
    prune_piece<T, acc_t>(x, n, v0, key, lse, width, seed, top_k, out);                         \
  }

EPIC_DEFINE_PIECES(float, float)
EPIC_DEFINE_PIECES(double, double)
EPIC_DEFINE_PIECES(c10::Half, float)
EPIC_DEFINE_PIECES(c10::BFloat16, float)

EPIC_MULTIVERSION void gumbel_row_cpu(const NoiseKey& key, int64_t V, float* out) {
  alignas(64) int32_t idx[kBlock + 8];
  alignas(64) float g[kBlock + 8];
  for (int64_t j = 0; j < kBlock + 8; ++j) idx[j] = static_cast<int32_t>(j);
  for (int64_t v0 = 0; v0 < V; v0 += kBlock) {
    const int64_t n = std::min(kBlock, V - v0);
    gumbel_batch(key, v0, idx, n, g);
    std::memcpy(out + v0, g, n * sizeof(float));
  }
}

EPIC_MULTIVERSION float gumbel_one_cpu(const NoiseKey& key, int64_t v) { return gumbel_one(key, v); }

EPIC_MULTIVERSION void gumbel_words_cpu(const int64_t* words, int64_t n, float* out) {
  for (int64_t j = 0; j < n; j += 8) {
    vu32x8 w = vu32x8{};
    for (int k = 0; k < 8 && j + k < n; ++k) w[k] = static_cast<uint32_t>(words[j + k]);
    const vf32x8 g = gumbel_from_words8(w);
    for (int k = 0; k < 8 && j + k < n; ++k) out[j + k] = g[k];
  }
}

}  // namespace cpu
}  // namespace epic
