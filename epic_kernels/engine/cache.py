"""Prefix KV for the engine: a read-only view of any per-layer cache, and a growable cache of our own.

Rollouts never copy the prefix: the fork attention (``attention.py``) reads these tensors directly
and keeps each rollout's few new tokens in a small slot pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixView:
    """The B prefixes a step forks from. Tensors are views, never copies.

    layers : per layer ``(keys, values)``, each ``[B, kv_heads, L, head_dim]`` (left padded).
    mask : int64 ``[B, L]``, 1 on real tokens.
    positions : int64 ``[B]``, each sequence's own length (position of the token being sampled).
    seeds : int64 ``[B]``.
    """

    layers: list
    mask: torch.Tensor
    positions: torch.Tensor
    seeds: torch.Tensor

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def bias(self, dtype) -> torch.Tensor:
        """Additive attention bias ``[B, 1, 1, L]``: 0 on real tokens, -inf on padding."""
        zero = torch.zeros((), dtype=dtype)
        return torch.where(self.mask.bool(), zero, torch.tensor(float("-inf"), dtype=dtype))[:, None, None, :]


class PrefixCache:
    """A KV cache that appends in place (capacity doubles when full), for ``epic_kernels.generate``.

    Hugging Face's ``DynamicCache`` concatenates on every token, copying the whole cache each step;
    this one copies only when it grows, so a long generation costs O(L) copies, not O(L^2).
    """

    def __init__(self, layers, mask: torch.Tensor, capacity: int | None = None):
        B, H, L, D = layers[0][0].shape
        cap = max(capacity or 0, 2 * L, 16)
        self.length = L
        self.keys = [torch.empty(B, H, cap, D, dtype=k.dtype) for k, _ in layers]
        self.values = [torch.empty(B, H, cap, D, dtype=v.dtype) for _, v in layers]
        for dst_k, dst_v, (k, v) in zip(self.keys, self.values, layers):
            dst_k[:, :, :L].copy_(k)
            dst_v[:, :, :L].copy_(v)
        self.mask = torch.zeros(B, cap, dtype=torch.int64)
        self.mask[:, :L] = mask

    @classmethod
    def from_hf(cls, cache, mask: torch.Tensor) -> "PrefixCache":
        return cls([(layer.keys, layer.values) for layer in cache.layers], mask)

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def view(self, seeds: torch.Tensor) -> PrefixView:
        L = self.length
        mask = self.mask[:, :L]
        return PrefixView([(k[:, :, :L], v[:, :, :L]) for k, v in zip(self.keys, self.values)],
                          mask, mask.sum(-1), seeds)

    def _grow(self):
        cap = 2 * self.capacity
        def bigger(t):
            out = torch.empty(*t.shape[:2], cap, t.shape[3], dtype=t.dtype)
            out[:, :, :self.length].copy_(t[:, :, :self.length])
            return out
        self.keys = [bigger(k) for k in self.keys]
        self.values = [bigger(v) for v in self.values]
        mask = torch.zeros(self.batch, cap, dtype=torch.int64)
        mask[:, :self.length] = self.mask[:, :self.length]
        self.mask = mask

    def append(self, new_keys, new_values):
        """Append one token per sequence: ``new_keys[l]``, ``new_values[l]`` are ``[B, kv_heads, head_dim]``."""
        if self.length == self.capacity:
            self._grow()
        for k, v, nk, nv in zip(self.keys, self.values, new_keys, new_values):
            k[:, :, self.length].copy_(nk)
            v[:, :, self.length].copy_(nv)
        self.mask[:, self.length] = 1
        self.length += 1

    def select(self, rows: torch.Tensor):
        """Keep only sequences ``rows`` (finished ones leave the batch)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.mask = self.mask[rows]

    def to_hf(self):
        """A ``DynamicCache`` holding a copy of the current contents."""
        from transformers import DynamicCache

        L = self.length
        return DynamicCache(ddp_cache_data=[(k[:, :, :L].clone(), v[:, :, :L].clone())
                                            for k, v in zip(self.keys, self.values)])
