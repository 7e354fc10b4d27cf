"""Evaluates candidates' rollouts on forked KV: per-depth entropies, keyed rollout tokens, and the
depth-1 outputs a winner hands to the next step.

Path ``(m, r)`` (candidate m, rollout r) owns pool slot ``slots[m, r]``, taken from the pool when
it is first needed. Depth 1 of candidate m runs once, in slot ``slots[m, 0]``; when m goes deeper,
its other K - 1 slots are taken and that one token is copied into them (the only copy a fork makes),
and each rollout continues in its own slot. Every pending evaluation advances by one depth per
model call.

Bounded memory (``cfg.max_rows``, docs/engine.md "Bounded memory"): a model call carries at most
``max_rows`` rows (more pending work takes more calls, and a candidate's K rollout rows, if more
than ``max_rows``, are fed in several forwards), and at most ``max_rows`` candidates keep their
depth-1 logits (``[V]`` each) beyond those of the current call. The candidate with the lowest
extrapolated score that is not being evaluated loses them first, and with them, if it is at depth
1, its slot; if it is later needed (it goes deeper, or wins), its depth-1 row is run again
(``restore``), which gives the same logits and KV. So the pool and the kept logits do not grow
with the number of survivors, only with the candidates that go deeper.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import philox
from ..core import Prefix, topk_support
from ..ops.softmax_entropy import softmax_entropy_impl
from ..reference.primitives import partial_sums, score
from .attention import ForkBatch, SlotPool, fork_mode
from ..ops.plan_rows import plan_rows_impl


class Rows(NamedTuple):
    """The rows of one model call of one evaluator: the ``plan_rows`` rows of ``first`` (one each)
    and ``deep`` (K each) candidates, then one row per ``restore`` candidate (its depth-1 row again,
    for its logits and KV only). All int64; ``slot`` are pool slots."""

    first: torch.Tensor
    deep: torch.Tensor
    restore: torch.Tensor
    row_candidate: torch.Tensor
    seq: torch.Tensor
    slot: torch.Tensor
    fill: torch.Tensor
    tokens: torch.Tensor
    positions: torch.Tensor


class Evaluator:
    """Rollout state of one step's candidates (``seq``, ``tokens`` ``[M]``): the fork-attention
    implementation of the evaluator interface of ``search.py`` (``want``, ``pending``, ``results``,
    ``scores``), plus ``call`` (one model call) and ``run`` (calls until the wanted depths are done).

    A *rider* (``prefetch.Prefetcher``) may add rows of its own to each call: ``ride.plan()`` before
    the call returns extra row sets (or None), ``ride.absorb(logits)`` files their outputs after it.
    """

    def __init__(self, model, prefix: Prefix, seq, tokens, cfg, backend: str, score_dtype, positions=None, *,
                 pool: SlotPool | None = None, lead: int = 0, slot_len: int | None = None,
                 keep_logits: bool = True, lead_slot: int | None = None, z: torch.Tensor | None = None,
                 carry: bool = False):
        """``positions [M]`` (optional): candidate m sits at ``positions[m]`` and sees only the prefix
        before it (rows sharing one sequence's KV fork from different prefixes of it, as when
        measuring the entropy at every position of a text); default: its sequence's length.

        ``pool``/``lead`` (prefetch.py): share another evaluator's slot pool, and start every path
        after ``lead`` tokens already in its slots (the bet of a speculative next step, which sits
        at the prefix's length; this evaluator's candidates then sit one position later).

        ``lead_slot``: the pool slot whose first ``lead`` tokens every path starts with (copied once
        into a slot of this evaluator's own, then into each slot it takes).

        ``keep_logits=False``: do not keep each candidate's depth-1 logits (only a decoding step
        needs them, for the winner; measuring entropies of many candidates would hold ``[M, V]``).

        ``z [M]`` (optional): the candidates' perturbed scores, which rank the kept logits when
        ``cfg.max_rows`` binds (only the rows fed change with the ranking, never a result).

        ``carry``: keep the logits of each rollout's depth-2 row (at most ``max_rows`` of them), which
        the next step reuses when this step's winner is among those candidates (``reuse.py``).
        """
        self.model, self.prefix, self.cfg, self.backend = model, prefix, cfg, backend
        self.seq, self.tokens, self.lead, self.keep_logits = seq, tokens, lead, keep_logits
        self.base = prefix.positions[seq] + lead if positions is None else positions
        self.row_limit = None if positions is None else positions
        M, K, k = len(tokens), cfg.rollouts, cfg.horizon
        keys = prefix.layers[0][0]
        geometry = (len(prefix.layers), keys.shape[1], keys.shape[3], slot_len or k, keys.dtype, keys.device)
        if pool is None or not pool.fits(*geometry):
            pool = SlotPool(*geometry)
        self.pool = pool
        self.max_rows = getattr(cfg, "max_rows", None) or (1 << 62)
        self.slots = torch.full((M, K), -1, dtype=torch.int64)   # path (m, r) owns slot slots[m, r]
        self.z = z
        self.lead_slot = None
        if lead:
            self.lead_slot = pool.take(1)
            pool.copy_slots(torch.tensor([lead_slot], dtype=torch.int64), self.lead_slot, lead)
        self.to_restore: set[int] = set()           # candidates whose depth-1 row must run again
        self.protected: set[int] = set()            # candidates whose logits are never dropped
        self.restored = 0                           # depth-1 rows run again (max_rows bound)
        self.complete: list[int] = []               # evaluated through the horizon, slots still held
        self.max_rows_fed = 0                       # the most rows one model forward took
        self.adopted = 0                            # candidates whose evaluation came from the last step
        self.adopted_rows = 0                       # ... and the rows that evaluation fed
        self.reused = self.reused_rows = 0          # the same, from the last step's winner's rollouts
        self.depth = torch.zeros(M, dtype=torch.int64)
        self.goal = torch.zeros(M, dtype=torch.int64)
        self.table = torch.zeros(M, k, K, dtype=score_dtype)
        self.last = torch.zeros(M, K, dtype=torch.int64)
        self.drawn = torch.full((M, k, K), -1, dtype=torch.int64)   # rollout r's token drawn at depth d + 1
        self.keep_second = carry and keep_logits and lead == 0
        self.second = {}                            # (m, r) -> logits after m and rollout r's first token
        self.next_logits = {}                       # candidate -> its depth-1 logits (winner reuse)
        self.calls = self.forward_tokens = 0

    # -- one model call over rows of (sequence, slot, fill, token, position) --------------------
    def _forward(self, seq, slot, fill, tokens, positions, limit=None):
        """Logits ``[N, V]`` of the rows, in forwards of at most ``max_rows`` rows each (rows are
        independent: each reads the prefix and its own slot only)."""
        n, c = len(tokens), self.max_rows
        if n <= c:
            return self._forward1(seq, slot, fill, tokens, positions, limit)
        parts = [self._forward1(seq[i:i + c], slot[i:i + c], fill[i:i + c], tokens[i:i + c],
                                positions[i:i + c], None if limit is None else limit[i:i + c])
                 for i in range(0, n, c)]
        return torch.cat(parts)

    def _forward1(self, seq, slot, fill, tokens, positions, limit=None):
        fb = ForkBatch.build(self.prefix, self.pool, seq, slot, fill, self.pool.dtype, limit,
                             max_position=int(positions.max()))
        device = self.prefix.device
        with fork_mode(self.model, fb):
            out = self.model(input_ids=tokens.view(-1, 1).to(device), position_ids=positions.view(-1, 1).to(device),
                             use_cache=False)
        if fb.calls != len(self.prefix.layers):     # every layer must have attended through the fork
            raise RuntimeError(f"{type(self.model).__name__}: {fb.calls} of its {len(self.prefix.layers)} attention "
                               "layers went through fork attention; the fast engine cannot run this model")
        self.calls += 1
        self.forward_tokens += len(tokens)
        self.max_rows_fed = max(self.max_rows_fed, len(tokens))
        return out.logits[:, -1, :]

    def rollout_samples(self, logits, seqs, streams, positions):
        """Entropy of the rollout policy and one keyed sample per column of ``streams [R, S]``."""
        dev = logits.device                         # bookkeeping lives on the CPU, logits on the model's device
        seeds = self.prefix.seeds[seqs].to(dev)
        positions = positions.to(dev).contiguous()
        streams = streams.to(dev)
        top_k = self.cfg.rollout_top_k
        if top_k is not None and top_k < logits.shape[-1]:
            vals, ids = topk_support(logits, top_k)
            ent, _, _ = softmax_entropy_impl(vals, backend=self.backend)
            x = vals.to(ent.dtype)
            picks = [ids.gather(1, torch.argmax(x + philox.noise_at(seeds, streams[:, s], positions, ids), -1,
                                                keepdim=True)).squeeze(1) for s in range(streams.shape[1])]
            return ent.cpu(), torch.stack(picks, 1).cpu()
        ent, _, picks = softmax_entropy_impl(logits, seeds, streams.contiguous(), positions, self.backend)
        return ent.cpu(), picks.cpu()               # all S samples from one softmax pass (C++)

    def adopt(self, m: int, depth: int, table, last, next_logits, keys, values, reused: bool = False) -> None:
        """Take candidate ``m``'s evaluation through ``depth`` from the previous step (its prefetch,
        or with ``reused`` its winner's rollouts): entropies ``table [k, K]``, rollout tokens
        ``last [K]``, depth-1 logits, and per layer its paths' KV ``[K, kv_heads, depth, head_dim]``."""
        K, a = self.cfg.rollouts, self.lead
        self._take(torch.tensor([m]), K if depth > 1 else 1)
        slots = self.slots[m, : K if depth > 1 else 1]
        self.depth[m] = depth
        self.table[m] = table.to(self.table.dtype)
        self.last[m] = last
        self._keep(m, next_logits)
        for pk, pv, k, v in zip(self.pool.keys, self.pool.values, keys, values):
            pk[slots, :, a:a + depth] = k[: len(slots), :, :depth]
            pv[slots, :, a:a + depth] = v[: len(slots), :, :depth]
        if reused:
            self.reused += 1
            self.reused_rows += 1 + K * (depth - 1)
        else:
            self.adopted += 1
            self.adopted_rows += 1 + K * (depth - 1)

    def path_kv(self, m: int):
        """Per layer ``(keys, values)`` ``[K', kv_heads, depth, head_dim]`` of candidate ``m``'s paths,
        without the lead tokens (what ``adopt`` takes; K' = 1 at depth 1: the paths share it)."""
        K, d, a = self.cfg.rollouts, int(self.depth[m]), self.lead
        slots = self.slots[m, : K if d > 1 else 1]
        return ([t[slots, :, a:a + d].clone() for t in self.pool.keys],
                [t[slots, :, a:a + d].clone() for t in self.pool.values])

    # -- advancing by depth ---------------------------------------------------------------------
    def want(self, idx: torch.Tensor, target: torch.Tensor) -> None:
        """Ask for candidates ``idx`` to be evaluated through depths ``target``."""
        self.goal[idx] = torch.maximum(self.goal[idx], target)

    def pending(self) -> bool:
        return bool((self.depth < self.goal).any()) or bool(self.to_restore)

    def kept(self, m: int) -> bool:
        """Does candidate ``m`` hold its depth-1 logits and its slot? Kept logits always mean the slot
        holds the candidate's depth-1 KV: whatever gives a slot back drops the logits with it
        (``_evict``, ``_trim``), so a slot taken for a ``restore`` row has no logits until that row ran."""
        return m in self.next_logits and bool(self.slots[m, 0] >= 0)

    def restore(self, idx) -> None:
        """Ask for the depth-1 rows of evaluated candidates ``idx`` that lost their logits to run
        again (the winners' logits and KV at the end of a step); they are kept from then on."""
        for m in (int(i) for i in idx):
            self.protected.add(m)
            if self.depth[m] >= 1 and not self.kept(m):
                self.to_restore.add(m)

    # -- slots and kept logits (the max_rows bound) ---------------------------------------------
    def _take(self, ms: torch.Tensor, upto: int) -> None:
        """Give candidates ``ms`` their slots ``0 .. upto - 1`` (those they lack), lead tokens copied in."""
        if len(ms) == 0:
            return
        need = self.slots[ms, :upto] < 0
        n = int(need.sum())
        if n == 0:
            return
        got = self.pool.take(n)
        block = self.slots[ms, :upto]
        block[need] = got
        self.slots[ms, :upto] = block
        if self.lead:
            self.pool.copy_slots(self.lead_slot.expand(n), got, self.lead)

    def _priority(self, ms: torch.Tensor) -> torch.Tensor:
        """Extrapolated scores of candidates ``ms`` (the lowest lose their logits first)."""
        d = self.depth[ms].clamp(min=1).to(self.table.dtype)
        h = self.table[ms].mean(-1).sum(-1) * (self.cfg.horizon / d)
        z = self.z[ms].to(self.table.dtype) if self.z is not None else torch.zeros_like(h)
        return z - self.cfg.alpha * h

    def _evict(self, room: int, busy: torch.Tensor) -> None:
        """Drop kept logits until at most ``max_rows - room`` remain, never those of ``busy``,
        pending or protected candidates; a candidate at depth 1 gives its slot back too."""
        excess = len(self.next_logits) + room - self.max_rows
        if excess <= 0:
            return
        held = torch.tensor(sorted(self.next_logits), dtype=torch.int64)
        ok = (self.depth[held] >= self.goal[held])
        ok[torch.isin(held, busy)] = False
        if self.protected:
            ok[torch.isin(held, torch.tensor(sorted(self.protected), dtype=torch.int64))] = False
        held = held[ok]
        if len(held) == 0:
            return
        order = torch.argsort(self._priority(held), stable=True)[: min(excess, len(held))]
        for m in held[order].tolist():
            del self.next_logits[m]
            if self.depth[m] == 1 and self.slots[m, 0] >= 0:
                self.pool.release(self.slots[m, :1].tolist())
                self.slots[m, 0] = -1
        # a kept row must not hold a whole call's logits alive
        for m, t in self.next_logits.items():
            if t.untyped_storage().nbytes() > t.nbytes:
                self.next_logits[m] = t.clone()

    def _keep(self, m: int, row: torch.Tensor) -> None:
        if self.keep_logits:
            self.next_logits[m] = row

    def plan(self, limit: int | None = None, strict: bool = False):
        """The rows (a ``Rows``) that advance pending candidates by one depth, at most ``limit``
        (default ``max_rows``) of them, in candidate order (at least one candidate unless
        ``strict``); None: nothing to do. The row table and the fan-out copies come from the
        ``plan_rows`` op."""
        K, a = self.cfg.rollouts, self.lead
        cap = self.max_rows if limit is None else min(limit, self.max_rows)
        active = (self.depth < self.goal).nonzero().flatten()
        # pending candidates at depth 1 that lost their slot: run depth 1 again first
        lost = active[(self.depth[active] == 1) & (self.slots[active, 0] < 0)]
        restore = torch.tensor(sorted(self.to_restore | set(lost.tolist())), dtype=torch.int64)
        go = active[~torch.isin(active, restore)]
        cost = torch.where(self.depth[go] == 0, 1, K)
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
        goal = self.depth.clone()
        goal[go] = self.goal[go]
        p = plan_rows_impl(self.depth, goal, self.seq, self.tokens, self.last, self.base, 0, K, a, self.backend)
        busy = torch.cat([p.first, p.deep, restore])
        self._evict(len(p.first) + len(restore), busy)
        self._take(torch.cat([p.first, restore]), 1)
        fan = p.deep[self.depth[p.deep] == 1]
        self._take(fan, K)
        if len(p.fan_src):                               # depth 1 is shared: copy it to the other rollouts
            src, dst = p.fan_src // K, p.fan_dst
            self.pool.copy_slots(self.slots[src, 0], self.slots[dst // K, dst % K], a + 1)
        slot = self.slots[p.row_candidate, p.slot % K]
        for m in restore.tolist():
            self.to_restore.discard(m)
        self.restored += len(restore)
        r = restore
        return Rows(p.first, p.deep, restore, torch.cat([p.row_candidate, r]), torch.cat([p.seq, self.seq[r]]),
                    torch.cat([slot, self.slots[r, 0]]), torch.cat([p.fill, torch.full_like(r, a)]),
                    torch.cat([p.tokens, self.tokens[r]]), torch.cat([p.positions, self.base[r]]))

    def absorb(self, rows, logits: torch.Tensor) -> None:
        """File the model's outputs for ``rows``: entropies, keyed rollout tokens, depth-1 logits."""
        K = self.cfg.rollouts
        first, deep, restore = rows.first, rows.deep, rows.restore
        n1, nd = len(first), K * len(deep)
        if self.keep_logits and (n1 or len(restore)):
            keep = torch.cat([logits[:n1], logits[n1 + nd:]])
            for j, m in enumerate(torch.cat([first, restore]).tolist()):
                self.next_logits[m] = keep[j]
        if n1:
            streams = (1 + torch.arange(K)).expand(n1, K)
            ent, ys = self.rollout_samples(logits[:n1], self.seq[first], streams, self.base[first] + 1)
            self.table[first, 0, :] = ent.to(self.table.dtype).view(-1, 1)
            self.last[first] = ys
            self.drawn[first, 0] = ys
        if len(deep):
            deep_c = deep.repeat_interleave(K)
            d = self.depth[deep_c]
            roll = torch.arange(K).repeat(len(deep))
            ent, ys = self.rollout_samples(logits[n1:n1 + nd], self.seq[deep_c], (1 + roll).view(-1, 1),
                                                self.base[deep_c] + d + 1)
            self.table[deep_c, d, roll] = ent.to(self.table.dtype)
            self.last[deep_c, roll] = ys[:, 0]
            self.drawn[deep_c, d, roll] = ys[:, 0]
            if self.keep_second:
                for j in (d == 1).nonzero().flatten().tolist():
                    if len(self.second) >= self.max_rows:
                        break
                    self.second[(int(deep_c[j]), int(roll[j]))] = logits[n1 + j].clone()
        self.depth[first] += 1
        self.depth[deep] += 1
        if self.keep_logits and self.lead == 0 and len(deep):
            self.complete.extend(deep[self.depth[deep] >= self.cfg.horizon].tolist())
            self._trim()

    def _trim(self) -> None:
        """When the pool holds more than ``4 max_rows`` slots, give back the slots (and the kept
        logits) of candidates evaluated through the horizon (they never go deeper; a winner among
        them has its depth-1 row run again for its logits and KV), lowest extrapolated score first."""
        limit = 4 * self.max_rows
        if self.pool.used - len(self.pool.free) <= limit or not self.complete:
            return
        done = torch.tensor([m for m in self.complete if m not in self.protected], dtype=torch.int64)
        self.complete = []
        if len(done) == 0:
            return
        for m in done[torch.argsort(self._priority(done), stable=True)].tolist():
            if self.pool.used - len(self.pool.free) <= limit // 2:
                self.complete.append(m)
                continue
            held = self.slots[m][self.slots[m] >= 0]
            self.pool.release(held.tolist())
            self.slots[m] = -1
            # its depth-1 logits go too: kept logits promise the candidate's KV in slot 0, and a bet
            # placed on it (prefetch.py) would copy that slot while its restored row is still unwritten
            self.next_logits.pop(m, None)
            for r in range(self.cfg.rollouts):      # its paths are gone: nothing to carry over
                self.second.pop((m, r), None)

    def results(self, idx: torch.Tensor):
        """``(depth, partial RB sum)`` of candidates ``idx``."""
        return self.depth[idx].clone(), partial_sums(self.table[idx], self.depth[idx])

    @torch.no_grad()
    def call(self, ride=None) -> bool:
        """One model call advancing every pending candidate by one depth, with ``ride``'s rows
        (if any) in the same call. False when nothing was pending (no call made)."""
        rows = self.plan()
        if rows is None:
            return False
        extra = ride.plan(self.max_rows - len(rows.seq)) if ride is not None else None
        inputs = [rows.seq, rows.slot, rows.fill, rows.tokens, rows.positions]
        if extra:
            inputs = [torch.cat([x] + [getattr(e, f) for e in extra]) for x, f in
                      zip(inputs, ("seq", "slot", "fill", "tokens", "positions"))]
        limit = None if self.row_limit is None else self.row_limit[rows.row_candidate]
        logits = self._forward(*inputs, limit)
        n = len(rows.seq)
        self.absorb(rows, logits[:n])
        if extra:
            ride.absorb(logits[n:])
        return True

    @torch.no_grad()
    def run(self, idx: torch.Tensor, target: torch.Tensor, ride=None):
        """Advance candidates ``idx`` to depths ``target``, one model call per depth; return their
        ``(depth, partial RB sum)``."""
        self.want(idx, target)
        while self.call(ride):
            pass
        return self.results(idx)

    def scores(self, idx, partial, z, alpha):
        """Exact scores (the reference's formula) where the estimate is complete, NaN elsewhere."""
        exact = score(z[idx], alpha, partial)
        return torch.where(self.depth[idx] >= self.cfg.horizon, exact, torch.full_like(exact, float("nan")))

    def winner_kv(self, m: torch.Tensor):
        """Per layer ``(keys, values)`` ``[B, kv_heads, head_dim]`` of the winners' own tokens."""
        slots = self.slots[m, 0]
        return ([k[slots, :, self.lead] for k in self.pool.keys], [v[slots, :, self.lead] for v in self.pool.values])


__all__ = ["Evaluator", "Rows"]
