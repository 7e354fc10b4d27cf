"""Fused Gumbel perturbation + front-runner + width pruning + top-k over ``logits [B, V]``.

Exactly the contract of ``epic_kernels.reference.gumbel_topk_prune`` (``PruneResult``):

1. ``lse`` per row: the online pass of ``softmax_entropy`` (vocabulary split when B is small).
2. One scan over the logits per (row, vocabulary chunk): ``z = (l - lse) + G`` in the reference's
   order and dtype, running max ``Z_run`` (lowest id on ties), and every entry with
   ``z >= Z_run - width`` appended to a small per-chunk candidate list (``capacity`` slots). Because
   ``Z_run <= Z`` at every step, the list holds every final survivor ``z >= Z - width``: filtering it
   afterwards against the final threshold is exact, no slack needed.
3. Glue (torch, small): front-runner over chunks, final filter, CSR compaction (ascending id), top-k.
4. Exact overflow path: rows whose list overflowed, or whose survivors are fewer than
   ``min(top_k, finite entries)`` (top-k must then reach below the window), get their full ``z`` row
   from a dense kernel using the same arithmetic, and are finished in torch like the reference.
"""
from __future__ import annotations

import torch

from ..core import PruneResult, compute_dtype
from .common import (Launch, check_device, check_logits, gumbel_noise, is_interpreted, noise_keys, require_triton,
                     tl, triton)
from .softmax_entropy import COMPILED_BLOCK, plan_chunks, softmax_entropy_triton

DEFAULT_CAPACITY = 512


@triton.jit
def _perturbed_block(logits_ptr, row, stride_row, cols, V, lse, key, base, ACC: tl.constexpr):
    """``z = (l - lse) + G`` of one block in the accumulate dtype; ``-inf`` for -inf / padding."""
    x = tl.load(logits_ptr + row * stride_row + cols, mask=cols < V, other=float("-inf")).to(ACC)
    return (x - lse) + gumbel_noise(key, base + cols.to(tl.int64)).to(ACC)


@triton.jit(do_not_specialize=["NUM_CHUNKS"])
def _gumbel_prune_scan_kernel(logits_ptr, lse_ptr, key_ptr, base_ptr, width_ptr, cand_id_ptr, cand_z_ptr,
                              part_z_ptr, part_id_ptr, part_n_ptr, part_f_ptr, V, stride_row, CHUNK,
                              NUM_CHUNKS, ACC: tl.constexpr, CAP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    p = row * NUM_CHUNKS + chunk
    lse = tl.load(lse_ptr + row)
    width = tl.load(width_ptr + row)
    key = tl.load(key_ptr + row)
    base = tl.load(base_ptr + row)
    lanes = tl.arange(0, BLOCK)
    zmax = tl.max(tl.full([BLOCK], float("-inf"), ACC), 0)
    zid = tl.max(tl.zeros([BLOCK], tl.int32), 0) + V
    n = tl.max(tl.zeros([BLOCK], tl.int32), 0)
    nfin = tl.max(tl.zeros([BLOCK], tl.int32), 0)
    for off in range(0, CHUNK, BLOCK):
        cols = chunk * CHUNK + off + lanes
        z = _perturbed_block(logits_ptr, row, stride_row, cols, V, lse, key, base, ACC)
        bmax = tl.max(z, 0)
        bid = tl.min(tl.where(z == bmax, cols, V), 0)
        zid = tl.where(bmax > zmax, bid, zid)     # strict: earlier blocks hold lower ids
        zmax = tl.maximum(zmax, bmax)
        finite = z > float("-inf")
        keep = finite & (z >= zmax - width)       # superset of the final window: zmax <= Z
        slot = n + tl.cumsum(keep.to(tl.int32), 0) - 1
        room = keep & (slot < CAP)
        tl.store(cand_id_ptr + p * CAP + slot, cols, mask=room)
        tl.store(cand_z_ptr + p * CAP + slot, z, mask=room)
        n += tl.sum(keep.to(tl.int32), 0)
        nfin += tl.sum(finite.to(tl.int32), 0)
    tl.store(part_z_ptr + p, zmax)
    tl.store(part_id_ptr + p, zid)
    tl.store(part_n_ptr + p, n)
    tl.store(part_f_ptr + p, nfin)


@triton.jit
def _gumbel_prune_dense_kernel(logits_ptr, rows_ptr, lse_ptr, key_ptr, base_ptr, z_ptr, V, stride_row,
                               ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Overflow path: the full ``z`` row (same arithmetic as the scan) of row ``rows_ptr[i]``."""
    i = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + i)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    z = _perturbed_block(logits_ptr, row, stride_row, cols, V, tl.load(lse_ptr + row),
                         tl.load(key_ptr + row), tl.load(base_ptr + row), ACC)
    tl.store(z_ptr + i * V + cols, z, mask=cols < V)


def dense_block(V: int, interpreted: bool) -> int:
    """BLOCK of the dense kernel: COMPILED_BLOCK compiled (one variant), the row's power of two
    (at most 1024) interpreted."""
    return COMPILED_BLOCK if not interpreted else min(1024, max(16, triton.next_power_of_2(V)))


def scan_meta(acc: torch.dtype, cap: int, block: int) -> dict:
    """Constexprs and num_warps of ``_gumbel_prune_scan_kernel``."""
    return dict(ACC=tl.float64 if acc == torch.float64 else tl.float32, CAP=cap, BLOCK=block,
                num_warps=8 if block > 1024 else 4)


def dense_meta(acc: torch.dtype, block: int) -> dict:
    return dict(ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK=block)


def compile_space() -> list:
    """Every variant the compiled dispatch launches (the public op never sets ``capacity``, so CAP
    is the default's power of two; BLOCK is COMPILED_BLOCK): scan and dense kernel per dtype.
    Integer arguments at the representative vocabulary of softmax_entropy."""
    from .softmax_entropy import REPRESENTATIVE_V
    out, V = [], REPRESENTATIVE_V
    i64, i32 = torch.empty(1, dtype=torch.int64), torch.empty(1, dtype=torch.int32)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        acc = compute_dtype(dtype)
        x, a = torch.empty(1, 16, dtype=dtype), torch.empty(1, dtype=acc)
        C, chunk, block = plan_chunks(1, V, torch.device("cpu"), False)
        out.append(Launch(_gumbel_prune_scan_kernel, (x, a, i64, i64, a, i32, a, a, i32, i32, i32, V, V, chunk, C),
                          scan_meta(acc, triton.next_power_of_2(DEFAULT_CAPACITY), block)))
        out.append(Launch(_gumbel_prune_dense_kernel, (x, i64, a, i64, i64, a, V, V), dense_meta(acc, dense_block(V, False))))
    return out


def _topk_rows(z: torch.Tensor, ids: torch.Tensor, top_k: int):
    """Top ``top_k`` of each row of ``z`` (descending, ties to the earlier column), ``-1``/``-inf`` pad.

    ``ids`` gives the token id of every column (columns ascend in id within a row).
    """
    kk = min(top_k, z.shape[1])
    order = torch.sort(z, dim=1, descending=True, stable=True)
    scores = order.values[:, :kk]
    tok = torch.where(torch.isfinite(scores), ids.gather(1, order.indices[:, :kk]), -1)
    if kk < top_k:
        tok = torch.cat([tok, tok.new_full((z.shape[0], top_k - kk), -1)], 1)
        scores = torch.cat([scores, scores.new_full((z.shape[0], top_k - kk), float("-inf"))], 1)
    return tok, scores


def _check_width(width, B: int, acc: torch.dtype, device) -> torch.Tensor:
    w = torch.as_tensor(width, dtype=acc).to(device)
    if w.dim() > 1 or (w.dim() == 1 and w.shape[0] != B):
        raise ValueError(f"width must be a float or a [{B}] tensor, got shape {tuple(w.shape)}")
    if torch.isnan(w).any() or (w < 0).any():
        raise ValueError("width must be >= 0 (and not NaN)")
    return w.expand(B).contiguous()


def gumbel_topk_prune_triton(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, width,
                             top_k: int, *, num_chunks: int | None = None,
                             capacity: int = DEFAULT_CAPACITY) -> PruneResult:
    """Perturb with step noise, find each row's front-runner, keep the tokens within ``width`` of it.

    Parameters
    ----------
    logits : ``[B, V]`` float16 / bfloat16 / float32 / float64; ``-inf`` entries never survive; at
        least one finite entry per row.
    seeds, positions : int64 ``[B]``; entry v's noise key is ``(seeds[b], STEP, positions[b], v)``.
    width : float or ``[B]`` tensor ``>= 0``; survivors satisfy ``z_v >= max_u z_u - width``.
    top_k : int ``>= 1``, how many of the best perturbed ids to return per row (from the whole row).
    num_chunks : force the number of vocabulary chunks per row (None: heuristic).
    capacity : candidate slots per (row, chunk) before the row takes the exact dense path.

    Returns
    -------
    ``reference.PruneResult``; scores are float32 (float64 for float64 logits). ``lse`` comes from
    this backend, so ``z`` may differ from the reference's by an ulp of ``lse`` (near-tie caveat).
    """
    require_triton()
    check_logits(logits)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    B, V = logits.shape
    dev, acc = logits.device, compute_dtype(logits.dtype)
    check_device(_gumbel_prune_scan_kernel, logits)
    key, base = noise_keys(seeds, 0, positions, B, dev)
    w = _check_width(width, B, acc, dev)
    if B == 0:                  # empty batch: empty outputs, as on every backend
        long, none = torch.int64, torch.empty(0, dtype=torch.int64, device=dev)
        return PruneResult(none, torch.empty(0, dtype=acc, device=dev), none.clone(),
                           torch.zeros(1, dtype=long, device=dev), none.clone(), torch.empty(0, dtype=acc, device=dev),
                           torch.empty(0, top_k, dtype=long, device=dev), torch.empty(0, top_k, dtype=acc, device=dev),
                           torch.empty(0, dtype=acc, device=dev))
    _, lse, _ = softmax_entropy_triton(logits, num_chunks=num_chunks)
    C, chunk, block = plan_chunks(B, V, dev, is_interpreted(_gumbel_prune_scan_kernel), num_chunks)
    cap = triton.next_power_of_2(capacity)
    cand_id = torch.empty(B, C * cap, dtype=torch.int32, device=dev)
    cand_z = torch.empty(B, C * cap, dtype=acc, device=dev)
    part_z = torch.empty(B, C, dtype=acc, device=dev)
    part_id, part_n, part_f = (torch.empty(B, C, dtype=torch.int32, device=dev) for _ in range(3))
    tl_acc = tl.float64 if acc == torch.float64 else tl.float32
    _gumbel_prune_scan_kernel[(B, C)](logits, lse, key, base, w, cand_id, cand_z, part_z, part_id, part_n,
                                      part_f, V, logits.stride(0), chunk, C, **scan_meta(acc, cap, block))
    # front-runner: first chunk holding the max (chunks ascend in id), its lowest id
    front_scores, first = part_z.max(1).values, part_z.argmax(1, keepdim=True)
    front_ids = part_id.gather(1, first).squeeze(1).to(torch.int64)
    threshold = (front_scores - w).unsqueeze(1)
    valid = (torch.arange(cap, device=dev) < part_n.unsqueeze(2)).reshape(B, C * cap)
    keep = valid & (cand_z >= threshold)          # reference order: z >= (front - width)
    counts = keep.sum(1)
    finite = part_f.sum(1)
    dense = (part_n > cap).any(1) | (counts < torch.clamp(finite, max=top_k))
    keep &= ~dense.unsqueeze(1)
    counts = torch.where(dense, 0, counts)
    rows, slots = torch.nonzero(keep, as_tuple=True)  # row-major: ascending id within a row
    ids, scores = cand_id[rows, slots].to(torch.int64), cand_z[rows, slots]
    # top-k of an ordinary row comes from its survivors: every other entry ranks below all of them
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    cols = torch.arange(rows.numel(), device=dev) - offsets[rows]
    width_k = max(1, int(counts.max()))
    pad_z = torch.full((B, width_k), float("-inf"), dtype=acc, device=dev).index_put_((rows, cols), scores)
    pad_id = torch.full((B, width_k), -1, dtype=torch.int64, device=dev).index_put_((rows, cols), ids)
    topk_ids, topk_scores = _topk_rows(pad_z, pad_id, top_k)
    dense_rows = torch.nonzero(dense).flatten()
    if dense_rows.numel():
        zfull = torch.empty(dense_rows.numel(), V, dtype=acc, device=dev)
        dblock = dense_block(V, is_interpreted(_gumbel_prune_dense_kernel))
        _gumbel_prune_dense_kernel[(dense_rows.numel(), triton.cdiv(V, dblock))](
            logits, dense_rows, lse, key, base, zfull, V, logits.stride(0), **dense_meta(acc, dblock))
        dkeep = torch.isfinite(zfull) & (zfull >= threshold[dense_rows])
        counts[dense_rows] = dkeep.sum(1)
        drows, dids = torch.nonzero(dkeep, as_tuple=True)
        rows = torch.cat([rows, dense_rows[drows]])
        ids, scores = torch.cat([ids, dids]), torch.cat([scores, zfull[drows, dids]])
        order = torch.sort(rows, stable=True).indices    # rows ascending, ids stay ascending within
        ids, scores = ids[order], scores[order]
        offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        all_ids = torch.arange(V, device=dev).expand(dense_rows.numel(), V)
        topk_ids[dense_rows], topk_scores[dense_rows] = _topk_rows(zfull, all_ids, top_k)
    return PruneResult(ids, scores, counts, offsets, front_ids, front_scores, topk_ids, topk_scores, lse)
