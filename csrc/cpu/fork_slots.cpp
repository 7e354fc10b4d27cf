// CPU glue of fork_slots, the KV-path fork of the engine's slot pool: slot dst[i]'s tokens
// dst_start .. dst_start + length - 1 become slot src[i]'s tokens src_start .. (every layer's keys
// and values at once). One memcpy of length * D elements per (outer, path, head); the readable
// specification is epic_kernels/ops/fork_slots.py (fork_slots_reference).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../glue.h"

namespace epic {
namespace cpu {
namespace {

// storage: (..., S, H, T, D) contiguous (the slot dimension fourth from the end), any dtype;
// src, dst: int64 (n,) slot ids in [0, S), dst distinct and disjoint from src.
void fork_slots_cpu(at::Tensor& storage, const at::Tensor& src_in, const at::Tensor& dst_in,
                    int64_t length, int64_t src_start, int64_t dst_start) {
  constexpr const char* kOp = "fork_slots";
  TORCH_CHECK(storage.device().is_cpu(), kOp, ": storage must be a CPU tensor");
  TORCH_CHECK(storage.dim() >= 4, kOp, ": storage must have shape (..., S, H, T, D), got ", storage.sizes());
  TORCH_CHECK(storage.is_contiguous(), kOp, ": storage must be contiguous (it is written in place)");
  TORCH_CHECK(src_in.dim() == 1, kOp, ": src must have shape (n,), got ", src_in.sizes());
  const int64_t n = src_in.size(0);
  const at::Tensor src_t = check_long(src_in, kOp, "src", {n}, "(n,)");
  const at::Tensor dst_t = check_long(dst_in, kOp, "dst", {n}, "(n,)");
  const int64_t d = storage.dim();
  const int64_t S = storage.size(d - 4), H = storage.size(d - 3), T = storage.size(d - 2),
                D = storage.size(d - 1);
  TORCH_CHECK(length >= 0 && src_start >= 0 && dst_start >= 0 && src_start + length <= T &&
                  dst_start + length <= T,
              kOp, ": token ranges [", src_start, ", ", src_start + length, ") and [", dst_start, ", ",
              dst_start + length, ") must lie in [0, ", T, ")");
  const int64_t* src = src_t.const_data_ptr<int64_t>();
  const int64_t* dst = dst_t.const_data_ptr<int64_t>();
  std::vector<char> role(S, 0);   // 1: a source, 2: a destination
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(src[i] >= 0 && src[i] < S, kOp, ": src[", i, "] = ", src[i], " is outside [0, ", S, ")");
    role[src[i]] |= 1;
  }
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(dst[i] >= 0 && dst[i] < S, kOp, ": dst[", i, "] = ", dst[i], " is outside [0, ", S, ")");
    TORCH_CHECK(role[dst[i]] == 0, kOp, ": dst[", i, "] = ", dst[i],
                " is also a source or an earlier destination (slots must not alias)");
    role[dst[i]] = 2;
  }
  if (n == 0 || length == 0) return;
  const int64_t outer = storage.numel() / (S * H * T * D);
  const int64_t elem = storage.element_size();
  const int64_t bytes = length * D * elem;
  char* base = static_cast<char*>(storage.data_ptr());
  const int64_t slot_stride = H * T * D * elem, head_stride = T * D * elem, tok = D * elem;
  auto copy = [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t o = job / n, i = job % n;
      char* slab = base + o * S * slot_stride;
      const char* from = slab + src[i] * slot_stride + src_start * tok;
      char* to = slab + dst[i] * slot_stride + dst_start * tok;
      for (int64_t h = 0; h < H; ++h) std::memcpy(to + h * head_stride, from + h * head_stride, bytes);
    }
  };
  // a fork moves a few hundred KB: waking a thread pool costs more than the copy below ~4 MB
  const int64_t total = outer * n * H * bytes;
  if (total < (int64_t(4) << 20)) {
    copy(0, outer * n);
  } else {
    at::parallel_for(0, outer * n, 64, copy);
  }
}

}  // namespace
}  // namespace cpu
}  // namespace epic

TORCH_LIBRARY_IMPL(epic_kernels, CPU, m) {
  m.impl("fork_slots", &epic::cpu::fork_slots_cpu);
}
