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
from ..ops.softmax_entropy import softmax_entropy_impl
from ..reference import _partial_sums, score
from .attention import ForkBatch, SlotPool, fork_mode


def topk_policy(logits: torch.Tensor, k: int):
    """The rollout policy's support, ``(values, ids)`` ``[N, k]`` sorted by id: the ``k`` largest
    logits, ties at the boundary to the lower id (the same set as ``reference.policy_logits``)."""
    vals, ids = torch.topk(logits, min(k + 1, logits.shape[-1]), dim=-1)
    if vals.shape[-1] > k:
        tie = vals[:, k - 1] == vals[:, k]
        vals, ids = vals[:, :k], ids[:, :k]
        if tie.any():                                 # rare: redo those rows with a stable sort
            rows = tie.nonzero().flatten()
            order = torch.sort(logits[rows], dim=-1, descending=True, stable=True).indices[:, :k]
            ids[rows] = order
            vals[rows] = logits[rows].gather(1, order)
    ids, perm = torch.sort(ids, dim=-1)
    return vals.gather(1, perm), ids


class Evaluator:
    """Rollout state of one step's candidates (``seq``, ``tokens`` ``[M]``)."""

    def __init__(self, model, prefix, seq, tokens, cfg, backend: str, score_dtype, positions=None):
        """``positions [M]`` (optional): candidate m sits at ``positions[m]`` and sees only the prefix
        before it (rows sharing one sequence's KV fork from different prefixes of it, as when
        measuring the entropy at every position of a text); default: its sequence's length."""
        self.model, self.prefix, self.cfg, self.backend = model, prefix, cfg, backend
        self.seq, self.tokens = seq, tokens
        self.base = prefix.positions[seq] if positions is None else positions
        self.row_limit = None if positions is None else positions
        M, K, k = len(tokens), cfg.rollouts, cfg.horizon
        keys = prefix.layers[0][0]
        # slots hold a path's suffix: k tokens, or 2 for a prefetched next-step row (see prefetch.py)
        self.pool = SlotPool(len(prefix.layers), keys.shape[1], keys.shape[3], max(k, 2), keys.dtype)
        self.pool.reserve(M * K)
        self.slots_used = M * K
        self.prefetch = None                        # a Prefetcher adding next-step rows to calls
        self.adopted = 0                            # depth-1 evaluations received from the last step
        self.depth = torch.zeros(M, dtype=torch.int64)
        self.table = torch.zeros(M, k, K, dtype=score_dtype)
        self.last = torch.zeros(M, K, dtype=torch.int64)
        self.next_logits = {}                       # candidate -> its depth-1 logits (winner reuse)
        self.calls = self.forward_tokens = 0

    # -- one model call over rows of (sequence, slot, fill, token, position) --------------------
    def _forward(self, seq, slot, fill, tokens, positions, limit=None):
        fb = ForkBatch.build(self.prefix, self.pool, seq, slot, fill, self.pool.dtype, limit)
        with fork_mode(self.model, fb):
            out = self.model(input_ids=tokens.view(-1, 1), position_ids=positions.view(-1, 1), use_cache=False)
        self.calls += 1
        self.forward_tokens += len(tokens)
        return out.logits[:, -1, :]

    def _entropy_and_samples(self, logits, seqs, streams, positions):
        """Entropy of the rollout policy and one keyed sample per column of ``streams [R, S]``."""
        seeds = self.prefix.seeds[seqs]
        positions = positions.contiguous()
        top_k = self.cfg.rollout_top_k
        if top_k is not None and top_k < logits.shape[-1]:
            vals, ids = topk_policy(logits, top_k)
            ent, _, _ = softmax_entropy_impl(vals, backend=self.backend)
            x = vals.to(ent.dtype)
            picks = [ids.gather(1, torch.argmax(x + philox.noise_at(seeds, streams[:, s], positions, ids), -1,
                                                keepdim=True)).squeeze(1) for s in range(streams.shape[1])]
            return ent, torch.stack(picks, 1)
        ent, picks = None, []
        for s in range(streams.shape[1]):
            h, _, tok = softmax_entropy_impl(logits, seeds, streams[:, s].contiguous(), positions, self.backend)
            ent = h if ent is None else ent
            picks.append(tok)
        return ent, torch.stack(picks, 1)

    def pool_slots_used(self) -> int:
        return self.slots_used

    def claim_slots(self, n: int) -> None:
        self.slots_used += n

    def adopt(self, m: int, entropy, samples, next_logits, keys, values) -> None:
        """Take candidate ``m``'s depth-1 evaluation from a prefetch made in the previous step."""
        K = self.cfg.rollouts
        self.depth[m] = 1
        self.table[m, 0, :] = entropy.to(self.table.dtype)
        self.last[m] = samples
        self.next_logits[m] = next_logits
        for pk, pv, k, v in zip(self.pool.keys, self.pool.values, keys, values):
            pk[m * K, :, 0] = k
            pv[m * K, :, 0] = v
        self.adopted += 1

    @torch.no_grad()
    def run(self, idx: torch.Tensor, target: torch.Tensor):
        """Advance candidates ``idx`` to depths ``target``; return their ``(depth, partial RB sum)``."""
        K, k = self.cfg.rollouts, self.cfg.horizon
        goal = torch.zeros_like(self.depth)
        goal[idx] = target
        while True:
            active = (self.depth < goal).nonzero().flatten()
            if len(active) == 0:
                break
            first = active[self.depth[active] == 0]
            deep = active[self.depth[active] > 0]
            fan = deep[self.depth[deep] == 1]
            if len(fan):                               # depth 1 is shared: copy it to the other rollouts
                src = (fan * K).repeat_interleave(K - 1)
                dst = (fan.view(-1, 1) * K + torch.arange(1, K)).flatten()
                if len(dst):
                    self.pool.copy_slots(src, dst, 1)
            paths = (deep.view(-1, 1) * K + torch.arange(K)).flatten()
            deep_c = deep.repeat_interleave(K)
            seq = torch.cat([self.seq[first], self.seq[deep_c]])
            slot = torch.cat([first * K, paths])
            fill = torch.cat([torch.zeros_like(first), self.depth[deep_c]])
            toks = torch.cat([self.tokens[first], self.last[deep].flatten()])
            cand = torch.cat([first, deep_c])
            limit = None if self.row_limit is None else self.row_limit[cand]
            positions = self.base[cand] + fill
            extra = self.prefetch.rows() if self.prefetch is not None else None
            if extra is not None:
                seq, slot, fill, toks, positions = (torch.cat([a, e]) for a, e in
                                                    zip((seq, slot, fill, toks, positions), extra))
            logits = self._forward(seq, slot, fill, toks, positions, limit)
            if extra is not None:
                self.prefetch.consume(logits[len(cand):])
                logits = logits[: len(cand)]
            n1 = len(first)
            if n1:
                for j, m in enumerate(first.tolist()):
                    self.next_logits[m] = logits[j]
                streams = (1 + torch.arange(K)).expand(n1, K)
                ent, ys = self._entropy_and_samples(logits[:n1], self.seq[first], streams, self.base[first] + 1)
                self.table[first, 0, :] = ent.to(self.table.dtype).view(-1, 1)
                self.last[first] = ys
            if len(deep):
                d = self.depth[deep_c]
                roll = torch.arange(K).repeat(len(deep))
                ent, ys = self._entropy_and_samples(logits[n1:], self.seq[deep_c], (1 + roll).view(-1, 1),
                                                    self.base[deep_c] + d + 1)
                self.table[deep_c, d, roll] = ent.to(self.table.dtype)
                self.last[deep_c, roll] = ys[:, 0]
            self.depth[active] += 1
        return self.depth[idx].clone(), _partial_sums(self.table[idx], self.depth[idx])

    def scores(self, idx, partial, z, alpha):
        """Exact scores (the reference's formula) where the estimate is complete, NaN elsewhere."""
        exact = score(z[idx], alpha, partial)
        return torch.where(self.depth[idx] >= self.cfg.horizon, exact, torch.full_like(exact, float("nan")))

    def winner_kv(self, m: torch.Tensor):
        """Per layer ``(keys, values)`` ``[B, kv_heads, head_dim]`` of the winners' own tokens."""
        slots = m * self.cfg.rollouts
        return ([k[slots, :, 0] for k in self.pool.keys], [v[slots, :, 0] for v in self.pool.values])


__all__ = ["Evaluator", "topk_policy"]
