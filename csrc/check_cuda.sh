#!/usr/bin/env bash
# Compile every CUDA source (csrc/cuda/*.cu) to an object file for sm_80 and sm_90 with the
# machine's nvcc and torch's headers. No GPU and no CUDA build of torch are needed: this only
# proves that the kernels compile (they run only where a GPU exists). Exits non-zero on a compile
# error; skips (exit 0) with a message when nvcc is absent.
#
#   bash csrc/check_cuda.sh            # PYTHON=... to pick the interpreter whose torch is used
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${NVCC:-}" ]]; then
  NVCC="$(command -v nvcc || true)"
  if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
fi
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "check_cuda: SKIPPED - nvcc not found (install a CUDA toolkit or set NVCC=/path/to/nvcc)"
  exit 0
fi

PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && "$PYTHON" == python ]]; then PYTHON=.venv/bin/python; fi
mapfile -t TORCH_INCLUDES < <("$PYTHON" -c \
  'import torch.utils.cpp_extension as c; print("\n".join(c.include_paths()))')

OUT="build/check_cuda"
mkdir -p "$OUT"
# A CPU-only torch wheel ships the c10/cuda headers but not the one header its CMake generates for
# CUDA builds; provide the same content (C10_CUDA_BUILD_SHARED_LIBS) when it is missing.
SHIM="$OUT/include"
if ! "$PYTHON" -c 'import os, sys, torch.utils.cpp_extension as c
sys.exit(0 if any(os.path.exists(os.path.join(p, "c10/cuda/impl/cuda_cmake_macros.h"))
                  for p in c.include_paths()) else 1)'; then
  mkdir -p "$SHIM/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$SHIM/c10/cuda/impl/cuda_cmake_macros.h"
  TORCH_INCLUDES+=("$SHIM")
fi
FLAGS=(-std=c++20 -O3 -c --expt-relaxed-constexpr
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       # as torch.utils.cpp_extension compiles CUDA extensions:
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -Xcompiler -fPIC -Xcudafe --diag_suppress=esa_on_defaulted_function_ignored)
for inc in "${TORCH_INCLUDES[@]}"; do FLAGS+=(-I"$inc"); done

echo "check_cuda: $("$NVCC" --version | tail -n 1); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
start=$(date +%s)
pids=(); srcs=()
for src in csrc/cuda/*.cu; do
  while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 0.2; done
  obj="$OUT/$(basename "${src%.cu}").o"
  ( "$NVCC" "${FLAGS[@]}" "$src" -o "$obj" > "$obj.log" 2>&1 ) &
  pids+=($!); srcs+=("$src")
done
status=0
for i in "${!pids[@]}"; do
  obj="$OUT/$(basename "${srcs[$i]%.cu}").o"
  if wait "${pids[$i]}"; then
    echo "check_cuda: OK     ${srcs[$i]}"
  else
    cat "$obj.log"
    echo "check_cuda: FAILED ${srcs[$i]}"
    status=1
  fi
done
echo "check_cuda: ${#srcs[@]} files for sm_80 + sm_90 in $(( $(date +%s) - start )) s"
exit $status
