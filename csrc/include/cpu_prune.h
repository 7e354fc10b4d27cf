// CPU kernel of gumbel_topk_prune over one contiguous piece of a row (second pass; the first pass,
// softmax_piece, gives the row's logsumexp). Plain pointers and std containers only.
//
// z_v = (x_v - lse) + G_v in acc_t. The piece keeps
//   front : argmax z (lower id on ties),
//   heap  : the top_k best (z, id), worst on top,
//   kept  : candidates with z >= front - width (ascending id), filtered again once front is final.
// The noise of an entry is drawn only if its upper bound ub = (x - lse) + Gmax >= cut, with
//   cut = min(front - width, front, worst of a full heap),
// because an entry below every one of these can be neither a survivor, nor the front, nor in the
// top-k (z <= ub after rounding, and front only grows). For LM logits this skips most of the row.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_softmax.h"

namespace epic {
namespace cpu {

template <typename acc_t>
struct PrunePiece {
  Cand<acc_t> front;
  std::vector<Cand<acc_t>> kept;  // ascending id
  std::vector<Cand<acc_t>> heap;  // at most top_k entries, heap.front() = worst
};

template <typename acc_t>
struct WorseFirst {  // std heap comparator: the "largest" element (heap top) is the worst candidate
  bool operator()(const Cand<acc_t>& a, const Cand<acc_t>& b) const { return better(a, b); }
};

template <typename acc_t>
EPIC_INLINE void heap_offer(std::vector<Cand<acc_t>>& heap, int64_t top_k, const Cand<acc_t>& c) {
  if (static_cast<int64_t>(heap.size()) < top_k) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), WorseFirst<acc_t>());
  } else if (better(c, heap.front())) {
    std::pop_heap(heap.begin(), heap.end(), WorseFirst<acc_t>());
    heap.back() = c;
    std::push_heap(heap.begin(), heap.end(), WorseFirst<acc_t>());
  }
}

// x[0..n): entries v0.. of one row; lse: the row's logsumexp; seed: (z, id) of some entry of the row
// (a lower bound of the final front, used only to skip entries early).
template <int W, typename T, typename acc_t>
EPIC_INLINE void prune_piece(const T* x, int64_t n, int64_t v0, const NoiseKey& key, acc_t lse,
                        acc_t width, Cand<acc_t> seed, int64_t top_k, PrunePiece<acc_t>* out) {
  alignas(64) acc_t buf[kBlock];
  const acc_t gmax = static_cast<acc_t>(kGumbelMaxBound);
  Cand<acc_t> front = seed;
  auto& kept = out->kept;
  auto& heap = out->heap;
  kept.clear();
  heap.clear();
  auto cut = [&]() {
    if (static_cast<int64_t>(heap.size()) < top_k) return neg_inf<acc_t>();
    acc_t c = front.val - width;
    c = front.val < c ? front.val : c;
    return heap.front().val < c ? heap.front().val : c;
  };
  acc_t threshold = cut();
  alignas(64) int32_t idx[kBlock + 8];
  alignas(64) float g[kBlock + 8];
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t nb = std::min(kBlock, n - b0);
    int64_t np;
    const acc_t* p = load_block(x + b0, nb, buf, &np);
    const acc_t bm = block_max<W>(p, np);
    if (!(bm > neg_inf<acc_t>()) || (bm - lse) + gmax < threshold) continue;
    int64_t m = 0;  // candidates of the block: finite, upper bound >= threshold
    for (int64_t i0 = 0; i0 < np; i0 += kLanes) {  // padding entries are -inf
      if (!group_reaches<W>(p + i0, lse, gmax, threshold)) continue;
      for (int64_t i = i0; i < i0 + kLanes; ++i) {
        idx[m] = static_cast<int32_t>(i);
        m += (p[i] > neg_inf<acc_t>() && (p[i] - lse) + gmax >= threshold) ? 1 : 0;
      }
    }
    for (int64_t j = m; j < m + 8; ++j) idx[j] = 0;
    gumbel_batch(key, v0 + b0, idx, m, g);
    for (int64_t j = 0; j < m; ++j) {
      const acc_t xc = p[idx[j]] - lse;
      if (xc + gmax < threshold) continue;  // the threshold rose since the candidate was taken
      const Cand<acc_t> c{xc + static_cast<acc_t>(g[j]), v0 + b0 + idx[j]};
      if (better(c, front)) front = c;
      heap_offer(heap, top_k, c);
      if (c.val >= front.val - width) kept.push_back(c);
      threshold = cut();
    }
  }
  // front can only have grown since an entry was kept: drop those now out of the window
  const acc_t lo = front.val - width;
  kept.erase(std::remove_if(kept.begin(), kept.end(),
                            [lo](const Cand<acc_t>& c) { return !(c.val >= lo); }),
             kept.end());
  out->front = front;
}

}  // namespace cpu
}  // namespace epic
