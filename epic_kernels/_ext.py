"""Lazy loader of the compiled extension ``epic_kernels._C`` (C++ CPU and CUDA kernels).

``import epic_kernels`` never imports ``_C``: the first call of :func:`load` does, which registers
``torch.ops.epic_kernels.*`` (schemas in ``csrc/ops.cpp``) and the fake (meta) kernels below, so the
ops also work under ``torch.compile`` / FakeTensor. The result, the module or the ImportError, is
cached. Build the extension with ``pip install --no-build-isolation -e .`` from the repository root.

Ops (all rows of ``logits [N, V]``; float16 / bfloat16 / float32 / float64; accumulate dtype float32,
float64 for float64 logits)::

    softmax_entropy(logits) -> (entropy [N], lse [N])
    softmax_entropy_sample(logits, seeds, streams, positions) -> (entropy, lse, tokens int64 [N])
        (streams [N, S]: tokens [N, S], S keyed samples per row from one softmax pass on CPU)
    gumbel_topk_prune(logits, seeds, positions, width [B], top_k)
        -> (ids, scores, counts, offsets, front_ids, front_scores, topk_ids, topk_scores, lse)
    fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot,
                   fill, row_limit, scale) -> out [N, 1, H, D]   (float32 / float64; writes the pools;
                   the engine's fork attention, epic_kernels/engine/attention.py)
    _philox_randint(seed, offset) -> words    _gumbel_noise(seeds, streams, positions, vocab) -> noise
    _gumbel_from_words(words) -> noise        (testing helpers: the kernels' own noise path)
"""
from __future__ import annotations

import importlib
import threading

import torch

BUILD_HINT = ("build it from the repository root with `pip install --no-build-isolation -e .` "
              "(needs a C++20 compiler, g++ >= 10; CUDA kernels are added when torch and the toolkit have CUDA)")

_lock = threading.Lock()
_state: dict = {"loaded": False, "module": None, "error": None}
_ops_cache: dict = {}


def load():
    """Import ``epic_kernels._C`` once; return the module, or ``None`` if it is not built/loadable."""
    if not _state["loaded"]:
        with _lock:
            if not _state["loaded"]:
                try:
                    module = importlib.import_module("epic_kernels._C")
                    _register_fakes()
                    _state["module"] = module
                except (ImportError, OSError) as exc:   # not built, or built against another torch
                    _state["error"] = exc
                _state["loaded"] = True
    return _state["module"]


def available() -> bool:
    """True when the compiled extension can be loaded (loads it)."""
    return load() is not None


def error() -> BaseException | None:
    """Why the extension could not be loaded (``None`` if it loaded or was never tried)."""
    return _state["error"]


def ops():
    """``torch.ops.epic_kernels``, loading the extension first; RuntimeError if it is not built."""
    if load() is None:
        raise RuntimeError(f"the epic_kernels C++ extension is not available ({_state['error']}); "
                           f"{BUILD_HINT}")
    return torch.ops.epic_kernels


def op(name: str):
    """``torch.ops.epic_kernels.<name>.default``, or None when the loaded extension predates that op
    (RuntimeError when the extension is not built, as ``ops``)."""
    if name not in _ops_cache:
        _ops_cache[name] = getattr(ops(), name).default if hasattr(ops(), name) else None
    return _ops_cache[name]


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_logits_meta(logits: torch.Tensor) -> None:
    torch._check(logits.dim() == 2, lambda: f"logits must have shape (N, V), got {tuple(logits.shape)}")
    torch._check(logits.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 lambda: f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")


def _register_fakes() -> None:
    """Shape/dtype-only kernels, so the ops trace under FakeTensor, torch.compile and export."""

    @torch.library.register_fake("epic_kernels::softmax_entropy")
    def _softmax_entropy_fake(logits):
        _check_logits_meta(logits)
        n, acc = logits.shape[0], _acc(logits.dtype)
        return logits.new_empty(n, dtype=acc), logits.new_empty(n, dtype=acc)

    @torch.library.register_fake("epic_kernels::softmax_entropy_sample")
    def _softmax_entropy_sample_fake(logits, seeds, streams, positions):
        _check_logits_meta(logits)
        n, acc = logits.shape[0], _acc(logits.dtype)
        torch._check(streams.dim() in (1, 2) and streams.shape[0] == n,
                     lambda: f"streams must have shape ({n},) or ({n}, S), got {tuple(streams.shape)}")
        torch._check(streams.dim() == 1 or streams.shape[1] >= 1,
                     lambda: f"streams of shape (N, S) needs S >= 1, got {tuple(streams.shape)}")
        torch._check(not streams.dtype.is_floating_point and not streams.dtype.is_complex
                     and streams.dtype != torch.bool,
                     lambda: f"streams must be an integer tensor, got {streams.dtype}")
        tokens = (n,) if streams.dim() == 1 else (n, streams.shape[1])
        return (logits.new_empty(n, dtype=acc), logits.new_empty(n, dtype=acc),
                logits.new_empty(tokens, dtype=torch.int64))

    @torch.library.register_fake("epic_kernels::gumbel_topk_prune")
    def _gumbel_topk_prune_fake(logits, seeds, positions, width, top_k):
        _check_logits_meta(logits)
        torch._check(top_k >= 1, lambda: f"top_k must be >= 1, got {top_k}")
        b, acc = logits.shape[0], _acc(logits.dtype)
        survivors = torch.library.get_ctx().new_dynamic_size()   # data-dependent: sum of counts
        long = torch.int64
        return (logits.new_empty(survivors, dtype=long), logits.new_empty(survivors, dtype=acc),
                logits.new_empty(b, dtype=long), logits.new_empty(b + 1, dtype=long),
                logits.new_empty(b, dtype=long), logits.new_empty(b, dtype=acc),
                logits.new_empty((b, top_k), dtype=long), logits.new_empty((b, top_k), dtype=acc),
                logits.new_empty(b, dtype=acc))

    if hasattr(torch.ops.epic_kernels, "fork_attention"):    # absent from builds older than the op
        @torch.library.register_fake("epic_kernels::fork_attention")
        def _fork_attention_fake(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid,
                                 seq, slot, fill, row_limit, scale):
            torch._check(query.dim() == 4 and query.shape[2] == 1,
                         lambda: f"query must have shape (N, H, 1, D), got {tuple(query.shape)}")
            torch._check(query.dtype in (torch.float32, torch.float64),
                         lambda: f"query must be float32 or float64, got {query.dtype}")
            n, h, _, d = query.shape
            return query.new_empty((n, 1, h, d))

    if hasattr(torch.ops.epic_kernels, "plan_rows"):          # absent from builds older than the op
        @torch.library.register_fake("epic_kernels::plan_rows")
        def _plan_rows_fake(depth, goal, seq, tokens, last, base, slot0, K, lead):
            torch._check(depth.dim() == 1, lambda: f"depth must have shape (M,), got {tuple(depth.shape)}")
            M = depth.shape[0]
            for name, t in (("goal", goal), ("seq", seq), ("tokens", tokens), ("base", base)):
                torch._check(t.dim() == 1 and t.shape[0] == M,
                             lambda: f"{name} must have shape ({M},), got {tuple(t.shape)}")
            for t in (depth, goal, seq, tokens, last, base):
                torch._check(t.dtype == torch.int64, lambda: f"plan_rows takes int64 tensors, got {t.dtype}")
            torch._check(K >= 1, lambda: f"K must be >= 1, got {K}")
            torch._check(last.dim() == 2 and last.shape[0] == M and last.shape[1] == K,
                         lambda: f"last must have shape ({M}, {K}), got {tuple(last.shape)}")
            ctx = torch.library.get_ctx()
            n1, nd = ctx.new_dynamic_size(), ctx.new_dynamic_size()
            n = n1 + nd * K
            rows = [depth.new_empty(n) for _ in range(6)]
            fan = ctx.new_dynamic_size() * (K - 1) if K > 1 else 0   # K = 1: no fan-out, no symbol
            return (depth.new_empty(n1), depth.new_empty(nd), *rows, depth.new_empty(fan),
                    depth.new_empty(fan))

    if hasattr(torch.ops.epic_kernels, "fork_layout"):
        @torch.library.register_fake("epic_kernels::fork_layout")
        def _fork_layout_fake(seq, B):
            torch._check(seq.dim() == 1, lambda: f"seq must have shape (N,), got {tuple(seq.shape)}")
            torch._check(seq.dtype == torch.int64, lambda: f"seq must be int64, got {seq.dtype}")
            torch._check(B >= 0, lambda: f"B must be >= 0, got {B}")
            width = torch.library.get_ctx().new_dynamic_size(min=1)
            return seq.new_empty(seq.shape[0]), seq.new_empty((B, width))

    @torch.library.register_fake("epic_kernels::_philox_randint")
    def _philox_randint_fake(seed, offset):
        torch._check(seed.shape == offset.shape, lambda: "seed and offset must have the same shape")
        return torch.empty_like(seed, dtype=torch.int64, memory_format=torch.contiguous_format)

    @torch.library.register_fake("epic_kernels::_gumbel_from_words")
    def _gumbel_from_words_fake(words):
        return torch.empty_like(words, dtype=torch.float32, memory_format=torch.contiguous_format)

    @torch.library.register_fake("epic_kernels::_gumbel_noise")
    def _gumbel_noise_fake(seeds, streams, positions, vocab):
        return seeds.new_empty((seeds.shape[0], vocab), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ #
# Typed wrappers                                                                                   #
# ------------------------------------------------------------------------------------------------ #


def softmax_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and logsumexp of ``softmax(logits)`` per row, one pass. ``logits [N, V]`` float.

    Returns ``(entropy [N], lse [N])`` in float32 (float64 for float64 logits).
    """
    return ops().softmax_entropy(logits)


def softmax_entropy_sample(logits: torch.Tensor, seeds: torch.Tensor, streams, positions: torch.Tensor):
    """``softmax_entropy`` plus keyed Gumbel-max tokens of each row, in the same pass.

    Parameters
    ----------
    logits : ``[N, V]`` float.
    seeds : int64 ``[N]`` in [0, 2**32); positions : int64 ``[N]`` in [0, 2**31).
    streams : an int, integer ``[N]`` (0 step, 1 + r rollout r), or integer ``[N, S]`` with
        ``S >= 1``: S samples per row, column k keyed by ``streams[:, k]``. On CPU the S samples
        come from one softmax pass (entropy and lse computed once, each block searched once per
        stream while in L1); on CUDA the op runs its one-stream kernel once per column.

    Returns ``(entropy [N], lse [N], tokens int64)``: tokens ``[N]`` for an int or ``[N]`` streams,
    ``[N, S]`` for ``[N, S]``; column k equals the call with ``streams[:, k]`` bit for bit, and
    tokens equal ``reference.gumbel_argmax``.
    """
    if not isinstance(streams, torch.Tensor):
        streams = torch.as_tensor(streams, dtype=torch.int64, device=logits.device)
    if streams.dim() < 2:          # one stream for every row: an int, a one-element or [N] tensor
        streams = streams.expand(logits.shape[0])
    return ops().softmax_entropy_sample(logits, seeds, streams.contiguous(), positions)


def gumbel_topk_prune(logits: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor, width,
                      top_k: int):
    """C++/CUDA ``reference.gumbel_topk_prune``: same arguments, returns a ``PruneResult``.

    ``width`` may be a float or a ``[B]`` tensor; it is expanded to ``[B]`` in the accumulate dtype.
    """
    from .reference import PruneResult

    width = torch.as_tensor(width, dtype=_acc(logits.dtype), device=logits.device)
    width = width.reshape(-1).expand(logits.shape[0]).contiguous()
    return PruneResult(*ops().gumbel_topk_prune(logits, seeds, positions, width, int(top_k)))


def fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq, slot, fill,
                   row_limit=None, scale: float | None = None) -> torch.Tensor:
    """The engine's fork attention for one layer call (``engine.attention._fork_attention_torch``).

    ``query [N, H, 1, D]``, ``key / value [N, Hkv, 1, D]``; ``pool_k / pool_v [slots, Hkv, slot_len, D]``
    receive each row's key / value at ``(slot[n], :, fill[n])``; row n attends to
    ``prefix_k / prefix_v [B, Hkv, L, D]`` of sequence ``seq[n]`` (read in place) where
    ``prefix_valid [B, L]`` is nonzero and the position is below ``row_limit[n]`` (optional), then to
    its slot's tokens ``0..fill[n]``. ``scale`` defaults to ``D ** -0.5``. Returns ``[N, 1, H, D]``.
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    return ops().fork_attention(query, key, value, pool_k, pool_v, prefix_k, prefix_v, prefix_valid, seq,
                                slot, fill, row_limit, float(scale))


__all__ = ["load", "available", "error", "ops", "softmax_entropy", "softmax_entropy_sample",
           "gumbel_topk_prune", "fork_attention", "BUILD_HINT"]


def _require(name: str):
    fn = op(name)
    if fn is None:
        raise RuntimeError(f"the loaded epic_kernels extension has no {name} op (built before it); "
                           f"rebuild it: {BUILD_HINT}")
    return fn


def plan_rows(depth, goal, seq, tokens, last, base, slot0: int, K: int, lead: int) -> tuple:
    """The C++ ``plan_rows`` (int64 CPU tensors): the tuple of ``engine.rows.PlannedRows`` (which see)."""
    return _require("plan_rows")(depth, goal, seq, tokens, last, base, int(slot0), int(K), int(lead))


def fork_layout(seq, B: int) -> tuple:
    """The C++ ``fork_layout``: ``(row_j [N], pad_index [B, max(R, 1)])`` (``engine.rows.fork_layout``)."""
    return _require("fork_layout")(seq, int(B))
