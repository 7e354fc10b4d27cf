"""Evaluates candidates' rollouts on forked KV: per-depth entropies, keyed rollout tokens, and the
depth-1 outputs a winner hands to the next step.

Path ``(m, r)`` (candidate m, rollout r) owns pool slot ``m * K + r``. Depth 1 of candidate m runs
once, in slot ``m * K``; when m goes deeper, that one token is copied to the other K - 1 slots
(the only copy a fork makes) and each rollout continues in its own slot. Every pending evaluation
of every sequence advances by one depth per model call.
"""
from __future__ import annotations

import torch

from .. import philox
from ..core import Prefix, topk_support
from ..ops.softmax_entropy import softmax_entropy_impl
from ..reference.primitives import partial_sums, score
from .attention import ForkBatch, SlotPool, fork_mode
from ..ops.plan_rows import plan_rows_impl


class Evaluator:
    """Rollout state of one step's candidates (``seq``, ``tokens`` ``[M]``): the fork-attention
    implementation of the evaluator interface of ``search.py`` (``want``, ``pending``, ``results``,
    ``scores``), plus ``call`` (one model call) and ``run`` (calls until the wanted depths are done).

    A *rider* (``prefetch.Prefetcher``) may add rows of its own to each call: ``ride.plan()`` before
    the call returns extra row sets (or None), ``ride.absorb(logits)`` files their outputs after it.
    """

    def __init__(self, model, prefix: Prefix, seq, tokens, cfg, backend: str, score_dtype, positions=None, *,
                 pool: SlotPool | None = None, lead: int = 0, slot_len: int | None = None,
                 keep_logits: bool = True):
        """``positions [M]`` (optional): candidate m sits at ``positions[m]`` and sees only the prefix
        before it (rows sharing one sequence's KV fork from different prefixes of it, as when
        measuring the entropy at every position of a text); default: its sequence's length.

        ``pool``/``lead`` (prefetch.py): share another evaluator's slot pool, and start every path
        after ``lead`` tokens already in its slots (the bet of a speculative next step, which sits
        at the prefix's length; this evaluator's candidates then sit one position later).

        ``keep_logits=False``: do not keep each candidate's depth-1 logits (only a decoding step
        needs them, for the winner; measuring entropies of many candidates would hold ``[M, V]``).
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
        self.slot0 = pool.allocate(M * K)           # path (m, r) owns slot slot0 + m * K + r
        self.adopted = 0                            # candidates whose evaluation came from the last step
        self.adopted_rows = 0                       # ... and the rows that evaluation fed
        self.depth = torch.zeros(M, dtype=torch.int64)
        self.goal = torch.zeros(M, dtype=torch.int64)
        self.table = torch.zeros(M, k, K, dtype=score_dtype)
        self.last = torch.zeros(M, K, dtype=torch.int64)
        self.next_logits = {}                       # candidate -> its depth-1 logits (winner reuse)
        self.calls = self.forward_tokens = 0

    # -- one model call over rows of (sequence, slot, fill, token, position) --------------------
    def _forward(self, seq, slot, fill, tokens, positions, limit=None):
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
        return out.logits[:, -1, :]

    def _entropy_and_samples(self, logits, seqs, streams, positions):
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

    def adopt(self, m: int, depth: int, table, last, next_logits, keys, values) -> None:
        """Take candidate ``m``'s evaluation through ``depth`` from a prefetch made in the previous
        step: entropies ``table [k, K]``, rollout tokens ``last [K]``, depth-1 logits, and per layer
        its paths' KV ``[K, kv_heads, depth, head_dim]``."""
        K, a = self.cfg.rollouts, self.lead
        slots = self.slot0 + m * K + torch.arange(K if depth > 1 else 1)
        self.depth[m] = depth
        self.table[m] = table.to(self.table.dtype)
        self.last[m] = last
        self.next_logits[m] = next_logits
        for pk, pv, k, v in zip(self.pool.keys, self.pool.values, keys, values):
            pk[slots, :, a:a + depth] = k[: len(slots), :, :depth]
            pv[slots, :, a:a + depth] = v[: len(slots), :, :depth]
        self.adopted += 1
        self.adopted_rows += 1 + K * (depth - 1)

    def path_kv(self, m: int):
        """Per layer ``(keys, values)`` ``[K, kv_heads, depth, head_dim]`` of candidate ``m``'s paths,
        without the lead tokens (what ``adopt`` takes)."""
        K, d, a = self.cfg.rollouts, int(self.depth[m]), self.lead
        slots = self.slot0 + m * K + torch.arange(K)
        return ([t[slots, :, a:a + d].clone() for t in self.pool.keys],
                [t[slots, :, a:a + d].clone() for t in self.pool.values])

    # -- advancing by depth ---------------------------------------------------------------------
    def want(self, idx: torch.Tensor, target: torch.Tensor) -> None:
        """Ask for candidates ``idx`` to be evaluated through depths ``target``."""
        self.goal[idx] = torch.maximum(self.goal[idx], target)

    def pending(self) -> bool:
        return bool((self.depth < self.goal).any())

    def plan(self):
        """The rows (a ``PlannedRows``) that advance every pending candidate by one depth (None:
        nothing pending); the row table and the fan-out copies come from the ``plan_rows`` op."""
        K, a = self.cfg.rollouts, self.lead
        p = plan_rows_impl(self.depth, self.goal, self.seq, self.tokens, self.last, self.base,
                           self.slot0, K, a, self.backend)
        if len(p.row_candidate) == 0:
            return None
        if len(p.fan_src):                         # depth 1 is shared: copy it to the other rollouts
            self.pool.copy_slots(p.fan_src, p.fan_dst, a + 1)
        return p

    def absorb(self, rows, logits: torch.Tensor) -> None:
        """File the model's outputs for ``rows``: entropies, keyed rollout tokens, depth-1 logits."""
        K = self.cfg.rollouts
        first, deep = rows.first, rows.deep
        n1 = len(first)
        if n1:
            if self.keep_logits:
                for j, m in enumerate(first.tolist()):
                    self.next_logits[m] = logits[j]
            streams = (1 + torch.arange(K)).expand(n1, K)
            ent, ys = self._entropy_and_samples(logits[:n1], self.seq[first], streams, self.base[first] + 1)
            self.table[first, 0, :] = ent.to(self.table.dtype).view(-1, 1)
            self.last[first] = ys
        if len(deep):
            deep_c = deep.repeat_interleave(K)
            d = self.depth[deep_c]
            roll = torch.arange(K).repeat(len(deep))
            ent, ys = self._entropy_and_samples(logits[n1:], self.seq[deep_c], (1 + roll).view(-1, 1),
                                                self.base[deep_c] + d + 1)
            self.table[deep_c, d, roll] = ent.to(self.table.dtype)
            self.last[deep_c, roll] = ys[:, 0]
        self.depth[first] += 1
        self.depth[deep] += 1

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
        extra = ride.plan() if ride is not None else None
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
        slots = self.slot0 + m * self.cfg.rollouts
        return ([k[slots, :, self.lead] for k in self.pool.keys], [v[slots, :, self.lead] for v in self.pool.values])


__all__ = ["Evaluator"]
