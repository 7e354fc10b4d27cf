"""Inputs of the fork benchmarks (``bench_kernels.py``: tables ``fork_kv`` and ``fork_attention``).

The embedded model's cache shapes (30 layers, 3 KV heads, 9 query heads, head_dim 64, float32), a
random ``DynamicCache`` (no model run), one sequence forked into R rows:

* the KV side of a fork: HF ``copy.deepcopy(cache)`` + ``batch_repeat_interleave(R)`` (R full copies
  of the prefix) against the engine's ``SlotPool`` reserved for R slots plus the depth-1 fan-out
  ``copy_slots`` (the prefix itself is read in place); bytes added: R copies vs ``pool.nbytes()``;
* one layer's attention of those R rows at depth 2: ``scaled_dot_product_attention`` over the
  copies, and ``fork_attention`` as the engine calls it (its torch path, ``backend="reference"``,
  and the C++ op), each fork output checked against SDPA's;
* one layer call at the engine's own shapes: N rows of one sequence, a prefix of L tokens, each
  row's slot filled to 0..3 of 5 tokens; torch path against the C++ op.

A helper module of the suites (not collected: only ``bench_*.py`` files are).
"""
from __future__ import annotations

import copy
import types

import torch

from epic_kernels.engine import attention as A
from epic_kernels.engine.runtime import SlotPool
from epic_kernels.core import Prefix

LAYERS, KV_HEADS, HEADS, HEAD_DIM = 30, 3, 9, 64


def random_cache(L: int, seed: int = 0):
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g), torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g))
            for _ in range(LAYERS)]
    return DynamicCache(ddp_cache_data=data)


def hf_fork(cache, R):
    forked = copy.deepcopy(cache)
    forked.batch_repeat_interleave(R)
    return forked


def engine_fork(R, horizon):
    pool = SlotPool(LAYERS, KV_HEADS, HEAD_DIM, horizon, torch.float32)
    pool.reserve(R)
    if R > 1:
        pool.copy_slots(torch.zeros(R - 1, dtype=torch.int64), torch.arange(1, R), 1)
    return pool


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def _fork_call(fb, fn, q, k, v):
    """``fn`` (``A.fork_attention``'s torch path or the C++ op) as the engine calls it for layer 0."""
    module = types.SimpleNamespace(layer_idx=0)

    def call():
        A._local.batch = fb
        try:
            return fn(module, q, k, v, scaling=HEAD_DIM ** -0.5)[0]
        finally:
            A._local.batch = None
    return call


def fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill):
    """``{"torch": ..., "cpp": ...}``: one layer call of fork attention by each implementation, as the
    engine calls it (``cpp`` is ``fork_attention`` itself, which runs the C++ op on CPU tensors; it
    is missing when the extension is not built or EPIC_KERNELS_BACKEND=reference)."""
    mask = torch.ones(K0.shape[0], K0.shape[2], dtype=torch.int64)
    view = Prefix([(K0, V0)], mask, mask.sum(-1), torch.zeros(K0.shape[0], dtype=torch.int64))
    fns = {"torch": _fork_call(A.ForkBatch.build(view, pool, seq, slot, fill, torch.float32, backend="reference"),
                               A.fork_attention, q, k_new, v_new)}
    fb = A.ForkBatch.build(view, pool, seq, slot, fill, torch.float32)
    if fb.backend == "cpp":
        fns["cpp"] = _fork_call(fb, A.fork_attention, q, k_new, v_new)
    return fns


def attention_fns(cache, R, horizon, seed=1):
    """Callables for one layer's attention of R depth-2 rows: HF sdpa over copies, and fork attention
    (torch path, C++ op); the largest |difference| of each fork output from sdpa's."""
    g = torch.Generator().manual_seed(seed)
    L = cache.layers[0].keys.shape[2]
    q = torch.randn(R, HEADS, 1, HEAD_DIM, generator=g)
    k_new = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)
    v_new = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)
    own = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)          # each row's depth-1 token
    K0, V0 = cache.layers[0].keys, cache.layers[0].values
    K_hf = torch.cat([K0.expand(R, -1, -1, -1), own, k_new], 2).contiguous()      # the copies
    V_hf = torch.cat([V0.expand(R, -1, -1, -1), own, v_new], 2).contiguous()

    def hf():
        return torch.nn.functional.scaled_dot_product_attention(q, K_hf, V_hf, enable_gqa=True)

    pool = SlotPool(1, KV_HEADS, HEAD_DIM, horizon, torch.float32)
    pool.reserve(R)
    pool.keys[0][:R, :, 0] = own[:, :, 0]
    pool.values[0][:R, :, 0] = own[:, :, 0]
    seq, slot = torch.zeros(R, dtype=torch.int64), torch.arange(R)
    fill = torch.ones(R, dtype=torch.int64)
    fns = {"sdpa": hf, **fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill)}
    ref = hf().transpose(1, 2)                     # [R, 1, H, D]; same math: fork == sdpa over copies
    errs = {name: float((fn() - ref).abs().max()) for name, fn in fns.items() if name != "sdpa"}
    return fns, errs


def engine_shape_fns(N, L, seed=2):
    """One layer call at the engine's shapes: N rows of one sequence with a prefix of L tokens, each
    row's slot filled to 0..3 of 5 tokens. Torch path and C++ op, and their largest |difference|."""
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g)
    V0 = torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g)
    q = torch.randn(N, HEADS, 1, HEAD_DIM, generator=g)
    k_new = torch.randn(N, KV_HEADS, 1, HEAD_DIM, generator=g)
    v_new = torch.randn(N, KV_HEADS, 1, HEAD_DIM, generator=g)
    pool = SlotPool(1, KV_HEADS, HEAD_DIM, 5, torch.float32)
    pool.reserve(N)
    pool.keys[0].normal_(generator=g)
    pool.values[0].normal_(generator=g)
    seq, slot, fill = torch.zeros(N, dtype=torch.int64), torch.arange(N), torch.arange(N) % 4
    fns = fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill)
    err = float((fns["cpp"]() - fns["torch"]()).abs().max()) if "cpp" in fns else float("nan")
    return fns, err


