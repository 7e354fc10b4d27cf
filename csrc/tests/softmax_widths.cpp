// Standalone check of the CPU softmax kernel (csrc/include/cpu_softmax.h) in the three bodies that
// csrc/cpu/cpu_kernels.cpp builds: 4-float vectors (baseline x86-64), 8 (x86-64-v3: AVX2 + FMA) and
// 16 (x86-64-v4: AVX-512), each compiled here with the same target attribute, so the bodies that do
// not run on the test machine's CPU in the extension are still exercised where the CPU allows.
// For random rows (-inf holes, equal logits, constant rows, spikes, exact ties of x + G, ragged
// lengths, seeds from an earlier piece, S = 1..3 streams, float and double) every body's Gumbel-max
// candidates must equal a brute-force argmax over all entries, and the AVX2 and AVX-512 bodies'
// softmax statistics must be bit-identical (the baseline body has no FMA: last-bit differences).
//
//   g++ -O2 -std=c++20 -ffp-contract=fast csrc/tests/softmax_widths.cpp -o softmax_widths && ./softmax_widths
// (python_tests/test_ext_ops.py builds and runs it.) Prints "... 0 mismatches" and exits 0 on success.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../include/cpu_softmax.h"

using namespace epic;
using namespace epic::cpu;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EPIC_TEST_MV 1
#define EPIC_TARGET(t) __attribute__((target(t)))
#else
#define EPIC_TARGET(t)
#endif

template <int W, typename acc_t>
struct Body;
#define EPIC_BODY(W, ATTR)                                                                       \
  template <typename acc_t>                                                                      \
  struct Body<W, acc_t> {                                                                        \
    ATTR static void run(const std::vector<acc_t>& x, int64_t v0, const NoiseKey* keys, int S,  \
                         const Cand<acc_t>* seed, RowState<acc_t>* st, Cand<acc_t>* best) {     \
      softmax_piece<W, acc_t, acc_t>(x.data(), static_cast<int64_t>(x.size()), v0, keys, S,     \
                                     seed, st, best);                                           \
    }                                                                                            \
  };
#if defined(EPIC_TEST_MV)
EPIC_BODY(4, EPIC_TARGET("default"))
EPIC_BODY(8, EPIC_TARGET("arch=x86-64-v3"))
EPIC_BODY(16, EPIC_TARGET("arch=x86-64-v4"))
#else
EPIC_BODY(4, )
EPIC_BODY(8, )
EPIC_BODY(16, )
#endif

static bool cpu_has(int W) {
#if defined(EPIC_TEST_MV)
  __builtin_cpu_init();
  if (W == 16)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
  if (W == 8)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
#endif
  (void)W;
  return true;
}

template <typename acc_t>
static Cand<acc_t> brute(const std::vector<acc_t>& x, int64_t v0, const NoiseKey& key) {
  Cand<acc_t> best = no_cand<acc_t>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (!(x[i] > neg_inf<acc_t>())) continue;
    const int64_t v = v0 + static_cast<int64_t>(i);
    const Cand<acc_t> c{x[i] + static_cast<acc_t>(gumbel_one(key, v)), v};
    if (better(c, best)) best = c;
  }
  return best;
}

template <typename acc_t>
static bool same_bits(acc_t a, acc_t b) {
  return std::memcmp(&a, &b, sizeof(acc_t)) == 0;
}

template <typename acc_t>
static int check(std::mt19937_64& rng, int trial, const bool* has) {
  std::normal_distribution<double> nd(0, 1);
  const int n = 1 + static_cast<int>(rng() % 5000), kind = trial % 6;
  std::vector<acc_t> x(n);
  for (int i = 0; i < n; ++i) {
    double v = nd(rng) * (kind == 0 ? 3 : kind == 1 ? 10 : 1);
    if (kind == 2) v = std::floor(v * 2);                    // many equal logits
    if (kind == 3 && rng() % 10 == 0) v = -INFINITY;         // -inf holes
    if (kind == 4) v = rng() % 50 == 0 ? 20 + nd(rng) : -1e4;  // spikes
    if (kind == 5) v = 1.5;                                  // constant row
    x[i] = static_cast<acc_t>(v);
  }
  if (kind == 3) x[rng() % n] = 0;  // at least one finite entry
  const int S = 1 + trial % 3;
  NoiseKey keys[3];
  for (int k = 0; k < S; ++k)
    keys[k] = NoiseKey::make(rng() & 0xffffffffu, rng() % (1u << 31), rng() % 4096);
  const int64_t v0 = (trial % 4) * kChunk;
  const int tie[3] = {n / 3, n / 5 + 1, n - 1};
  const bool ties = trial % 7 == 0 && n > 40;
  if (ties) {  // x + G = 0 exactly at three entries for stream 0 (-G is exact), the rest below -3
    for (auto& v : x) v = v < acc_t(-20) ? v : acc_t(-20);
    for (int i : tie) x[i] = -static_cast<acc_t>(gumbel_one(keys[0], v0 + i));
  }
  Cand<acc_t> seed[3];  // candidates of an earlier piece (ids below v0)
  const bool seeded = trial % 5 == 1;
  for (int k = 0; k < S; ++k) seed[k] = Cand<acc_t>{static_cast<acc_t>(nd(rng) * 5), v0 - 1 - k};
  RowState<acc_t> st[3];
  Cand<acc_t> best[3][3];
  const Cand<acc_t>* sd = seeded ? seed : nullptr;
  if (has[0]) Body<4, acc_t>::run(x, v0, keys, S, sd, &st[0], best[0]);
  if (has[1]) Body<8, acc_t>::run(x, v0, keys, S, sd, &st[1], best[1]);
  if (has[2]) Body<16, acc_t>::run(x, v0, keys, S, sd, &st[2], best[2]);
  int bad = 0;
  for (int k = 0; k < S; ++k) {
    Cand<acc_t> want = brute(x, v0, keys[k]);
    if (seeded && better(seed[k], want)) want = seed[k];
    if (ties && k == 0 && !seeded && want.id != v0 + std::min(tie[0], tie[1])) {
      ++bad;
      std::printf("trial %d: the exact tie did not go to the lowest id\n", trial);
    }
    for (int w = 0; w < 3; ++w)
      if (has[w] && (best[w][k].id != want.id || !same_bits(best[w][k].val, want.val))) {
        ++bad;
        std::printf("trial %d (kind %d, n %d, S %d), body %d, stream %d: id %lld, want %lld\n", trial,
                    kind, n, S, 4 << w, k, static_cast<long long>(best[w][k].id),
                    static_cast<long long>(want.id));
      }
  }
  if (has[1] && has[2] &&
      !(same_bits(st[1].m, st[2].m) && same_bits(st[1].s, st[2].s) && same_bits(st[1].t, st[2].t) &&
        st[1].arg == st[2].arg)) {
    ++bad;
    std::printf("trial %d: AVX2 and AVX-512 statistics differ\n", trial);
  }
  return bad;
}

int main(int argc, char** argv) {
  const int trials = argc > 1 ? std::atoi(argv[1]) : 2000;
  const bool has[3] = {cpu_has(4), cpu_has(8), cpu_has(16)};
  std::mt19937_64 rng(7);
  int bad = 0;
  for (int t = 0; t < trials; ++t) {
    bad += check<float>(rng, t, has);
    bad += check<double>(rng, t, has);
  }
  std::printf("bodies run: 4-wide %s, 8-wide %s, 16-wide %s; %d trials x 2 dtypes, %d mismatches\n",
              has[0] ? "yes" : "no", has[1] ? "yes" : "no", has[2] ? "yes" : "no", trials, bad);
  return bad != 0;
}
