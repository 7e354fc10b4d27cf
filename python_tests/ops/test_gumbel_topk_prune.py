"""gumbel_topk_prune, every backend side by side: the C++ kernels and the Triton kernels against
the reference (``reference.gumbel_topk_prune``); all backends through ``ops.gumbel_topk_prune`` in
test_dispatch.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import pytest
import torch
from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension
import importlib
import importlib.util
import textwrap
import warnings
import epic_kernels  # noqa: E402
from epic_kernels import philox, reference as R  # noqa: E402
from epic_kernels.ops.gumbel_topk_prune import gumbel_topk_prune_impl  # noqa: E402
import _cases_cpp as C  # noqa: E402
from _cases_cpp import cpp_env  # noqa: E402,F401  (fixture)
import _cases_triton as TR  # noqa: E402
from _cases_triton import triton_env  # noqa: E402,F401  (fixture)


# ---------------------------------------------------------------------------------------------- #
# C++ (backend "cpp")                                                                            #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("dtype,atol,rtol", C.TOLS)
@pytest.mark.parametrize("V", C.VOCABS)
@pytest.mark.parametrize("B", C.BATCHES)
def test_gumbel_topk_prune_matches_reference(B, V, dtype, atol, rtol):
    x = C.make_logits(B, V, dtype)
    seeds, positions = C.make_keys(B)
    width = torch.rand(B, dtype=torch.float64) * 0.8 * math.log(max(V, 2))
    width[0] = 0.0
    top_k = 5 if V > 17 else 20                         # 20 > V: padding with -1 / -inf
    got = gumbel_topk_prune_impl(x, seeds, positions, width, top_k, "cpp")
    want = R.gumbel_topk_prune(x, seeds, positions, width.to(R.compute_dtype(dtype)), top_k)
    C.check_prune(got, want, atol, rtol)


@pytest.mark.usefixtures("cpp_env")
def test_gumbel_topk_prune_scalar_width_and_wide_window():
    x = C.make_logits(3, 4097, torch.float32)
    seeds, positions = C.make_keys(3)
    got = gumbel_topk_prune_impl(x, seeds, positions, float("inf"), 3, "cpp")     # every finite entry
    want = R.gumbel_topk_prune(x, seeds, positions, float("inf"), 3)
    C.check_prune(got, want, 5e-5, 1e-5)
    assert torch.equal(got.counts, torch.isfinite(x).sum(-1))


@pytest.mark.usefixtures("cpp_env")
def test_results_do_not_depend_on_threads_or_row_stride():
    big = C.make_logits(8, 40000, torch.float32)
    x = big[:, :33000]                                  # row stride 40000, last dim contiguous
    seeds, positions = C.make_keys(8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (C.OPS.softmax_entropy_sample(x, seeds, seeds * 0, positions),
               gumbel_topk_prune_impl(x, seeds, positions, 3.0, 4, "cpp"))
        torch.set_num_threads(2)
        many = (C.OPS.softmax_entropy_sample(x.contiguous(), seeds, seeds * 0, positions),
                gumbel_topk_prune_impl(x, seeds, positions, 3.0, 4, "cpp"))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip([*one[0], *one[1]], [*many[0], *many[1]]):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("cpp_env")
def test_strided_last_dim_and_one_value_width():
    x = C.make_logits(5, 300, torch.float32)
    xt = x.t().contiguous().t()                         # stride (1, 5): last dim not contiguous
    seeds, positions = C.make_keys(5)
    for a, b in zip(C.OPS.softmax_entropy_sample(xt, seeds, seeds * 0, positions),
                    C.OPS.softmax_entropy_sample(x, seeds, seeds * 0, positions)):
        assert torch.equal(a, b)
    got = C.OPS.gumbel_topk_prune(xt, seeds, positions, torch.tensor(2.5, dtype=torch.float64), 3)
    want = C.OPS.gumbel_topk_prune(x, seeds, positions, torch.full((5,), 2.5), 3)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("cpp_env")
def test_opcheck_gumbel_topk_prune():
    """ids / scores have a data-dependent length: the fake kernel allocates them with
    ``get_ctx().new_dynamic_size()`` (an unbacked symbol, as torch.nonzero does). opcheck runs its
    fake-tensor and AOT checks with a ShapeEnv, so every default test applies and must pass."""
    x, seeds, _, positions = C._small_args()
    width = torch.full((3,), 2.0)
    result = torch.library.opcheck(C.OPS.gumbel_topk_prune.default, (x, seeds, positions, width, 4))
    assert set(result) == {"test_schema", "test_autograd_registration", "test_faketensor",
                           "test_aot_dispatch_dynamic"}
    assert all(v == "SUCCESS" for v in result.values()), result


# ---------------------------------------------------------------------------------------------- #
# Triton (backend "triton"; the CPU interpreter without a GPU)                                   #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("B", [1, 3, 33])
@pytest.mark.parametrize("V", [1, 17, 111, 4097])
@pytest.mark.parametrize("num_chunks, capacity", [(1, 512), (3, 4)], ids=["single", "split-overflow"])
def test_prune_float32(device, B, V, num_chunks, capacity):
    if B * V > 100_000 and num_chunks > 1:
        V = 1025          # the split path at 33 x 4097 is too slow in the interpreter; same logic, smaller V
    width = torch.rand(B, dtype=torch.float64) * 4
    TR._check_prune(device, B, V, torch.float32, width, 4, num_chunks, capacity)


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", [TR.TOLS[1][0], TR.TOLS[2][0], TR.TOLS[3][0]])
@pytest.mark.parametrize("B, V", [(3, 111), (33, 17), (1, 4097)])
@pytest.mark.parametrize("num_chunks", [1, 4], ids=["single", "split"])
def test_prune_dtypes(device, dtype, B, V, num_chunks):
    TR._check_prune(device, B, V, dtype, 2.5, 3, num_chunks)


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("width, top_k", [(0.0, 1), (0.0, 7), (1e-3, 2), (math.inf, 5), (50.0, 200), (3.0, 1)])
def test_prune_windows_and_topk(device, width, top_k):
    """width 0 (one survivor) with top_k > survivors takes the dense path; inf keeps every finite
    token; top_k > V pads with -1 / -inf."""
    got = TR._check_prune(device, 6, 111, torch.float32, width, top_k, None)
    if width == 0.0:
        assert got.counts.tolist() == [1] * 6
    if math.isinf(width):
        assert got.counts.tolist() == torch.isfinite(TR.make_logits(6, 111, torch.float32)).sum(-1).tolist()


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prune_vocab_32000_heuristic(device, dtype):
    TR._check_prune(device, 2, 32000, dtype, 3.0, 8, None, kind="plain")


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
def test_prune_dense_path_forced(device):
    """capacity 1 overflows every chunk with more than one candidate: the exact dense path."""
    TR._check_prune(device, 3, 4097, torch.float32, 5.0, 6, 2, capacity=1)
