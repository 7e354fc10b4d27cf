"""The C++ rollout-row bookkeeping ops ``plan_rows`` and ``fork_layout`` (``csrc/cpu/rows_cpu.cpp``):
typed wrappers and fake (meta) kernels. The readable specification, and the dispatch the engine
uses, is ``epic_kernels/engine/rows.py``.

Lazy like ``epic_kernels/_ext.py``: importing this module loads nothing; the first :func:`op` (or
wrapper) call loads the extension through ``_ext`` and registers the fake kernels below, once, so
the ops also trace under FakeTensor / ``torch.compile``. (``_ext._register_fakes`` registers the
other ops' fakes at load time; these live here so the op's Python side stays in one file.)

Ops (int64 CPU tensors in and out; any strides)::

    plan_rows(depth [M], goal [M], seq [M], tokens [M], last [M, K], base [M], slot0, K, lead)
        -> (first [n1], deep [nd], row_candidate [N], row_seq [N], row_slot [N], row_fill [N],
            row_tokens [N], row_positions [N], fan_src [nf*(K-1)], fan_dst [nf*(K-1)])
           N = n1 + nd * K; n1, nd, nf are data-dependent
    fork_layout(seq [N], B) -> (row_j [N], pad_index [B, max(R, 1)])   R data-dependent
"""
from __future__ import annotations

import threading

import torch

from .. import _ext

OPS = ("plan_rows", "fork_layout")
_lock = threading.Lock()
_cache: dict = {}


def op(name: str):
    """``torch.ops.epic_kernels.<name>.default`` (fakes registered), or None when the loaded extension
    predates the op. RuntimeError when the extension is not built (``_ext.ops``)."""
    try:
        return _cache[name]
    except KeyError:
        pass
    ops = _ext.ops()
    with _lock:
        if "fakes" not in _cache:
            _register_fakes(ops)
            _cache["fakes"] = True
        for n in OPS:
            _cache[n] = getattr(ops, n).default if hasattr(ops, n) else None
    return _cache[name]


def _register_fakes(ops) -> None:
    if hasattr(ops, "plan_rows"):
        @torch.library.register_fake("epic_kernels::plan_rows")
        def _plan_rows_fake(depth, goal, seq, tokens, last, base, slot0, K, lead):
            torch._check(depth.dim() == 1, lambda: f"depth must have shape (M,), got {tuple(depth.shape)}")
            M = depth.shape[0]
            for name, t in (("goal", goal), ("seq", seq), ("tokens", tokens), ("base", base)):
                torch._check(t.dim() == 1 and t.shape[0] == M,
                             lambda: f"{name} must have shape ({M},), got {tuple(t.shape)}")
            for t in (depth, goal, seq, tokens, last, base):
                torch._check(t.dtype == torch.int64, lambda: f"plan_rows takes int64 tensors, got {t.dtype}")
            torch._check(K >= 1, lambda: f"K must be >= 1, got {K}")
            torch._check(last.dim() == 2 and last.shape[0] == M and last.shape[1] == K,
                         lambda: f"last must have shape ({M}, {K}), got {tuple(last.shape)}")
            ctx = torch.library.get_ctx()
            n1, nd = ctx.new_dynamic_size(), ctx.new_dynamic_size()
            n = n1 + nd * K
            rows = [depth.new_empty(n) for _ in range(6)]
            fan = ctx.new_dynamic_size() * (K - 1) if K > 1 else 0   # K = 1: no fan-out, no symbol
            return (depth.new_empty(n1), depth.new_empty(nd), *rows, depth.new_empty(fan),
                    depth.new_empty(fan))

    if hasattr(ops, "fork_layout"):
        @torch.library.register_fake("epic_kernels::fork_layout")
        def _fork_layout_fake(seq, B):
            torch._check(seq.dim() == 1, lambda: f"seq must have shape (N,), got {tuple(seq.shape)}")
            torch._check(seq.dtype == torch.int64, lambda: f"seq must be int64, got {seq.dtype}")
            torch._check(B >= 0, lambda: f"B must be >= 0, got {B}")
            width = torch.library.get_ctx().new_dynamic_size(min=1)
            return seq.new_empty(seq.shape[0]), seq.new_empty((B, width))


def _require(name: str):
    fn = op(name)
    if fn is None:
        raise RuntimeError(f"the loaded epic_kernels extension has no {name} op (built before it); "
                           f"rebuild it: {_ext.BUILD_HINT}")
    return fn


def plan_rows(depth, goal, seq, tokens, last, base, slot0: int, K: int, lead: int) -> tuple:
    """The C++ ``plan_rows``: the tuple of ``engine.rows.PlannedRows`` (which see)."""
    return _require("plan_rows")(depth, goal, seq, tokens, last, base, int(slot0), int(K), int(lead))


def fork_layout(seq, B: int) -> tuple:
    """The C++ ``fork_layout``: ``(row_j [N], pad_index [B, max(R, 1)])`` (``engine.rows.fork_layout``)."""
    return _require("fork_layout")(seq, int(B))


__all__ = ["op", "plan_rows", "fork_layout", "OPS"]
