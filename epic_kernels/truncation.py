"""Candidate truncation before EPIC: top-k, top-p (nucleus) and min-p, as ``-inf`` masks on logits.

Removed tokens become ``-inf`` and are never candidates. Ties at a top-k boundary go to the lower
token id, so exactly ``top_k`` tokens stay.
"""
from __future__ import annotations

import torch

from .core import top_k_mask
from .validate import check_int


def truncate(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, backend: str = "reference") -> torch.Tensor:
    """Apply top-k, then top-p, then min-p to ``logits [B, V]``; returns a new tensor. ``backend``:
    top-k's op (``ops.topk_support``; from ``ops.dispatch.choose``), the same result on every one."""
    out = logits
    if top_k is not None:
        out = top_k_mask(out, check_int(top_k, "top_k", 1), backend)
    if top_p is not None:
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        probs = torch.softmax(out.float(), dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(-1) - sorted_p          # mass strictly above each token
        drop_sorted = before >= float(top_p)
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if min_p is not None:
        if not 0.0 <= float(min_p) <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {min_p}")
        probs = torch.softmax(out.float(), dim=-1)
        drop = probs < float(min_p) * probs.max(-1, keepdim=True).values
        out = out.masked_fill(drop, float("-inf"))
    return out
