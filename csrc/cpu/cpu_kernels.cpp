// Instantiations of the plain-pointer CPU kernels (csrc/include/cpu_*.h), one per instruction set.
//
// On x86-64 Linux with GCC, each entry point is a GCC function-multiversioning set: an AVX-512
// body (16-float vectors), an AVX2 + FMA body (8-float vectors) and a baseline SSE2 body (4-float
// vectors); the loader picks one from the running CPU (ifunc). No -march flag is needed, and the
// library runs on any x86-64. Elsewhere one portable body is built. The multiversioned functions
// are file-local; the exported entry points call them, which is what makes calls from the other
// files dispatch (a plain declaration alone would bind to the default body).
#include "cpu_kernels.h"

#include <algorithm>
#include <cstring>
#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(EPIC_NO_MULTIVERSION)
#define EPIC_MULTIVERSION 1
#endif

namespace epic {
namespace cpu {
namespace {

#define EPIC_PIECES_BODY(ATTR, W, T, acc_t)                                                       \
  ATTR void softmax_piece_mv(const T* x, int64_t n, int64_t v0, const NoiseKey* keys,           \
                             int64_t S, const Cand<acc_t>* seed, RowState<acc_t>* st,           \
                             Cand<acc_t>* best) {                                               \
    softmax_piece<W, T, acc_t>(x, n, v0, keys, S, seed, st, best);                              \
  }                                                                                             \
  ATTR void prune_piece_mv(const T* x, int64_t n, int64_t v0, const NoiseKey& key, acc_t lse,   \
                           acc_t width, Cand<acc_t> seed, int64_t top_k,                        \
                           PrunePiece<acc_t>* out) {                                            \
    prune_piece<W, T, acc_t>(x, n, v0, key, lse, width, seed, top_k, out);                      \
  }

#define EPIC_NOISE_BODY(ATTR)                                                                   \
  ATTR void gumbel_row_mv(const NoiseKey& key, int64_t V, float* out) {                         \
    alignas(64) int32_t idx[kBlock + 8];                                                        \
    alignas(64) float g[kBlock + 8];                                                            \
    for (int64_t j = 0; j < kBlock + 8; ++j) idx[j] = static_cast<int32_t>(j);                  \
    for (int64_t v0 = 0; v0 < V; v0 += kBlock) {                                                \
      const int64_t n = std::min(kBlock, V - v0);                                               \
      gumbel_batch(key, v0, idx, n, g);                                                         \
      std::memcpy(out + v0, g, n * sizeof(float));                                              \
    }                                                                                           \
  }                                                                                             \
  ATTR float gumbel_one_mv(const NoiseKey& key, int64_t v) { return gumbel_one(key, v); }      \
  ATTR void gumbel_words_mv(const int64_t* words, int64_t n, float* out) {                      \
    for (int64_t j = 0; j < n; j += 8) {                                                        \
      vu32x8 w = vu32x8{};                                                                      \
      for (int k = 0; k < 8 && j + k < n; ++k) w[k] = static_cast<uint32_t>(words[j + k]);      \
      const vf32x8 g = gumbel_from_words8(w);                                                   \
      for (int k = 0; k < 8 && j + k < n; ++k) out[j + k] = g[k];                               \
    }                                                                                           \
  }

#define EPIC_ATTENTION_BODY(ATTR, W)                                                            \
  ATTR void fork_attention_group_mv(const ForkAttnGroup<float>& task) {                        \
    fork_attention_group<W, float>(task);                                                       \
  }                                                                                             \
  ATTR void fork_attention_group_mv(const ForkAttnGroup<double>& task) {                       \
    fork_attention_group<W, double>(task);                                                      \
  }

// The body the loader picked, by the same multiversioning (and so the same resolver rules) as the
// kernels: what benchmarks report as "the ISA body in use".
#if defined(EPIC_MULTIVERSION)
__attribute__((target("arch=x86-64-v4"))) const char* isa_body_mv() { return "avx512 (x86-64-v4, 16-float vectors)"; }
__attribute__((target("arch=x86-64-v3"))) const char* isa_body_mv() { return "avx2 (x86-64-v3, 8-float vectors)"; }
__attribute__((target("default"))) const char* isa_body_mv() { return "sse2 (x86-64 baseline, 4-float vectors)"; }
#else
const char* isa_body_mv() { return "portable (one body, 8-float vectors, the compiler's flags)"; }
#endif

#if defined(EPIC_MULTIVERSION)
#define EPIC_ALL_TARGETS(T, acc_t)                                                     \
  EPIC_PIECES_BODY(__attribute__((target("arch=x86-64-v4"))), 16, T, acc_t)           \
  EPIC_PIECES_BODY(__attribute__((target("arch=x86-64-v3"))), 8, T, acc_t)            \
  EPIC_PIECES_BODY(__attribute__((target("default"))), 4, T, acc_t)
EPIC_NOISE_BODY(__attribute__((target("arch=x86-64-v4"))))
EPIC_NOISE_BODY(__attribute__((target("arch=x86-64-v3"))))
EPIC_NOISE_BODY(__attribute__((target("default"))))
EPIC_ATTENTION_BODY(__attribute__((target("arch=x86-64-v4"))), 16)
EPIC_ATTENTION_BODY(__attribute__((target("arch=x86-64-v3"))), 8)
EPIC_ATTENTION_BODY(__attribute__((target("default"))), 4)
#else
#define EPIC_ALL_TARGETS(T, acc_t) EPIC_PIECES_BODY(, 8, T, acc_t)
EPIC_NOISE_BODY()
EPIC_ATTENTION_BODY(, 8)
#endif

EPIC_ALL_TARGETS(float, float)
EPIC_ALL_TARGETS(double, double)
EPIC_ALL_TARGETS(c10::Half, float)
EPIC_ALL_TARGETS(c10::BFloat16, float)

}  // namespace

#define EPIC_EXPORT_PIECES(T, acc_t)                                                             \
  void softmax_piece_cpu(const T* x, int64_t n, int64_t v0, const NoiseKey* keys, int64_t S,   \
                         const Cand<acc_t>* seed, RowState<acc_t>* st, Cand<acc_t>* best) {     \
    softmax_piece_mv(x, n, v0, keys, S, seed, st, best);                                        \
  }                                                                                             \
  void prune_piece_cpu(const T* x, int64_t n, int64_t v0, const NoiseKey& key, acc_t lse,       \
                       acc_t width, Cand<acc_t> seed, int64_t top_k, PrunePiece<acc_t>* out) {  \
    prune_piece_mv(x, n, v0, key, lse, width, seed, top_k, out);                                \
  }

EPIC_EXPORT_PIECES(float, float)
EPIC_EXPORT_PIECES(double, double)
EPIC_EXPORT_PIECES(c10::Half, float)
EPIC_EXPORT_PIECES(c10::BFloat16, float)

std::string isa_body_cpu() { return isa_body_mv(); }
void gumbel_row_cpu(const NoiseKey& key, int64_t V, float* out) { gumbel_row_mv(key, V, out); }
float gumbel_one_cpu(const NoiseKey& key, int64_t v) { return gumbel_one_mv(key, v); }
void gumbel_words_cpu(const int64_t* words, int64_t n, float* out) { gumbel_words_mv(words, n, out); }
void fork_attention_group_cpu(const ForkAttnGroup<float>& task) { fork_attention_group_mv(task); }
void fork_attention_group_cpu(const ForkAttnGroup<double>& task) { fork_attention_group_mv(task); }

}  // namespace cpu
}  // namespace epic
