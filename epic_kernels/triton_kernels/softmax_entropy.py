"""Batched softmax entropy and log-sum-exp in one pass over ``logits [N, V]``, optionally drawing the
keyed Gumbel-max token of each row in the same pass (the rollout step).

Online statistics per lane, one element entering at a time (``m`` running max, ``s = sum e^{x-m}``,
``t = sum e^{x-m} (x-m)``); when ``x > m`` the old sums are rescaled by ``r = e^{m-x}``::

    x <= m:  s += r,            t += r (x - m)                       r = e^{-|x-m|}
    x >  m:  s  = s r + 1,      t  = r (t - s (x - m)),   m = x

``-inf`` entries leave the state untouched. Lanes, then vocabulary chunks, are merged with
``M = max m_i, a_i = e^{m_i-M}, S = sum a_i s_i, T = sum a_i (t_i + s_i (m_i - M))`` and finally
``H = log S - T / S``, ``lse = M + log S``.

Two launch shapes: one program per row (``N`` large), or the vocabulary split over ``C`` programs per
row writing partial ``(m, s, t, best value, best id)`` and a tiny combine kernel (``N`` small).
"""
from __future__ import annotations

import functools

import torch

from ..core import compute_dtype
from .common import (Launch, check_device, check_logits, gumbel_noise, is_interpreted, noise_keys, require_triton,
                     tl, triton)


@triton.jit
def _online_update(m, s, t, x):
    """Add one element ``x`` per lane to the lane statistics (m, s, t)."""
    valid = x > float("-inf")
    xs = tl.where(valid, x, 0.0)                       # finite stand-ins: no inf - inf anywhere
    d = xs - tl.where(m > float("-inf"), m, xs)        # 0 for a lane's first finite element
    r = tl.exp(-tl.abs(d))
    up = d > 0
    s_new = tl.where(up, s * r + 1.0, s + r)
    t_new = tl.where(up, r * (t - s * d), t + r * d)
    return tl.where(valid, tl.maximum(m, x), m), tl.where(valid, s_new, s), tl.where(valid, t_new, t)


@triton.jit
def _reduce_lanes(m, s, t, bv, bi, BIG):
    """Merge lane (or chunk) statistics into scalars; the best value keeps the lowest id on ties."""
    M = tl.max(m, 0)
    live = s > 0                                       # lanes that saw a finite element
    Mf = tl.where(M > float("-inf"), M, 0.0)
    d = tl.where(live, m, Mf) - Mf                     # m_i - M, 0 for empty lanes
    a = tl.where(live, tl.exp(d), 0.0)
    S = tl.sum(a * s, 0)
    T = tl.sum(a * (t + s * d), 0)
    BV = tl.max(bv, 0)
    BI = tl.min(tl.where(bv == BV, bi, BIG), 0)
    return M, S, T, BV, BI


@triton.jit(do_not_specialize=["NUM_CHUNKS"])
def _softmax_entropy_partial_kernel(logits_ptr, key_ptr, base_ptr, ent_ptr, lse_ptr, tok_ptr,
                                    pm_ptr, ps_ptr, pt_ptr, pbv_ptr, pbi_ptr, V, stride_row, CHUNK,
                                    NUM_CHUNKS, ACC: tl.constexpr, SAMPLE: tl.constexpr,
                                    SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    t = tl.zeros([BLOCK], ACC)
    bv = tl.full([BLOCK], float("-inf"), ACC)
    bi = tl.zeros([BLOCK], tl.int32) + V
    if SAMPLE:
        key = tl.load(key_ptr + row)
        base = tl.load(base_ptr + row)
    for off in range(0, CHUNK, BLOCK):
        cols = chunk * CHUNK + off + lanes
        x = tl.load(logits_ptr + row * stride_row + cols, mask=cols < V, other=float("-inf")).to(ACC)
        m, s, t = _online_update(m, s, t, x)
        if SAMPLE:
            val = x + gumbel_noise(key, base + cols.to(tl.int64)).to(ACC)
            better = val > bv                      # strict: a lane sees ascending ids
            bv = tl.where(better, val, bv)
            bi = tl.where(better, cols, bi)
    M, S, T, BV, BI = _reduce_lanes(m, s, t, bv, bi, V)
    if SPLIT:
        p = row * NUM_CHUNKS + chunk
        tl.store(pm_ptr + p, M)
        tl.store(ps_ptr + p, S)
        tl.store(pt_ptr + p, T)
        tl.store(pbv_ptr + p, BV)
        tl.store(pbi_ptr + p, BI)
    else:
        tl.store(ent_ptr + row, tl.log(S) - T / S)
        tl.store(lse_ptr + row, M + tl.log(S))
        if SAMPLE:
            tl.store(tok_ptr + row, BI.to(tl.int64))


@triton.jit(do_not_specialize=["NUM_CHUNKS"])
def _softmax_entropy_combine_kernel(pm_ptr, ps_ptr, pt_ptr, pbv_ptr, pbi_ptr, ent_ptr, lse_ptr, tok_ptr,
                                    V, NUM_CHUNKS, SAMPLE: tl.constexpr, CPAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, CPAD)
    mask = c < NUM_CHUNKS
    p = row * NUM_CHUNKS + c
    m = tl.load(pm_ptr + p, mask=mask, other=float("-inf"))
    s = tl.load(ps_ptr + p, mask=mask, other=0.0)
    t = tl.load(pt_ptr + p, mask=mask, other=0.0)
    bv = tl.load(pbv_ptr + p, mask=mask, other=float("-inf"))
    bi = tl.load(pbi_ptr + p, mask=mask, other=V)
    M, S, T, BV, BI = _reduce_lanes(m, s, t, bv, bi, V)
    tl.store(ent_ptr + row, tl.log(S) - T / S)
    tl.store(lse_ptr + row, M + tl.log(S))
    if SAMPLE:
        tl.store(tok_ptr + row, BI.to(tl.int64))


COMPILED_BLOCK = 1024          # logits per block of a compiled kernel (4 warps)
MAX_CHUNKS = 1024              # vocabulary chunks per row at most (the combine's CPAD compiled)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def plan_chunks(rows: int, vocab: int, device: torch.device, interpreted: bool,
                num_chunks: int | None = None) -> tuple[int, int, int]:
    """``(num_chunks, chunk, BLOCK)`` for ``rows x vocab``: split the vocabulary when rows are few.

    Aim for about two programs per SM; every chunk holds at least four blocks so the combine stays
    cheap; at most MAX_CHUNKS chunks. ``num_chunks`` forces a split (tests, tuning). Compiled, BLOCK
    is always COMPILED_BLOCK (a short row is masked): one compiled variant per dtype and flags, the
    set tools/compile_report.py checks. Interpreted, blocks fit the row (up to 4096: fewer steps).
    """
    block = COMPILED_BLOCK if not interpreted else min(4096, max(16, triton.next_power_of_2(vocab)))
    if num_chunks is None:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 4
        most = triton.cdiv(vocab, 4 * block)
        num_chunks = 1 if rows >= 2 * sms else max(1, min(most, triton.cdiv(2 * sms, rows), MAX_CHUNKS))
    num_chunks = max(1, min(int(num_chunks), triton.cdiv(vocab, 16), MAX_CHUNKS))
    chunk_len = triton.cdiv(vocab, num_chunks)
    if interpreted:
        block = min(block, max(16, triton.next_power_of_2(chunk_len)))
    chunk = triton.cdiv(chunk_len, block) * block
    return triton.cdiv(vocab, chunk), chunk, block


def combine_pad(num_chunks: int, interpreted: bool) -> int:
    """CPAD of the combine kernel: MAX_CHUNKS compiled (one variant), the chunks' power of two
    interpreted."""
    return MAX_CHUNKS if not interpreted else max(16, triton.next_power_of_2(num_chunks))


def softmax_entropy_triton(logits: torch.Tensor, seeds: torch.Tensor | None = None, streams=None,
                           positions: torch.Tensor | None = None, *, num_chunks: int | None = None):
    """Entropy and log-sum-exp of ``softmax(logits)`` per row, plus an optional keyed Gumbel-max token.

    Parameters
    ----------
    logits : ``[N, V]`` float16 / bfloat16 / float32 / float64, last dim contiguous; ``-inf`` allowed,
        at least one finite entry per row (not checked here: a row of only ``-inf`` gives NaN).
    seeds : int64 ``[N]`` in ``[0, 2**32)`` or None. When given, also sample
        ``argmax_v (logits_v + G_v)`` with the noise of ``epic_kernels.philox.noise``.
    streams : None (0, step noise), an int, or int64 ``[N]`` (``1 + r`` for rollout r).
    positions : int64 ``[N]`` in ``[0, 2**31)``; required with ``seeds``.
    num_chunks : force the number of vocabulary chunks per row (None: heuristic).

    Returns
    -------
    entropy, lse : ``[N]`` float32 (float64 for float64 logits).
    tokens : int64 ``[N]`` (lower id on ties), or None when ``seeds`` is None.
    """
    require_triton()
    check_logits(logits)
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    N, V = logits.shape
    dev, acc = logits.device, compute_dtype(logits.dtype)
    check_device(_softmax_entropy_partial_kernel, logits)
    sample = seeds is not None
    if sample:
        if positions is None:
            raise ValueError("positions are required with seeds")
        key, base = noise_keys(seeds, streams, positions, N, dev)
    else:
        key = base = torch.zeros(1, dtype=torch.int64, device=dev)
    if N == 0:
        empty = torch.empty(0, dtype=acc, device=dev)
        return empty, empty.clone(), (torch.empty(0, dtype=torch.int64, device=dev) if sample else None)
    interpreted = is_interpreted(_softmax_entropy_partial_kernel)
    C, chunk, block = plan_chunks(N, V, dev, interpreted, num_chunks)
    ent = torch.empty(N, dtype=acc, device=dev)
    lse = torch.empty(N, dtype=acc, device=dev)
    tok = torch.empty(N if sample else 1, dtype=torch.int64, device=dev)
    parts = [torch.empty(N * C if C > 1 else 1, dtype=d, device=dev) for d in (acc,) * 4 + (torch.int32,)]
    _softmax_entropy_partial_kernel[(N, C)](
        logits, key, base, ent, lse, tok, *parts, V, logits.stride(0), chunk, C,
        **partial_meta(acc, sample, C, block))
    if C > 1:
        _softmax_entropy_combine_kernel[(N,)](*parts, ent, lse, tok, V, C, SAMPLE=sample,
                                              CPAD=combine_pad(C, interpreted))
    return ent, lse, (tok if sample else None)


def partial_meta(acc: torch.dtype, sample: bool, num_chunks: int, block: int) -> dict:
    """Constexprs and num_warps of ``_softmax_entropy_partial_kernel``."""
    return dict(ACC=tl.float64 if acc == torch.float64 else tl.float32, SAMPLE=sample, SPLIT=num_chunks > 1,
                BLOCK=block, num_warps=8 if block > 1024 else 4)


# the engine's shapes the compile space is evaluated at (Llama-3's vocabulary; one row splits, 256 do not)
REPRESENTATIVE_V = 128256


def compile_space() -> list:
    """Every variant the compiled dispatch launches: dtype x SAMPLE x SPLIT of the partial kernel
    (BLOCK is always COMPILED_BLOCK), SAMPLE x accumulate dtype of the combine (CPAD = MAX_CHUNKS)."""
    out, V, cpu = [], REPRESENTATIVE_V, torch.device("cpu")
    i64 = torch.empty(1, dtype=torch.int64)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        acc = compute_dtype(dtype)
        x = torch.empty(1, 16, dtype=dtype)
        res = [torch.empty(1, dtype=acc) for _ in range(2)]
        parts = [torch.empty(1, dtype=d) for d in (acc,) * 4 + (torch.int32,)]
        for sample in (False, True):
            for rows in (256, 1):                           # 256 rows: one chunk; 1 row: split
                C, chunk, block = plan_chunks(rows, V, cpu, False)
                out.append(Launch(_softmax_entropy_partial_kernel, (x, i64, i64, *res, i64, *parts, V, V, chunk, C),
                                  partial_meta(acc, sample, C, block)))
                if C > 1 and dtype in (torch.float32, torch.float64):   # the combine sees only acc
                    out.append(Launch(_softmax_entropy_combine_kernel, (*parts, *res, i64, V, C),
                                      dict(SAMPLE=sample, CPAD=combine_pad(C, False))))
    return out
