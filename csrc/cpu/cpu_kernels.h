// Entry points of the CPU kernels, one overload per input dtype. cpu_kernels.cpp compiles each
// once per instruction set (GCC function multiversioning on x86-64 Linux: AVX-512, AVX2, SSE2)
// and the loader picks the best one for the running CPU, so no -march flag is needed.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <string>

#include "../include/cpu_attention.h"
#include "../include/cpu_prune.h"
#include "../include/cpu_softmax.h"

namespace epic {
namespace cpu {

#define EPIC_DECLARE_PIECES(T, acc_t)                                                        \
  void softmax_piece_cpu(const T* x, int64_t n, int64_t v0, const NoiseKey* keys, int64_t S, \
                         const Cand<acc_t>* seed, RowState<acc_t>* st, Cand<acc_t>* best);   \
  void prune_piece_cpu(const T* x, int64_t n, int64_t v0, const NoiseKey& key, acc_t lse,    \
                       acc_t width, Cand<acc_t> seed, int64_t top_k, PrunePiece<acc_t>* out);

EPIC_DECLARE_PIECES(float, float)
EPIC_DECLARE_PIECES(double, double)
EPIC_DECLARE_PIECES(c10::Half, float)
EPIC_DECLARE_PIECES(c10::BFloat16, float)
#undef EPIC_DECLARE_PIECES

// Fork attention of one task: a (sequence, kv head) and some of its rows
// (csrc/include/cpu_attention.h); float32 and float64.
void fork_attention_group_cpu(const ForkAttnGroup<float>& task);
void fork_attention_group_cpu(const ForkAttnGroup<double>& task);

// Keyed Gumbel noise through the same SIMD code as the kernels (so every CPU op draws identical
// noise): entries v = 0..V-1 of one key into out[0..V), and raw Philox words (int64 holding
// uint32) into noise.
void gumbel_row_cpu(const NoiseKey& key, int64_t V, float* out);
float gumbel_one_cpu(const NoiseKey& key, int64_t v);
void gumbel_words_cpu(const int64_t* words, int64_t n, float* out);

// Which multiversioned body the loader picked on this CPU (the same for every kernel), e.g.
// "avx512 (x86-64-v4, 16-float vectors)"; torch.ops.epic_kernels._cpu_isa().
std::string isa_body_cpu();

}  // namespace cpu
}  // namespace epic
