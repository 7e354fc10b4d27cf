"""The evaluator: drives model calls over one step's ``CandidateState`` (``state.py``) through a
runtime (``runtime.py``), and implements the search's evaluator interface (``want``, ``pending``,
``results``, ``scores``).

Path ``(m, r)`` (candidate m, rollout r) is the runtime path ``state.paths[m, r]``, taken when it is
first needed. Depth 1 of candidate m runs once, in path ``(m, 0)``; when m goes deeper, its other
K - 1 paths fork from that one token (the only copy a fork makes) and each rollout continues in its
own path. Every pending evaluation advances by one depth per model call.

Bounded memory (``cfg.max_rows``, docs/engine.md "Bounded memory"): a model call carries at most
``max_rows`` rows (more pending work takes more calls; a candidate's K rollout rows, if more than
``max_rows``, are fed in several forwards by the runtime), and at most ``max_rows`` candidates keep
their depth-1 logits (``[V]`` each) beyond those of the current call (``CandidateState.evict``,
``trim``); a candidate later needed has its depth-1 row run again (``restore``), which gives the same
logits and KV.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..core import Prefix
from ..ops.philox import noise_at_impl
from ..ops.plan_rows import plan_rows_impl
from ..ops.softmax_entropy import softmax_entropy_impl
from ..ops.topk_support import topk_support_impl
from ..reference.primitives import partial_sums, score
from .runtime import CallRows, ForkRuntime, OutOfPaths, SlotPool
from .state import CandidateState


class Rows(NamedTuple):
    """The rows of one model call of one evaluator: the ``plan_rows`` rows of ``first`` (one each)
    and ``deep`` (K each) candidates, then one row per ``restore`` candidate (its depth-1 row again,
    for its logits and KV only); ``call`` is what the runtime runs."""

    first: torch.Tensor
    deep: torch.Tensor
    restore: torch.Tensor
    row_candidate: torch.Tensor
    call: CallRows

    def __len__(self) -> int:
        return len(self.call)


class Evaluator:
    """Rollouts of one step's candidates (``seq``, ``tokens`` ``[M]``) over a runtime: ``call`` makes
    one model call, ``run`` calls until the wanted depths are done; ``state`` holds what is known.

    A *rider* (``prefetch.Prefetcher``) may add rows of its own to each call: ``ride.plan(limit)``
    before the call returns extra row sets (or None); after it, ``ride.absorbing(logits)`` hands back
    their part of the outputs, which ``absorb_all`` files together with the evaluator's own.
    """

    def __init__(self, model, prefix: Prefix, seq, tokens, cfg, backend: str, score_dtype, positions=None, *,
                 runtime=None, pool: SlotPool | None = None, lead: int = 0, slot_len: int | None = None,
                 keep_logits: bool = True, lead_slot: int | None = None, z: torch.Tensor | None = None,
                 carry: bool = False):
        """``positions [M]`` (optional): candidate m sits at ``positions[m]`` and sees only the prefix
        before it (rows sharing one sequence's KV fork from different prefixes of it, as when
        measuring the entropy at every position of a text); default: its sequence's length.

        ``runtime``: the runtime to run on (a prefetch bet shares its step's); else a ``ForkRuntime``
        over ``prefix`` (reusing ``pool`` when it fits, paths of ``slot_len`` tokens, default horizon).

        ``lead`` / ``lead_slot``: every path starts with the first ``lead`` tokens of path
        ``lead_slot`` (a prefetch bet: the speculative next step sits one position later).

        ``keep_logits=False``: do not keep each candidate's depth-1 logits (only a decoding step
        needs them; measuring entropies of many candidates would hold ``[M, V]``).

        ``z [M]`` (optional): the candidates' perturbed scores, which rank the kept logits when
        ``cfg.max_rows`` binds (only the rows fed change with the ranking, never a result).

        ``carry``: keep the logits of each rollout's depth-2 row (at most ``max_rows`` of them), which
        the next step reuses when this step's winner is among those candidates (``reuse.py``).
        """
        if runtime is None:
            runtime = ForkRuntime.for_step(model, prefix, slot_len or cfg.horizon, pool, getattr(cfg, "max_rows", None))
        self.rt, self.model, self.prefix, self.cfg, self.backend = runtime, model, prefix, cfg, backend
        base = prefix.positions[seq] + lead if positions is None else positions
        self.row_limit = None if positions is None else positions
        self.state = CandidateState(runtime, seq, tokens, base, cfg, score_dtype, lead=lead, lead_path=lead_slot,
                                    keep_logits=keep_logits, carry=carry, z=z)
        self.max_rows = self.state.max_rows

    # -- the search's interface -------------------------------------------------------------------
    def want(self, idx: torch.Tensor, target: torch.Tensor) -> None:
        """Ask for candidates ``idx`` to be evaluated through depths ``target``."""
        st = self.state
        st.goal[idx] = torch.maximum(st.goal[idx], target)

    def pending(self) -> bool:
        return self.state.pending()

    def results(self, idx: torch.Tensor):
        """``(depth, partial RB sum)`` of candidates ``idx``."""
        st = self.state
        return st.depth[idx].clone(), partial_sums(st.table[idx], st.depth[idx])

    def scores(self, idx, partial, z, alpha):
        """Exact scores (the reference's formula) where the estimate is complete, NaN elsewhere."""
        exact = score(z[idx], alpha, partial)
        return torch.where(self.state.depth[idx] >= self.cfg.horizon, exact, torch.full_like(exact, float("nan")))

    # -- keyed rollout tokens -----------------------------------------------------------------------
    def rollout_samples(self, logits, seqs, streams, positions):
        """Entropy of the rollout policy and one keyed sample per column of ``streams [R, S]``."""
        dev = logits.device                         # bookkeeping lives on the CPU, logits on the model's device
        seeds = self.prefix.seeds[seqs].to(dev)
        positions = positions.to(dev).contiguous()
        streams = streams.to(dev)
        top_k = self.cfg.rollout_top_k
        if top_k is not None and top_k < logits.shape[-1]:
            vals, ids = topk_support_impl(logits, top_k, self.backend)
            ent, _, _ = softmax_entropy_impl(vals, backend=self.backend)
            x = vals.to(ent.dtype)
            S = streams.shape[1]                    # every stream's noise in one call: rows (n, s)
            noise = noise_at_impl(seeds.repeat_interleave(S), streams.reshape(-1),
                                  positions.repeat_interleave(S), ids.repeat_interleave(S, 0), self.backend)
            picks = ids.gather(1, torch.argmax(x.repeat_interleave(S, 0) + noise, -1).view(-1, S))
            return ent.cpu(), picks.cpu()
        ent, _, picks = softmax_entropy_impl(logits, seeds, streams.contiguous(), positions, self.backend)
        return ent.cpu(), picks.cpu()               # all S samples from one softmax pass (C++)

    # -- one model call -----------------------------------------------------------------------------
    def plan(self, limit: int | None = None, strict: bool = False, make_room: bool = False):
        """The rows (a ``Rows``) that advance pending candidates by one depth, at most ``limit``
        (default ``max_rows``) of them, in candidate order (at least one candidate unless
        ``strict``); None: nothing to do. The row table and the fan-out forks come from the
        ``plan_rows`` op. ``make_room``: when the runtime has too few paths (``OutOfPaths``), give
        back paths of candidates that can be evaluated again (``CandidateState.make_room``) and
        try again, with fewer rows if the call's own rows need more paths than there are."""
        cap = self.max_rows if limit is None else min(limit, self.max_rows)
        while True:
            try:
                return self._plan(cap, strict, make_room)
            except OutOfPaths:
                # the call's own rows need more paths than the runtime has: plan fewer rows
                if not make_room or cap <= 1:
                    raise
                cap = max(1, cap // 2)

    def _plan(self, cap: int, strict: bool, make_room: bool):
        st = self.state
        K, a = self.cfg.rollouts, st.lead
        active = (st.depth < st.goal).nonzero().flatten()
        # pending candidates at depth 1 that lost their path: run depth 1 again first
        lost = active[(st.depth[active] == 1) & (st.paths[active, 0] < 0)]
        if st.to_restore or len(lost):
            restore = torch.tensor(sorted(st.to_restore | set(lost.tolist())), dtype=torch.int64)
            go = active[~torch.isin(active, restore)]
        else:
            restore, go = active[:0], active
        cost = torch.where(st.depth[go] == 0, 1, K)
        total = len(restore) + int(cost.sum())
        if total == 0:
            return None
        if total > cap:                                  # chunk: this call takes a prefix of the work
            restore = restore[:cap]
            room = cap - len(restore)
            fits = int((cost.cumsum(0) <= room).sum())
            if fits == 0 and len(restore) == 0 and not strict:
                fits = 1
            go = go[:fits]
            if len(go) == 0 and len(restore) == 0:
                return None
        goal = st.depth.clone()
        goal[go] = st.goal[go]
        p = plan_rows_impl(st.depth, goal, st.seq, st.tokens, st.last, st.base, K, a, self.backend)
        busy = torch.cat([p.first, p.deep, restore])
        st.evict(len(p.first) + len(restore), busy)
        fan = p.deep[st.depth[p.deep] == 1]
        self._take(torch.cat([p.first, restore]), fan, busy, make_room)
        if len(p.fan_src):                               # depth 1 is shared: fork it to the other rollouts
            src, dst = p.fan_src // K, p.fan_dst
            self.rt.fork(st.paths[src, 0], st.paths[dst // K, dst % K], a + 1)
        path = st.paths[p.row_candidate, p.slot % K]
        st.to_restore.difference_update(restore.tolist())
        st.restored += len(restore)
        r = restore
        call = CallRows(torch.cat([p.seq, st.seq[r]]), torch.cat([path, st.paths[r, 0]]),
                        torch.cat([p.fill, torch.full_like(r, a)]), torch.cat([p.tokens, st.tokens[r]]),
                        torch.cat([p.positions, st.base[r]]))
        return Rows(p.first, p.deep, restore, torch.cat([p.row_candidate, r]), call)

    def _take(self, ones: torch.Tensor, fan: torch.Tensor, busy: torch.Tensor, make_room: bool) -> None:
        """Paths for a call: path 0 of candidates ``ones``, all K of ``fan``. If the runtime runs out
        (``OutOfPaths``), ``make_room`` gives back other candidates' paths and tries once more; a
        failure takes nothing (a path taken but never written must not look like a kept one)."""
        st, K = self.state, self.cfg.rollouts
        before = st.paths.clone()
        try:
            try:
                st.take(ones, 1)
                st.take(fan, K)
            except OutOfPaths:
                if not (make_room and st.make_room(busy)):
                    raise
                st.take(ones, 1)                     # (takes only the paths still missing)
                st.take(fan, K)
        except OutOfPaths:
            new = (before < 0) & (st.paths >= 0)
            if new.any():
                self.rt.release(st.paths[new].tolist())
                st.paths[new] = -1
            raise

    @torch.no_grad()
    def call(self, ride=None) -> bool:
        """One model call advancing every pending candidate by one depth, with ``ride``'s rows
        (if any) in the same call. False when nothing was pending (no call made)."""
        try:
            rows = self.plan()
        except OutOfPaths:                   # bets are speculative: they give their paths back first
            if ride is not None:
                ride.drop_all()
            rows = self.plan(make_room=True)
        if rows is None:
            return False
        extra = ride.plan(self.max_rows - len(rows)) if ride is not None else None
        call = rows.call
        if self.row_limit is not None:
            call = call.with_limit(self.row_limit[rows.row_candidate])
        logits = self.rt.run(call.cat([e.call for e in extra]) if extra else call)
        n = len(rows)
        absorb_all([(self, rows, logits[:n])] + (ride.absorbing(logits[n:]) if extra else []))
        return True

    @torch.no_grad()
    def run(self, idx: torch.Tensor, target: torch.Tensor, ride=None):
        """Advance candidates ``idx`` to depths ``target``, one model call per depth; return their
        ``(depth, partial RB sum)``."""
        self.want(idx, target)
        while self.call(ride):
            pass
        return self.results(idx)

    def winner_kv(self, m: torch.Tensor):
        """Per layer ``(keys, values)`` ``[B, kv_heads, head_dim]`` of the winners' own tokens."""
        return self.rt.token_kv(self.state.paths[m, 0], self.state.lead)


def _cat(parts: list) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def absorb_all(parts: list) -> None:
    """File one model call's outputs for the evaluators that fed it (``[(evaluator, rows, logits)]``:
    a step's and its prefetch bets', over one prefix and configuration): entropies, keyed rollout
    tokens and kept logits. The keyed draws of all of them run as one pass over their depth-1 rows
    (K draws each) and one over their deeper rows (one draw each): each draw depends only on its own
    row and key, so batching them changes no token."""
    ev0 = parts[0][0]
    K = ev0.cfg.rollouts
    first, deep = ([], [], []), ([], [], [], [])        # (logits, sequences, positions[, rollouts])
    plans = []
    for ev, rows, logits in parts:
        if ev.prefix is not ev0.prefix or ev.cfg is not ev0.cfg or ev.backend != ev0.backend:
            raise RuntimeError("absorb_all: the evaluators of one call share their prefix, configuration and backend")
        st = ev.state
        n1, nd = len(rows.first), K * len(rows.deep)
        if st.keep_logits and (n1 or len(rows.restore)):
            keep = torch.cat([logits[:n1], logits[n1 + nd:]]) if len(rows.restore) else logits[:n1]
            for j, m in enumerate(torch.cat([rows.first, rows.restore]).tolist()):
                st.logits[m] = keep[j]
        deep_c = d = roll = None
        if n1:
            for acc, x in zip(first, (logits[:n1], st.seq[rows.first], st.base[rows.first] + 1)):
                acc.append(x)
        if nd:
            deep_c = rows.deep.repeat_interleave(K)
            d = st.depth[deep_c]
            roll = torch.arange(K).repeat(len(rows.deep))
            for acc, x in zip(deep, (logits[n1:n1 + nd], st.seq[deep_c], st.base[deep_c] + d + 1, roll)):
                acc.append(x)
        plans.append((n1, nd, deep_c, d, roll))
    if first[0]:
        lg = _cat(first[0])
        ent1, ys1 = ev0.rollout_samples(lg, _cat(first[1]), (1 + torch.arange(K)).expand(len(lg), K), _cat(first[2]))
    if deep[0]:
        ent2, ys2 = ev0.rollout_samples(_cat(deep[0]), _cat(deep[1]), (1 + _cat(deep[3])).view(-1, 1), _cat(deep[2]))
    o1 = o2 = 0
    for (ev, rows, logits), (n1, nd, deep_c, d, roll) in zip(parts, plans):
        st = ev.state
        if n1:
            ent, ys = ent1[o1:o1 + n1], ys1[o1:o1 + n1]
            o1 += n1
            st.table[rows.first, 0, :] = ent.to(st.table.dtype).view(-1, 1)
            st.last[rows.first] = ys
            st.drawn[rows.first, 0] = ys
        if nd:
            ent, ys = ent2[o2:o2 + nd], ys2[o2:o2 + nd]
            o2 += nd
            st.table[deep_c, d, roll] = ent.to(st.table.dtype)
            st.last[deep_c, roll] = ys[:, 0]
            st.drawn[deep_c, d, roll] = ys[:, 0]
            if st.keep_second:
                for j in (d == 1).nonzero().flatten().tolist():
                    if len(st.second) >= ev.max_rows:
                        break
                    st.second[(int(deep_c[j]), int(roll[j]))] = logits[n1 + j].clone()
        st.depth[rows.first] += 1
        st.depth[rows.deep] += 1
        if st.keep_logits and st.lead == 0 and len(rows.deep):
            st.complete.extend(rows.deep[st.depth[rows.deep] >= ev.cfg.horizon].tolist())
            st.trim()


__all__ = ["Evaluator", "Rows", "absorb_all"]
