"""Shared cases and helpers of the C++ op tests (moved from python_tests/test_ext_ops.py).

C++ extension ops (``torch.ops.epic_kernels.*``) vs the pure-PyTorch reference.

A missing extension is an error, not a skip: ``make test`` always builds it (by hand:
``pip install --no-build-isolation -e .``). The reference-backend counterparts of these ops run in
test_dispatch.py and the engine tests with ``backend="reference"``.
"""
from __future__ import annotations
import math
import os
import subprocess
import sys
import pytest
import torch
from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension


require_extension("softmax_entropy", "softmax_entropy_sample", "gumbel_topk_prune")


OPS = _ext.ops()


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TOLS = [(torch.float32, 5e-5, 1e-5), (torch.float16, 5e-5, 1e-5), (torch.bfloat16, 5e-5, 1e-5),
        (torch.float64, 1e-10, 1e-11)]


BATCHES = [1, 3, 33]


VOCABS = [1, 17, 111, 4097, 32000]


@pytest.fixture
def cpp_env():
    """Fixed RNG; one intra-op thread (the reference's many small parallel ops crawl when another
    process holds the second core; the kernels' results do not depend on the thread count, which
    test_results_do_not_depend_on_threads_or_row_stride checks with several threads)."""
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mismatches(name, got, want, atol=0.0, rtol=0.0, show=8) -> str:
    """'' if ``got`` matches ``want`` (infinities equal, else |got - want| <= atol + rtol |want|);
    otherwise a message listing the first ``show`` mismatches."""
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.dtype != want.dtype:
        return f"{name}: dtype {got.dtype} != {want.dtype}"
    if got.dtype.is_floating_point:
        g, w = got.double(), want.double()
        bad = ~((g == w) | ((g - w).abs() <= atol + rtol * w.abs()))
    else:
        bad = got != want
    if not bad.any():
        return ""
    rows = [f"  at {tuple(i.tolist())}: got {got[tuple(i)].item()!r} want {want[tuple(i)].item()!r}"
            for i in bad.nonzero()[:show]]
    return f"{name}: {int(bad.sum())} of {bad.numel()} differ; first:\n" + "\n".join(rows)


def make_logits(B: int, V: int, dtype: torch.dtype) -> torch.Tensor:
    """randn * 3 with -inf holes, plus hard rows cycling with the row index: all but one entry
    -inf, very large (+1e4), very small (-1e4), and a few 1e4 spikes over a -1e4 floor."""
    x = torch.randn(B, V, dtype=torch.float64) * 3
    x[torch.rand(B, V) < 0.1] = float("-inf")
    for b in range(B):
        kind = b % 5 if B > 1 else 0
        if kind == 1:
            x[b] = float("-inf")
            x[b, torch.randint(V, ())] = 2.5
        elif kind == 2:
            x[b] = torch.randn(V, dtype=torch.float64) * 3 + 1e4
        elif kind == 3:
            x[b] = torch.randn(V, dtype=torch.float64) * 3 - 1e4
        elif kind == 4:
            x[b] = -1e4
            x[b, torch.randint(V, (3,))] = 1e4 + torch.randn(3, dtype=torch.float64)
    dead = ~torch.isfinite(x).any(-1)
    x[dead, 0] = 0.0                                    # every row keeps a finite entry
    return x.to(dtype)


def make_keys(B: int):
    seeds = torch.randint(0, 2**32, (B,), dtype=torch.int64)
    seeds[0] = 2**32 - 1                                # high bit of the seed set
    return seeds, torch.randint(0, 2**31, (B,), dtype=torch.int64)


def exact_entropy(x: torch.Tensor):
    """``reference.softmax_entropy`` on float64 row-max-shifted logits, cast to the accumulate dtype.

    The reference evaluates ``H = lse - sum p x``, which cancels catastrophically in float32 when
    |logits| ~ 1e4 (absolute error ~ulp(1e4) = 1e-3); the kernel's ``log s - t / s`` does not. The
    shift keeps the reference's formula and makes it exact enough to compare against.
    """
    x64 = x.to(torch.float64)
    top = x64.max(-1, keepdim=True).values
    ent, lse = R.softmax_entropy(x64 - top)
    acc = R.compute_dtype(x.dtype)
    return ent.to(acc), (lse + top.squeeze(-1)).to(acc)


def make_tie_rows(x: torch.Tensor, seeds, streams, positions, rows) -> None:
    """Make each of ``rows`` a row whose Gumbel-max for stream column ``row % S`` is an exact tie:
    three entries set to ``-G_v`` (so ``x_v + G_v = 0`` exactly, in float32 and float64: negation is
    exact and ``-G + G = 0``), every other finite entry at most -17 (``x + G < 0``; -inf holes kept)."""
    V, S = x.shape[1], streams.shape[1]
    for b in rows:
        k = b % S
        g = OPS._gumbel_noise(seeds[b:b + 1], streams[b:b + 1, k], positions[b:b + 1], V)[0]
        ids = torch.tensor([V // 3, V // 7 + 1, V - 1]).unique()
        finite = torch.isfinite(x[b])
        x[b] = torch.where(finite, torch.full_like(x[b], -20.0), x[b])
        x[b, ids] = (-g[ids]).to(x.dtype)


def check_prune(got: R.PruneResult, want: R.PruneResult, atol, rtol):
    """Every field equal (integers exactly, floats to tolerance); ids / fronts / top-k exactly."""
    for name in R.PruneResult._fields:
        g, w = getattr(got, name), getattr(want, name)
        floating = g.dtype.is_floating_point
        msg = mismatches(name, g, w, atol if floating else 0.0, rtol if floating else 0.0)
        assert not msg, msg


def _small_args():
    x = make_logits(3, 37, torch.float32)
    seeds, positions = make_keys(3)
    streams = torch.tensor([0, 1, 5])
    return x, seeds, streams, positions

