"""Fork (cascade) attention of one layer call: N one-token rows, each attending to its sequence's
shared prefix (read in place) and to its own slot of the pool; ``ops.fork_attention``'s contract.

Three launches (FlashDecoding's split of the prefix, Hydragen / FlashInfer-cascade's sharing of it)::

    1. _fork_slot_write_kernel      pool[slot[n], :, fill[n]] = key / value of row n     grid (N Hkv / 16)
    2. _fork_prefix_kernel          per (tile, kv head, chunk): the tile's query vectors
                                    against one chunk of the prefix; writes (m, l, acc)   grid (tiles, Hkv, C)
    3. _fork_suffix_merge_kernel    per 16 (row, head) pairs: merge the C chunk states,
                                    continue over slot tokens 0..fill; o = acc / l        grid (N H / 16)

A *query vector* is (row, query head). The rows of one sequence are sorted together and their
``rows x G`` vectors of one kv head (G = H / Hkv) cut into tiles of BLOCK_M, so each prefix block of
BLOCK_N keys and values is loaded once per tile and used by BLOCK_M vectors in two ``tl.dot``s: the
prefix is read once per (tile, kv head), not once per row. Chunks of the prefix run in parallel
(about two programs per SM) so that a few rows still fill the GPU.

Online softmax per vector (masked keys get ``-inf``; ``m_safe`` keeps ``-inf - -inf`` out)::

    s = (q . k_j) * scale   [softcap c: s = c tanh(s / c)];  M = max(m, max_j s_j)
    p_j = e^{s_j - M};  l = l e^{m - M} + sum_j p_j;  acc = acc e^{m - M} + sum_j p_j v_j;  m = M

Merging chunk states is the same rescaling; the output is ``acc / l`` (l > 0: every row sees its own
token). Accumulation is float32 (float64 for float64 inputs). float16 / bfloat16: ``q . k`` on tensor
cores (products of half values are exact in float32), and ``p v`` as ``p_hi v + p_lo v`` with
``p_hi = half(p)``, ``p_lo = half(p - p_hi)`` (~16 more bits of p than one cast). float32 / float64
dots use ``input_precision="ieee"`` (no tf32).
"""
from __future__ import annotations

import functools
import struct
import weakref

import torch

from .common import Launch, check_device, is_interpreted, require_triton, tl, triton

HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
BLOCK_DS = (64, 128, 256)        # compiled head-dim blocks (head_dim <= 64 uses 64)
BLOCK_P = 16                     # (row, head) pairs per program of the slot write and the merge
MIN_CHUNK = 256                  # the fewest prefix keys a chunk holds (unless forced)
# the bit-copy dtype of each element size, for the slot writes
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@triton.jit
def _tanh(x, SMALL: tl.constexpr):
    """tanh without libdevice: odd Taylor series to x^15 below SMALL (truncation < 1e-8 at 0.5,
    < 1e-18 at 0.125), else 1 - 2 / (e^{2|x|} + 1) with the sign of x."""
    a = tl.abs(x)
    x2 = x * x
    poly = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * (
        -0.05396825396825397 + x2 * (0.021869488536155203 + x2 * (-0.008863235529902197 + x2 * (
            0.003592128036572481 + x2 * -0.0014558343870513183)))))))
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    return tl.where(a < SMALL, poly, tl.where(x < 0, -big, big))


@triton.jit(do_not_specialize=["HKV", "NHKV"])
def _fork_slot_write_kernel(key_ptr, value_ptr, pool_k_ptr, pool_v_ptr, slot_ptr, fill_ptr,
                            s_kn, s_kh, s_vn, s_vh, s_ks, s_kh2, s_kt, s_vs, s_vh2, s_vt, D, HKV, NHKV,
                            BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """pool_k[slot[n], h, fill[n]] = key[n, h] and the same for values (bit copies), for BLOCK_P
    (row, kv head) pairs i = n HKV + h."""
    i = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    live = i < NHKV
    n = (i // HKV).to(tl.int64)
    h = (i % HKV).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    m = live[:, None] & (d < D)[None, :]
    slot = tl.load(slot_ptr + n, mask=live, other=0).to(tl.int64)[:, None]
    fill = tl.load(fill_ptr + n, mask=live, other=0).to(tl.int64)[:, None]
    k = tl.load(key_ptr + (n * s_kn + h * s_kh)[:, None] + d[None, :], mask=m)
    v = tl.load(value_ptr + (n * s_vn + h * s_vh)[:, None] + d[None, :], mask=m)
    tl.store(pool_k_ptr + slot * s_ks + (h * s_kh2)[:, None] + fill * s_kt + d[None, :], k, mask=m)
    tl.store(pool_v_ptr + slot * s_vs + (h * s_vh2)[:, None] + fill * s_vt + d[None, :], v, mask=m)


@triton.jit(do_not_specialize=["s_mb", "G", "H", "C"])
def _fork_prefix_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, limit_ptr, order_ptr, first_ptr, count_ptr,
                        tile_seq_ptr, tile_pos_ptr, m_ptr, l_ptr, acc_ptr,
                        s_qn, s_qh, s_kb, s_kh, s_kl, s_vb, s_vh, s_vl, s_mb, s_ml,
                        D, G, H, C, CHUNK, scale_hi, scale_lo, cap_hi, cap_lo,
                        ACC: tl.constexpr, TC: tl.constexpr, SMALL: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    tile, hk, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)                     # the double's value for float64
    softcap = tl.cast(cap_hi, ACC) + tl.cast(cap_lo, ACC)
    b = tl.load(tile_seq_ptr + tile).to(tl.int64)
    i = tl.load(tile_pos_ptr + tile) + tl.arange(0, BLOCK_M)        # vector i: row i // G, head i % G
    live = i < tl.load(count_ptr + b) * G
    row = tl.load(order_ptr + tl.load(first_ptr + b) + i // G, mask=live, other=0).to(tl.int64)
    h = hk * G + i % G
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    q = tl.load(q_ptr + row[:, None] * s_qn + h[:, None] * s_qh + d[None, :], mask=live[:, None] & dm[None, :],
                other=0.0)
    if not TC:
        q = q.to(ACC)
    lim = tl.load(limit_ptr + row, mask=live, other=0)                # prefix positions < lim are visible
    lo = c * CHUNK
    hi = tl.minimum(lo + CHUNK, tl.max(lim, 0))
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    kb = k_ptr + b * s_kb + hk.to(tl.int64) * s_kh
    vb = v_ptr + b * s_vb + hk.to(tl.int64) * s_vh
    for start in range(lo, hi, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        ok = (j < hi) & (tl.load(valid_ptr + b * s_mb + j.to(tl.int64) * s_ml, mask=j < hi, other=0) != 0)
        kv_mask = ok[:, None] & dm[None, :]
        k = tl.load(kb + j.to(tl.int64)[:, None] * s_kl + d[None, :], mask=kv_mask, other=0.0)
        if not TC:
            k = k.to(ACC)
        s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=ACC) * scale
        if softcap > 0:
            s = softcap * _tanh(s / softcap, SMALL)
        s = tl.where(ok[None, :] & (j[None, :] < lim[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(vb + j.to(tl.int64)[:, None] * s_vl + d[None, :], mask=kv_mask, other=0.0)
        if TC:
            p_hi = tl.cast(p, v.dtype, fp_downcast_rounding="rtne")
            p_lo = tl.cast(p - p_hi.to(ACC), v.dtype, fp_downcast_rounding="rtne")
            pv = tl.dot(p_hi, v, out_dtype=ACC) + tl.dot(p_lo, v, out_dtype=ACC)
        else:
            pv = tl.dot(p, v.to(ACC), input_precision="ieee", out_dtype=ACC)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    p_idx = (row * H + h) * C + c
    tl.store(m_ptr + p_idx, m_i, mask=live)
    tl.store(l_ptr + p_idx, l_i, mask=live)
    tl.store(acc_ptr + p_idx[:, None] * BLOCK_D + d[None, :], acc, mask=live[:, None])


@triton.jit(do_not_specialize=["G", "H", "C", "NH"])
def _fork_suffix_merge_kernel(q_ptr, pool_k_ptr, pool_v_ptr, slot_ptr, fill_ptr, m_ptr, l_ptr, acc_ptr, out_ptr,
                              s_qn, s_qh, s_ks, s_kh, s_kt, s_vs, s_vh, s_vt,
                              D, G, H, C, NH, scale_hi, scale_lo, cap_hi, cap_lo,
                              ACC: tl.constexpr, SMALL: tl.constexpr, BLOCK_P: tl.constexpr,
                              BLOCK_D: tl.constexpr):
    i = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)          # (row, head) pairs i = n H + h
    live = i < NH
    n = (i // H).to(tl.int64)
    h = i % H
    hk = (h // G).to(tl.int64)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    softcap = tl.cast(cap_hi, ACC) + tl.cast(cap_lo, ACC)
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    base = i.to(tl.int64) * C
    m = tl.load(m_ptr + base, mask=live, other=float("-inf"))       # the prefix chunks' states, in order
    l = tl.load(l_ptr + base, mask=live, other=0.0)
    acc = tl.load(acc_ptr + base[:, None] * BLOCK_D + d[None, :], mask=live[:, None], other=0.0)
    for c in range(1, C):
        m_c = tl.load(m_ptr + base + c, mask=live, other=float("-inf"))
        m_new = tl.maximum(m, m_c)
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        a, a_c = tl.exp(m - m_safe), tl.exp(m_c - m_safe)
        l = l * a + tl.load(l_ptr + base + c, mask=live, other=0.0) * a_c
        acc = acc * a[:, None] + tl.load(acc_ptr + (base + c)[:, None] * BLOCK_D + d[None, :], mask=live[:, None],
                                         other=0.0) * a_c[:, None]
        m = m_new
    q = tl.load(q_ptr + (n * s_qn + h * s_qh)[:, None] + d[None, :], mask=live[:, None] & dm[None, :],
                other=0.0).to(ACC)
    slot = tl.load(slot_ptr + n, mask=live, other=0).to(tl.int64)
    fill = tl.load(fill_ptr + n, mask=live, other=-1)
    kb = pool_k_ptr + slot * s_ks + hk * s_kh
    vb = pool_v_ptr + slot * s_vs + hk * s_vh
    for t in range(0, tl.max(fill, 0) + 1):                         # the slot: tokens 0..fill
        tm = t <= fill
        kv_mask = tm[:, None] & dm[None, :]
        k = tl.load(kb[:, None] + t * s_kt + d[None, :], mask=kv_mask, other=0.0)
        s = tl.sum(q * k.to(ACC), 1) * scale
        if softcap > 0:
            s = softcap * _tanh(s / softcap, SMALL)
        s = tl.where(tm, s, float("-inf"))
        m_new = tl.maximum(m, s)
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        a = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe)
        v = tl.load(vb[:, None] + t * s_vt + d[None, :], mask=kv_mask, other=0.0)
        l = l * a + p
        acc = acc * a[:, None] + p[:, None] * v.to(ACC)
        m = m_new
    o = acc / tl.where(live, l, 1.0)[:, None]                        # l >= e^0: token `fill` is visible
    tl.store(out_ptr + i.to(tl.int64)[:, None] * D + d[None, :],
             tl.cast(o, out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=live[:, None] & dm[None, :])


# ------------------------------------------------------------------------------------------------ #
# launch configuration (one place: the wrapper and tools/compile_report.py both read it)           #
# ------------------------------------------------------------------------------------------------ #


def block_d(head_dim: int) -> int:
    """The head-dim block: the next power of two, at least 64 (fewer compiled variants)."""
    return max(64, triton.next_power_of_2(head_dim))


def prefix_config(vectors: int, head_dim: int, dtype: torch.dtype) -> dict:
    """``BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages`` of ``_fork_prefix_kernel`` when a
    sequence has at most ``vectors`` query vectors (rows x G) on one kv head. Chosen so that no
    variant spills on sm_80 or sm_90 (tools/compile_report.py checks every one):

    * float16 / bfloat16 (tensor cores): BLOCK_M 16, or 32-64 for many vectors (8 warps), 3 stages;
    * float32 (``ieee`` dots on the FMA units: operands live in registers): BLOCK_M 16, BLOCK_N
      shrinking with head_dim, no multi-buffering beyond head_dim 64;
    * float64 (test models; head_dim <= 128): BLOCK_M 16, BLOCK_N 32 / 16, one stage.
    """
    bd = block_d(head_dim)
    if dtype in HALF_DTYPES:
        if vectors <= 16:
            return dict(BLOCK_M=16, BLOCK_N=64 if bd <= 128 else 32, BLOCK_D=bd, num_warps=4, num_stages=3)
        return dict(BLOCK_M=64 if bd <= 128 else 32, BLOCK_N=64 if bd <= 64 else 32, BLOCK_D=bd, num_warps=8,
                    num_stages=3)
    if dtype == torch.float32:
        return dict(BLOCK_M=16, BLOCK_N={64: 64, 128: 32, 256: 16}[bd], BLOCK_D=bd, num_warps=4,
                    num_stages=3 if bd <= 64 else 1)
    return dict(BLOCK_M=16, BLOCK_N=32 if bd <= 64 else 16, BLOCK_D=bd, num_warps=4, num_stages=1)


def supports(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether these kernels take ``dtype`` at ``head_dim`` (float64 stops at 128: wider tiles spill)."""
    return dtype in DTYPES and head_dim <= (128 if dtype == torch.float64 else MAX_HEAD_DIM)


def suffix_config(head_dim: int, dtype: torch.dtype) -> dict:
    """The merge kernel: 2 warps, 4 for head_dim 256 or float64, 8 for float64 at head_dim 128 (the
    fewest without spills: tools/compile_report.py)."""
    bd = block_d(head_dim)
    if dtype == torch.float64:
        return dict(BLOCK_P=BLOCK_P, BLOCK_D=bd, num_warps=4 if bd <= 64 else 8)
    return dict(BLOCK_P=BLOCK_P, BLOCK_D=bd, num_warps=4 if bd > 128 else 2)


def write_config(head_dim: int) -> dict:
    return dict(BLOCK_P=BLOCK_P, BLOCK_D=block_d(head_dim), num_warps=4)


def tensor_cores(dtype: torch.dtype, interpreted: bool = False) -> bool:
    """Half-precision dots (``TC``): float16 / bfloat16 inputs, compiled. The interpreter's bfloat16
    dot multiplies the raw bits, so interpreted bfloat16 takes the float32 path (q, k, v upcast:
    the same products, exact; p unsplit)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not interpreted)


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def tanh_small(dtype: torch.dtype) -> float:
    """Where ``_tanh`` switches from its series to the exp form: float64 0.125 (series exact to
    1e-18 there, its exp accurate), float32 0.5 (the exp form would cancel below it)."""
    return 0.125 if dtype == torch.float64 else 0.5


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_chunks_for(programs: int, L: int, block_n: int, device: torch.device, forced: int | None = None) -> tuple[int, int]:
    """``(C, CHUNK)``: the prefix cut into C chunks of CHUNK keys (a multiple of block_n) so that
    ``programs x C`` is about two programs per SM, each chunk at least MIN_CHUNK keys; ``forced``
    asks for a number of chunks (tests)."""
    if forced is None:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 4
        forced = max(1, min(triton.cdiv(max(L, 1), MIN_CHUNK), triton.cdiv(2 * sms, max(programs, 1))))
    chunk = triton.cdiv(triton.cdiv(max(L, 1), max(1, int(forced))), block_n) * block_n
    return triton.cdiv(max(L, 1), chunk), chunk


# ------------------------------------------------------------------------------------------------ #
# the plan: rows grouped by sequence, cut into tiles (host work, once per model call)              #
# ------------------------------------------------------------------------------------------------ #


class _Plan:
    """Device int32 arrays of one call's row layout: order (rows by sequence), first / count per
    sequence, tile_seq / tile_pos per tile, the rows' prefix limits, slots and fills."""

    def __init__(self, seq, slot, fill, row_limit, B: int, L: int, G: int, head_dim: int, dtype, device):
        seq = seq.to(torch.int64)
        N = len(seq)
        host = seq.device
        counts = torch.bincount(seq, minlength=B)
        order = torch.argsort(seq, stable=True)
        first = counts.cumsum(0) - counts
        self.max_rows = int(counts.max())
        self.cfg = prefix_config(self.max_rows * G, head_dim, dtype)
        per_tile = self.cfg["BLOCK_M"]
        ntiles = (counts * G + per_tile - 1) // per_tile
        self.tiles = int(ntiles.sum())
        tile_seq = torch.repeat_interleave(torch.arange(B, device=host), ntiles)
        tile_pos = (torch.arange(self.tiles, device=host) - (ntiles.cumsum(0) - ntiles)[tile_seq]) * per_tile
        limit = torch.full((N,), L, dtype=torch.int64, device=host) if row_limit is None else \
            row_limit.to(host, torch.int64).clamp(0, L)
        parts = [order, first, counts, tile_seq, tile_pos, limit, slot.to(host, torch.int64),
                 fill.to(host, torch.int64)]
        sizes = [len(p) for p in parts]
        packed = torch.cat(parts).to(device=device, dtype=torch.int32)   # one host-to-device copy
        (self.order, self.first, self.count, self.tile_seq, self.tile_pos, self.limit, self.slot,
         self.fill) = torch.split(packed, sizes)


_plan_cache: list = []        # one entry: (weakrefs and versions of the inputs, key, plan)


def _plan(seq, slot, fill, row_limit, B, L, G, head_dim, dtype, device) -> _Plan:
    """The plan, reused while the same (unmodified) seq / slot / fill / row_limit tensors come back
    with the same shapes: the engine passes the same tensors to every layer of a model call."""
    tensors = (seq, slot, fill, row_limit)
    key = (B, L, G, block_d(head_dim), dtype, device)
    if _plan_cache:
        refs, versions, old_key, plan = _plan_cache[0]
        if old_key == key and all((r is None and t is None) or (r is not None and r() is t)
                                  for r, t in zip(refs, tensors)) \
                and versions == tuple(None if t is None else t._version for t in tensors):
            return plan
    plan = _Plan(seq, slot, fill, row_limit, B, L, G, head_dim, dtype, device)
    _plan_cache[:] = [(tuple(None if t is None else weakref.ref(t) for t in tensors),
                       tuple(None if t is None else t._version for t in tensors), key, plan)]
    return plan


# ------------------------------------------------------------------------------------------------ #
# the op                                                                                           #
# ------------------------------------------------------------------------------------------------ #


def _split(x: float) -> tuple[float, float]:
    """``x`` as float32 ``hi + lo`` (kernels add them in the accumulate dtype: float32 gets
    ``float32(x)``, as torch's ``mul_(x)`` on float32 scores; float64 gets x to ~2^-48)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, struct.unpack("f", struct.pack("f", x - hi))[0]


def _head_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def fork_attention_triton(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                          row_limit=None, scale=None, softcap: float | None = None, *,
                          num_chunks: int | None = None) -> torch.Tensor:
    """``ops.fork_attention``'s contract on Triton (inputs validated by the op; see its docstring).

    Parameters
    ----------
    query : ``[N, H, 1, D]`` float16 / bfloat16 / float32 / float64 (CUDA, or CPU under
        ``TRITON_INTERPRET=1``); ``key, value [N, Hkv, 1, D]``; ``D <= 256`` (float64: 128).
    pool_k, pool_v : ``[slots, Hkv, slot_len, D]``, contiguous head_dim; written at ``(slot, :, fill)``.
    prefix_k, prefix_v : ``[B, Hkv, L, D]``, contiguous head_dim, any other strides (read in place).
    prefix_valid : ``[B, L]`` bool or integer. seq, slot, fill, row_limit : ``[N]`` integer, on the host
        or the device.
    scale : float (default ``D ** -0.5``). softcap : float or None (Gemma2's ``c tanh(s / c)``).
    num_chunks : force the number of prefix chunks (tests); default about two programs per SM.

    Returns
    -------
    ``out [N, 1, H, D]`` in query's dtype (float32 accumulation; float64 for float64).
    """
    require_triton()
    N, H, _, D = query.shape
    B, Hkv, L, _ = prefix_k.shape
    dtype, dev = query.dtype, query.device
    if dtype not in DTYPES:
        raise ValueError(f"Triton fork_attention takes float16, bfloat16, float32 or float64, got {dtype}")
    if not supports(dtype, D):
        raise ValueError(f"Triton fork_attention takes head_dim <= {MAX_HEAD_DIM} (float64: <= 128), "
                         f"got {D} ({dtype})")
    check_device(_fork_prefix_kernel, query, prefix_k)
    out = torch.empty(N, 1, H, D, dtype=dtype, device=dev)
    if N == 0:
        return out
    G = H // Hkv
    scale = float(scale if scale is not None else D ** -0.5)
    cap = float(softcap) if softcap is not None else 0.0
    if softcap is not None and not cap > 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    scalars = (*_split(scale), *_split(cap))
    query, key, value = (_head_dim_contiguous(t) for t in (query, key, value))
    valid = prefix_valid if prefix_valid.dtype == torch.bool else prefix_valid != 0
    valid = valid.to(dev).view(torch.int8)
    plan = _plan(seq, slot, fill, row_limit, B, L, G, D, dtype, dev)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    bits = _BITS[query.element_size()]
    _fork_slot_write_kernel[(triton.cdiv(N * Hkv, BLOCK_P),)](
        key.view(bits), value.view(bits), pool_k.view(bits), pool_v.view(bits), plan.slot, plan.fill,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1), *pool_k.stride()[:3], *pool_v.stride()[:3],
        D, Hkv, N * Hkv, **write_config(D))
    cfg = plan.cfg
    C, chunk = num_chunks_for(plan.tiles * Hkv, L, cfg["BLOCK_N"], dev, num_chunks)
    bd = cfg["BLOCK_D"]
    part_m = torch.empty(N * H * C, dtype=acc_dtype, device=dev)
    part_l = torch.empty(N * H * C, dtype=acc_dtype, device=dev)
    part_acc = torch.empty(N * H * C * bd, dtype=acc_dtype, device=dev)
    _fork_prefix_kernel[(plan.tiles, Hkv, C)](
        query, prefix_k, prefix_v, valid, plan.limit, plan.order, plan.first, plan.count, plan.tile_seq,
        plan.tile_pos, part_m, part_l, part_acc, query.stride(0), query.stride(1), prefix_k.stride(0),
        prefix_k.stride(1), prefix_k.stride(2), prefix_v.stride(0), prefix_v.stride(1), prefix_v.stride(2),
        valid.stride(0), valid.stride(1), D, G, H, C, chunk, *scalars, **prefix_meta(cfg, dtype, uses_interpreter()))
    _fork_suffix_merge_kernel[(triton.cdiv(N * H, BLOCK_P),)](
        query, pool_k, pool_v, plan.slot, plan.fill, part_m, part_l, part_acc, out,
        query.stride(0), query.stride(1), *pool_k.stride()[:3], *pool_v.stride()[:3], D, G, H, C, N * H, *scalars,
        ACC=tl_acc(dtype), SMALL=tanh_small(dtype), **suffix_config(D, dtype))
    return out


def prefix_meta(cfg: dict, dtype: torch.dtype, interpreted: bool) -> dict:
    """Constexprs and num_warps of ``_fork_prefix_kernel`` (``cfg``: ``prefix_config``)."""
    return dict(ACC=tl_acc(dtype), TC=tensor_cores(dtype, interpreted), SMALL=tanh_small(dtype), **cfg)


# the shapes the compile space is evaluated at: Llama-3-8B (32 query / 8 kv heads), a 4,096-token
# prefix in an EpicCache of capacity 4,608, slots of 6 tokens; head_dim 64 / 128 / 256
REPRESENTATIVE = dict(H=32, Hkv=8, L=4096, capacity=4608, slot_len=6)


def compile_space() -> list:
    """Every variant the compiled dispatch launches: per dtype and head-dim block, the slot write
    (per element size), the prefix kernel (BLOCK_M 16 and 64; float64 16 only) and the merge."""
    r = REPRESENTATIVE
    H, Hkv, L, cap, T = r["H"], r["Hkv"], r["L"], r["capacity"], r["slot_len"]
    G = H // Hkv
    i32 = torch.empty(1, dtype=torch.int32)
    valid = torch.empty(1, 16, dtype=torch.int8)
    out = []
    for D in (64, 128, 256):
        for bits in (torch.int16, torch.int32, torch.int64):
            t = torch.empty(1, dtype=bits)
            out.append(Launch(_fork_slot_write_kernel, (t, t, t, t, i32, i32, Hkv * D, D, Hkv * D, D,
                                                        Hkv * T * D, T * D, D, Hkv * T * D, T * D, D, D, Hkv,
                                                        64 * Hkv),
                              write_config(D)))
        for dtype in (dt for dt in DTYPES if supports(dt, D)):
            x = torch.empty(1, 16, dtype=dtype)
            acc = torch.empty(1, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            scalars = (*_split(D ** -0.5), *_split(0.0))
            for vectors in ((16, 512 * G) if dtype in HALF_DTYPES else (16,)):
                cfg = prefix_config(vectors, D, dtype)
                C, chunk = num_chunks_for(vectors // cfg["BLOCK_M"] * Hkv, L, cfg["BLOCK_N"], torch.device("cpu"))
                out.append(Launch(_fork_prefix_kernel,
                                  (x, x, x, valid, i32, i32, i32, i32, i32, i32, acc, acc, acc, H * D, D,
                                   Hkv * cap * D, cap * D, D, Hkv * cap * D, cap * D, D, L, 1, D, G, H, C, chunk,
                                   *scalars), prefix_meta(cfg, dtype, False)))
            out.append(Launch(_fork_suffix_merge_kernel,
                              (x, x, x, i32, i32, acc, acc, acc, x, H * D, D, Hkv * T * D, T * D, D,
                               Hkv * T * D, T * D, D, D, G, H, 1, 64 * H, *scalars),
                              dict(ACC=tl_acc(dtype), SMALL=tanh_small(dtype), **suffix_config(D, dtype))))
    return out


def uses_interpreter() -> bool:
    return is_interpreted(_fork_prefix_kernel)


__all__ = ["fork_attention_triton", "supports", "prefix_config", "suffix_config", "write_config", "num_chunks_for",
           "block_d", "compile_space", "DTYPES", "MAX_HEAD_DIM"]
