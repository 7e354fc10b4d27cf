"""Shared cases and helpers of the Triton op tests (moved from python_tests/test_triton_ops.py).

Triton kernels vs the pure-PyTorch reference.

Without CUDA the kernels run under the Triton interpreter on CPU tensors: triton reads
``TRITON_INTERPRET`` when a kernel is *decorated*, i.e. when ``epic_kernels.triton_kernels`` is first
imported, so the variable is set here before that import (and the modules are reloaded if another
test imported them earlier in compiled mode). With CUDA the same tests run compiled on ``cuda``.
"""
from __future__ import annotations
import importlib
import importlib.util
import math
import os
import subprocess
import sys
import textwrap
import warnings
import torch
import pytest  # noqa: E402
import epic_kernels  # noqa: E402
from epic_kernels import philox, reference as R  # noqa: E402


if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(epic_kernels.__file__)))


HAS_TRITON = importlib.util.find_spec("triton") is not None


INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


DEVICES = (["cuda"] if torch.cuda.is_available() else []) + (["cpu"] if INTERPRET else [])


if not HAS_TRITON or not DEVICES:       # triton is a pinned dependency; conftest turns the interpreter on
    raise RuntimeError("these tests need triton and either CUDA or TRITON_INTERPRET=1 (the CPU interpreter)")


def _ops():
    """The kernel modules, decorated for the interpreter when it is on (reloaded if needed)."""
    import epic_kernels.triton_kernels as tk
    from epic_kernels.triton_kernels import common, fork_attention, gumbel_topk_prune, softmax_entropy
    if INTERPRET and not (common.is_interpreted(softmax_entropy._softmax_entropy_partial_kernel)
                          and common.is_interpreted(fork_attention._fork_prefix_kernel)):
        for mod in (common, softmax_entropy, gumbel_topk_prune, fork_attention, tk):
            importlib.reload(mod)
    return tk


@pytest.fixture
def triton_env():
    torch.manual_seed(1234)


TOLS = [(torch.float32, 2e-5, 2e-6), (torch.float16, 2e-5, 2e-6), (torch.bfloat16, 2e-5, 2e-6),
        (torch.float64, 1e-11, 1e-12)]


def mismatches(name: str, got: torch.Tensor, want: torch.Tensor, atol=0.0, rtol=0.0, show: int = 8) -> str:
    """'' when ``got`` matches ``want`` (NaN-free, inf equal), else a message with the first mismatches."""
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.dtype.is_floating_point:
        g, w = got.to(torch.float64), want.to(torch.float64)
        same_inf = (g == w)
        bad = ~(same_inf | ((g - w).abs() <= atol + rtol * w.abs()))
    else:
        bad = got != want
    if not bad.any():
        return ""
    idx = bad.nonzero()[:show]
    rows = [f"  at {tuple(i.tolist())}: got {got[tuple(i)].item()!r} want {want[tuple(i)].item()!r}" for i in idx]
    return f"{name}: {int(bad.sum())} of {bad.numel()} differ; first:\n" + "\n".join(rows)


def make_logits(B: int, V: int, dtype, kind: str = "mixed") -> torch.Tensor:
    """Random logits with the hard cases: all-but-one -inf rows, -inf holes, large and tiny scales."""
    x = torch.randn(B, V, dtype=torch.float64) * 3
    if kind == "mixed":
        x[0, :] = float("-inf")
        x[0, V // 2] = 1.5                          # all but one -inf
        if B > 1:
            x[1, ::3] = float("-inf")
            x[1, 1 % V] = 0.25
        if B > 2:
            x[2] = x[2] * 1e-3                      # nearly uniform
        if B > 3:
            x[3] = x[3] + (3e4 if dtype == torch.float16 else 1e5)   # very large logits
        if B > 4:
            x[4] = x[4] * 40                        # very peaked
        if B > 5:
            x[5] = x[5] - 1e4                       # very negative
    return x.to(dtype)


def keys(B: int):
    return (torch.randint(0, 2**32, (B,), dtype=torch.int64), torch.randint(0, 2**31, (B,), dtype=torch.int64))


def exact_entropy(x: torch.Tensor):
    """The reference's entropy and lse, computed in float64 on row-max-shifted logits.

    ``reference.softmax_entropy`` evaluates ``H = lse - sum p x``, which cancels catastrophically for
    large |logits| in float32 (1e5 + N(0, 9) gives H = 127); shifting first keeps the same formula exact.
    """
    x64 = x.to(torch.float64)
    top = x64.max(-1, keepdim=True).values
    ent, lse = R.softmax_entropy(x64 - top)
    acc = R.compute_dtype(x.dtype)
    return ent.to(acc), (lse + top.squeeze(-1)).to(acc)


def _check_entropy(device, B, V, dtype, atol, rtol, num_chunks, kind="mixed"):
    tk = _ops()
    x = make_logits(B, V, dtype, kind)
    seeds, pos = keys(B)
    streams = torch.randint(0, 2**31 - 1, (B,), dtype=torch.int64)
    ent, lse, tok = tk.softmax_entropy_triton(x.to(device), seeds.to(device), streams.to(device), pos.to(device),
                                              num_chunks=num_chunks)
    ent_ref, lse_ref = exact_entropy(x)
    assert ent.dtype == ent_ref.dtype and lse.dtype == lse_ref.dtype
    assert not (msg := mismatches("lse", lse, lse_ref, atol, rtol)), msg
    assert not (msg := mismatches("entropy", ent, ent_ref, atol * max(1.0, math.log(V)), rtol)), msg
    assert not (msg := mismatches("tokens", tok, R.gumbel_argmax(x, seeds, streams, pos))), msg
    if B * V <= 4000:     # the same statistics without the sample (the interpreter is slow)
        ent2, lse2, tok2 = tk.softmax_entropy_triton(x.to(device), num_chunks=num_chunks)
        assert tok2 is None and torch.equal(ent2, ent) and torch.equal(lse2, lse)


def reference_prune_with_lse(logits, seeds, positions, width, top_k, lse) -> R.PruneResult:
    """``reference.gumbel_topk_prune`` with a given centering ``lse``: isolates the exactness of the
    kernel's z / window / top-k arithmetic from the ulp-level difference between two logsumexps."""
    x = logits.to(R.compute_dtype(logits.dtype))
    z = x - lse.to(x.dtype).unsqueeze(-1) + philox.noise(seeds, 0, positions, x.shape[-1]).to(x.dtype)
    front_scores, front_ids = z.max(-1).values, torch.argmax(z, -1)
    w = torch.as_tensor(width, dtype=z.dtype).expand(z.shape[0])
    keep = torch.isfinite(z) & (z >= (front_scores - w).unsqueeze(-1))
    rows, ids = torch.nonzero(keep, as_tuple=True)
    counts = keep.sum(-1)
    kk = min(top_k, z.shape[-1])
    order = torch.sort(z, dim=-1, descending=True, stable=True)
    ts, ti = order.values[:, :kk], order.indices[:, :kk]
    ti = torch.where(torch.isfinite(ts), ti, -1)
    ti = torch.cat([ti, ti.new_full((z.shape[0], top_k - kk), -1)], 1)
    ts = torch.cat([ts, ts.new_full((z.shape[0], top_k - kk), float("-inf"))], 1)
    return R.PruneResult(ids, z[rows, ids], counts, torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
                         front_ids, front_scores, ti, ts, lse)


def assert_prune_equal(got: R.PruneResult, want: R.PruneResult):
    for name, g, w in zip(got._fields, got, want):
        assert g.dtype == w.dtype, f"{name}: dtype {g.dtype} != {w.dtype}"
        assert not (msg := mismatches(name, g, w)), msg


def assert_prune_matches_reference(got: R.PruneResult, ref: R.PruneResult, logits, seeds, positions, width, rtol):
    """Against the true reference: identical, except where a difference is a genuine near-tie
    (|z - threshold| or |z_a - z_b| within the ulp-level shift that a different lse causes)."""
    got = R.PruneResult(*(t.cpu() for t in got))
    z = R.perturbed_scores(logits, seeds, positions)
    tol = 8 * rtol * (1 + z.abs().where(torch.isfinite(z), 0).amax(-1) + ref.lse.abs())   # per row
    assert not (msg := mismatches("lse", got.lse - ref.lse, torch.zeros_like(ref.lse), tol.max().item())), msg
    w = torch.as_tensor(width, dtype=z.dtype).expand(z.shape[0])
    for b in range(z.shape[0]):
        g_ids = set(got.ids[got.offsets[b]:got.offsets[b + 1]].tolist())
        r_ids = set(ref.ids[ref.offsets[b]:ref.offsets[b + 1]].tolist())
        thr = ref.front_scores[b] - w[b]
        for v in g_ids ^ r_ids:
            assert abs(z[b, v] - thr) <= tol[b], f"row {b}: survivor {v} differs and is no near-tie"
            warnings.warn(f"row {b}: survivor {v} differs from the reference at a near-tie (documented)")
        if got.front_ids[b] != ref.front_ids[b]:
            warnings.warn(f"row {b}: front-runner differs from the reference at a near-tie (documented)")
            assert abs(z[b, got.front_ids[b]] - z[b, ref.front_ids[b]]) <= tol[b], f"row {b}: front-runner"
        gk = got.topk_ids[b]
        zk = torch.where(gk >= 0, z[b, gk.clamp(min=0)], float("-inf"))
        assert not (msg := mismatches(f"row {b} top-k (by reference z)", zk, ref.topk_scores[b], tol[b].item())), msg
        assert abs(got.front_scores[b] - ref.front_scores[b]) <= tol[b], f"row {b}: front score"
    common = got.ids.numel() == ref.ids.numel() and torch.equal(got.ids, ref.ids)
    if common:
        assert not (msg := mismatches("survivor z", got.scores, ref.scores, tol.max().item(), 0)), msg


def _check_prune(device, B, V, dtype, width, top_k, num_chunks, capacity=512, kind="mixed"):
    tk = _ops()
    x = make_logits(B, V, dtype, kind)
    seeds, pos = keys(B)
    dev_width = width.to(device) if isinstance(width, torch.Tensor) else width
    got = tk.gumbel_topk_prune_triton(x.to(device), seeds.to(device), pos.to(device), dev_width, top_k,
                                      num_chunks=num_chunks, capacity=capacity)
    got = R.PruneResult(*(t.cpu() for t in got))
    assert_prune_equal(got, reference_prune_with_lse(x, seeds, pos, width, top_k, got.lse))
    rtol = 1e-14 if dtype == torch.float64 else 1e-6
    assert_prune_matches_reference(got, R.gumbel_topk_prune(x, seeds, pos, width, top_k), x, seeds, pos, width, rtol)
    return got


