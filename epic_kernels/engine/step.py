"""The fast EPIC step: fused prune kernel, the best-first search (``search.py``) over a
fork-attention evaluator, and reuse of the winner's forward. Returns the reference lazy sampler's
tokens for the same seeds."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import Prefix, StepStats, admissible_bound, window
from ..ops.candidate_manager import make_manager
from ..ops.dispatch import choose
from .evaluator import Evaluator
from .prefetch import DEFAULT_BUDGET, LEVELS, Prefetcher
from . import reuse as _reuse
from .search import Search, prune_on_host

# a step's slot pool is handed to the next step for reuse unless it grew beyond this many slots
# (one slot holds horizon + 2 tokens of every layer's keys and values)
POOL_KEEP_SLOTS = 512


@dataclass
class FastStep:
    tokens: torch.Tensor             # int64 [B]
    stats: StepStats
    entropy: torch.Tensor            # [B] winner's lookahead-entropy estimate (NaN if not evaluated)
    next_logits: torch.Tensor | None = None   # [B, V] logits after appending each winner (advance)
    next_keys: list | None = None    # per layer [B, kv_heads, head_dim]: the winners' own KV (advance)
    next_values: list | None = None
    prefetched: list | None = None   # per sequence, the next step's evaluations made in this one
    pool: object | None = None       # the slot pool, for the next step to reuse (None: too big)
    carries: list | None = None      # per sequence, the next step's evaluations the winner's rollouts made


@torch.no_grad()
def fast_sample(logits: torch.Tensor, prefix: Prefix, model, cfg, backend: str | None = None,
                advance: bool = True, prefetched: list | None = None, transform=None,
                prefetch_budget: int = DEFAULT_BUDGET, pool=None, carries: list | None = None,
                reuse: bool = True) -> FastStep:
    """One EPIC step for every sequence of ``prefix``.

    With ``advance`` the step also produces each sequence's next logits and the KV of its winner:
    from the winner's own depth-1 evaluation when it had one (a forward saved), otherwise from one
    extra batched call over just those sequences (the call a plain decoding loop would make).

    Prefetch (``prefetch.py``): with ``advance`` and a ``transform`` (what the caller will apply to
    ``next_logits`` before the next step, e.g. its truncation, as ``transform(logits [n, V],
    sequence [n], tokens [n, j])`` for sequences whose next ``j`` tokens are ``tokens``), the step
    also evaluates the next step (and the one after) inside its own model calls, on a bet, and
    returns that as ``prefetched``; passing it to the next call lets it skip those evaluations.
    The tokens are the same with or without it.

    ``pool``: the previous step's ``FastStep.pool``: claimed for this step (``SlotPool.claim``), its
    storage reused, and the paths that ``prefetched`` and ``carries`` refer to kept (they must be
    that pool's hand-over of the previous step); if another step holds it, a new pool is used and
    the hand-over ignored.

    Cross-step reuse (``reuse.py``): with ``advance`` and ``reuse``, the step returns as ``carries``
    what its winners' rollouts evaluated of the next step; passing them back (``carries``) lets the
    next step skip those evaluations. The tokens are the same with or without it.
    """
    B, V = logits.shape
    which = choose(logits.device, backend)
    k = cfg.horizon
    width = window(cfg.alpha, k, V, cfg.rollout_top_k)
    pr = prune_on_host(logits, prefix.seeds, prefix.positions, width, which)
    seq = torch.repeat_interleave(torch.arange(B), pr.counts)
    prefetch = advance and transform is not None and prefetch_budget > 0
    # the pool: claimed for this step, keeping the paths the previous step's hand-over refers to
    keep = [i for e in prefetched or () if e is not None for i in e.path_ids()]
    keep += [i for c in carries or () if c is not None for i in c.path_ids()]
    if pool is not None and not pool.claim(keep):    # another step holds it
        pool = None
    ev = Evaluator(model, prefix, seq, pr.ids, cfg, which, pr.scores.dtype, slot_len=k + prefetch * LEVELS,
                   pool=pool, z=pr.scores, carry=advance and reuse)
    st, rt = ev.state, ev.rt
    if rt.pool is not pool:                          # a new pool: the hand-over's paths are not in it
        if pool is not None:
            pool.unclaim()
        rt.pool.claim()
        prefetched = carries = None
    try:
        return _run(ev, pr, logits, prefix, cfg, which, width, advance=advance, prefetched=prefetched,
                    carries=carries, reuse=reuse, transform=transform if prefetch else None,
                    prefetch_budget=prefetch_budget)
    finally:
        rt.pool.unclaim()


def _run(ev, pr, logits, prefix, cfg, which, width, *, advance, prefetched, carries, reuse, transform,
         prefetch_budget) -> FastStep:
    """The step on a claimed runtime (``fast_sample``); ``transform`` None: no prefetch."""
    (B, V), st, rt = logits.shape, ev.state, ev.rt
    mgr = make_manager(pr.offsets, pr.ids, pr.scores, cfg.alpha, cfg.horizon,
                       admissible_bound(V, cfg.rollout_top_k), cfg.block_size, which)
    search = Search(mgr, ev, pr.scores, cfg.alpha)
    carried = _adopt(ev, pr, logits, prefix, prefetched) if prefetched is not None else None
    if carries is not None and reuse:
        _reuse.load(ev, pr, prefix, carries)
    ride = (Prefetcher(ev, pr, transform, width, which, search.winners, prefetch_budget, carried)
            if transform is not None else None)
    while search.advance():
        ev.call(ride)
    win = search.winners()
    depth1, deeper = mgr.stats()
    evaluated = st.depth[win] >= 1
    served = evaluated & torch.tensor([st.kept(m) or not st.keep_logits for m in win.tolist()], dtype=torch.bool)
    stats = StepStats(pr.counts.clone(), depth1, deeper, rt.calls, rt.rows,
                      forwards_saved=int(served.sum()) if advance else 0,
                      adopted=st.adopted, adopted_rows=st.adopted_rows, reused=st.reused,
                      reused_rows=st.reused_rows, depth_reached=st.depth.clone(),
                      min_forward_tokens=int((st.depth >= 1).sum() + cfg.rollouts * (st.depth - 1).clamp(min=0).sum()))
    entropy = torch.full((B,), float("nan"), dtype=pr.scores.dtype)
    if evaluated.any():
        entropy[evaluated] = torch.stack([st.estimate(m) for m in win[evaluated].tolist()]).to(entropy.dtype)
    out = FastStep(pr.ids[win], stats, entropy)
    if advance:
        # the forward a plain loop would have made, for winners never evaluated, and the depth-1
        # row again for winners that lost their logits to the max_rows bound
        missing = win[~evaluated]
        ev.want(missing, torch.ones_like(missing))
        st.restore(win)
        if ev.pending():
            calls, toks = rt.calls, rt.rows
            while ev.call(ride):
                pass
            stats.finish_calls, stats.finish_tokens = rt.calls - calls, rt.rows - toks
        out.next_logits = torch.stack([st.logits[m] for m in win.tolist()])
        out.next_keys, out.next_values = ev.winner_kv(win)
        if reuse:
            out.carries = _reuse.carry(ev, win)
    if ride is not None:
        out.prefetched = ride.hand_over(win)
        stats.prefetch_rows = ride.rows_fed           # fed for the next step
        stats.prefetch_rows_won = ride.rows_won       # ... on bets that won
        stats.prefetch_hits = sum(e is not None for e in out.prefetched)
        stats.prefetch_carried = ride.carried_used    # two-steps-ahead entries used
    stats.restored, stats.max_call_rows = st.restored, rt.max_rows_fed
    stats.kept_logits = len(st.logits)
    handed = any(e is not None for e in out.prefetched or ()) or any(c is not None for c in out.carries or ())
    out.pool = rt.pool if handed or rt.pool.slots <= POOL_KEEP_SLOTS else None
    return out


def _adopt(ev, pr, logits, prefix, prefetched: list) -> list:
    """Give the evaluator what earlier steps evaluated for this one, for each sequence whose
    position, seed, logits and survivors are exactly the predicted ones; returns, per sequence,
    what they evaluated of the step after (None where nothing)."""
    B = len(pr.counts)
    carried = [None] * B
    if len(prefetched) != B:
        return carried
    for b in range(B):
        lo, hi = int(pr.offsets[b]), int(pr.offsets[b + 1])
        e = prefetched[b]
        if e is None or not e.matches(logits[b], int(prefix.positions[b]), int(prefix.seeds[b]), pr.ids[lo:hi]):
            continue
        e.load_into(ev, lo)
        carried[b] = e.nested
    return carried


__all__ = ["FastStep", "fast_sample", "POOL_KEEP_SLOTS"]
