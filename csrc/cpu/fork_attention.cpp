// CPU glue of fork_attention, the engine's cascade attention for one layer call (the readable
// specification is epic_kernels/ops/fork_attention.py, fork_attention_reference). Validate, write each
// row's new key / value into its slot (serially, before any read: the same order as the Python
// code), group the rows by sequence, then run tasks of (sequence, kv head, a few of its rows) with
// at::parallel_for (csrc/include/cpu_attention.h). A row's result does not depend on which rows
// share its task, so results do not depend on the number of threads. The prefix is read where it
// lies (any strides except a contiguous head_dim): never copied.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu_kernels.h"

namespace epic {
namespace cpu {
namespace {

constexpr const char* kOp = "fork_attention";

// (N,) integer index tensor -> int64 contiguous; values in [lo, hi) when hi > lo (checked).
at::Tensor check_index(const at::Tensor& t, const char* name, int64_t N, int64_t lo, int64_t hi) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, kOp, ": ", name, " must have shape (", N,
              ",) (one entry per row of query), got ", t.sizes());
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), kOp, ": ", name,
              " must be an integer tensor, got ", t.scalar_type());
  at::Tensor out = t.scalar_type() == at::kLong ? t.contiguous() : t.to(at::kLong).contiguous();
  if (hi > lo) {
    const int64_t* p = out.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < N; ++i)
      TORCH_CHECK(p[i] >= lo && p[i] < hi, kOp, ": ", name, "[", i, "] = ", p[i],
                  " is outside [", lo, ", ", hi, ")");
  }
  return out;
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& query) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == query.scalar_type(), kOp, ": ", name, " must have the dtype of query (",
              query.scalar_type(), "), got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, const char* name, std::vector<int64_t> want, const char* what) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(want), kOp, ": ", name, " must have shape ", what, " = ",
              at::IntArrayRef(want), ", got ", t.sizes());
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& pool_k,
         at::Tensor& pool_v, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
         const at::Tensor& valid, const int64_t* seq, const int64_t* slot, const int64_t* fill,
         const int64_t* limit, T scale, at::Tensor& out) {
  const int64_t N = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1), G = H / Hkv;
  const int64_t B = prefix_k.size(0), L = prefix_k.size(2);
  // 1. the rows' new keys and values into their slots
  T* pk_w = pool_k.data_ptr<T>();
  T* pv_w = pool_v.data_ptr<T>();
  const T* kn = k.const_data_ptr<T>();
  const T* vn = v.const_data_ptr<T>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < Hkv; ++h) {
      std::memcpy(pk_w + slot[n] * pool_k.stride(0) + h * pool_k.stride(1) + fill[n] * pool_k.stride(2),
                  kn + n * k.stride(0) + h * k.stride(1), D * sizeof(T));
      std::memcpy(pv_w + slot[n] * pool_v.stride(0) + h * pool_v.stride(1) + fill[n] * pool_v.stride(2),
                  vn + n * v.stride(0) + h * v.stride(1), D * sizeof(T));
    }
  // 2. rows grouped by sequence (stable counting sort), then tasks of (sequence, kv head, up to
  //    `chunk` of its rows): a task reads each prefix block into L1 once for all its rows
  std::vector<int64_t> start(B + 1, 0);
  for (int64_t n = 0; n < N; ++n) ++start[seq[n] + 1];
  for (int64_t b = 0; b < B; ++b) start[b + 1] += start[b];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  const T* qp = q.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  std::vector<ForkAttnRow<T>> rows(N);
  int64_t work = 0;  // keys x heads x head_dim over all rows (x 2 multiply-adds)
  for (int64_t n = 0; n < N; ++n) {
    ForkAttnRow<T>& r = rows[next[seq[n]]++];
    r.q = qp + n * q.stride(0);
    r.out = op + n * out.stride(0);
    r.sk = pk_w + slot[n] * pool_k.stride(0);
    r.sv = pv_w + slot[n] * pool_v.stride(0);
    r.limit = limit ? std::clamp<int64_t>(limit[n], 0, L) : L;
    r.T_suffix = fill[n] + 1;
    work += (r.limit + r.T_suffix) * H * D;
  }
  const int64_t threads = at::get_num_threads();
  const int64_t chunk = std::clamp<int64_t>(N * Hkv / (4 * threads), 1, 8);
  struct Task {
    int64_t b, h, r0, r1;
  };
  std::vector<Task> tasks;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r0 = start[b]; r0 < start[b + 1]; r0 += chunk)
      for (int64_t h = 0; h < Hkv; ++h) tasks.push_back({b, h, r0, std::min(r0 + chunk, start[b + 1])});
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  // Each thread gets at least kParallelWork multiply-adds: below that, waking the other threads
  // costs more than it saves, so small calls stay on the calling thread (docs/kernels.md,
  // "Fork attention").
  constexpr int64_t kParallelWork = int64_t(1) << 20;
  const int64_t grain = std::max<int64_t>(1, n_tasks * kParallelWork / std::max<int64_t>(1, work));
  const T* pkp = prefix_k.const_data_ptr<T>();
  const T* pvp = prefix_v.const_data_ptr<T>();
  const uint8_t* vp = static_cast<const uint8_t*>(valid.const_data_ptr());
  at::parallel_for(0, n_tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(fork_attn_scratch(G, chunk));
    for (int64_t i = begin; i < end; ++i) {
      const Task& t = tasks[i];
      ForkAttnGroup<T> a;
      a.pk = pkp + t.b * prefix_k.stride(0) + t.h * prefix_k.stride(1);
      a.pk_pos = prefix_k.stride(2);
      a.pv = pvp + t.b * prefix_v.stride(0) + t.h * prefix_v.stride(1);
      a.pv_pos = prefix_v.stride(2);
      a.valid = vp + t.b * valid.stride(0);
      a.L = L;
      a.rows = rows.data() + t.r0;
      a.n_rows = t.r1 - t.r0;
      a.q_off = t.h * G * q.stride(1);
      a.q_head = q.stride(1);
      a.out_off = t.h * G * out.stride(2);
      a.out_head = out.stride(2);
      a.sk_off = t.h * pool_k.stride(1);
      a.sk_pos = pool_k.stride(2);
      a.sv_off = t.h * pool_v.stride(1);
      a.sv_pos = pool_v.stride(2);
      a.G = G;
      a.D = D;
      a.scale = scale;
      a.scratch = scratch.data();
      fork_attention_group_cpu(a);
    }
  });
}

// query (N, H, 1, D), key / value (N, Hkv, 1, D); pool_k / pool_v (S, Hkv, T, D), written at
// (slot[n], :, fill[n]); prefix_k / prefix_v (B, Hkv, L, D); prefix_valid (B, L) bool or integer;
// seq / slot / fill / row_limit (N,) integer. Returns (N, 1, H, D).
at::Tensor fork_attention_cpu(const at::Tensor& query_in, const at::Tensor& key_in,
                              const at::Tensor& value_in, at::Tensor& pool_k, at::Tensor& pool_v,
                              const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                              const at::Tensor& prefix_valid, const at::Tensor& seq_in,
                              const at::Tensor& slot_in, const at::Tensor& fill_in,
                              const std::optional<at::Tensor>& row_limit_in, double scale) {
  TORCH_CHECK(query_in.dim() == 4 && query_in.size(2) == 1, kOp,
              ": query must have shape (N, H, 1, D), got ", query_in.sizes());
  const auto dt = query_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, kOp, ": query must be float32 or float64, got ", dt);
  const int64_t N = query_in.size(0), H = query_in.size(1), D = query_in.size(3);
  TORCH_CHECK(key_in.dim() == 4 && key_in.size(0) == N && key_in.size(2) == 1 && key_in.size(3) == D,
              kOp, ": key must have shape (N, Hkv, 1, D) = (", N, ", Hkv, 1, ", D, "), got ",
              key_in.sizes());
  const int64_t Hkv = key_in.size(1);
  TORCH_CHECK(Hkv >= 1 && H % Hkv == 0, kOp, ": the ", H, " query heads must be a multiple of the ",
              Hkv, " kv heads");
  check_shape(value_in, "value", {N, Hkv, 1, D}, "(N, Hkv, 1, D)");
  TORCH_CHECK(query_in.device().is_cpu(), kOp, ": query must be a CPU tensor, got ", query_in.device());
  check_float(key_in, "key", query_in);
  check_float(value_in, "value", query_in);
  for (const at::Tensor* t : {&pool_k, &pool_v}) {
    const char* name = t == &pool_k ? "pool_k" : "pool_v";
    check_float(*t, name, query_in);
    TORCH_CHECK(t->dim() == 4 && t->size(1) == Hkv && t->size(3) == D, kOp, ": ", name,
                " must have shape (slots, Hkv, slot_len, D) = (slots, ", Hkv, ", slot_len, ", D,
                "), got ", t->sizes());
    TORCH_CHECK(t->stride(3) == 1, kOp, ": ", name,
                " must have a contiguous last dimension (it is written in place)");
  }
  TORCH_CHECK(pool_v.sizes() == pool_k.sizes(), kOp, ": pool_v must have the shape of pool_k ",
              pool_k.sizes(), ", got ", pool_v.sizes());
  for (const at::Tensor* t : {&prefix_k, &prefix_v}) {
    const char* name = t == &prefix_k ? "prefix_k" : "prefix_v";
    check_float(*t, name, query_in);
    TORCH_CHECK(t->dim() == 4 && t->size(1) == Hkv && t->size(3) == D, kOp, ": ", name,
                " must have shape (B, Hkv, L, D) = (B, ", Hkv, ", L, ", D, "), got ", t->sizes());
    TORCH_CHECK(t->stride(3) == 1 || D == 1, kOp, ": ", name,
                " must have a contiguous last dimension (the prefix is read in place, never copied)");
  }
  TORCH_CHECK(prefix_v.sizes() == prefix_k.sizes(), kOp, ": prefix_v must have the shape of prefix_k ",
              prefix_k.sizes(), ", got ", prefix_v.sizes());
  const int64_t B = prefix_k.size(0), L = prefix_k.size(2);
  const int64_t slots = pool_k.size(0), slot_len = pool_k.size(2);
  TORCH_CHECK(prefix_valid.device().is_cpu(), kOp, ": prefix_valid must be a CPU tensor");
  check_shape(prefix_valid, "prefix_valid", {B, L}, "(B, L)");
  const auto mt = prefix_valid.scalar_type();
  TORCH_CHECK(mt == at::kBool || at::isIntegralType(mt, /*includeBool=*/false), kOp,
              ": prefix_valid must be a bool or integer tensor (nonzero on real tokens), got ", mt);
  at::Tensor valid = prefix_valid;
  if (mt != at::kBool && mt != at::kByte) valid = prefix_valid.ne(0);
  if (valid.stride(1) != 1 && L > 1) valid = valid.contiguous();

  const at::Tensor seq = check_index(seq_in, "seq", N, 0, B);
  const at::Tensor slot = check_index(slot_in, "slot", N, 0, slots);
  const at::Tensor fill = check_index(fill_in, "fill", N, 0, slot_len);
  at::Tensor limit;
  if (row_limit_in.has_value()) limit = check_index(*row_limit_in, "row_limit", N, 0, 0);

  // the few rows of new tokens / queries: a contiguous head_dim (copies only if not)
  const at::Tensor q = query_in.stride(3) == 1 ? query_in : query_in.contiguous();
  const at::Tensor k = key_in.stride(3) == 1 ? key_in : key_in.contiguous();
  const at::Tensor v = value_in.stride(3) == 1 ? value_in : value_in.contiguous();
  at::Tensor out = at::empty({N, 1, H, D}, query_in.options());
  if (N == 0 || D == 0) return out;
  const int64_t* lp = limit.defined() ? limit.const_data_ptr<int64_t>() : nullptr;
  if (dt == at::kFloat) {
    run<float>(q, k, v, pool_k, pool_v, prefix_k, prefix_v, valid, seq.const_data_ptr<int64_t>(),
               slot.const_data_ptr<int64_t>(), fill.const_data_ptr<int64_t>(), lp,
               static_cast<float>(scale), out);
  } else {
    run<double>(q, k, v, pool_k, pool_v, prefix_k, prefix_v, valid, seq.const_data_ptr<int64_t>(),
                slot.const_data_ptr<int64_t>(), fill.const_data_ptr<int64_t>(), lp, scale, out);
  }
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("fork_attention", &epic::cpu::fork_attention_cpu);
}
