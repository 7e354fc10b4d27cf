"""Prefetch: the next step's evaluations, folded into the model calls this step makes anyway.

On a CPU (and for small batches on a GPU) a model call costs about the same for 1 row as for 10:
a step's cost is its number of calls, and a step that must look 4 tokens ahead makes up to 4
calls in a row, each one a depth deeper. The next step's own calls can start before this step
ends, on a bet:

* as soon as a candidate ``i`` of step ``t`` has been evaluated at depth 1, its logits are the
  next step's logits if ``i`` wins, after whatever the caller applies to them (its truncation or
  logits processors: ``transform(logits [n, V], seq [n], token [n])``);
* the next step's first prune depends only on those logits, the sequence's seed and its position
  (keyed step noise), so its survivors ``S(i)`` are known in advance;
* a speculative next step (an ``Evaluator`` whose paths start with ``i``'s token, sharing this
  step's slot pool, driven by its own candidate manager exactly as ``fast_sample`` drives one)
  adds its rows to each of this step's calls: depth 1 of ``S(i)`` in the first, then the deeper
  evaluations its manager asks for, one depth per call;
* the keyed rollout tokens it draws are the ones step ``t + 1`` would draw (they depend on the
  seed, rollout and position only), so if ``i`` wins, step ``t + 1`` adopts those evaluations and
  its result is what it would have been without them (up to float rounding of the batch
  composition, as for any batching). If ``i`` loses, the rows are wasted.

The bet: a sequence already decided bets on its winner (no risk); an undecided one on the
candidate with the best score extrapolated from its partial estimate. A sequence bets at most
``MAX_GUESSES`` times per step, one live bet at a time (a bet is dropped once another candidate
is certified), and not when the next step would have more than ``budget`` survivors.

The hand-over object is ``Prefetched``; the next ``fast_sample`` adopts an entry only after
checking that the sequence's position, seed, logits and survivors are the ones predicted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.gumbel_topk_prune import gumbel_topk_prune_impl
from ..reference import entropy_bound

MAX_GUESSES = 2        # bets per sequence per step
DEFAULT_BUDGET = 8     # largest next-step survivor set bet on (rows wasted if the bet loses)


@dataclass
class _Entry:
    """The next step of one sequence, evaluated as far as this step's calls went, if ``token`` wins."""

    token: int
    position: int                  # the next step's position
    seed: int
    logits: torch.Tensor           # [V] the (transformed) logits the next step is expected to see
    ids: torch.Tensor              # [n] its survivors, ascending id
    depth: torch.Tensor            # [n] how deep each was evaluated
    table: torch.Tensor            # [n, k, K] per-depth entropies
    last: torch.Tensor             # [n, K] last keyed rollout tokens
    next_logits: dict              # survivor index -> its depth-1 logits
    kv: dict                       # survivor index -> per layer (keys, values) [K, kv_heads, depth, head_dim]


class Prefetched:
    """What a step hands to the next one: at most one ``_Entry`` per sequence (None: nothing)."""

    def __init__(self, entries: list):
        self.entries = entries
        self.owner = None            # sample_step: a weak reference to the cache it was made for

    def __len__(self) -> int:
        return len(self.entries)

    def hits(self) -> int:
        return sum(e is not None for e in self.entries)

    def select(self, rows: torch.Tensor) -> "Prefetched":
        """Keep sequences ``rows`` (as when finished sequences leave a batch)."""
        return Prefetched([self.entries[r] for r in rows.tolist()])

    def usable(self, b: int, logits_row, position: int, seed: int):
        """The entry for sequence ``b`` if it was made for exactly this position, seed and logits."""
        e = self.entries[b]
        if e is None or e.position != position or e.seed != seed:
            return None
        if e.logits.shape != logits_row.shape or e.logits.dtype != logits_row.dtype:
            return None
        return e if torch.equal(e.logits, logits_row) else None


class _Bet:
    """The speculative next step of sequence ``b`` if candidate ``m`` of this step wins."""

    def __init__(self, main, b: int, m: int, logits, npr, position: int, budget_rows: int):
        from .evaluator import Evaluator
        from .manager import make_manager

        cfg = main.cfg
        self.b, self.m, self.logits, self.ids, self.position = b, m, logits, npr.ids, position
        n = len(npr.ids)
        self.ev = Evaluator(main.model, main.prefix, torch.full((n,), b, dtype=torch.int64), npr.ids, cfg,
                            main.backend, main.table.dtype, pool=main.pool, lead=1)
        K = cfg.rollouts
        src = torch.full((n * K,), main.slot0 + m * K, dtype=torch.int64)
        main.pool.copy_slots(src, self.ev.slot0 + torch.arange(n * K), 1)   # the bet's token, slot position 0
        bound = entropy_bound(logits.shape[-1], cfg.rollout_top_k)
        self.z = npr.scores
        self.mgr = make_manager(npr.offsets, npr.ids, npr.scores, cfg.alpha, cfg.horizon, bound, cfg.block_size)
        self.asked = None              # candidates of the manager's outstanding request
        self.done = False
        self.rows_left = budget_rows
        self.rows_fed = 0

    def plan(self):
        """This bet's rows for the next call (None: nothing to do)."""
        ev = self.ev
        if self.done or self.rows_left <= 0:
            return None
        if not ev.pending():
            if self.asked is not None:                     # the manager's request is complete
                known, partial = ev.results(self.asked)
                self.mgr.update(self.asked, known, partial, ev.scores(self.asked, partial, self.z, ev.cfg.alpha))
                self.asked = None
            idx, depth = self.mgr.next_requests()
            if len(idx):
                ev.want(idx, depth)
                self.asked = idx
            else:                                          # decided: the winner's forward, as advance does
                win = self.mgr.winners()
                ev.want(win, torch.ones_like(win))
                self.done = True
        rows = ev.plan()
        if rows is not None:
            self.rows_left -= len(rows.seq)
            self.rows_fed += len(rows.seq)
        return rows

    def entry(self, token: int, seed: int) -> _Entry:
        ev = self.ev
        n = len(self.ids)
        kv = {m: ev.path_kv(m) for m in range(n) if ev.depth[m] >= 1}
        return _Entry(token=token, position=self.position, seed=seed, logits=self.logits, ids=self.ids,
                      depth=ev.depth.clone(), table=ev.table.clone(), last=ev.last.clone(),
                      next_logits={m: ev.next_logits[m] for m in kv}, kv=kv)


class Prefetcher:
    """Chooses, during one step, the bets and their rows (``Evaluator.run`` calls ``plan`` before
    each model call and ``absorb`` after it); ``hand_over(winners)`` keeps the bets that won."""

    def __init__(self, ev, pr, transform, width: float, backend: str, budget: int = DEFAULT_BUDGET):
        self.ev, self.pr, self.transform = ev, pr, transform
        self.width, self.backend, self.budget = width, backend, budget
        B = len(pr.counts)
        self.tries = [0] * B
        self.live: dict[int, _Bet] = {}              # sequence -> its live bet
        self.in_flight = []                          # (bet, rows) of the call in flight
        self.rows_fed = 0
        self.rows_won = 0                            # rows of the bets that won (set by hand_over)
        self.winners = None                          # set by fast_sample: the manager's decided winners

    def _guess(self, b: int, decided: int):
        ev, pr = self.ev, self.pr
        if decided >= 0:
            return decided if ev.depth[decided] >= 1 else None
        lo, hi = int(pr.offsets[b]), int(pr.offsets[b + 1])
        best, best_s = None, -float("inf")
        k, alpha = ev.cfg.horizon, ev.cfg.alpha
        for m in range(lo, hi):
            d = int(ev.depth[m])
            if d < 1:
                continue
            h = float(ev.table[m, :d].mean(-1).sum()) * k / d       # extrapolated to the horizon
            s = float(pr.scores[m]) - alpha * h
            if s > best_s:
                best, best_s = m, s
        return best

    def _new_bets(self, decided):
        ev, pr = self.ev, self.pr
        picks = []
        for b in range(len(pr.counts)):
            bet = self.live.get(b)
            if bet is not None:
                if decided[b] < 0 or decided[b] == bet.m:
                    continue
                del self.live[b]                     # another candidate won: the bet is lost
            if self.tries[b] >= MAX_GUESSES or (int(pr.counts[b]) < 2 and decided[b] < 0):
                continue
            m = self._guess(b, int(decided[b]))
            if m is None:
                continue
            self.tries[b] += 1
            picks.append((b, m))
        if not picks:
            return
        seqs = torch.tensor([b for b, _ in picks])
        cands = torch.tensor([m for _, m in picks])
        nxt = self.transform(torch.stack([ev.next_logits[m] for m in cands.tolist()]), seqs, pr.ids[cands])
        positions = ev.prefix.positions[seqs] + 1
        npr = gumbel_topk_prune_impl(nxt, ev.prefix.seeds[seqs], positions, self.width, 1, self.backend)
        for n, (b, m) in enumerate(picks):
            count = int(npr.counts[n])
            if count > self.budget:
                continue
            lo, hi = int(npr.offsets[n]), int(npr.offsets[n + 1])
            one = _one_row(npr, n, lo, hi)
            rows_cap = count * (1 + ev.cfg.rollouts * (ev.cfg.horizon - 1)) + 1
            self.live[b] = _Bet(ev, b, m, nxt[n], one, int(positions[n]), rows_cap)

    def plan(self):
        """The bets' rows for the next call, as a list of evaluator row sets (None: none)."""
        B = len(self.pr.counts)
        decided = self.winners().tolist() if self.winners is not None else [-1] * B
        self._new_bets(decided)
        self.in_flight = []
        for bet in self.live.values():
            rows = bet.plan()
            if rows is not None:
                self.in_flight.append((bet, rows))
                self.rows_fed += len(rows.seq)
        return [rows for _, rows in self.in_flight] or None

    def absorb(self, extra, logits: torch.Tensor) -> None:
        n = 0
        for bet, rows in self.in_flight:
            bet.ev.absorb(rows, logits[n:n + len(rows.seq)])
            n += len(rows.seq)
        self.in_flight = []

    def hand_over(self, winners: torch.Tensor) -> Prefetched:
        entries = []
        for b, m in enumerate(winners.tolist()):
            bet = self.live.get(b)
            if bet is None or bet.m != m or not (bet.ev.depth >= 1).any():
                entries.append(None)
                continue
            entries.append(bet.entry(int(self.pr.ids[m]), int(self.ev.prefix.seeds[b])))
            self.rows_won += bet.rows_fed
        return Prefetched(entries)


def _one_row(npr, n, lo, hi):
    """Row ``n`` of a batched prune result, as a one-sequence result."""
    from ..reference import PruneResult

    return PruneResult(npr.ids[lo:hi], npr.scores[lo:hi], npr.counts[n:n + 1],
                       torch.tensor([0, hi - lo], dtype=torch.int64), npr.front_ids[n:n + 1],
                       npr.front_scores[n:n + 1], npr.topk_ids[n:n + 1], npr.topk_scores[n:n + 1], npr.lse[n:n + 1])


__all__ = ["Prefetched", "Prefetcher", "MAX_GUESSES", "DEFAULT_BUDGET"]
