"""``plan_rows``: the rollout rows of one depth advance (``Evaluator.plan``), host bookkeeping.

Contract (both backends, exactly: the same integers)::

    plan_rows(depth [M], goal [M], seq [M], tokens [M], last [M, K], base [M], K, lead)
        -> PlannedRows(first, deep, row_candidate, seq, slot, fill, tokens, positions, fan_src, fan_dst)

From the per-candidate state, the rows that advance every pending candidate by one depth, and the
forks that fan a candidate's depth-1 token out to its other rollouts. Path ``(m, r)`` is numbered
``m * K + r`` (the engine maps it to its runtime path, ``CandidateState.paths[m, r]``).

* candidate m is pending when ``depth[m] < goal[m]``;
* ``first``: pending candidates at depth 0, ascending; one row each, in path ``m * K``,
  fill ``lead``, token ``tokens[m]``, position ``base[m]``;
* ``deep``: pending candidates at depth > 0, ascending; K rows each (r = 0..K-1), in path
  ``m * K + r``, fill ``lead + depth[m]``, token ``last[m, r]``, position
  ``base[m] + depth[m]``;
* rows: the ``first`` rows, then the ``deep`` rows (candidates ascending, rollouts ascending);
* fan-out: for each deep candidate at depth 1 (ascending) and r = 1..K-1, copy path
  ``m * K`` to path ``m * K + r`` (the caller copies ``lead + 1`` tokens).

Inputs are int64 CPU tensors (the engine keeps its bookkeeping on the host); ``K >= 1``,
``lead >= 0``, ``depth >= 0``. Nothing pending gives empty tensors.

Backends (``ops.dispatch``): ``reference`` (``plan_rows_reference``, the specification: ~30 small
torch ops) and ``cpp`` (``torch.ops.epic_kernels.plan_rows``, csrc/cpu/plan_rows.cpp: plain loops).
Triton has no plan_rows: a step's ``"triton"`` resolves to the op's own choice.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _ext
from .dispatch import choose, resolve

OP = "plan_rows"


class PlannedRows(NamedTuple):
    """The rows of one depth advance (all int64). N = len(first) + K * len(deep)."""

    first: torch.Tensor          # [n1] candidates evaluated at depth 1 (one row each, first)
    deep: torch.Tensor           # [nd] candidates going one depth deeper (K rows each, after)
    row_candidate: torch.Tensor  # [N] the candidate of each row
    seq: torch.Tensor            # [N] the row's sequence
    slot: torch.Tensor           # [N] the row's slot in the pool
    fill: torch.Tensor           # [N] where the row's token goes in its slot (lead included)
    tokens: torch.Tensor         # [N] the row's input token
    positions: torch.Tensor      # [N] the row's position id
    fan_src: torch.Tensor        # [nf * (K - 1)] slot copies before the call: src -> dst
    fan_dst: torch.Tensor


def check_plan_rows(depth, goal, seq, tokens, last, base, K, lead) -> None:
    """The op's validator (``ValueError``): int64 CPU tensors of the contract's shapes, sane ints."""
    for name, v in (("K", K), ("lead", lead)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"plan_rows: {name} must be an int, got {v!r}")
    if K < 1 or lead < 0:
        raise ValueError(f"plan_rows: need K >= 1, lead >= 0, got K={K}, lead={lead}")
    M = depth.shape[0] if isinstance(depth, torch.Tensor) and depth.dim() == 1 else None
    for name, t, shape in (("depth", depth, (M,)), ("goal", goal, (M,)), ("seq", seq, (M,)),
                           ("tokens", tokens, (M,)), ("last", last, (M, K)), ("base", base, (M,))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.device.type != "cpu":
            raise ValueError(f"plan_rows: {name} must be an int64 CPU tensor")
        if M is None or tuple(t.shape) != shape:
            raise ValueError(f"plan_rows: {name} must have shape {shape}, got {tuple(t.shape)}")
    if M and bool((depth < 0).any()):
        raise ValueError("plan_rows: depth must be >= 0")


def plan_rows_reference(depth, goal, seq, tokens, last, base, K: int, lead: int) -> PlannedRows:
    """The specification (``Evaluator.plan``'s code)."""
    active = (depth < goal).nonzero().flatten()
    first = active[depth[active] == 0]
    deep = active[depth[active] > 0]
    fan = deep[depth[deep] == 1]              # depth 1 is shared: copied to the other rollouts
    fan_src = (fan * K).repeat_interleave(K - 1)
    fan_dst = (fan.view(-1, 1) * K + torch.arange(1, K)).flatten()
    deep_c = deep.repeat_interleave(K)
    cand = torch.cat([first, deep_c])
    fill = torch.cat([torch.zeros_like(first), depth[deep_c]])
    slot = torch.cat([first * K, (deep.view(-1, 1) * K + torch.arange(K)).flatten()])
    row_tokens = torch.cat([tokens[first], last[deep].flatten()])
    return PlannedRows(first, deep, cand, seq[cand], slot, fill + lead, row_tokens, base[cand] + fill,
                       fan_src, fan_dst)


def plan_rows_impl(depth, goal, seq, tokens, last, base, K: int, lead: int,
                   backend: str = "reference") -> PlannedRows:
    """No validation (the engine's hot loop; the C++ op checks its inputs, RuntimeError). ``backend``
    from ``dispatch.choose``; a backend without plan_rows (e.g. the step's ``"triton"``) is resolved
    by ``dispatch.resolve``."""
    backend = resolve(backend, depth.device, OP)
    if backend == "cpp":
        return PlannedRows(*_ext.op(OP)(depth, goal, seq, tokens, last, base, int(K), int(lead)))
    return plan_rows_reference(depth, goal, seq, tokens, last, base, K, lead)


def plan_rows(depth, goal, seq, tokens, last, base, K: int, lead: int, *,
              backend: str | None = None) -> PlannedRows:
    """Validated ``plan_rows`` (see the module docstring), on the backend ``dispatch.choose`` picks."""
    check_plan_rows(depth, goal, seq, tokens, last, base, K, lead)
    return plan_rows_impl(depth, goal, seq, tokens, last, base, K, lead,
                          choose(depth.device, backend, OP))


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``)."""

    @torch.library.register_fake("epic_kernels::plan_rows")
    def _plan_rows_fake(depth, goal, seq, tokens, last, base, K, lead):
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


__all__ = ["PlannedRows", "plan_rows", "plan_rows_impl", "plan_rows_reference", "check_plan_rows",
           "register_fake"]
