"""Fork attention: many rollout rows share their sequence's prefix KV without copying it.

Registered with transformers' attention interface as ``"epic_fork"``; the engine switches a model to
it only for its own forward calls (``fork_mode``). Each row n of such a call belongs to sequence
``seq[n]`` and owns slot ``slot[n]`` of a small pool holding its suffix (candidate token plus rollout
tokens, at most ``horizon`` of them). Attention of a row's query is split in two and merged with the
log-sum-exp trick (cascade attention):

    prefix part  q_n . K_prefix[seq[n]]   computed per sequence for all its rows in one matmul
    suffix part  q_n . K_slot[slot[n]]    a few tokens per row

so the prefix is read in place, and the memory a step adds is the pool: rows x horizon tokens.

Two implementations of one contract: ``_fork_attention_torch`` (readable, ~25 torch ops per layer
call; the specification) and the fused C++ op ``torch.ops.epic_kernels.fork_attention``
(``csrc/cpu/fork_attention_cpu.cpp``), which ``fork_attention`` uses for float32 / float64 CPU
tensors when the extension is built, unless ``EPIC_KERNELS_BACKEND=reference``.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from .. import _ext
from ..ops._dispatch import choose

ATTENTION_NAME = "epic_fork"
_local = threading.local()
_CPP_DTYPES = (torch.float32, torch.float64)


def cpu_kernel(device: torch.device):
    """``torch.ops.epic_kernels.fork_attention.default`` when fork attention on ``device`` should run
    the C++ op (CPU tensors, extension built with the op, backend not forced to another one), else
    None (the torch path: CUDA tensors always take it)."""
    if device.type != "cpu" or choose(device) != "cpu":
        return None
    return _ext.op("fork_attention")                 # the extension was loaded by choose()


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
    """The rows of one forward call (set as the thread's active batch by ``fork_mode``)."""

    prefix_layers: list        # per layer (keys, values) [B, kv_heads, L, head_dim]
    prefix_bias: torch.Tensor  # [B, 1, 1, L]
    pool: SlotPool
    seq: torch.Tensor          # int64 [N]
    slot: torch.Tensor         # int64 [N]
    fill: torch.Tensor         # int64 [N]: where the row's new token goes in its slot
    pad_index: torch.Tensor    # int64 [B, R]: row of each (sequence, j), N for padding
    row_j: torch.Tensor        # int64 [N]: the row's index j within its sequence
    suffix_bias: torch.Tensor  # [N, 1, 1, T]: 0 for slot tokens <= fill, -inf beyond
    row_bias: torch.Tensor | None = None   # [B, 1, R, 1, L]: per-row prefix limits (optional)
    # the C++ path (see fork_attention): the op, or None for the torch path
    kernel: object = None
    prefix_valid: torch.Tensor | None = None  # bool [B, L]: 1 on real tokens
    row_limit: torch.Tensor | None = None     # int64 [N] (optional)

    @classmethod
    def build(cls, prefix, pool: SlotPool, seq, slot, fill, dtype, row_limit=None) -> "ForkBatch":
        """``row_limit [N]`` (optional): row n sees only the first ``row_limit[n]`` prefix positions,
        so rows that share one sequence's KV can fork from different prefixes of it. Whether the
        C++ op runs is decided here, once per model call (``cpu_kernel``)."""
        from .rows import fork_layout_impl

        B = prefix.batch
        kernel = cpu_kernel(prefix.mask.device)
        row_j, pad_index = fork_layout_impl(seq, B, "cpu" if kernel is not None else "reference")
        T = int(fill.max()) + 1
        ahead = torch.arange(T).view(1, T) > fill.view(-1, 1)
        suffix_bias = torch.zeros(len(seq), T, dtype=dtype).masked_fill(ahead, float("-inf"))
        row_bias = None
        if row_limit is not None:
            L = prefix.mask.shape[1]
            limits = torch.full(pad_index.shape, L, dtype=torch.int64)
            limits[seq, row_j] = row_limit
            beyond = torch.arange(L).view(1, 1, L) >= limits.unsqueeze(-1)
            row_bias = torch.zeros(beyond.shape, dtype=dtype).masked_fill(beyond, float("-inf"))
            row_bias = row_bias[:, None, :, None, :]
        valid = prefix.mask.bool().contiguous() if kernel is not None else None
        limit = None
        if kernel is not None and row_limit is not None:
            limit = row_limit.to(torch.int64).contiguous()
        return cls(prefix.layers, prefix.bias(dtype), pool, seq, slot, fill, pad_index, row_j,
                   suffix_bias[:, None, None, :], row_bias, kernel, valid, limit)


def fork_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function; ``query [N, H, 1, D]``, ``key/value [N, Hkv, 1, D]``.

    Writes each row's key / value into its slot of the pool and returns ``(out [N, 1, H, D], None)``.
    Float32 / float64 CPU tensors run the fused C++ op when the batch selected it (``cpu_kernel``:
    extension built, backend not forced to ``reference``); everything else, CUDA tensors included,
    runs ``_fork_attention_torch``, the readable specification both are tested against.
    """
    fb: ForkBatch = _local.batch
    if (fb.kernel is not None and query.device.type == "cpu" and query.dtype in _CPP_DTYPES
            and fb.pool.dtype == query.dtype):
        layer = module.layer_idx
        K, V = fb.prefix_layers[layer]
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = fb.kernel(query, key, value, fb.pool.keys[layer], fb.pool.values[layer], K, V, fb.prefix_valid,
                        fb.seq, fb.slot, fb.fill, fb.row_limit, float(scale))
        return out, None
    return _fork_attention_torch(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


def _fork_attention_torch(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """The torch implementation (and specification) of ``fork_attention``: ~25 small ops per call."""
    fb: ForkBatch = _local.batch
    layer = module.layer_idx
    N, H, _, D = query.shape
    Hkv = key.shape[1]
    G = H // Hkv
    scale = scaling if scaling is not None else D ** -0.5
    pool_k, pool_v = fb.pool.keys[layer], fb.pool.values[layer]
    pool_k[fb.slot, :, fb.fill] = key[:, :, 0]
    pool_v[fb.slot, :, fb.fill] = value[:, :, 0]
    T = fb.suffix_bias.shape[-1]
    q = query[:, :, 0].reshape(N, Hkv, G, D)
    # suffix part: each row against its own slot
    s_suf = torch.matmul(q, pool_k[fb.slot, :, :T].transpose(-1, -2)).mul_(scale).add_(fb.suffix_bias)
    m_suf = s_suf.amax(-1, keepdim=True)
    e_suf = s_suf.sub_(m_suf).exp_()
    o_suf = torch.matmul(e_suf, pool_v[fb.slot, :, :T])
    l_suf = e_suf.sum(-1, keepdim=True)
    # prefix part: all rows of a sequence in one matmul against its prefix, read in place.
    # In-place ops keep a single [B, Hkv, R*G, L] score buffer alive.
    K, V = fb.prefix_layers[layer]
    B, R = fb.pad_index.shape
    q_pad = torch.cat([q, q.new_zeros(1, Hkv, G, D)])[fb.pad_index]           # [B, R, Hkv, G, D]
    q_pad = q_pad.permute(0, 2, 1, 3, 4).reshape(B, Hkv, R * G, D)
    s_pre = torch.matmul(q_pad, K.transpose(-1, -2)).mul_(scale).add_(fb.prefix_bias)  # [B, Hkv, R*G, L]
    if fb.row_bias is not None:
        s_pre.view(B, Hkv, R, G, -1).add_(fb.row_bias)
    # clamped: a row that sees no prefix position (all -inf) gets e_pre = 0, not exp(-inf + inf) = NaN
    m_pre = s_pre.amax(-1, keepdim=True).clamp_min_(torch.finfo(s_pre.dtype).min)
    e_pre = s_pre.sub_(m_pre).exp_()
    l_pre = e_pre.sum(-1, keepdim=True)
    o_pre = torch.matmul(e_pre, V)
    del s_pre, e_pre

    def rows(t):                                    # [B, Hkv, R*G, x] -> [N, Hkv, G, x]
        return t.view(B, Hkv, R, G, -1)[fb.seq, :, fb.row_j]
    o_pre, m_pre, l_pre = rows(o_pre), rows(m_pre), rows(l_pre)
    m = torch.maximum(m_pre, m_suf)
    a, b = torch.exp(m_pre - m), torch.exp(m_suf - m)
    out = (o_pre * a + o_suf * b) / (l_pre * a + l_suf * b)     # [N, Hkv, G, D]
    return out.reshape(N, 1, H, D), None


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
