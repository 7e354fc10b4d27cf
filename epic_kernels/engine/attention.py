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
from ..ops.fork_attention import SOFTCAP_BACKENDS, ForkAux, fork_attention_backend, fork_attention_impl, fork_aux

ATTENTION_NAME = "epic_fork"
_local = threading.local()


class SlotPool:
    """Per-layer suffix storage ``[slots, kv_heads, horizon, head_dim]`` for the rollout rows of a step."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype, device=None):
        self.shape = (kv_heads, slot_len, head_dim)
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.keys = [torch.empty(0, *self.shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.values = [torch.empty(0, *self.shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.used = 0
        self.free: list[int] = []

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    def reset(self) -> None:
        """Forget every slot (the storage is kept for the next step: stale contents are finite and
        lie beyond every new row's fill, so they are masked out)."""
        self.used = 0
        self.free = []

    def fits(self, n_layers: int, kv_heads: int, head_dim: int, slot_len: int, dtype, device=None) -> bool:
        device = torch.device("cpu") if device is None else torch.device(device)
        return (len(self.keys) == n_layers and self.shape[0] == kv_heads and self.shape[2] == head_dim
                and self.shape[1] >= slot_len and self.dtype == dtype and self.device == device)

    def take(self, n: int) -> torch.Tensor:
        """Hand out ``n`` unused slots (released ones first, then new ones, growing the pool if
        needed); returns their ids, int64 ``[n]``."""
        got = self.free[:n]
        self.free = self.free[n:]
        rest = n - len(got)
        if rest:
            got = got + list(range(self.used, self.used + rest))
            self.used += rest
            self.reserve(self.used)
        return torch.tensor(got, dtype=torch.int64)

    def release(self, ids) -> None:
        """Give slots back for reuse in this step (stale contents lie beyond every new row's fill)."""
        self.free.extend(int(i) for i in ids)

    def reserve(self, n: int) -> None:
        """Make room for ``n`` slots (contents of existing slots kept). New slots are zeroed: tokens
        beyond a row's fill are masked out, and a masked score must multiply a finite value."""
        if n <= self.slots:
            return
        n = max(n, 2 * self.slots)
        def grow(t):
            out = torch.empty(n, *self.shape, dtype=self.dtype, device=self.device)
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
    max_position: int = 0                   # the largest position id of the call's rows
    calls: int = 0                          # layer calls made through fork attention (checked)

    @classmethod
    def build(cls, prefix, pool: SlotPool, seq, slot, fill, dtype, row_limit=None,
              backend: str | None = None, max_position: int = 0) -> "ForkBatch":
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
        return cls(prefix.layers, valid, pool, seq, slot, fill, limit, which, aux, int(max_position))

    def reference_aux(self, dtype) -> ForkAux:
        """The reference's auxiliary tensors, built on first need (a layer the C++ kernel cannot run)."""
        if self.aux is None:
            device = self.prefix_layers[0][0].device
            self.aux = fork_aux(self.prefix_valid, self.seq, self.fill, self.row_limit, dtype,
                                choose(self.seq.device, None, "fork_layout"), device)
        return self.aux


def fork_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function; ``query [N, H, 1, D]``, ``key/value [N, Hkv, 1, D]``.

    Writes each row's key / value into its slot of the pool and returns ``(out [N, 1, H, D], None)``
    by ``ops.fork_attention.fork_attention_impl`` on the batch's backend.
    """
    fb: ForkBatch = _local.batch
    layer = module.layer_idx
    fb.calls += 1
    window = kwargs.get("sliding_window")
    if window is not None and fb.max_position >= window:
        raise RuntimeError(f"fork attention: layer {layer} has a sliding window of {window} tokens and this call "
                           f"reaches position {fb.max_position}; the engine should have used the reference engine")
    if kwargs.get("s_aux") is not None:
        raise RuntimeError(f"fork attention: layer {layer} has attention sinks, which fork attention does not "
                           "implement; the engine should have used the reference engine")
    if dropout:
        raise RuntimeError("fork attention runs in eval mode only (dropout > 0)")
    softcap = kwargs.get("softcap")
    backend, aux = fb.backend, fb.aux
    if softcap is not None and backend not in SOFTCAP_BACKENDS:      # the C++ kernel has no soft-capping
        backend, aux = "reference", fb.reference_aux(query.dtype)
    K, V = fb.prefix_layers[layer]
    out = fork_attention_impl(query, key, value, fb.pool.keys[layer], fb.pool.values[layer], K, V,
                              fb.prefix_valid, fb.seq, fb.slot, fb.fill, fb.row_limit, scaling, backend, aux, softcap)
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


def attention_layers(model) -> list | None:
    """The decoder layers' attention modules, when the model has the ``model.layers[i].self_attn``
    layout of transformers' decoder-only families (Llama, Qwen, Mistral, Gemma, Phi, MoE ...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return None
    attns = [getattr(layer, "self_attn", None) for layer in layers]
    if any(a is None or not hasattr(a, "layer_idx") for a in attns):
        return None
    return attns


def sliding_windows(model) -> list[int | None]:
    """Each attention layer's sliding window (None: full attention), read from the layer itself
    (its ``sliding_window``) or, when the layer has no such attribute, from its config."""
    out = []
    for attn in attention_layers(model) or []:
        if hasattr(attn, "sliding_window"):
            out.append(attn.sliding_window)
        else:
            cfg = getattr(attn, "config", None) or model.config
            out.append(getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None)
    return out


def fork_refusal(model, max_position: int | None = None) -> str | None:
    """Why the fast engine cannot run ``model`` exactly (None: it can), decided from the attention
    layers' own configuration. ``max_position``: the largest position id a step's rows will reach
    (a sliding window that this never reaches does not bind, so it does not refuse)."""
    attns = attention_layers(model)
    if attns is None or not hasattr(model.config, "_attn_implementation"):
        return (f"{type(model).__name__} does not have transformers' model.layers[i].self_attn layout, through "
                "which fork attention is installed")
    for i, attn in enumerate(attns):
        if getattr(attn, "sinks", None) is not None:
            return f"layer {i} has attention sinks, which fork attention does not implement"
    windows = [w for w in sliding_windows(model) if w is not None]
    if windows:
        if max_position is None:
            return f"its layers have sliding windows (of {min(windows)} tokens) and the context length is not known"
        if max_position >= min(windows):
            return (f"its sliding window of {min(windows)} tokens binds at position {max_position}, and fork "
                    "attention does not implement sliding windows")
    return None


def supports_fork(model, max_position: int | None = None) -> bool:
    """True when the fast engine runs ``model`` exactly (``fork_refusal`` gives the reason otherwise)."""
    return fork_refusal(model, max_position) is None
