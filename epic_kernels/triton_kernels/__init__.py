"""Triton kernels of epic_kernels (the GPU path; tested on CPU under ``TRITON_INTERPRET=1``).

Importing this package never needs triton: without it, ``HAS_TRITON`` is False and every op raises a
clear ``RuntimeError`` when called. Kernels are compiled for CUDA tensors, or interpreted on CPU
tensors when ``TRITON_INTERPRET=1`` was set before this package was imported (triton reads the
variable when a kernel is decorated).

Ops
---
softmax_entropy_triton(logits, seeds=None, streams=None, positions=None) -> (entropy, lse, tokens)
gumbel_topk_prune_triton(logits, seeds, positions, width, top_k) -> reference.PruneResult
fork_attention_triton(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                      row_limit=None, scale=None, softcap=None) -> out [N, 1, H, D]
"""
from __future__ import annotations

from .common import HAS_TRITON, require_triton
from .fork_attention import fork_attention_triton
from .gumbel_topk_prune import gumbel_topk_prune_triton
from .softmax_entropy import softmax_entropy_triton

__all__ = ["HAS_TRITON", "require_triton", "softmax_entropy_triton", "gumbel_topk_prune_triton",
           "fork_attention_triton"]
