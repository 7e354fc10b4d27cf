"""``topk_support``: the k largest logits of each row, the support of the truncated rollout policy
(``rollout_top_k``) and of top-k truncation.

Contract (both backends, exactly: the same values and ids)::

    topk_support(logits [N, V], k) -> (values [N, k], ids [N, k] int64)

* row n keeps the ``k`` entries that rank first by value, larger first, ties at the boundary to the
  lower token id (as a stable descending sort would choose), so exactly ``k`` entries are kept;
  NaN ranks above every number (as ``torch.topk`` orders it);
* the kept entries are returned in ascending id order, ``values`` holding the logits unchanged;
* ``1 <= k < V``; logits float32 or float64 for the compiled kernel (other dtypes and devices run
  the reference).

Backends (``ops.dispatch``): ``reference`` (``topk_support_reference``, the specification: a partial
``torch.topk``, a stable sort for rows tied across the boundary, a sort by id) and ``cpp``
(``torch.ops.epic_kernels.topk_support``, csrc/cpu/topk_support.cpp: one pass per row over the
vocabulary with a k-entry heap; a step calls it for every rollout row, so it is a hot loop of the
engine's host work). Triton has no topk_support: on CUDA the reference's ``torch.topk`` runs.
"""
from __future__ import annotations

import torch

from .. import _ext
from .dispatch import choose, resolve

OP = "topk_support"


def check_topk_support(logits, k) -> None:
    """The op's validator (``ValueError``)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"topk_support: logits must be a float tensor of shape (N, V), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < logits.shape[1]:
        raise ValueError(f"topk_support: need an int k with 1 <= k < V = {logits.shape[1]}, got {k!r}")


def topk_support_reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification. A partial top-k serves every row without a tie across the boundary; only
    tied rows take the stable sort."""
    vals, ids = torch.topk(logits, k + 1, dim=-1)
    tie = vals[:, k - 1] == vals[:, k]
    vals, ids = vals[:, :k], ids[:, :k]
    if tie.any():                                   # rare: redo those rows with a stable sort
        rows = tie.nonzero().flatten()
        order = torch.sort(logits[rows], dim=-1, descending=True, stable=True).indices[:, :k]
        ids[rows] = order
        vals[rows] = logits[rows].gather(1, order)
    ids, perm = torch.sort(ids, dim=-1)
    return vals.gather(1, perm), ids


def topk_support_impl(logits: torch.Tensor, k: int, backend: str = "reference"):
    """No validation (the engine's hot loop). ``backend`` from ``dispatch.choose``; the compiled
    kernel takes float32 / float64 CPU logits, anything else runs the reference."""
    backend = resolve(backend, logits.device, OP)
    if backend == "cpp" and logits.dtype in (torch.float32, torch.float64):
        return _ext.op(OP)(logits, int(k))
    return topk_support_reference(logits, k)


def topk_support(logits: torch.Tensor, k: int, *, backend: str | None = None):
    """Validated ``topk_support`` (see the module docstring), on the backend ``dispatch.choose`` picks."""
    check_topk_support(logits, k)
    return topk_support_impl(logits, k, choose(logits.device, backend, OP))


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``)."""

    @torch.library.register_fake("epic_kernels::topk_support")
    def _topk_support_fake(logits, k):
        torch._check(logits.dim() == 2, lambda: f"logits must have shape (N, V), got {tuple(logits.shape)}")
        torch._check(1 <= k < logits.shape[1], lambda: f"need 1 <= k < V, got k={k}")
        N = logits.shape[0]
        return logits.new_empty((N, k)), logits.new_empty((N, k), dtype=torch.int64)


__all__ = ["topk_support", "topk_support_impl", "topk_support_reference", "check_topk_support", "register_fake"]
