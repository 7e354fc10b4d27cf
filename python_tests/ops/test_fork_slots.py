"""``fork_slots``, the slot pool's KV-path fork: the C++ op (csrc/cpu/fork_slots.cpp) against its
specification (``fork_slots_reference`` in epic_kernels/ops/fork_slots.py), bit for bit, over
dtypes, leading shapes, token ranges and path counts; its validation; and the pool's forks going
through it."""
from __future__ import annotations

import pytest
import torch

from epic_kernels.ops.fork_slots import fork_slots, fork_slots_impl, fork_slots_reference
from epic_kernels.testing import require_extension

require_extension("fork_slots")


def _case(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    S = shape[-4]
    perm = torch.randperm(S, generator=g)
    src = perm[:n][torch.randint(0, n, (n,), generator=g)] if n else perm[:0]   # sources may repeat
    dst = perm[n:2 * n]
    return src.contiguous(), dst.contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(30, 2, 40, 3, 6, 64), (2, 17, 1, 5, 7), (24, 4, 3, 128)])
@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_cpp_equals_the_specification(dtype, shape, n):
    T = shape[-2]
    g = torch.Generator().manual_seed(n + len(shape))
    base = torch.randn(shape, generator=g).to(dtype)
    src, dst = _case(shape, n, seed=n)
    for length, a, b in [(1, 0, 0), (T - 1, 1, 0), (2, 0, T - 2), (T, 0, 0), (0, 0, 0)]:
        want, got = base.clone(), base.clone()
        fork_slots_reference(want, src, dst, length, a, b)
        fork_slots(got, src, dst, length, a, b, backend="cpp")
        assert torch.equal(got, want), (shape, n, length, a, b)
        if n and length:
            assert not torch.equal(got, base)             # the case did copy something


def test_the_specification_copies_exactly_the_range():
    st = torch.arange(2 * 5 * 1 * 4 * 2, dtype=torch.float32).view(2, 5, 1, 4, 2)
    before = st.clone()
    fork_slots_reference(st, torch.tensor([1]), torch.tensor([3]), 2, 1, 0)
    assert torch.equal(st[:, 3, :, 0:2], before[:, 1, :, 1:3])
    assert torch.equal(st[:, 3, :, 2:], before[:, 3, :, 2:])
    keep = torch.ones(5, dtype=torch.bool)
    keep[3] = False
    assert torch.equal(st[:, keep], before[:, keep])


@pytest.mark.parametrize("args,message", [
    (dict(dst=torch.tensor([1, 1])), "distinct"),
    (dict(dst=torch.tensor([0, 5])), "none may be a src"),
    (dict(dst=torch.tensor([4, 9])), r"\[0, 8\)"),
    (dict(length=5), r"must lie in \[0, 4\)"),
    (dict(src=torch.tensor([0, 1], dtype=torch.int32)), "int64"),
])
def test_bad_input_is_refused_and_changes_nothing(args, message):
    st = torch.randn(2, 8, 2, 4, 3)
    before = st.clone()
    kw = dict(src=torch.tensor([0, 1]), dst=torch.tensor([4, 5]), length=2, src_start=0, dst_start=0) | args
    with pytest.raises(ValueError, match=message):
        fork_slots(st, **kw)
    assert torch.equal(st, before)
    if message in ("distinct", "none may be a src", r"\[0, 8\)"):      # the C++ op checks these itself
        with pytest.raises(RuntimeError):
            fork_slots_impl(st, kw["src"], kw["dst"], kw["length"], 0, 0, "cpp")
        assert torch.equal(st, before)


def test_the_pool_forks_through_the_op(monkeypatch):
    from epic_kernels.engine.runtime import SlotPool
    calls = []
    real = fork_slots_impl
    monkeypatch.setattr("epic_kernels.engine.runtime.fork_slots_impl",
                        lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
    pool = SlotPool(3, 2, 8, 5, torch.float32)
    ids = pool.take(6)
    pool.storage.normal_()
    want = pool.storage.clone()
    fork_slots_reference(want, ids[:2], ids[3:5], 3, 1, 2)
    pool.copy_slots(ids[:2], ids[3:5], 3, 1, 2)
    assert torch.equal(pool.storage, want) and calls == ["cpp"]
