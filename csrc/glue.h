// Tensor checks shared by the CPU and CUDA glue (host code only). Each raises a c10::Error
// (RuntimeError in Python) naming the op, the argument and what is wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <type_traits>

namespace epic {

constexpr int64_t kMaxSeed = int64_t(1) << 32;      // per-sequence seeds live in [0, 2^32)
constexpr int64_t kMaxStream = int64_t(1) << 31;    // stream = 0 (step) or 1 + r (rollout r)
constexpr int64_t kMaxPosition = int64_t(1) << 31;  // positions live in [0, 2^31)
constexpr int64_t kMaxVocab = int64_t(1) << 31;     // ids must fit the 32-bit counter word

// logits: (N, V), float16 | bfloat16 | float32 | float64; any row stride, last dim made contiguous.
inline at::Tensor check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must have shape (N, V), got ", logits.sizes());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble, op,
              ": logits must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits must have at least one column");
  TORCH_CHECK(logits.size(1) < kMaxVocab, op, ": vocabulary too large (", logits.size(1),
              " >= 2^31)");
  return logits.stride(1) == 1 ? logits : logits.contiguous();
}

// Any integer tensor, values in [0, hi) (checked on CPU only: a CUDA check would sync), as a
// contiguous int64 tensor on the logits' device. Shapes are the caller's business.
inline at::Tensor check_key_values(const at::Tensor& key, const at::Tensor& logits, const char* name,
                                   int64_t hi, const char* op) {
  TORCH_CHECK(at::isIntegralType(key.scalar_type(), /*includeBool=*/false), op, ": ", name,
              " must be an integer tensor, got ", key.scalar_type());
  at::Tensor out = key.to(logits.device(), at::kLong).contiguous();
  if (out.is_cpu() && out.numel() > 0) {
    const int64_t* p = out.data_ptr<int64_t>();
    for (int64_t i = 0; i < out.numel(); ++i)
      TORCH_CHECK(p[i] >= 0 && p[i] < hi, op, ": ", name, "[", i, "] = ", p[i],
                  " is outside [0, ", hi, ")");  // i is the flat index
  }
  return out;
}

// key: (N,), any integer dtype, values in [0, hi) (checked on CPU only: a CUDA check would sync).
inline at::Tensor check_key(const at::Tensor& key, const at::Tensor& logits, const char* name,
                            int64_t hi, const char* op) {
  TORCH_CHECK(key.dim() == 1 && key.size(0) == logits.size(0), op, ": ", name,
              " must have shape (", logits.size(0), ",), got ", key.sizes());
  return check_key_values(key, logits, name, hi, op);
}

// streams: (N,) (one stream per row) or (N, S) with S >= 1 (S streams per row), any integer dtype,
// values in [0, kMaxStream); returned as a contiguous int64 (N, S) tensor (S = 1 for (N,)).
inline at::Tensor check_streams(const at::Tensor& streams, const at::Tensor& logits, const char* op) {
  const int64_t N = logits.size(0);
  TORCH_CHECK((streams.dim() == 1 || streams.dim() == 2) && streams.size(0) == N, op,
              ": streams must have shape (", N, ",) or (", N, ", S), got ", streams.sizes());
  TORCH_CHECK(streams.dim() == 1 || streams.size(1) >= 1, op,
              ": streams of shape (N, S) needs S >= 1, got ", streams.sizes());
  const at::Tensor out = check_key_values(streams, logits, "streams", kMaxStream, op);
  return streams.dim() == 1 ? out.view({N, 1}) : out;
}

// width: (B,) or a single value, floating; returned as (B,) in the accumulate dtype.
inline at::Tensor check_width(const at::Tensor& width, const at::Tensor& logits,
                              at::ScalarType acc, const char* op) {
  TORCH_CHECK(at::isFloatingType(width.scalar_type()), op, ": width must be a floating tensor, got ",
              width.scalar_type());
  const int64_t b = logits.size(0);
  TORCH_CHECK((width.dim() == 1 && width.size(0) == b) || width.numel() == 1, op,
              ": width must have shape (", b, ",) or hold one value, got ", width.sizes());
  return width.to(logits.device(), acc).reshape({-1}).expand({b}).contiguous();
}

// Accumulate type of an element type: double for double, float otherwise.
template <typename scalar_t>
using acc_type_of =
    typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

inline at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The row bookkeeping ops (plan_rows, fork_layout): an int64 CPU tensor of shape `want` (any
// strides), returned contiguous.
inline at::Tensor check_long(const at::Tensor& t, const char* op, const char* name,
                             at::IntArrayRef want, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", what, " = ", want, ", got ",
              t.sizes());
  return t.contiguous();
}

inline at::Tensor longs(int64_t n) { return at::empty({n}, at::TensorOptions().dtype(at::kLong)); }

}  // namespace epic
