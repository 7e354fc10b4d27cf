"""The fast EPIC step: fused prune kernel, candidate-block manager, fork-attention rollouts, and
reuse of the winner's forward. Returns the reference lazy sampler's tokens."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import admissible_bound
from ..ops.candidate_manager import make_manager
from ..ops.dispatch import choose
from ..ops.gumbel_topk_prune import gumbel_topk_prune_impl
from ..reference import SampleStats, entropy_bound
from .evaluator import Evaluator
from .prefetch import DEFAULT_BUDGET, LEVELS, Prefetched, Prefetcher, _adopt_entry


@dataclass
class FastStep:
    tokens: torch.Tensor             # int64 [B]
    stats: SampleStats
    entropy: torch.Tensor            # [B] winner's lookahead-entropy estimate (NaN if not evaluated)
    next_logits: torch.Tensor        # [B, V] logits after appending each winner
    next_keys: list                  # per layer [B, kv_heads, head_dim]: the winners' own KV
    next_values: list
    prefetched: Prefetched | None = None   # the next step's evaluations made in this one
    pool: object | None = None             # the slot pool, for the next step to reuse (None: too big)

# a step's slot pool is handed to the next step for reuse unless it grew beyond this many slots
# (one slot is horizon + 2 tokens of every layer's keys and values: ~0.28 MB for SmolLM2-135M,
# so at most ~140 MB are kept)
POOL_KEEP_SLOTS = 512


@torch.no_grad()
def fast_sample(logits: torch.Tensor, prefix, model, cfg, backend: str | None = None,
                advance: bool = True, prefetched: Prefetched | None = None, transform=None,
                prefetch_budget: int = DEFAULT_BUDGET, pool=None) -> FastStep:
    """One EPIC step for every sequence of ``prefix`` (a ``PrefixView``).

    With ``advance`` the step also produces each sequence's next logits and the KV of its winner:
    from the winner's own depth-1 evaluation when it had one (a forward saved), otherwise from one
    extra batched call over just those sequences (the call a plain decoding loop would make).

    Prefetch (``prefetch.py``): with ``advance`` and a ``transform`` (what the caller will apply to
    ``next_logits`` before the next step, e.g. its truncation, as ``transform(logits [n, V],
    sequence [n], tokens [n, j])`` for sequences whose next ``j`` tokens are ``tokens``), the step
    also evaluates the next step (and the one after) inside its own model calls, on a bet, and
    returns that as ``prefetched``; passing it to the next call lets it skip those evaluations.
    The tokens are the same with or without it.

    ``pool``: the previous step's ``FastStep.pool`` to reuse (its contents are overwritten), which
    saves allocating and zeroing the slot storage every step.
    """
    B, V = logits.shape
    which = choose(logits.device, backend)
    k = cfg.horizon
    bound = entropy_bound(V, cfg.rollout_top_k)
    width = abs(cfg.alpha) * k * (bound * (1 + 1e-6) + 1e-6)
    pr = gumbel_topk_prune_impl(logits, prefix.seeds, prefix.positions, width, 1, which)
    seq = torch.repeat_interleave(torch.arange(B), pr.counts)
    prefetch = advance and transform is not None and prefetch_budget > 0
    if pool is not None:
        pool.reset()
    ev = Evaluator(model, prefix, seq, pr.ids, cfg, which, pr.scores.dtype, slot_len=k + prefetch * LEVELS,
                   pool=pool)
    mgr = make_manager(pr.offsets, pr.ids, pr.scores, cfg.alpha, k, admissible_bound(V, cfg.rollout_top_k),
                       cfg.block_size, which)
    carried = _adopt(ev, pr, logits, prefix, prefetched) if prefetched is not None else None
    if prefetch:
        ev.prefetch = Prefetcher(ev, pr, transform, width, which, mgr.winners, prefetch_budget, carried)
    while True:
        idx, depth = mgr.next_requests()
        if len(idx) == 0:
            break
        known, partial = ev.run(idx, depth)
        mgr.update(idx, known, partial, ev.scores(idx, partial, pr.scores, cfg.alpha))
    win = mgr.winners()
    depth1, deeper = mgr.stats()
    evaluated = ev.depth[win] >= 1
    stats = SampleStats(pr.counts.clone(), depth1, deeper, ev.calls, ev.forward_tokens)
    stats.extra["forwards_saved"] = int(evaluated.sum()) if advance else 0
    stats.extra["adopted"] = ev.adopted
    stats.extra["adopted_rows"] = ev.adopted_rows
    # the algorithmic minimum: one token per depth-1 evaluation, K per deeper depth reached
    stats.extra["depth_reached"] = ev.depth.clone()
    stats.extra["min_forward_tokens"] = int((ev.depth >= 1).sum() + cfg.rollouts * (ev.depth - 1).clamp(min=0).sum())
    entropy = torch.full((B,), float("nan"), dtype=pr.scores.dtype)
    if evaluated.any():
        entropy[evaluated] = torch.stack([ev.table[m, : int(ev.depth[m])].mean(-1).sum()
                                          for m in win[evaluated].tolist()]).to(entropy.dtype)
    next_logits = next_keys = next_values = None
    if advance:
        missing = win[~evaluated]
        if len(missing):                           # the forward a plain loop would have made
            calls, toks = ev.calls, ev.forward_tokens
            ev.run(missing, torch.ones_like(missing))
            stats.extra["finish_calls"], stats.extra["finish_tokens"] = ev.calls - calls, ev.forward_tokens - toks
            ev.calls, ev.forward_tokens = calls, toks
        next_logits = torch.stack([ev.next_logits[m] for m in win.tolist()])
        next_keys, next_values = ev.winner_kv(win)
    handed = None
    if ev.prefetch is not None:
        handed = ev.prefetch.hand_over(win)
        stats.extra["prefetch_rows"] = ev.prefetch.rows_fed          # fed for the next step
        stats.extra["prefetch_rows_won"] = ev.prefetch.rows_won      # ... on bets that won
        stats.extra["prefetch_hits"] = handed.hits()
        stats.extra["prefetch_carried"] = ev.prefetch.carried_used   # two-steps-ahead entries used
    keep = ev.pool if ev.pool.slots <= POOL_KEEP_SLOTS else None
    return FastStep(pr.ids[win], stats, entropy, next_logits, next_keys, next_values, handed, keep)


def _adopt(ev, pr, logits, prefix, prefetched: Prefetched) -> list:
    """Give the evaluator what earlier steps evaluated for this one, for each sequence whose
    position, seed, logits and survivors are exactly the predicted ones; returns, per sequence,
    what they evaluated of the step after (None where nothing)."""
    B = len(pr.counts)
    carried = [None] * B
    if len(prefetched) != B:
        return carried
    for b in range(B):
        lo, hi = int(pr.offsets[b]), int(pr.offsets[b + 1])
        e = prefetched.entries[b]
        if e is None or not e.matches(logits[b], int(prefix.positions[b]), int(prefix.seeds[b]), pr.ids[lo:hi]):
            continue
        _adopt_entry(ev, lo, e)
        carried[b] = e.nested
    return carried
