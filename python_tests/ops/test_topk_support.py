"""``topk_support``, the rollout policy's and top-k truncation's support: the C++ op
(csrc/cpu/topk_support.cpp) against its specification (``topk_support_reference`` in
epic_kernels/ops/topk_support.py) and against the definition (a stable descending sort), exactly,
over dtypes, vocabulary sizes, k, ties, ``-inf`` and NaN entries and layouts; its validation."""
from __future__ import annotations

import pytest
import torch

from epic_kernels.ops.topk_support import topk_support, topk_support_impl, topk_support_reference
from epic_kernels.testing import require_extension

require_extension("topk_support")


def definition(x, k):
    """The first k of a stable descending sort (ties to the lower id), in ascending id order."""
    ids = torch.sort(torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k], dim=-1).values
    return x.gather(1, ids), ids


def _rows(kind, N, V, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, V, generator=g, dtype=torch.float64).to(dtype)
    if kind == "ties":                        # few distinct values: ties across the boundary everywhere
        x = torch.round(x * 2) / 2
    elif kind == "constant":
        x = torch.zeros(N, V, dtype=dtype)
    elif kind == "masked":                    # truncated rows: most entries -inf, some rows fewer than k finite
        keep = torch.rand(N, V, generator=g) < 0.01
        keep[0] = False
        keep[0, :3] = True
        x = x.masked_fill(~keep, float("-inf"))
    elif kind == "ascending":                 # every later entry enters the heap: the slow path throughout
        x = torch.arange(V, dtype=dtype).repeat(N, 1)
    elif kind == "logits":                    # a model-like row: one peak, a long tail
        x = x * 3
        x[:, 7 % V] += 20
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["random", "ties", "constant", "masked", "ascending", "logits"])
@pytest.mark.parametrize("V,k", [(2, 1), (65, 64), (200, 1), (200, 50), (49152, 50), (1000, 999), (130, 64)])
def test_cpp_equals_the_specification_and_the_definition(dtype, kind, V, k):
    x = _rows(kind, 6, V, dtype, seed=V + k)
    want = definition(x, k)
    ref = topk_support_reference(x, k)
    got = topk_support(x, k, backend="cpp")
    for a, b in ((ref, want), (got, want)):
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]), (kind, V, k)
    assert got[0].dtype == dtype and got[1].dtype == torch.int64 and got[0].shape == (6, k)


def test_nan_ranks_above_every_number_lower_id_first():
    x = torch.randn(4, 300, dtype=torch.float32)
    x[:, [250, 3, 120]] = float("nan")
    vals, ids = topk_support(x, 10, backend="cpp")
    assert {3, 120, 250} <= set(ids[0].tolist())
    assert torch.equal(ids, topk_support_reference(x, 10)[1])
    y = torch.full((1, 20), float("nan"))
    assert topk_support(y, 4, backend="cpp")[1].tolist() == [[0, 1, 2, 3]]


def test_layouts_and_empty_batches():
    x = torch.randn(300, 8).t()                       # not contiguous
    assert torch.equal(topk_support(x, 5, backend="cpp")[1], definition(x.contiguous(), 5)[1])
    v, i = topk_support(torch.zeros(0, 30), 4, backend="cpp")
    assert v.shape == (0, 4) and i.shape == (0, 4)


def test_other_dtypes_run_the_reference():
    x = torch.randn(3, 100).to(torch.bfloat16)
    got = topk_support_impl(x, 7, "cpp")
    assert torch.equal(got[1], definition(x, 7)[1])


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(5), 2), r"shape \(N, V\)"),
    ((torch.zeros(2, 5, dtype=torch.int64), 2), "float tensor"),
    ((torch.zeros(2, 5), 5), "1 <= k < V = 5"),
    ((torch.zeros(2, 5), 0), "1 <= k < V"),
    ((torch.zeros(2, 5), True), "int k"),
])
def test_bad_input_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        topk_support(*args)


def test_the_compiled_op_checks_its_inputs():
    from epic_kernels import _ext
    op = _ext.op("topk_support")
    with pytest.raises(RuntimeError, match="need 1 <= k < V"):
        op(torch.zeros(2, 5), 5)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(torch.zeros(2, 5, dtype=torch.float16), 2)
