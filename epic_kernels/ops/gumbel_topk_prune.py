"""``gumbel_topk_prune``: keyed Gumbel perturbation, front-runner, survivors within a window, top-k."""
from __future__ import annotations

import torch

from .. import _ext, reference
from ..validate import check_logits
from ._dispatch import choose


def gumbel_topk_prune_impl(logits, seeds, positions, width, top_k, backend="reference"):
    """No validation; ``backend`` already chosen. Returns a ``reference.PruneResult``."""
    if backend == "cpu":
        return _ext.gumbel_topk_prune(logits, seeds, positions, width, top_k)
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
    ``reference.PruneResult``. Bit-identical noise in every backend.
    """
    check_logits(logits)
    for name, t in (("seeds", seeds), ("positions", positions)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a 1-D integer tensor")
        if len(t) != logits.shape[0]:
            raise ValueError(f"{name} has {len(t)} entries for a batch of {logits.shape[0]}")
    w = torch.as_tensor(width, dtype=torch.float64)
    if w.dim() > 1 or (w.dim() == 1 and len(w) != logits.shape[0]):
        raise ValueError(f"width must be a float or a tensor [{logits.shape[0]}], got shape {tuple(w.shape)}")
    if torch.isnan(w).any() or (w < 0).any():
        raise ValueError("width must be >= 0 (and not NaN)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    return gumbel_topk_prune_impl(logits, seeds, positions, width, top_k, choose(logits.device, backend))
