"""``fork_layout``: the C++ op (csrc/cpu/fork_layout.cpp) against its specification
(``fork_layout_reference`` in epic_kernels/ops/fork_layout.py) on random layouts, the validated
function on both backends, and the layout's defining properties checked directly.

(The engine-level check, specification == what ``ForkBatch.build`` used at every call of real
decodes, is in test_plan_rows.py beside the other bookkeeping op.)
A missing extension is an error (``make test`` builds it). Build: ``pip install --no-build-isolation -e .``
"""
from __future__ import annotations

import random

import pytest
import torch

from epic_kernels import _ext
from epic_kernels.ops.fork_layout import ForkLayout, fork_layout, fork_layout_impl, fork_layout_reference
from epic_kernels.testing import require_extension

require_extension("fork_layout")


def _equal(got, want, what=""):
    assert type(got) is ForkLayout and type(want) is ForkLayout
    for f, g, w in zip(want._fields, got, want):
        assert g.dtype == torch.int64 and g.device.type == "cpu", (what, f, g.dtype)
        assert g.shape == w.shape and torch.equal(g, w), (what, f, g.tolist(), w.tolist())


def _layouts(seed: int, trials: int):
    """Random ``(seq, B)``: 0-9 sequences (some without rows, B = 0 with no rows), 0-300 rows in a
    random order, sorted, or all in one sequence."""
    rng = random.Random(seed)
    for _ in range(trials):
        B = rng.randint(0, 9)
        N = 0 if B == 0 else rng.choice([0, 1, 2, 3, 8, 17, 64, 300])
        used = rng.sample(range(B), rng.randint(1, B)) if B else []
        rows = [rng.choice(used) for _ in range(N)]
        order = rng.choice(["random", "sorted", "one"])
        if order == "sorted":
            rows.sort()
        elif order == "one" and N:
            rows = [used[0]] * N
        yield torch.tensor(rows, dtype=torch.int64), B


def _check_properties(seq, B, out: ForkLayout):
    """What the layout means: row n is the row_j[n]-th row of its sequence, pad_index inverts that,
    and every other entry of pad_index is N."""
    N = len(seq)
    counts = torch.bincount(seq, minlength=B) if N else torch.zeros(B, dtype=torch.int64)
    assert out.pad_index.shape == (B, max(int(counts.max()) if B and N else 0, 1))
    for n in range(N):
        b = int(seq[n])
        assert int(out.row_j[n]) == int((seq[:n] == b).sum())
        assert int(out.pad_index[b, out.row_j[n]]) == n
    filled = torch.zeros_like(out.pad_index, dtype=torch.bool)
    if N:
        filled[seq, out.row_j] = True
    assert bool((out.pad_index[~filled] == N).all())


def test_cpp_op_equals_the_reference_on_random_layouts():
    op = _ext.op("fork_layout")
    for trial, (seq, B) in enumerate(_layouts(seed=1, trials=300)):
        want = fork_layout_reference(seq, B)
        _equal(ForkLayout(*op(seq, B)), want, trial)
        _equal(fork_layout_impl(seq, B, "cpp"), want, trial)
        if trial % 10 == 0:
            _check_properties(seq, B, want)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_validated_op_on_both_backends(backend):
    for trial, (seq, B) in enumerate(_layouts(seed=2, trials=60)):
        _equal(fork_layout(seq, B, backend=backend), fork_layout_reference(seq, B), trial)
    seq = torch.tensor([3, 1, 3, 3, 0, 1])
    strided = torch.stack([seq, seq], -1)[:, 1]                       # same values, not contiguous
    assert not strided.is_contiguous()
    out = fork_layout(strided, 5, backend=backend)
    assert out.row_j.tolist() == [0, 0, 1, 2, 0, 1]
    assert out.pad_index.tolist() == [[4, 6, 6], [1, 5, 6], [6, 6, 6], [0, 2, 3], [6, 6, 6]]


@pytest.mark.parametrize("args, match", [
    ((torch.tensor([0, 1]), 1), r"seq values must lie in \[0, 1\)"),
    ((torch.tensor([-1]), 2), r"seq values must lie in \[0, 2\)"),
    ((torch.tensor([0]), -1), "B must be an int >= 0"),
    ((torch.tensor([0], dtype=torch.int32), 1), "1-D int64 CPU tensor"),
    ((torch.tensor([[0]]), 1), "1-D int64 CPU tensor"),
])
def test_bad_inputs_are_value_errors(args, match):
    with pytest.raises(ValueError, match=match):
        fork_layout(*args)


def test_opcheck():
    op = _ext.op("fork_layout")
    for seq, B in [(torch.tensor([1, 0, 1, 1]), 2), (torch.empty(0, dtype=torch.int64), 3)]:
        result = torch.library.opcheck(op, (seq, B))
        assert all(v == "SUCCESS" for v in result.values()), result
