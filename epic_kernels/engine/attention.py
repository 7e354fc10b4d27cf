"""Fork attention's glue to transformers: many rollout rows share their sequence's prefix KV without
copying it.

Registered with transformers' attention interface as ``"epic_fork"``; the engine switches a model to
it only for its own forward calls (``fork_mode``). Each row n of such a call belongs to sequence
``seq[n]`` and owns slot ``slot[n]`` of a small pool (``SlotPool``) holding its suffix (candidate
token plus rollout tokens: up to ``horizon`` of them, ``horizon + 2`` with prefetch). The attention
itself is the op ``epic_kernels.ops.fork_attention`` (contract, reference implementation, C++
kernel and dispatch there); ``ForkBatch.build`` picks its backend once per model call.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from ..ops.dispatch import choose
from ..ops.fork_attention import ForkAux, fork_attention_backend, fork_attention_impl, fork_aux

ATTENTION_NAME = "epic_fork"
_local = threading.local()


class SlotPool:
    """Per-layer suffix storage ``[slots, kv_heads, horizon, head_dim]`` for the rollout rows of a step."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype):
        self.shape = (kv_heads, slot_len, head_dim)
        self.dtype = dtype
        self.keys = [torch.empty(0, *self.shape, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.empty(0, *self.shape, dtype=dtype) for _ in range(n_layers)]
        self.used = 0

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def reset(self) -> None:
        """Forget every slot (the storage is kept for the next step: stale contents are finite and
        lie beyond every new row's fill, so they are masked out)."""
        self.used = 0

    def fits(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype) -> bool:
        return (len(self.keys) == n_layers and self.shape[0] == kv_heads and self.shape[2] == head_dim
                and self.shape[1] >= slot_len and self.dtype == dtype)

    def allocate(self, n: int) -> int:
        """Hand out ``n`` consecutive unused slots (growing the pool if needed); returns the first."""
        first = self.used
        self.used += n
        self.reserve(self.used)
        return first

    def reserve(self, n: int) -> None:
        """Make room for ``n`` slots (contents of existing slots kept). New slots are zeroed: tokens
        beyond a row's fill are masked out, and a masked score must multiply a finite value."""
        if n <= self.slots:
            return
        n = max(n, 2 * self.slots)
        def grow(t):
            out = torch.empty(n, *self.shape, dtype=self.dtype)
            out[: t.shape[0]].copy_(t)
            out[t.shape[0]:].zero_()               # only the new slots need zeroing
            return out
        self.keys = [grow(t) for t in self.keys]
        self.values = [grow(t) for t in self.values]

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor, length: int) -> None:
        """Copy the first ``length`` tokens of slots ``src`` into slots ``dst`` (rollout fan-out)."""
        for t in self.keys + self.values:
            t[dst, :, :length] = t[src, :, :length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


@dataclass
class ForkBatch:
    """The rows of one forward call (set as the thread's active batch by ``fork_mode``): the
    arguments of ``ops.fork_attention`` that every layer shares, and its backend."""

    prefix_layers: list        # per layer (keys, values) [B, kv_heads, L, head_dim]
    prefix_valid: torch.Tensor  # bool [B, L]: 1 on real tokens
    pool: SlotPool
    seq: torch.Tensor          # int64 [N]
    slot: torch.Tensor         # int64 [N]
    fill: torch.Tensor         # int64 [N]: where the row's new token goes in its slot
    row_limit: torch.Tensor | None = None   # int64 [N]: row n sees prefix positions < row_limit[n]
    backend: str = "reference"              # ops.fork_attention.fork_attention_backend's choice
    aux: ForkAux | None = None              # the reference's auxiliary tensors (reference only)

    @classmethod
    def build(cls, prefix, pool: SlotPool, seq, slot, fill, dtype, row_limit=None,
              backend: str | None = None) -> "ForkBatch":
        """``row_limit [N]`` (optional): row n sees only the first ``row_limit[n]`` prefix positions,
        so rows that share one sequence's KV can fork from different prefixes of it. The backend
        (``backend``, else $EPIC_KERNELS_BACKEND, else by device and dtype) is chosen here, once per
        model call, and the reference's auxiliary tensors are built once for every layer."""
        device = prefix.layers[0][0].device
        which = fork_attention_backend(device, dtype, backend)
        valid = prefix.mask.to(device).bool().contiguous()
        limit = None if row_limit is None else row_limit.to(torch.int64).contiguous()
        aux = None
        if which == "reference":
            aux = fork_aux(valid, seq, fill, limit, dtype, choose(seq.device, backend, "fork_layout"), device)
        return cls(prefix.layers, valid, pool, seq, slot, fill, limit, which, aux)


def fork_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function; ``query [N, H, 1, D]``, ``key/value [N, Hkv, 1, D]``.

    Writes each row's key / value into its slot of the pool and returns ``(out [N, 1, H, D], None)``
    by ``ops.fork_attention.fork_attention_impl`` on the batch's backend.
    """
    fb: ForkBatch = _local.batch
    layer = module.layer_idx
    K, V = fb.prefix_layers[layer]
    out = fork_attention_impl(query, key, value, fb.pool.keys[layer], fb.pool.values[layer], K, V,
                              fb.prefix_valid, fb.seq, fb.slot, fb.fill, fb.row_limit, scaling, fb.backend,
                              fb.aux)
    return out, None


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, fork_attention)


@contextlib.contextmanager
def fork_mode(model, batch: ForkBatch):
    """Run ``model`` with fork attention over ``batch`` for the duration of the block."""
    if not getattr(_register, "done", False):
        _register()
        _register.done = True
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    _local.batch = batch
    try:
        yield
    finally:
        config._attn_implementation = previous
        _local.batch = None


def supports_fork(model) -> bool:
    """True when the model's attention layers dispatch through transformers' attention interface."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return False
    attn = getattr(layers[0], "self_attn", None)
    return attn is not None and hasattr(attn, "layer_idx") and hasattr(model.config, "_attn_implementation")
