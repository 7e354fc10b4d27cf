"""Rollout-row bookkeeping of one model call: which row belongs to which sequence, candidate, rollout
and slot. Two pure functions are the readable specification; the C++ ops of the same names
(``csrc/cpu/rows_cpu.cpp``, wrappers and fakes in ``epic_kernels/_ext.py``) compute the same integers with
plain loops, without the ~30 small torch ops the specification costs per call.

``plan_rows``  (``Evaluator.plan``): from the per-candidate state, the rows that advance every pending
    candidate by one depth, and the slot copies that fan a candidate's depth-1 token out to its
    other rollouts. Path ``(m, r)`` owns slot ``slot0 + m * K + r``.

    * candidate m is pending when ``depth[m] < goal[m]``;
    * ``first``: pending candidates at depth 0, ascending; one row each, in slot ``slot0 + m * K``,
      fill ``lead``, token ``tokens[m]``, position ``base[m]``;
    * ``deep``: pending candidates at depth > 0, ascending; K rows each (r = 0..K-1), in slot
      ``slot0 + m * K + r``, fill ``lead + depth[m]``, token ``last[m, r]``, position
      ``base[m] + depth[m]``;
    * rows: the ``first`` rows, then the ``deep`` rows (candidates ascending, rollouts ascending);
    * fan-out: for each deep candidate at depth 1 (ascending) and r = 1..K-1, copy slot
      ``slot0 + m * K`` to slot ``slot0 + m * K + r`` (the caller copies ``lead + 1`` tokens).

``fork_layout`` (``ForkBatch.build``): from the rows' sequences ``seq [N]`` and the batch size B,
    ``row_j [N]``, the index of row n among the rows of its sequence (in row order), and
    ``pad_index [B, max(R, 1)]`` (R the most rows of one sequence): the row of (sequence b, j), N where
    sequence b has fewer than j + 1 rows.

``plan_rows_impl`` / ``fork_layout_impl`` run the C++ op when ``backend == "cpu"`` (the backend the
engine chose with ``ops._dispatch.choose``) and the specification otherwise. They do not validate:
the C++ ops check their inputs (int64 CPU tensors, shapes, ranges; RuntimeError naming the argument).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _ext


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


class ForkLayout(NamedTuple):
    row_j: torch.Tensor          # int64 [N]: the row's index j within its sequence
    pad_index: torch.Tensor      # int64 [B, max(R, 1)]: row of (sequence, j), N for padding


def plan_rows(depth: torch.Tensor, goal: torch.Tensor, seq: torch.Tensor, tokens: torch.Tensor,
              last: torch.Tensor, base: torch.Tensor, slot0: int, K: int, lead: int) -> PlannedRows:
    """The specification (``Evaluator.plan``'s code). ``depth, goal, seq, tokens, base [M]``,
    ``last [M, K]``; nothing pending gives empty tensors (``len(rows.row_candidate) == 0``)."""
    active = (depth < goal).nonzero().flatten()
    first = active[depth[active] == 0]
    deep = active[depth[active] > 0]
    fan = deep[depth[deep] == 1]              # depth 1 is shared: copied to the other rollouts
    fan_src = slot0 + (fan * K).repeat_interleave(K - 1)
    fan_dst = slot0 + (fan.view(-1, 1) * K + torch.arange(1, K)).flatten()
    deep_c = deep.repeat_interleave(K)
    cand = torch.cat([first, deep_c])
    fill = torch.cat([torch.zeros_like(first), depth[deep_c]])
    slot = slot0 + torch.cat([first * K, (deep.view(-1, 1) * K + torch.arange(K)).flatten()])
    row_tokens = torch.cat([tokens[first], last[deep].flatten()])
    return PlannedRows(first, deep, cand, seq[cand], slot, fill + lead, row_tokens, base[cand] + fill,
                       fan_src, fan_dst)


def fork_layout(seq: torch.Tensor, B: int) -> ForkLayout:
    """The specification (``ForkBatch.build``'s code). ``seq [N]`` with values in ``[0, B)``."""
    counts = torch.bincount(seq, minlength=B)
    order = torch.argsort(seq, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    row_j = torch.empty_like(seq)
    row_j[order] = torch.arange(len(seq)) - starts[seq[order]]
    R = int(counts.max()) if len(seq) else 0
    pad_index = torch.full((B, max(R, 1)), len(seq), dtype=torch.int64)
    pad_index[seq, row_j] = torch.arange(len(seq))
    return ForkLayout(row_j, pad_index)


def plan_rows_impl(depth, goal, seq, tokens, last, base, slot0: int, K: int, lead: int,
                   backend: str = "reference") -> PlannedRows:
    """``plan_rows`` by the C++ op when ``backend == "cpu"`` (and the loaded extension has it), else
    by the specification. No validation here (the C++ op checks its inputs)."""
    if backend == "cpu":
        op = _ext.op("plan_rows")
        if op is not None:
            return PlannedRows(*op(depth, goal, seq, tokens, last, base, int(slot0), int(K), int(lead)))
    return plan_rows(depth, goal, seq, tokens, last, base, slot0, K, lead)


def fork_layout_impl(seq, B: int, backend: str = "reference") -> ForkLayout:
    """``fork_layout`` by the C++ op when ``backend == "cpu"`` (and the loaded extension has it), else
    by the specification."""
    if backend == "cpu":
        op = _ext.op("fork_layout")
        if op is not None:
            return ForkLayout(*op(seq, int(B)))
    return fork_layout(seq, B)


__all__ = ["PlannedRows", "ForkLayout", "plan_rows", "fork_layout", "plan_rows_impl", "fork_layout_impl"]
