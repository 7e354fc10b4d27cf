"""Prefetch: the next step's depth-1 evaluations, folded into the model calls this step makes anyway.

On a CPU (and for small batches on a GPU) a model call costs about the same for 1 row as for 10:
a step's cost is its number of calls. Every step that has several survivors starts with one call
that only evaluates depth 1 of those survivors. That call can be made *during the previous step*:

* as soon as a candidate ``i`` of step ``t`` has been evaluated at depth 1, its logits are the
  next step's logits if ``i`` wins, after whatever the caller applies to them (its truncation or
  logits processors: ``transform(logits [n, V], seq [n], token [n])``);
* the next step's first prune depends only on those logits, the sequence's seed and its position
  (keyed step noise), so its survivors ``S(i)`` are known in advance;
* evaluating ``x + i + j`` for ``j`` in ``S(i)`` is one extra row per survivor in a call of step
  ``t`` (its suffix is ``i``'s token, copied from ``i``'s slot, then ``j``), and the keyed rollout
  tokens it draws are exactly the ones step ``t + 1`` would draw.

So the result of step ``t + 1`` does not change: it receives, for the survivors it would evaluate
first, the same entropies, rollout tokens, logits and KV it would have computed (up to float
rounding of the batch composition, as for any batching). When ``i`` loses, the extra rows are
wasted; a budget keeps that cheap. Which ``i`` to bet on: a sequence that is already decided bets
on its winner (no risk); an undecided one on the candidate with the best score extrapolated from
its partial estimate, at most ``MAX_GUESSES`` candidates per step.

The hand-over object is ``Prefetched``; the next ``fast_sample`` adopts an entry only after
checking that the sequence's position, seed, logits and survivors are the ones predicted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.gumbel_topk_prune import gumbel_topk_prune_impl

MAX_GUESSES = 2        # candidates per sequence per step whose next step is prefetched
DEFAULT_BUDGET = 8     # largest next-step survivor set prefetched (rows wasted if the bet loses)


@dataclass
class _Entry:
    """Depth-1 evaluations of the next step of one sequence, if ``token`` wins this step."""

    token: int
    position: int                  # the next step's position
    seed: int
    logits: torch.Tensor           # [V] the (transformed) logits the next step is expected to see
    ids: torch.Tensor              # [n] its survivors, ascending id
    entropy: torch.Tensor          # [n] depth-1 entropy of each
    samples: torch.Tensor          # [n, K] keyed rollout tokens drawn at depth 1
    next_logits: torch.Tensor      # [n, V] logits after each survivor
    keys: list                     # per layer [n, kv_heads, head_dim]: each survivor's KV
    values: list


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


class Prefetcher:
    """Chooses, during one step, the extra rows that evaluate the next step's depth 1.

    Called by ``Evaluator.run`` before each model call (``rows``) and after it (``consume``);
    ``hand_over(winners)`` keeps the entries whose bet won.
    """

    def __init__(self, ev, pr, transform, width: float, backend: str, budget: int = DEFAULT_BUDGET):
        self.ev, self.pr, self.transform = ev, pr, transform
        self.width, self.backend, self.budget = width, backend, budget
        B = len(pr.counts)
        self.tried = [set() for _ in range(B)]       # candidates already bet on (or too costly)
        self.bets = [dict() for _ in range(B)]       # candidate m -> partial _Entry (rows pending)
        self.pending = None                          # rows of the call in flight
        self.next_slot = None
        self.rows_fed = 0
        self.winners = None                          # set by fast_sample: decided sequences

    # -- which candidates to bet on -----------------------------------------------------------
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

    def rows(self):
        """``(seq, slot, fill, tokens, positions)`` of the extra rows for the next call, or None."""
        ev, pr = self.ev, self.pr
        B = len(pr.counts)
        decided = self.winners() if self.winners is not None else torch.full((B,), -1)
        picks = []
        for b in range(B):
            if int(pr.counts[b]) < 2 and int(decided[b]) < 0:
                continue
            if len(self.tried[b]) >= MAX_GUESSES:
                continue
            m = self._guess(b, int(decided[b]))
            if m is None or m in self.tried[b]:
                continue
            self.tried[b].add(m)
            picks.append((b, m))
        if not picks:
            return None
        seqs = torch.tensor([b for b, _ in picks])
        cands = torch.tensor([m for _, m in picks])
        nxt = self.transform(torch.stack([ev.next_logits[m] for m in cands.tolist()]), seqs, pr.ids[cands])
        positions = ev.prefix.positions[seqs] + 1
        npr = gumbel_topk_prune_impl(nxt, ev.prefix.seeds[seqs], positions, self.width, 1, self.backend)
        rows = []
        for n, (b, m) in enumerate(picks):
            count = int(npr.counts[n])
            if count > self.budget:
                continue
            lo, hi = int(npr.offsets[n]), int(npr.offsets[n + 1])
            ids = npr.ids[lo:hi]
            self.bets[b][m] = dict(logits=nxt[n], ids=ids, position=int(positions[n]))
            rows += [(b, m, int(j)) for j in ids.tolist()]
        if not rows:
            return None
        K = ev.cfg.rollouts
        base = ev.pool_slots_used()
        n = len(rows)
        ev.pool.reserve(base + n)
        slots = torch.arange(base, base + n)
        src = torch.tensor([m * K for _, m, _ in rows])
        ev.pool.copy_slots(src, slots, 1)                  # the bet's own token at slot position 0
        ev.claim_slots(n)
        seq = torch.tensor([b for b, _, _ in rows])
        self.pending = (rows, slots)
        self.rows_fed += n
        return seq, slots, torch.ones(n, dtype=torch.int64), torch.tensor([j for _, _, j in rows]), \
            ev.prefix.positions[seq] + 1

    def consume(self, logits: torch.Tensor):
        """Entropies and keyed rollout tokens of the rows just evaluated."""
        rows, slots = self.pending
        self.pending = None
        ev = self.ev
        K = ev.cfg.rollouts
        seq = torch.tensor([b for b, _, _ in rows])
        streams = (1 + torch.arange(K)).expand(len(rows), K)
        ent, ys = ev._entropy_and_samples(logits, seq, streams, ev.prefix.positions[seq] + 2)
        n = 0
        for b, m, _ in rows:
            bet = self.bets[b][m]
            bet.setdefault("rows", []).append(n)
            n += 1
        for b in range(len(self.bets)):
            for m, bet in self.bets[b].items():
                if "rows" in bet and "entropy" not in bet:
                    r = torch.tensor(bet["rows"])
                    bet.update(entropy=ent[r].clone(), samples=ys[r].clone(), next_logits=logits[r].clone(),
                               slots=slots[r])

    def hand_over(self, winners: torch.Tensor) -> Prefetched:
        ev = self.ev
        entries = []
        for b, m in enumerate(winners.tolist()):
            bet = self.bets[b].get(m)
            if bet is None or "entropy" not in bet:
                entries.append(None)
                continue
            s = bet["slots"]
            entries.append(_Entry(
                token=int(self.pr.ids[m]), position=bet["position"], seed=int(ev.prefix.seeds[b]),
                logits=bet["logits"], ids=bet["ids"], entropy=bet["entropy"], samples=bet["samples"],
                next_logits=bet["next_logits"],
                keys=[k[s, :, 1].clone() for k in ev.pool.keys],
                values=[v[s, :, 1].clone() for v in ev.pool.values]))
        return Prefetched(entries)


__all__ = ["Prefetched", "Prefetcher", "MAX_GUESSES", "DEFAULT_BUDGET"]
