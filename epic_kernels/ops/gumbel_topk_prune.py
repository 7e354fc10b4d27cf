"""``gumbel_topk_prune``: keyed Gumbel perturbation, front-runner, survivors within a window, top-k.

Contract (every backend)::

    gumbel_topk_prune(logits [B, V], seeds [B], positions [B], width float | [B], top_k >= 1)
        -> reference.PruneResult(ids, scores, counts, offsets, front_ids, front_scores,
                                 topk_ids, topk_scores, lse)

``z_v = (l_v - logsumexp(l)) + G_v`` with ``G_v`` keyed ``(seeds[b], STEP, positions[b], v)``, in
the accumulate dtype; survivors ``z_v >= max z - width`` in CSR form (ascending id), the
front-runner (higher z, then lower id), the ``top_k`` ids by z (descending, lower id on ties, -1 /
-inf padding) and the row's lse. Logits as ``softmax_entropy`` (``B = 0`` gives empty outputs);
``width >= 0``, not NaN. Survivor sets, front ids and top-k ids equal the reference's exactly up to
the one-ulp near-tie caveat of docs/kernels.md; scores to tolerance.

Backends (``ops.dispatch``): ``reference`` (``reference.gumbel_topk_prune``), ``cpp``
(``torch.ops.epic_kernels.gumbel_topk_prune``: csrc/cpu/gumbel_topk_prune.cpp,
csrc/cuda/gumbel_topk_prune.cu) and ``triton`` (``triton_kernels.gumbel_topk_prune_triton``).
"""
from __future__ import annotations

import torch

from .. import _ext, reference
from ..core import compute_dtype
from ..validate import check_logits, check_logits_meta, check_row_keys
from .dispatch import choose

OP = "gumbel_topk_prune"


def check_gumbel_topk_prune(logits, seeds, positions, width, top_k) -> None:
    """The op's validator: ``ValueError`` naming the problem (see the module docstring)."""
    check_logits(logits, empty_batch=True)
    check_row_keys(logits.shape[0], seeds=seeds, positions=positions)
    w = torch.as_tensor(width, dtype=torch.float64)
    if w.dim() > 1 or (w.dim() == 1 and len(w) != logits.shape[0]):
        raise ValueError(f"width must be a float or a tensor [{logits.shape[0]}], got shape {tuple(w.shape)}")
    if torch.isnan(w).any() or (w < 0).any():
        raise ValueError("width must be >= 0 (and not NaN)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")


def _cpp(logits, seeds, positions, width, top_k) -> reference.PruneResult:
    """The C++ op (CPU or CUDA kernels); ``width`` a float or ``[B]``, expanded to ``[B]``."""
    width = torch.as_tensor(width, dtype=compute_dtype(logits.dtype), device=logits.device)
    width = width.reshape(-1).expand(logits.shape[0]).contiguous()
    return reference.PruneResult(*_ext.op(OP)(logits, seeds, positions, width, int(top_k)))


def gumbel_topk_prune_impl(logits, seeds, positions, width, top_k, backend="reference"):
    """No validation (the engine's hot loop); ``backend`` from ``dispatch.choose``. Returns a
    ``reference.PruneResult``."""
    if backend == "cpp":
        return _cpp(logits, seeds, positions, width, top_k)
    if backend == "triton":
        from ..triton_kernels import gumbel_topk_prune_triton
        return gumbel_topk_prune_triton(logits, seeds, positions, width, top_k)
    return reference.gumbel_topk_prune(logits, seeds, positions, width, top_k)


def gumbel_topk_prune(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, width,
                      top_k: int = 1, *, backend: str | None = None) -> reference.PruneResult:
    """Perturb ``logits [B, V]`` with step noise and keep every token within ``width`` of the best.

    ``z_v = l_v - logsumexp(l) + G_v`` with ``G_v`` keyed ``(seeds[b], STEP, positions[b], v)``;
    survivors are ``z_v >= max z - width`` (``width``: float or ``[B]``, >= 0). Returns the survivors
    compacted per row (CSR), the front-runner, the top-k ids by ``z`` and the row's logsumexp; see
    ``reference.PruneResult``. Bit-identical noise in every backend. ``backend`` as
    ``softmax_entropy``'s.
    """
    check_gumbel_topk_prune(logits, seeds, positions, width, top_k)
    return gumbel_topk_prune_impl(logits, seeds, positions, width, top_k, choose(logits.device, backend, OP))


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``); the survivors' count is
    data-dependent (``new_dynamic_size``)."""

    @torch.library.register_fake("epic_kernels::gumbel_topk_prune")
    def _gumbel_topk_prune_fake(logits, seeds, positions, width, top_k):
        check_logits_meta(logits)
        torch._check(top_k >= 1, lambda: f"top_k must be >= 1, got {top_k}")
        b, acc = logits.shape[0], compute_dtype(logits.dtype)
        survivors = torch.library.get_ctx().new_dynamic_size()   # data-dependent: sum of counts
        long = torch.int64
        return (logits.new_empty(survivors, dtype=long), logits.new_empty(survivors, dtype=acc),
                logits.new_empty(b, dtype=long), logits.new_empty(b + 1, dtype=long),
                logits.new_empty(b, dtype=long), logits.new_empty(b, dtype=acc),
                logits.new_empty((b, top_k), dtype=long), logits.new_empty((b, top_k), dtype=acc),
                logits.new_empty(b, dtype=acc))


__all__ = ["gumbel_topk_prune", "gumbel_topk_prune_impl", "check_gumbel_topk_prune", "register_fake"]
