"""Per-step candidate state: everything the engine knows about one step's candidates, in one place.

``CandidateState`` holds, for candidates ``m = 0 .. M-1`` (sequence ``seq[m]``, token ``tokens[m]``,
sitting at position ``base[m]``), with K rollouts and horizon k:

=============  =================  ==============================================================
field          shape              meaning
=============  =================  ==============================================================
``depth``      int64 ``[M]``      depth evaluated so far (0: not evaluated)
``goal``       int64 ``[M]``      depth asked for (the search's requests)
``table``      ``[M, k, K]``      per-depth entropies of each rollout (depth 1 shared by all)
``last``       int64 ``[M, K]``   each rollout's last keyed token (the next row's input)
``drawn``      int64 ``[M, k, K]`` rollout r's token drawn at depth d + 1 (cross-step reuse)
``paths``      int64 ``[M, K]``   the runtime path of (m, r); -1: none held
``logits``     dict m -> ``[V]``  kept depth-1 logits (the winner's next logits; prefetch bets)
``second``     dict (m, r) ->     logits of rollout r's depth-2 row (cross-step reuse)
=============  =================  ==============================================================

and its operations: ``adopt`` (take evaluations made by an earlier step), ``handed_paths`` (a
candidate's paths, as a hand-over to a later step refers to them), ``evict`` and ``trim`` (the ``max_rows`` bound), ``restore``.
The invariant that keeps hand-overs exact: a candidate keeps depth-1 logits only while its path 0
holds its depth-1 KV (``kept``); whatever gives a path back drops the logits with it.

Prefetch (``prefetch.py``) and reuse (``reuse.py``) read and write this state; the ``Evaluator``
(``evaluator.py``) drives model calls over it; ``StepStats`` is derived from it (``step.py``).
"""
from __future__ import annotations

import torch


class CandidateState:
    """See the module docstring. ``runtime``: the paths' owner (``runtime.Runtime``); ``lead``: tokens
    every path starts with (a prefetch bet's), copied from path ``lead_path`` of the same runtime."""

    def __init__(self, runtime, seq, tokens, base, cfg, score_dtype, *, lead: int = 0, lead_path: int | None = None,
                 keep_logits: bool = True, carry: bool = False, z: torch.Tensor | None = None):
        M, K, k = len(tokens), cfg.rollouts, cfg.horizon
        self.rt, self.cfg = runtime, cfg
        self.seq, self.tokens, self.base, self.z = seq, tokens, base, z
        self.lead, self.keep_logits = lead, keep_logits
        self.max_rows = getattr(cfg, "max_rows", None) or (1 << 62)
        self.depth = torch.zeros(M, dtype=torch.int64)
        self.goal = torch.zeros(M, dtype=torch.int64)
        self.table = torch.zeros(M, k, K, dtype=score_dtype)
        self.last = torch.zeros(M, K, dtype=torch.int64)
        self.drawn = torch.full((M, k, K), -1, dtype=torch.int64)
        self.paths = torch.full((M, K), -1, dtype=torch.int64)
        self.logits: dict = {}
        self.keep_second = carry and keep_logits and lead == 0
        self.second: dict = {}
        self.to_restore: set[int] = set()     # candidates whose depth-1 row must run again
        self.protected: set[int] = set()      # candidates whose logits are never dropped (winners)
        self.complete: list[int] = []         # evaluated through the horizon, paths still held
        self.restored = 0                     # depth-1 rows run again (max_rows bound)
        self.adopted = self.adopted_rows = 0  # evaluations taken from the last step's prefetch ...
        self.reused = self.reused_rows = 0    # ... and from its winner's rollouts
        self.spare: list[int] = []            # handed-over paths this step no longer needs (make_room frees them)
        self.lead_path = None
        if lead:
            self.lead_path = runtime.take(1)
            runtime.fork(torch.tensor([lead_path], dtype=torch.int64), self.lead_path, lead)

    def __len__(self) -> int:
        return len(self.tokens)

    # -- queries ----------------------------------------------------------------------------------
    def kept(self, m: int) -> bool:
        """Does candidate ``m`` hold its depth-1 logits and its path 0 (so that path holds its
        depth-1 KV)?"""
        return m in self.logits and bool(self.paths[m, 0] >= 0)

    def pending(self) -> bool:
        return bool((self.depth < self.goal).any()) or bool(self.to_restore)

    def estimate(self, m: int) -> torch.Tensor:
        """Candidate ``m``'s RB estimate through its depth (mean over rollouts, summed over depths)."""
        return self.table[m, : int(self.depth[m])].mean(-1).sum()

    def priority(self, ms: torch.Tensor) -> torch.Tensor:
        """Extrapolated scores ``z - alpha * H_partial * k / depth`` of candidates ``ms`` (the lowest
        lose their logits first; prefetch bets on the highest)."""
        d = self.depth[ms].clamp(min=1).to(self.table.dtype)
        h = self.table[ms].mean(-1).sum(-1) * (self.cfg.horizon / d)
        z = self.z[ms].to(self.table.dtype) if self.z is not None else torch.zeros_like(h)
        return z - self.cfg.alpha * h

    # -- paths --------------------------------------------------------------------------------------
    def take(self, ms: torch.Tensor, upto: int) -> None:
        """Give candidates ``ms`` their paths ``0 .. upto - 1`` (those they lack), lead tokens forked in."""
        if len(ms) == 0:
            return
        block = self.paths[ms, :upto]
        need = block < 0
        n = int(need.sum())
        if n == 0:
            return
        got = self.rt.take(n)
        block[need] = got
        self.paths[ms, :upto] = block
        if self.lead:
            self.rt.fork(self.lead_path.expand(n), got, self.lead)

    def release(self, m: int, upto: int | None = None) -> None:
        """Give back candidate ``m``'s paths (``upto``: only the first ones) and, with path 0, its kept logits."""
        row = self.paths[m, :upto] if upto is not None else self.paths[m]
        held = row[row >= 0]
        if len(held):
            self.rt.release(held.tolist())
        row.fill_(-1)
        self.logits.pop(m, None)

    def handed_paths(self, m: int) -> torch.Tensor:
        """Candidate ``m``'s paths as a hand-over refers to them (``K'`` ids: ``K' = 1`` at depth 1,
        where the rollouts share it); its own tokens start after the ``lead`` tokens."""
        return self.paths[m, : self.cfg.rollouts if self.depth[m] > 1 else 1].clone()

    def adopt(self, ms, depths, tables, lasts, logits, src, src_start: int, reused: bool = False) -> None:
        """Take candidates ``ms``' evaluations from an earlier step (its prefetch, or with ``reused``
        its winner's rollouts): candidate ``ms[i]`` evaluated through ``depths[i]``, entropies
        ``tables[i] [k, K]``, rollout tokens ``lasts[i] [K]``, depth-1 logits ``logits[i]``, and its
        paths' KV in runtime paths ``src[i]`` (``K'`` ids) from token ``src_start`` on. The paths
        are forked in one call (tokens past a path's depth are copied too, and masked as stale)."""
        if not len(ms):
            return
        K = self.cfg.rollouts
        ms_t, d_t = torch.as_tensor(ms, dtype=torch.int64), torch.as_tensor(depths, dtype=torch.int64)
        deep = d_t > 1
        self.take(ms_t[~deep], 1)
        self.take(ms_t[deep], K)
        self.depth[ms_t] = d_t
        self.table[ms_t] = torch.stack(list(tables)).to(self.table.dtype)
        self.last[ms_t] = torch.stack(list(lasts))
        for m, row in zip(ms, logits):
            self.keep(int(m), row)
        dst = torch.cat([self.paths[m, : K if d > 1 else 1] for m, d in zip(ms_t.tolist(), d_t.tolist())])
        self.rt.fork(torch.cat(list(src)), dst, int(d_t.max()), src_start, self.lead)
        rows = int(len(ms_t) + K * (d_t - 1).sum())
        if reused:
            self.reused, self.reused_rows = self.reused + len(ms_t), self.reused_rows + rows
        else:
            self.adopted, self.adopted_rows = self.adopted + len(ms_t), self.adopted_rows + rows

    # -- kept logits and the max_rows bound -------------------------------------------------------
    def keep(self, m: int, row: torch.Tensor) -> None:
        if self.keep_logits:
            self.logits[m] = row

    def restore(self, idx) -> None:
        """Ask for the depth-1 rows of evaluated candidates ``idx`` that lost their logits to run
        again (the winners' logits and KV at the end of a step); they are kept from then on."""
        for m in (int(i) for i in idx):
            self.protected.add(m)
            if self.depth[m] >= 1 and not self.kept(m):
                self.to_restore.add(m)

    def evict(self, room: int, busy: torch.Tensor) -> None:
        """Drop kept logits until at most ``max_rows - room`` remain, never those of ``busy``,
        pending or protected candidates; a candidate at depth 1 gives its path back too."""
        excess = len(self.logits) + room - self.max_rows
        if excess <= 0:
            return
        held = torch.tensor(sorted(self.logits), dtype=torch.int64)
        ok = (self.depth[held] >= self.goal[held])
        ok[torch.isin(held, busy)] = False
        if self.protected:
            ok[torch.isin(held, torch.tensor(sorted(self.protected), dtype=torch.int64))] = False
        held = held[ok]
        if len(held) == 0:
            return
        order = torch.argsort(self.priority(held), stable=True)[: min(excess, len(held))]
        for m in held[order].tolist():
            if self.depth[m] == 1:
                self.release(m, 1)
            else:
                del self.logits[m]
        # a kept row must not hold a whole call's logits alive
        for m, t in self.logits.items():
            if t.untyped_storage().nbytes() > t.nbytes:
                self.logits[m] = t.clone()

    def make_room(self, busy: torch.Tensor) -> bool:
        """The runtime ran out of paths (``runtime.OutOfPaths``): give back the paths of candidates that
        are neither ``busy`` (in the call being planned) nor protected (winners), lowest extrapolated
        score first (before all: the previous step's handed-over paths, ``spare``, once adopted):
        paths not yet written (candidates at depth 0), then the one path of depth-1
        candidates that are not pending (their kept logits go with it), then all paths of candidates
        evaluated through the horizon; and only when none of those holds a path, the paths of pending
        candidates, which start again from depth 0 (the search reads no result of a pending
        candidate, and the keyed rollouts repeat exactly). A candidate needed again has its depth-1
        row run again (``restore``), so the tokens do not change. Returns whether any path was given
        back."""
        if self.spare:               # first: the previous step's hand-over, already adopted
            self.rt.release(self.spare)
            self.spare = []
            return True
        held = (self.paths >= 0).any(-1)
        held[busy] = False
        if self.protected:
            held[torch.tensor(sorted(self.protected), dtype=torch.int64)] = False
        settled = self.depth >= self.goal
        groups = [held & (self.depth == 0), held & settled & (self.depth == 1),
                  held & settled & (self.depth >= self.cfg.horizon)]
        freed = False
        for group in (g.nonzero().flatten() for g in groups):
            for m in group[torch.argsort(self.priority(group), stable=True)].tolist():
                self.release(m)
                for r in range(self.cfg.rollouts):
                    self.second.pop((m, r), None)
                freed = True
        if not freed:                # last: pending candidates start again from depth 0
            pending = (held & ~settled).nonzero().flatten()
            for m in pending[torch.argsort(self.priority(pending), stable=True)].tolist():
                self.release(m)
                for r in range(self.cfg.rollouts):
                    self.second.pop((m, r), None)
                self.depth[m] = 0
                self.drawn[m] = -1
                freed = True
        if freed:
            self.complete = [m for m in self.complete if bool((self.paths[m] >= 0).any())]
        return freed

    def trim(self) -> None:
        """When the runtime holds more than ``4 max_rows`` paths, give back the paths (and the kept
        logits) of candidates evaluated through the horizon (they never go deeper; a winner among
        them has its depth-1 row run again for its logits and KV), lowest extrapolated score first."""
        limit = 4 * self.max_rows
        if self.rt.in_use() <= limit or not self.complete:
            return
        done = torch.tensor([m for m in self.complete if m not in self.protected], dtype=torch.int64)
        self.complete = []
        if len(done) == 0:
            return
        for m in done[torch.argsort(self.priority(done), stable=True)].tolist():
            if self.rt.in_use() <= limit // 2:
                self.complete.append(m)
                continue
            # its depth-1 logits go too: kept logits promise the candidate's KV in path 0, and a bet
            # placed on it (prefetch.py) would fork that path while its restored row is still unwritten
            self.release(m)
            for r in range(self.cfg.rollouts):      # its paths are gone: nothing to carry over
                self.second.pop((m, r), None)


__all__ = ["CandidateState"]
