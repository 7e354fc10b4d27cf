"""``fork_layout``: the fork attention's row layout of one model call (``ForkBatch.build``).

Contract (both backends, exactly)::

    fork_layout(seq [N], B) -> ForkLayout(row_j [N], pad_index [B, max(R, 1)])

``seq`` int64 CPU ``[N]`` with values in ``[0, B)``; ``row_j[n]`` is the index of row n among the
rows of its sequence (in row order); ``pad_index[b, j]`` is the row of (sequence b, j), ``N`` where
sequence b has fewer than j + 1 rows (R = the most rows of one sequence).

Backends (``ops.dispatch``): ``reference`` (``fork_layout_reference``, the specification) and
``cpp`` (``torch.ops.epic_kernels.fork_layout``, csrc/cpu/fork_layout.cpp).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _ext
from .dispatch import choose, resolve

OP = "fork_layout"


class ForkLayout(NamedTuple):
    row_j: torch.Tensor          # int64 [N]: the row's index j within its sequence
    pad_index: torch.Tensor      # int64 [B, max(R, 1)]: row of (sequence, j), N for padding


def check_fork_layout(seq, B) -> None:
    """The op's validator (``ValueError``)."""
    if isinstance(B, bool) or not isinstance(B, int) or B < 0:
        raise ValueError(f"fork_layout: B must be an int >= 0, got {B!r}")
    if not isinstance(seq, torch.Tensor) or seq.dtype != torch.int64 or seq.device.type != "cpu" \
            or seq.dim() != 1:
        raise ValueError("fork_layout: seq must be a 1-D int64 CPU tensor")
    if len(seq) and (int(seq.min()) < 0 or int(seq.max()) >= B):
        raise ValueError(f"fork_layout: seq values must lie in [0, {B})")


def fork_layout_reference(seq: torch.Tensor, B: int) -> ForkLayout:
    """The specification (``ForkBatch.build``'s code)."""
    counts = torch.bincount(seq, minlength=B)
    order = torch.argsort(seq, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    row_j = torch.empty_like(seq)
    row_j[order] = torch.arange(len(seq)) - starts[seq[order]]
    R = int(counts.max()) if len(seq) else 0
    pad_index = torch.full((B, max(R, 1)), len(seq), dtype=torch.int64)
    pad_index[seq, row_j] = torch.arange(len(seq))
    return ForkLayout(row_j, pad_index)


def fork_layout_impl(seq, B: int, backend: str = "reference") -> ForkLayout:
    """No validation (the C++ op checks its inputs). ``backend`` as ``plan_rows_impl``'s."""
    backend = resolve(backend, seq.device, OP)
    if backend == "cpp":
        return ForkLayout(*_ext.op(OP)(seq, int(B)))
    return fork_layout_reference(seq, B)


def fork_layout(seq: torch.Tensor, B: int, *, backend: str | None = None) -> ForkLayout:
    """Validated ``fork_layout`` (see the module docstring)."""
    check_fork_layout(seq, B)
    return fork_layout_impl(seq, B, choose(seq.device, backend, OP))


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``)."""

    @torch.library.register_fake("epic_kernels::fork_layout")
    def _fork_layout_fake(seq, B):
        torch._check(seq.dim() == 1, lambda: f"seq must have shape (N,), got {tuple(seq.shape)}")
        torch._check(seq.dtype == torch.int64, lambda: f"seq must be int64, got {seq.dtype}")
        torch._check(B >= 0, lambda: f"B must be >= 0, got {B}")
        width = torch.library.get_ctx().new_dynamic_size(min=1)
        return seq.new_empty(seq.shape[0]), seq.new_empty((B, width))


__all__ = ["ForkLayout", "fork_layout", "fork_layout_impl", "fork_layout_reference", "check_fork_layout",
           "register_fake"]
