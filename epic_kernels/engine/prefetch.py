"""Prefetch: the next step's evaluations, folded into the model calls this step makes anyway.

On a CPU (and for small batches on a GPU) a model call's cost grows far less than its rows (it
streams every weight once): a step's cost is mostly its number of calls, and a step that must look 4 tokens ahead makes up to 4
calls in a row, each one a depth deeper. The next step's own calls can start before this step
ends, on a bet:

* as soon as a candidate ``i`` of step ``t`` has been evaluated at depth 1, its logits are the
  next step's logits if ``i`` wins, after whatever the caller applies to them (its truncation or
  logits processors: ``transform(logits [n, V], seq [n], tokens [n, j])`` for the ``j`` tokens
  that would come next);
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

import weakref

import torch

from ..core import admissible_bound
from ..ops.candidate_manager import make_manager
from .evaluator import Evaluator
from .runtime import OutOfPaths
from .search import Search, prune_on_host

MAX_GUESSES = 2        # bets per sequence per step
DEFAULT_BUDGET = 64    # largest next-step survivor set bet on (rows wasted if the bet loses)
LEVELS = 2             # how many steps ahead: a decided bet bets again on its own winner


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
    paths: dict                    # survivor index -> its runtime paths [K'] (``CandidateState.handed_paths``)
    start: int                     # ... whose own tokens start after this many lead tokens
    nested: "_Entry | None" = None  # the step after, if the next step's winner is ``nested.token``

    def path_ids(self) -> list:
        """Every runtime path this entry (and its nested entry) refers to."""
        own = [int(i) for t in self.paths.values() for i in t]
        return own + (self.nested.path_ids() if self.nested is not None else [])

    def matches(self, logits_row, position: int, seed: int, ids=None) -> bool:
        """Made for exactly this position, seed and logits (and these survivors, if given)?"""
        if self.position != position or self.seed != seed:
            return False
        if self.logits.shape != logits_row.shape or self.logits.dtype != logits_row.dtype:
            return False
        if not torch.equal(self.logits, logits_row):
            return False
        return ids is None or torch.equal(self.ids, ids)

    def load_into(self, ev, lo: int) -> None:
        """Give evaluator ``ev``, whose candidates ``lo, lo + 1, ...`` are ``self.ids``, these evaluations."""
        ns = list(self.paths)
        ev.state.adopt([lo + n for n in ns], [int(self.depth[n]) for n in ns], [self.table[n] for n in ns],
                       [self.last[n] for n in ns], [self.next_logits[n] for n in ns],
                       [self.paths[n] for n in ns], self.start)


class Prefetched:
    """What a step hands to the next one: at most one ``_Entry`` per sequence (None: nothing) and
    the winners' rollout carries (``reuse.Carry`` or None per sequence), made for one state of one
    cache (``cache``, an ``EpicCache``: its identity and ``version``), one step configuration
    (``cfg``) and one model, and the step's slot pool, whose paths the entries and carries refer to
    (valid while the pool is in the epoch it was in when this was made: the next step that claims
    it keeps those paths, and any later claim frees them)."""

    def __init__(self, entries: list | None, cache=None, pool=None, carries: list | None = None, cfg=None,
                 model=None):
        n = len(entries if entries is not None else carries)
        self.entries = entries if entries is not None else [None] * n
        self.carries = carries if carries is not None else [None] * n
        self._owner = self._version = None
        if cache is not None:
            self.bind(cache)
        self.pool = pool
        self._epoch = pool.epoch if pool is not None else None
        self.cfg = cfg
        self._model = weakref.ref(model) if model is not None else None

    def bind(self, cache) -> "Prefetched":
        """Make this the hand-over of ``cache`` as it is now (the cache the step returned)."""
        self._owner, self._version = weakref.ref(cache), cache.version
        return self

    def made_for(self, cache, cfg=None, model=None) -> bool:
        """Was this made for ``cache`` exactly as it is now (same object, not modified since), and
        for the step configuration ``cfg`` and the ``model`` (when given), with its pool not
        claimed by another step since?"""
        if cfg is not None and self.cfg is not None and cfg != self.cfg:
            return False
        if model is not None and self._model is not None and self._model() is not model:
            return False
        if self.pool is None or self.pool.epoch != self._epoch:
            return False
        return (self._owner is not None and self._owner() is cache
                and getattr(cache, "version", None) == self._version)

    def path_ids(self) -> list:
        """Every path of ``pool`` the entries and carries refer to (the next step keeps them)."""
        ids = [i for e in self.entries if e is not None for i in e.path_ids()]
        return ids + [i for c in self.carries if c is not None for i in c.path_ids()]

    def __len__(self) -> int:
        return len(self.entries)

    def hits(self) -> int:
        return sum(e is not None for e in self.entries)

    def select(self, rows: torch.Tensor, cache) -> "Prefetched":
        """Keep sequences ``rows``, for ``cache`` after the same selection (finished sequences
        leaving a batch: ``cache.batch_select_indices(rows)``)."""
        keep = rows.tolist()
        out = Prefetched([self.entries[r] for r in keep], cache, self.pool, [self.carries[r] for r in keep],
                         self.cfg)
        out._model, out._epoch = self._model, self._epoch
        return out


class _Bet:
    """The speculative next step of sequence ``b`` if candidate ``m`` of evaluator ``src`` wins.

    ``src`` is this step's evaluator (a level-1 bet) or a decided level-1 bet's evaluator (level 2:
    the step after next). The bet's paths start with ``src``'s lead tokens and ``m``'s token.
    """

    def __init__(self, src, b: int, m: int, logits, npr, position: int, budget_rows: int, tokens,
                 ahead: _Entry | None = None):

        cfg = src.cfg
        self.b, self.m, self.logits, self.ids, self.position = b, m, logits, npr.ids, position
        self.tokens = tokens           # [lead] the tokens this bet's paths start with
        n = len(npr.ids)
        lead = src.state.lead + 1
        # the paths' lead tokens: src's slot of m (kept: bets are placed on kept candidates only)
        self.ev = Evaluator(src.model, src.prefix, torch.full((n,), b, dtype=torch.int64), npr.ids, cfg,
                            src.backend, src.state.table.dtype, runtime=src.rt, lead=lead,
                            lead_slot=int(src.state.paths[m, 0]), z=npr.scores)
        if ahead is not None:          # a previous step already evaluated part of this one
            try:
                ahead.load_into(self.ev, 0)
            except OutOfPaths:
                self.release()
                raise
        bound = admissible_bound(logits.shape[-1], cfg.rollout_top_k)
        mgr = make_manager(npr.offsets, npr.ids, npr.scores, cfg.alpha, cfg.horizon, bound, cfg.block_size,
                           src.backend)
        self.search = Search(mgr, self.ev, npr.scores, cfg.alpha)
        self.done = False              # decided, and the winner's own forward asked for
        self.rows_left = budget_rows
        self.rows_fed = 0
        self.child = None              # level 2: the bet on this bet's own winner
        self.child_tried = False

    def release(self) -> None:
        """Give back every path of this bet (and of its child): it is dropped."""
        st = self.ev.state
        for m in (st.paths >= 0).any(-1).nonzero().flatten().tolist():
            st.release(m)
        if st.lead_path is not None:
            self.ev.rt.release(st.lead_path.tolist())
            st.lead_path = None
        if getattr(self, "child", None) is not None:
            self.child.release()
            self.child = None

    def winner(self) -> int:
        """This speculative step's winner once decided and evaluated at depth 1, else -1."""
        if not self.done:
            return -1
        w = int(self.search.winners()[0])
        return w if self.ev.state.depth[w] >= 1 else -1

    def plan(self, limit: int):
        """This bet's rows for the next call, at most ``limit`` (None: nothing to do)."""
        ev = self.ev
        if self.rows_left <= 0 or limit <= 0:
            return None
        if not self.done and not self.search.advance():    # decided: the winner's forward, as advance does
            win = self.search.winners()
            ev.want(win, torch.ones_like(win))
            self.done = True
        rows = ev.plan(limit, strict=True)
        if rows is not None:
            self.rows_left -= len(rows)
            self.rows_fed += len(rows)
        return rows

    def entry(self, token: int, seed: int) -> _Entry:
        st = self.ev.state
        paths = {m: st.handed_paths(m) for m in (st.depth >= 1).nonzero().flatten().tolist() if st.kept(m)}
        nested = None
        w = self.winner()
        if self.child is not None and w == self.child.m and (self.child.ev.state.depth >= 1).any():
            nested = self.child.entry(int(self.ids[w]), seed)
        return _Entry(token=token, position=self.position, seed=seed, logits=self.logits, ids=self.ids,
                      depth=st.depth.clone(), table=st.table.clone(), last=st.last.clone(),
                      next_logits={m: st.logits[m] for m in paths}, paths=paths, start=st.lead, nested=nested)


class Prefetcher:
    """Chooses, during one step, the bets and their rows (``Evaluator.call`` calls ``plan`` before
    each model call and ``absorbing`` after it); ``hand_over(winners)`` keeps the bets that won.

    ``ahead[b]``: what an earlier step already evaluated of this step's next step (a level-2
    entry); a bet on its token starts from it, and it is handed on as it is if no bet was made.
    """

    def __init__(self, ev, pr, transform, width: float, backend: str, winners, budget: int = DEFAULT_BUDGET,
                 ahead: list | None = None):
        self.ev, self.pr, self.transform = ev, pr, transform
        self.width, self.backend, self.budget = width, backend, budget
        B = len(pr.counts)
        self.ahead = ahead if ahead is not None else [None] * B
        self.tries = [0] * B
        self.live: dict[int, _Bet] = {}              # sequence -> its live bet
        self.in_flight = []                          # (bet, rows) of the call in flight
        self.bets = []                               # every bet made (for the row accounting)
        self.rows_won = 0                            # rows of the bets that won (set by hand_over)
        self.ahead_used = 0                        # level-2 entries continued or handed on
        self.winners = winners                       # () -> [B] the manager's decided winners (-1: not yet)

    @property
    def rows_fed(self) -> int:
        return sum(bet.rows_fed for bet in self.bets)

    def _guess(self, b: int, decided: int, kept: torch.Tensor):
        """The candidate of sequence ``b`` to bet on: its decided winner, else the kept candidate
        (``kept``: every kept candidate of the step, evaluated) with the best extrapolated score."""
        st, pr = self.ev.state, self.pr
        if decided >= 0:                 # (a candidate that lost its logits to max_rows is not bet on)
            return decided if st.depth[decided] >= 1 and st.kept(decided) else None
        mine = kept[(kept >= int(pr.offsets[b])) & (kept < int(pr.offsets[b + 1]))]
        if len(mine) == 0:
            return None
        return int(mine[int(torch.argmax(st.priority(mine)))])

    def _place(self, picks):
        """Bets ``(src evaluator, sequence b, candidate m, tokens [lead], ahead)``: predict each
        next step's logits and survivors; returns the ``_Bet`` per pick (None: over budget)."""
        if not picks:
            return []
        ev = self.ev
        seqs = torch.tensor([p[1] for p in picks])
        tokens = torch.stack([p[3] for p in picks])
        nxt = self.transform(torch.stack([p[0].state.logits[p[2]] for p in picks]), seqs, tokens)
        positions = ev.prefix.positions[seqs] + tokens.shape[1]
        npr = prune_on_host(nxt, ev.prefix.seeds[seqs], positions, self.width, self.backend)
        out = []
        K, k = ev.cfg.rollouts, ev.cfg.horizon
        for n, (src, b, m, toks, ahead) in enumerate(picks):
            count = int(npr.counts[n])
            if count > self.budget:
                out.append(None)
                continue
            one = npr.row(n)
            if ahead is not None and not ahead.matches(nxt[n], int(positions[n]), int(ev.prefix.seeds[b]), one.ids):
                ahead = None
            try:
                bet = _Bet(src, b, m, nxt[n], one, int(positions[n]), count * (1 + K * (k - 1)) + 1, toks, ahead)
            except OutOfPaths:         # the runtime has no paths to spare for it
                out.append(None)
                continue
            self.bets.append(bet)
            out.append(bet)
        return out

    def _new_bets(self, decided):
        pr, st = self.pr, self.ev.state
        picks = []
        kept = None
        for b in range(len(pr.counts)):
            bet = self.live.get(b)
            if bet is not None:
                if decided[b] < 0 or decided[b] == bet.m:
                    continue
                self.live.pop(b).release()           # another candidate won: the bet is lost, its paths free
            if self.tries[b] >= MAX_GUESSES or (int(pr.counts[b]) < 2 and decided[b] < 0):
                continue
            if kept is None and decided[b] < 0:      # the kept, evaluated candidates: at most max_rows
                kept = torch.tensor(sorted(m for m in st.logits if st.depth[m] >= 1 and st.kept(m)), dtype=torch.int64)
            m = self._guess(b, int(decided[b]), kept)
            if m is None:
                continue
            self.tries[b] += 1
            token = pr.ids[m].view(1)
            ahead = self.ahead[b] if self.ahead[b] is not None and self.ahead[b].token == int(token) else None
            self.ahead_used += ahead is not None
            picks.append((self.ev, b, m, token, ahead))
        for (_, b, _, _, _), bet in zip(picks, self._place(picks)):
            if bet is not None:
                self.live[b] = bet

    def _new_children(self):
        if LEVELS < 2:
            return
        picks, parents = [], []
        for bet in self.live.values():
            w = bet.winner()
            if w < 0 or bet.child_tried:
                continue
            bet.child_tried = True
            if not bet.ev.state.kept(w):             # its logits and path went to max_rows
                continue
            picks.append((bet.ev, bet.b, w, torch.cat([bet.tokens, bet.ids[w].view(1)]), None))
            parents.append(bet)
        for parent, child in zip(parents, self._place(picks)):
            parent.child = child

    def plan(self, limit: int):
        """The bets' rows for the next call, at most ``limit`` in all, as a list of evaluator row
        sets (None: none)."""
        decided = self.winners().tolist()
        self._new_bets(decided)
        self._new_children()
        self.in_flight = []
        for bet in list(self.live.values()) + [b.child for b in self.live.values() if b.child is not None]:
            try:
                rows = bet.plan(limit)
            except OutOfPaths:         # no paths left for it: drop it (and its child)
                self._drop(bet)
                continue
            if rows is not None:
                self.in_flight.append((bet, rows))
                limit -= len(rows)
        return [rows for _, rows in self.in_flight] or None

    def _drop(self, bet) -> None:
        """Drop ``bet`` (its paths go back to the runtime); no more bets for its sequence this step."""
        bet.release()
        self.tries[bet.b] = MAX_GUESSES
        if self.live.get(bet.b) is bet:
            del self.live[bet.b]
        else:
            for parent in self.live.values():
                if parent.child is bet:
                    parent.child = None

    def drop_all(self) -> None:
        """Drop every live bet (the step itself needs their paths)."""
        for bet in list(self.live.values()):
            self._drop(bet)

    def absorbing(self, logits: torch.Tensor) -> list:
        """The bets' parts of a call's outputs (the rows ``plan`` returned), as ``evaluator.absorb_all``
        files them: ``[(bet evaluator, rows, logits)]``; the call is then no longer in flight."""
        parts, n = [], 0
        for bet, rows in self.in_flight:
            parts.append((bet.ev, rows, logits[n:n + len(rows)]))
            n += len(rows)
        self.in_flight = []
        return parts

    def hand_over(self, winners: torch.Tensor) -> list:
        """Per sequence, the next step's evaluations if the bet on ``winners`` won (else None)."""
        entries = []
        for b, m in enumerate(winners.tolist()):
            bet = self.live.get(b)
            token = int(self.pr.ids[m])
            if bet is not None and bet.m == m and (bet.ev.state.depth >= 1).any():
                entries.append(bet.entry(token, int(self.ev.prefix.seeds[b])))
                self.rows_won += bet.rows_fed + (bet.child.rows_fed if bet.child is not None else 0)
            elif self.ahead[b] is not None and self.ahead[b].token == token:
                entries.append(self.ahead[b])      # made two steps ago for exactly this case
                self.ahead_used += 1
            else:
                entries.append(None)
        return entries


__all__ = ["Prefetched", "Prefetcher", "MAX_GUESSES", "DEFAULT_BUDGET", "LEVELS"]
