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
from .prefetch import DEFAULT_BUDGET, LEVELS, Prefetched, Prefetcher
from . import reuse as _reuse
from .runtime import OutOfPaths
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
    prefetched: Prefetched | None = None   # the hand-over to the next step (advance; not yet bound to a cache)
    winner_paths: torch.Tensor | None = None  # int64 [B]: the runtime path holding each winner's own KV (advance)


@torch.no_grad()
def fast_sample(logits: torch.Tensor, prefix: Prefix, model, cfg, backend: str | None = None,
                advance: bool = True, prefetched: Prefetched | None = None, transform=None,
                prefetch_budget: int = DEFAULT_BUDGET, pool=None, reuse: bool = True, runtime=None) -> FastStep:
    """One EPIC step for every sequence of ``prefix``.

    With ``advance`` the step also produces each sequence's next logits and the KV of its winner:
    from the winner's own depth-1 evaluation when it had one (a forward saved), otherwise from one
    extra batched call over just those sequences (the call a plain decoding loop would make).

    Prefetch (``prefetch.py``): with ``advance`` and a ``transform`` (what the caller will apply to
    ``next_logits`` before the next step, e.g. its truncation, as ``transform(logits [n, V],
    sequence [n], tokens [n, j])`` for sequences whose next ``j`` tokens are ``tokens``), the step
    also evaluates the next step (and the one after) inside its own model calls, on a bet.
    Cross-step reuse (``reuse.py``): with ``advance`` and ``reuse``, the winners' rollouts are
    evaluations of the next step. Both travel in ``FastStep.prefetched`` (a ``Prefetched``: its
    entries and carries refer to paths of the step's slot pool); passing it to the next step
    (``prefetched``, after the caller checked ``made_for``) lets it skip those evaluations. The
    tokens are the same with or without it.

    The slot pool (``prefetched.pool``, else ``pool``: storage to reuse) is claimed for this step
    (``SlotPool.claim``), keeping the paths the hand-over refers to; if another step holds it, a new
    pool is used and the hand-over ignored.

    ``runtime``: run on this runtime (``runtime.Runtime``, with its path pool ``runtime.pool``, e.g. the
    llama.cpp runtime, which holds the prefixes itself: ``prefix`` then needs only positions and
    seeds) instead of a ``ForkRuntime`` over ``prefix`` and ``model``. Its pool is claimed the same
    way; a hand-over made on another pool is ignored, and a pool another step holds is an error.
    Runtimes that hand the winners' KV to the caller's cache implement ``token_kv`` (``next_keys`` /
    ``next_values``); for any runtime ``winner_paths`` names the paths that hold it.
    """
    B, V = logits.shape
    which = choose(logits.device, backend)
    k = cfg.horizon
    width = window(cfg.alpha, k, V, cfg.rollout_top_k)
    pr = prune_on_host(logits, prefix.seeds, prefix.positions, width, which)
    seq = torch.repeat_interleave(torch.arange(B), pr.counts)
    prefetch = advance and transform is not None and prefetch_budget > 0
    # the pool: claimed for this step, keeping the paths the previous step's hand-over refers to
    if runtime is not None:                          # the caller's runtime, on its own pool
        if prefetched is not None and prefetched.pool is not runtime.pool:
            prefetched = None
        if not runtime.pool.claim(prefetched.path_ids() if prefetched is not None else []):
            raise RuntimeError("this runtime is in use by another step; run one step at a time on it")
        ev = Evaluator(model, prefix, seq, pr.ids, cfg, which, pr.scores.dtype, runtime=runtime, z=pr.scores,
                       carry=advance and reuse)
        rt = ev.rt
    else:
        if prefetched is not None:
            pool = prefetched.pool
        keep = prefetched.path_ids() if prefetched is not None else []
        if pool is not None and not pool.claim(keep):    # another step holds it
            pool = None
        ev = Evaluator(model, prefix, seq, pr.ids, cfg, which, pr.scores.dtype, slot_len=k + prefetch * LEVELS,
                       pool=pool, z=pr.scores, carry=advance and reuse)
        rt = ev.rt
        if rt.pool is not pool:                          # a new pool: the hand-over's paths are not in it
            if pool is not None:
                pool.unclaim()
            rt.pool.claim()
            prefetched = None
    try:
        return _run(ev, pr, logits, prefix, cfg, which, width, advance=advance, prefetched=prefetched,
                    reuse=reuse, transform=transform if prefetch else None, prefetch_budget=prefetch_budget)
    finally:
        rt.pool.unclaim()


def _run(ev, pr, logits, prefix, cfg, which, width, *, advance, prefetched, reuse, transform,
         prefetch_budget) -> FastStep:
    """The step on a claimed runtime (``fast_sample``); ``transform`` None: no prefetch."""
    (B, V), st, rt = logits.shape, ev.state, ev.rt
    mgr = make_manager(pr.offsets, pr.ids, pr.scores, cfg.alpha, cfg.horizon,
                       admissible_bound(V, cfg.rollout_top_k), cfg.block_size, which)
    search = Search(mgr, ev, pr.scores, cfg.alpha)
    ahead = None
    if prefetched is not None:
        ahead = _adopt(ev, pr, logits, prefix, prefetched.entries)
        if reuse:
            _reuse.load(ev, pr, prefix, prefetched.carries)
        # what was handed over is adopted (forked into this step's paths) or useless, except the
        # step-after-next entries: a runtime short of paths may take the rest back (make_room)
        later = {i for e in ahead if e is not None for i in e.path_ids()}
        st.spare = sorted(set(prefetched.path_ids()) - later)
    ride = (Prefetcher(ev, pr, transform, width, which, search.winners, prefetch_budget, ahead)
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
        out.winner_paths = st.paths[win, 0].clone()
        if hasattr(rt, "token_kv"):                  # the caller's cache takes the winners' KV
            out.next_keys, out.next_values = ev.winner_kv(win)
    carries = _reuse.carry(ev, win) if advance and reuse else None
    entries = None
    if ride is not None:
        entries = ride.hand_over(win)
        stats.prefetch_rows = ride.rows_fed           # fed for the next step
        stats.prefetch_rows_won = ride.rows_won       # ... on bets that won
        stats.prefetch_hits = sum(e is not None for e in entries)
        stats.prefetch_ahead = ride.ahead_used        # two-steps-ahead entries used
    stats.restored, stats.max_call_rows = st.restored, rt.max_rows_fed
    stats.kept_logits = len(st.logits)
    if entries is not None or carries is not None:
        handed = any(e is not None for e in entries or ()) or any(c is not None for c in carries or ())
        pool = rt.pool if handed or rt.pool.slots <= POOL_KEEP_SLOTS else None
        out.prefetched = Prefetched(entries, None, pool, carries, cfg, ev.model)
    return out


def _adopt(ev, pr, logits, prefix, prefetched: list) -> list:
    """Give the evaluator what earlier steps evaluated for this one, for each sequence whose
    position, seed, logits and survivors are exactly the predicted ones; returns, per sequence,
    what they evaluated of the step after (None where nothing)."""
    B = len(pr.counts)
    ahead = [None] * B
    if len(prefetched) != B:
        return ahead
    for b in range(B):
        lo, hi = int(pr.offsets[b]), int(pr.offsets[b + 1])
        e = prefetched[b]
        if e is None or not e.matches(logits[b], int(prefix.positions[b]), int(prefix.seeds[b]), pr.ids[lo:hi]):
            continue
        try:
            e.load_into(ev, lo)
        except OutOfPaths:             # no paths to adopt into (a fixed-size runtime): evaluate anew
            continue
        ahead[b] = e.nested
    return ahead


__all__ = ["FastStep", "fast_sample", "POOL_KEEP_SLOTS"]
