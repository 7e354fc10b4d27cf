// The one place where the epic_kernels operator schemas are declared. Backends add kernels with
// TORCH_LIBRARY_IMPL(epic_kernels, CPU | CUDA, m) in files named after the op (csrc/cpu/<op>.cpp,
// csrc/cuda/<op>.cu); framework-agnostic kernel code is in csrc/include. Python:
// torch.ops.epic_kernels.<name>; each op's contract, fake (meta) kernel and dispatch live in
// epic_kernels/ops/<op>.py (the testing helpers' fakes in epic_kernels/ops/philox.py).
#include <torch/library.h>

#include <string>

namespace epic {
namespace cpu {
std::string isa_body_cpu();  // csrc/cpu/cpu_kernels.cpp
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY(epic_kernels, m) {
  // Per row of logits (N, V): entropy and logsumexp of softmax in one pass (float32 accumulate,
  // float64 for float64 logits; outputs in that dtype). -inf entries have probability 0.
  m.def("softmax_entropy(Tensor logits) -> (Tensor entropy, Tensor lse)");
  // Same, plus argmax_v(l_v + G_v) with G the keyed Gumbel noise (seeds[n], streams[n],
  // positions[n], v); ties go to the lower id; tokens int64 [N]. streams may also be (N, S), S >= 1:
  // then tokens (N, S), column k keyed by streams[n, k], all from one softmax pass on CPU
  // (entropy and lse computed once); equal to S calls with streams[:, k]. Same schema as before
  // (the shape is a runtime property), so callers with (N,) streams are unaffected.
  m.def(
      "softmax_entropy_sample(Tensor logits, Tensor seeds, Tensor streams, Tensor positions)"
      " -> (Tensor entropy, Tensor lse, Tensor tokens)");
  // z = l - lse + G (step stream 0); survivors z >= max z - width in CSR form (ascending id),
  // front-runner, top_k by z (descending, lower id on ties; -1 / -inf padding), lse.
  // ids and scores have a data-dependent length.
  m.def(
      "gumbel_topk_prune(Tensor logits, Tensor seeds, Tensor positions, Tensor width, int top_k)"
      " -> (Tensor ids, Tensor scores, Tensor counts, Tensor offsets, Tensor front_ids,"
      " Tensor front_scores, Tensor topk_ids, Tensor topk_scores, Tensor lse)");
  // Per row of logits (N, V): the k largest entries (1 <= k < V), ties at the boundary to the lower
  // id, NaN above every number; values (N, k) and their ids (N, k) int64, in ascending id order.
  m.def("topk_support(Tensor logits, int k) -> (Tensor values, Tensor ids)");
  // The engine's fork (cascade) attention for one layer call of N rollout rows: writes each row's
  // new key / value (N, Hkv, 1, D) into pool_k / pool_v (slots, Hkv, slot_len, D) at
  // (slot[n], :, fill[n]), then returns (N, 1, H, D): softmax((q . k) * scale) v of row n's query
  // (N, H, 1, D) over its sequence's prefix keys prefix_k / prefix_v[seq[n]] (B, Hkv, L, D; read in
  // place, any strides but a contiguous head_dim) at positions j with prefix_valid[seq[n], j] != 0
  // and j < row_limit[n] (when given), then over its slot's tokens 0..fill[n]. Query head h uses
  // kv head h / (H / Hkv). float32 or float64.
  m.def(
      "fork_attention(Tensor query, Tensor key, Tensor value, Tensor(a!) pool_k, Tensor(b!) pool_v,"
      " Tensor prefix_k, Tensor prefix_v, Tensor prefix_valid, Tensor seq, Tensor slot,"
      " Tensor fill, Tensor? row_limit, float scale) -> Tensor");
  // The engine's KV-path fork in its slot pool (csrc/cpu/fork_slots.cpp; specification, fake and
  // dispatch in epic_kernels/ops/fork_slots.py): storage (..., S, H, T, D) contiguous; for every
  // i, slot dst[i]'s tokens dst_start .. dst_start + length - 1 := slot src[i]'s tokens src_start ..
  // (dst distinct and disjoint from src). In place.
  m.def(
      "fork_slots(Tensor(a!) storage, Tensor src, Tensor dst, int length, int src_start,"
      " int dst_start) -> ()");
  // Testing helpers: raw Philox words of tl.randint(seed, offset) (int64 in, int64 words out),
  // the float32 Gumbel noise (N, vocab) of keys (seeds[n], streams[n], positions[n], v), and the
  // float32 noise of given words (int64 holding uint32), through the same code as the kernels.
  m.def("_philox_randint(Tensor seed, Tensor offset) -> Tensor");
  m.def("_gumbel_noise(Tensor seeds, Tensor streams, Tensor positions, int vocab) -> Tensor");
  m.def("_gumbel_from_words(Tensor words) -> Tensor");
  // The engine's rollout-row bookkeeping (csrc/cpu/plan_rows.cpp, csrc/cpu/fork_layout.cpp;
  // specification, fake and dispatch in epic_kernels/ops/plan_rows.py, ops/fork_layout.py).
  // int64 CPU tensors.
  // plan_rows: the rows of one depth advance of candidates with depth[m] < goal[m] (M candidates,
  // path (m, r) numbered m K + r): depth-0 candidates first (one row each), then deeper ones
  // (K rows each); the fan-out slot copies of depth-1 candidates. Sizes are data-dependent.
  m.def(
      "plan_rows(Tensor depth, Tensor goal, Tensor seq, Tensor tokens, Tensor last, Tensor base,"
      " int K, int lead) -> (Tensor first, Tensor deep, Tensor row_candidate,"
      " Tensor row_seq, Tensor row_slot, Tensor row_fill, Tensor row_tokens, Tensor row_positions,"
      " Tensor fan_src, Tensor fan_dst)");
  // fork_layout: row_j (N,) = index of row n within its sequence seq[n] in [0, B); pad_index
  // (B, max(R, 1)) = row of (sequence, j), N for padding.
  m.def("fork_layout(Tensor seq, int B) -> (Tensor row_j, Tensor pad_index)");
  // The instruction-set body of the CPU kernels picked at load time (no tensors: a catch-all
  // kernel, defined here with the schema), for benchmarks and bug reports.
  m.def("_cpu_isa() -> str", [] { return epic::cpu::isa_body_cpu(); });
}
