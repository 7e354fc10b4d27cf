#!/usr/bin/env bash
# Configure and build the CMake variant of the extension into build/cmake (Torch's CMake package,
# same sources as setup.py), then load the library in a fresh interpreter with
# torch.ops.load_library and check one op against the reference. CI runs this so the CMake build
# cannot rot. Extra arguments go to the configure step, e.g. -DEPIC_KERNELS_CUDA=ON.
#
#   bash csrc/build_cmake.sh            # PYTHON=... to pick the interpreter whose torch is used
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
if [[ -x .venv/bin/python && "$PYTHON" == python ]]; then PYTHON=.venv/bin/python; fi
PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
GENERATOR=()
if command -v ninja > /dev/null || [[ -x "$(dirname "$PYTHON")/ninja" ]]; then
  GENERATOR=(-G Ninja)
  PATH="$(dirname "$PYTHON"):$PATH"
fi

start=$(date +%s)
mkdir -p build
cmake -S . -B build/cmake "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$PREFIX" \
      "$@" > build/cmake_configure.log 2>&1 || { cat build/cmake_configure.log; exit 1; }
cmake --build build/cmake --parallel "${JOBS:-$(nproc 2>/dev/null || echo 2)}"
LIB="$(ls build/cmake/libepic_kernels_ops.* | head -n 1)"

"$PYTHON" - "$LIB" <<'PY'
import sys
import torch
from epic_kernels import reference as R
torch.ops.load_library(sys.argv[1])
torch.manual_seed(0)
x = torch.randn(3, 1000)
x[0, 1:] = float("-inf")
ent, lse = torch.ops.epic_kernels.softmax_entropy(x)
# against float64: torch's own float32 entropy of these rows moves by ~1e-4 from process to process
want_ent, want_lse = (t.float() for t in R.softmax_entropy(x.double()))
assert torch.allclose(ent, want_ent, atol=1e-5) and torch.allclose(lse, want_lse, atol=1e-5), (ent, want_ent, lse, want_lse)
seeds, pos = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
_, _, tokens = torch.ops.epic_kernels.softmax_entropy_sample(x, seeds, torch.zeros(3, dtype=torch.long), pos)
assert torch.equal(tokens, R.gumbel_argmax(x, seeds, 0, pos)), tokens
# fork_attention: 2 rows of one sequence, 4 query / 2 kv heads, against a dense softmax
q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 1, 16), torch.randn(2, 2, 1, 16)
K, V = torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)
pool_k, pool_v = torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16)
idx = torch.tensor([0, 1])
out = torch.ops.epic_kernels.fork_attention(q, k, v, pool_k, pool_v, K, V, torch.ones(1, 7, dtype=torch.bool),
                                            torch.zeros(2, dtype=torch.long), idx, torch.zeros(2, dtype=torch.long),
                                            None, 0.25)
keys = torch.cat([K[0].expand(2, -1, -1, -1), k], 2).repeat_interleave(2, 1)      # [2, 4, 8, 16]
vals = torch.cat([V[0].expand(2, -1, -1, -1), v], 2).repeat_interleave(2, 1)
want = torch.softmax(q @ keys.transpose(-1, -2) * 0.25, -1) @ vals                  # [2, 4, 1, 16]
assert torch.allclose(out, want.transpose(1, 2), atol=1e-5) and torch.equal(pool_k[idx, :, 0], k[:, :, 0])
print(f"build_cmake: {sys.argv[1]} loads and matches the reference")
PY
echo "build_cmake: done in $(( $(date +%s) - start )) s"
