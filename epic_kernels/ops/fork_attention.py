"""``fork_attention``: the engine's cascade attention for one layer call of N rollout rows that
share their sequences' prefix KV without copying it (docs/engine.md, "Fork attention").

Contract (both backends; outputs to tolerance, pool writes exactly)::

    fork_attention(query [N, H, 1, D], key [N, Hkv, 1, D], value [N, Hkv, 1, D],
                   pool_k [slots, Hkv, slot_len, D], pool_v (same),          # written
                   prefix_k [B, Hkv, L, D], prefix_v (same), prefix_valid [B, L],
                   seq [N], slot [N], fill [N], row_limit [N] | None, scale | None) -> out [N, 1, H, D]

First row n's key / value are written to ``(slot[n], :, fill[n])`` of the pools; then for each
row n and head h, ``out[n, 0, h]`` is softmax attention of ``query[n, h]`` (scaled by ``scale``,
default ``D ** -0.5``) over the prefix keys of sequence ``seq[n]`` at positions j with
``prefix_valid[seq[n], j]`` set and ``j < row_limit[n]`` (when given), then the slot's tokens
``0..fill[n]``. ``H % Hkv == 0``; query head h uses kv head ``h // (H // Hkv)``. ``seq, slot,
fill`` lie in ``[0, B)``, ``[0, slots)``, ``[0, slot_len)``. The prefix is read in place, never
copied; ``prefix_k / prefix_v`` and the pools need a contiguous head_dim. A row whose limit hides
the whole prefix attends to its slot alone.

Backends (``fork_attention_backend``, built on ``ops.dispatch``): ``reference``
(``fork_attention_reference``: one matmul per sequence over its prefix, ~25 torch ops; the
specification, and the path for dtypes / head dims no kernel takes), ``cpp``
(``torch.ops.epic_kernels.fork_attention``, csrc/cpu/fork_attention.cpp: float32 / float64 CPU
tensors, no soft-capping) and ``triton`` (``triton_kernels.fork_attention.fork_attention_triton``:
CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` when forced; float16 / bfloat16 /
float32 / float64, head_dim <= 256 (float64: 128), soft-capping).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from .. import _ext
from .dispatch import choose, forced
from .fork_layout import fork_layout_impl

OP = "fork_attention"
CPP_DTYPES = (torch.float32, torch.float64)
SOFTCAP_BACKENDS = ("reference", "triton")      # the backends that implement soft-capping
_warned: set = set()


class ForkAux(NamedTuple):
    """What the reference needs besides the op's arguments; built once per model call (all layers
    share it) by ``fork_aux``."""

    row_j: torch.Tensor              # int64 [N]: the row's index j within its sequence
    pad_index: torch.Tensor          # int64 [B, R]: row of each (sequence, j), N for padding
    prefix_bias: torch.Tensor        # [B, 1, 1, L]: 0 on valid prefix positions, -inf elsewhere
    suffix_bias: torch.Tensor        # [N, 1, 1, T]: 0 for slot tokens <= fill, -inf beyond
    row_bias: torch.Tensor | None    # [B, 1, R, 1, L]: per-row prefix limits (with row_limit)


def fork_aux(prefix_valid, seq, fill, row_limit, dtype, layout_backend: str = "reference",
             device=None) -> ForkAux:
    """The reference's auxiliary tensors for one call, on ``device`` (default: prefix_valid's).
    The layout is computed where ``seq`` lives (the host, for the C++ fork_layout)."""
    device = prefix_valid.device if device is None else torch.device(device)
    B, L = prefix_valid.shape
    seq, fill = seq.to(torch.int64), fill.to(torch.int64)
    row_j, pad_index = fork_layout_impl(seq, B, layout_backend)
    T = int(fill.max()) + 1 if len(fill) else 1
    ahead = torch.arange(T, device=fill.device).view(1, T) > fill.view(-1, 1)
    suffix_bias = torch.zeros(len(seq), T, dtype=dtype, device=fill.device).masked_fill(ahead, float("-inf"))
    row_bias = None
    if row_limit is not None:
        limits = torch.full(pad_index.shape, L, dtype=torch.int64)
        limits[seq.cpu(), row_j.cpu()] = row_limit.to(torch.int64).cpu()
        beyond = torch.arange(L).view(1, 1, L) >= limits.unsqueeze(-1)
        row_bias = torch.zeros(beyond.shape, dtype=dtype).masked_fill(beyond, float("-inf"))
        row_bias = row_bias[:, None, :, None, :].to(device)
    keep = prefix_valid.to(device).bool()
    prefix_bias = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))
    return ForkAux(row_j.to(device), pad_index.to(device), prefix_bias[:, None, None, :],
                   suffix_bias.to(device)[:, None, None, :], row_bias)


def fork_attention_reference(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot,
                             fill, row_limit=None, scale=None, aux: ForkAux | None = None,
                             softcap: float | None = None) -> torch.Tensor:
    """The specification: cascade attention, the prefix part per sequence in one matmul, the slot
    part per row, merged with the log-sum-exp trick. ``aux`` (``fork_aux``) may be passed in.

    ``softcap`` (Gemma2's attention logit soft-capping): scores become ``c * tanh(s / c)`` before
    the softmax, as transformers' eager attention does. float16 / bfloat16 inputs are computed in
    float32 (as the model's own attention accumulates) and the output cast back."""
    N, H, _, D = query.shape
    Hkv = key.shape[1]
    G = H // Hkv
    scale = scale if scale is not None else D ** -0.5
    if aux is None:
        aux = fork_aux(prefix_valid, seq, fill, row_limit, query.dtype, device=query.device)
    dev = query.device
    seq, slot, fill = (t.to(dev, torch.int64) for t in (seq, slot, fill))
    pool_k[slot, :, fill] = key[:, :, 0]
    pool_v[slot, :, fill] = value[:, :, 0]
    T = aux.suffix_bias.shape[-1]
    suf_k, suf_v = pool_k[slot, :, :T], pool_v[slot, :, :T]
    out_dtype = query.dtype
    if out_dtype in (torch.float16, torch.bfloat16):   # accumulate in float32, as the model's attention does
        query, suf_k, suf_v, prefix_k, prefix_v = (t.float() for t in (query, suf_k, suf_v, prefix_k, prefix_v))
        aux = ForkAux(aux.row_j, aux.pad_index, aux.prefix_bias.float(), aux.suffix_bias.float(),
                      None if aux.row_bias is None else aux.row_bias.float())

    def cap(t):                                     # soft-capping, in place (before any mask)
        return t if softcap is None else t.div_(softcap).tanh_().mul_(softcap)
    q = query[:, :, 0].reshape(N, Hkv, G, D)
    # suffix part: each row against its own slot
    s_suf = cap(torch.matmul(q, suf_k.transpose(-1, -2)).mul_(scale)).add_(aux.suffix_bias)
    m_suf = s_suf.amax(-1, keepdim=True)
    e_suf = s_suf.sub_(m_suf).exp_()
    o_suf = torch.matmul(e_suf, suf_v)
    l_suf = e_suf.sum(-1, keepdim=True)
    # prefix part: all rows of a sequence in one matmul against its prefix, read in place.
    # In-place ops keep a single [B, Hkv, R*G, L] score buffer alive.
    B, R = aux.pad_index.shape
    q_pad = torch.cat([q, q.new_zeros(1, Hkv, G, D)])[aux.pad_index]           # [B, R, Hkv, G, D]
    q_pad = q_pad.permute(0, 2, 1, 3, 4).reshape(B, Hkv, R * G, D)
    s_pre = cap(torch.matmul(q_pad, prefix_k.transpose(-1, -2)).mul_(scale)).add_(aux.prefix_bias)  # [B, Hkv, R*G, L]
    if aux.row_bias is not None:
        s_pre.view(B, Hkv, R, G, -1).add_(aux.row_bias)
    # clamped: a row that sees no prefix position (all -inf) gets e_pre = 0, not exp(-inf + inf) = NaN
    m_pre = s_pre.amax(-1, keepdim=True).clamp_min_(torch.finfo(s_pre.dtype).min)
    e_pre = s_pre.sub_(m_pre).exp_()
    l_pre = e_pre.sum(-1, keepdim=True)
    o_pre = torch.matmul(e_pre, prefix_v)
    del s_pre, e_pre

    def rows(t):                                    # [B, Hkv, R*G, x] -> [N, Hkv, G, x]
        return t.view(B, Hkv, R, G, -1)[seq, :, aux.row_j]
    o_pre, m_pre, l_pre = rows(o_pre), rows(m_pre), rows(l_pre)
    m = torch.maximum(m_pre, m_suf)
    a, b = torch.exp(m_pre - m), torch.exp(m_suf - m)
    out = (o_pre * a + o_suf * b) / (l_pre * a + l_suf * b)     # [N, Hkv, G, D]
    return out.reshape(N, 1, H, D).to(out_dtype)


def fork_attention_backend(device, dtype: torch.dtype, backend: str | None = None) -> str:
    """``dispatch.choose`` for fork_attention plus the dtype: the C++ kernel takes float32 /
    float64; other dtypes run the reference (one warning), or raise when ``cpp`` was forced."""
    which = choose(device, backend, OP)
    if which == "cpp" and dtype not in CPP_DTYPES:
        if forced(backend, OP) == "cpp":
            raise RuntimeError(f"backend 'cpp' was requested for fork_attention but its C++ kernel takes "
                               f"float32 or float64 tensors, got {dtype}")
        if dtype not in _warned:
            _warned.add(dtype)
            warnings.warn(f"epic_kernels: the C++ fork_attention takes float32 / float64, got {dtype}; "
                          "using the pure-PyTorch reference", RuntimeWarning, stacklevel=2)
        which = "reference"
    return which


def check_fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot,
                         fill, row_limit=None, scale=None) -> None:
    """The op's validator (``ValueError`` naming the argument); see the module docstring."""
    tensors = dict(query=query, key=key, value=value, pool_k=pool_k, pool_v=pool_v, prefix_k=prefix_k,
                   prefix_v=prefix_v)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.dtype.is_floating_point:
            raise ValueError(f"fork_attention: {name} must be a 4-D floating tensor")
        if t.dtype != query.dtype or t.device != query.device:
            raise ValueError(f"fork_attention: {name} must have query's dtype and device "
                             f"({query.dtype}, {query.device}), got {t.dtype}, {t.device}")
    N, H, one, D = query.shape
    Hkv = key.shape[1]
    if one != 1 or Hkv < 1 or H % Hkv:
        raise ValueError(f"fork_attention: query must be [N, H, 1, D] with H a multiple of key's heads, "
                         f"got {tuple(query.shape)} and {tuple(key.shape)}")
    for name in ("key", "value"):
        if tuple(tensors[name].shape) != (N, Hkv, 1, D):
            raise ValueError(f"fork_attention: {name} must have shape {(N, Hkv, 1, D)}, "
                             f"got {tuple(tensors[name].shape)}")
    slots, _, slot_len, _ = pool_k.shape
    B, _, L, _ = prefix_k.shape
    for name, want in (("pool_k", (slots, Hkv, slot_len, D)), ("pool_v", (slots, Hkv, slot_len, D)),
                       ("prefix_k", (B, Hkv, L, D)), ("prefix_v", (B, Hkv, L, D))):
        t = tensors[name]
        if tuple(t.shape) != want:
            raise ValueError(f"fork_attention: {name} must have shape {want}, got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"fork_attention: {name} needs a contiguous head_dim (it is read in place)")
    if not isinstance(prefix_valid, torch.Tensor) or tuple(prefix_valid.shape) != (B, L) \
            or prefix_valid.dtype.is_floating_point:
        raise ValueError(f"fork_attention: prefix_valid must be a bool or integer tensor [{B}, {L}]")
    for name, t, hi in (("seq", seq, B), ("slot", slot, slots), ("fill", fill, slot_len),
                        ("row_limit", row_limit, None)):
        if t is None and name == "row_limit":
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or len(t) != N or t.dtype.is_floating_point \
                or t.dtype == torch.bool:
            raise ValueError(f"fork_attention: {name} must be an integer tensor [{N}]")
        if N and (int(t.min()) < 0 or (hi is not None and int(t.max()) >= hi)):
            raise ValueError(f"fork_attention: {name} values must lie in [0, {hi if hi is not None else 'inf'})")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"fork_attention: scale must be a float or None, got {scale!r}")


def fork_attention_impl(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                        row_limit=None, scale=None, backend: str = "reference",
                        aux: ForkAux | None = None, softcap: float | None = None) -> torch.Tensor:
    """No validation (the engine calls this once per layer); ``backend`` from
    ``fork_attention_backend``. ``aux``: the reference's ``fork_aux``, built once per model call.
    ``softcap``: the reference and Triton (the C++ kernel has none: pass ``backend="reference"``).
    Triton with a head_dim its kernels do not take (> 256; float64 > 128) runs the reference (one
    warning), or raises when Triton was forced."""
    if softcap is not None and backend not in SOFTCAP_BACKENDS:
        raise ValueError("fork_attention: soft-capping runs on the reference and Triton backends only")
    if backend == "triton":
        from ..triton_kernels import fork_attention as tfa
        if tfa.supports(query.dtype, query.shape[-1]):
            return tfa.fork_attention_triton(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid,
                                             seq, slot, fill, row_limit, scale, softcap)
        why = (f"the Triton fork_attention takes head_dim <= {tfa.MAX_HEAD_DIM} (float64: <= 128), "
               f"got {query.shape[-1]} ({query.dtype})")
        if forced(None, OP) == "triton":
            raise RuntimeError(f"backend 'triton' was requested for fork_attention but {why}")
        if why not in _warned:
            _warned.add(why)
            warnings.warn(f"epic_kernels: {why}; using the pure-PyTorch reference", RuntimeWarning, stacklevel=2)
        backend, aux = "reference", None
    if backend in ("cpp", "cpu"):
        scale = scale if scale is not None else query.shape[-1] ** -0.5
        return _ext.op(OP)(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot,
                           fill, row_limit, float(scale))
    return fork_attention_reference(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq,
                                    slot, fill, row_limit, scale, aux, softcap)


def fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                   row_limit=None, scale=None, *, backend: str | None = None) -> torch.Tensor:
    """Validated fork attention (see the module docstring). Returns ``out [N, 1, H, D]`` and writes
    the rows' keys / values into ``pool_k / pool_v``."""
    check_fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                         row_limit, scale)
    which = fork_attention_backend(query.device, query.dtype, backend)
    return fork_attention_impl(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot,
                               fill, row_limit, scale, which)


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``)."""

    @torch.library.register_fake("epic_kernels::fork_attention")
    def _fork_attention_fake(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid,
                             seq, slot, fill, row_limit, scale):
        torch._check(query.dim() == 4 and query.shape[2] == 1,
                     lambda: f"query must have shape (N, H, 1, D), got {tuple(query.shape)}")
        torch._check(query.dtype in CPP_DTYPES,
                     lambda: f"query must be float32 or float64, got {query.dtype}")
        n, h, _, d = query.shape
        return query.new_empty((n, 1, h, d))


__all__ = ["fork_attention", "fork_attention_impl", "fork_attention_reference", "fork_attention_backend",
           "fork_aux", "ForkAux", "check_fork_attention", "register_fake", "CPP_DTYPES", "SOFTCAP_BACKENDS"]
