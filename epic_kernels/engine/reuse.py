"""Cross-step rollout reuse: the rollouts step t drew for its winner are evaluations step t + 1
would make.

The rollout noise is keyed by (seed, stream ``1 + r``, position). Step t's winner ``w`` sits at
position ``p``; its rollout ``r`` drew ``y^r_1`` at ``p + 1``, then ``y^r_2`` at ``p + 2`` after
``prefix + w + y^r_1``, and so on. At step t + 1 (prefix ``+ w``), candidate ``y`` sits at ``p + 1``
and its rollout ``r`` draws at ``p + 2`` after ``prefix + w + y`` with stream ``1 + r``. So for
``y = y^r_1``:

* ``y``'s depth-1 evaluation (the rollout policy's entropy after ``prefix + w + y``, its logits and
  its KV) is the depth-2 row of ``w``'s rollout ``r``, whatever the other rollouts do;
* ``y``'s rollout ``r`` is ``w``'s rollout ``r`` shifted by one position (the same logits and the
  same key give the same token, by induction), through ``depth(w) - 1``.

The engine advances a candidate's K rollouts together, so a candidate is carried deeper than
depth 1 only when every rollout of ``w`` passed through it (all K drew ``y`` first: common at
low-entropy positions, where a step often has a single survivor). Anything else of step t + 1 is
evaluated as usual; the tokens are the reference's either way (up to float rounding of a row
computed in another call, as for any batching).

``carry(ev, win)`` builds, at the end of step t, one ``Carry`` per sequence (None where the
winner did not go deeper than depth 1) from the step's ``CandidateState``; ``load(ev, pr, prefix,
carries)`` gives step t + 1's candidate state what they hold, before its search starts. ``Prefetched`` hands them over with the
prefetch entries, so the same cache-identity check applies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .runtime import OutOfPaths


@dataclass
class _Carried:
    """One candidate of the next step, evaluated through ``depth`` by the previous step's rollouts."""

    depth: int
    table: torch.Tensor            # [k, K] per-depth entropies (rows >= depth unused)
    last: torch.Tensor             # [K] each rollout's last keyed token
    logits: torch.Tensor           # [V] the candidate's depth-1 logits (raw model logits)
    paths: torch.Tensor            # [K'] the runtime paths holding its KV (K' = 1 at depth 1) ...
    start: int                     # ... from this token on


@dataclass
class Carry:
    """What the winner's rollouts evaluated of the next step of one sequence: candidate token ->
    ``_Carried``, valid for that sequence at ``position`` with ``seed`` (the step after the winner)."""

    position: int
    seed: int
    candidates: dict

    def path_ids(self) -> list:
        return [int(i) for c in self.candidates.values() for i in c.paths]


def carry(ev, win: torch.Tensor) -> list:
    """Per sequence, the next step's candidates that ``ev``'s winners ``win [B]`` evaluated."""
    st, cfg, K = ev.state, ev.cfg, ev.cfg.rollouts
    out = []
    for b, w in enumerate(win.tolist()):
        d = int(st.depth[w]) if w >= 0 else 0
        if d < 2:
            out.append(None)
            continue
        firsts = st.drawn[w, 0].tolist()             # y^r_1 of each rollout r
        cands = {}
        for y in dict.fromkeys(firsts):              # distinct first tokens, rollout order
            through = [r for r in range(K) if firsts[r] == y]
            r0 = next((r for r in through if (w, r) in st.second and st.paths[w, r] >= 0), None)
            if r0 is None:                           # its row's logits or path were dropped (max_rows)
                continue
            logits = st.second[(w, r0)]
            deep = len(through) == K and d > 2 and bool((st.paths[w] >= 0).all())
            depth = d - 1 if deep else 1
            table = torch.zeros(cfg.horizon, K, dtype=st.table.dtype)
            if deep:
                table[:depth] = st.table[w, 1:d]
                table[0] = st.table[w, 1, r0]            # the depth-1 entropy is shared by the rollouts
                last = st.last[w].clone()
                paths = st.paths[w].clone()
            else:                                    # depth 1: every rollout's first token from y's logits
                table[0] = st.table[w, 1, r0]
                _, picks = ev.rollout_samples(logits.view(1, -1), st.seq[w].view(1),
                                              (1 + torch.arange(K)).view(1, K), st.base[w].view(1) + 2)
                last = picks[0]
                paths = st.paths[w, r0].view(1)
            cands[int(y)] = _Carried(depth, table, last, logits, paths, st.lead + 1)
        b_pos = int(st.base[w]) + 1
        out.append(Carry(b_pos, int(ev.prefix.seeds[b]), cands) if cands else None)
    return out


def load(ev, pr, prefix, carries: list) -> None:
    """Give ``ev``'s state (a step's candidates, its survivors ``pr``) the evaluations ``carries``
    hold for sequences at the position and seed they were made for, where they go deeper than what
    it has (a prefetch adopted first); ``state.reused`` / ``state.reused_rows`` count them."""
    if len(carries) != len(pr.counts):
        return
    st = ev.state
    for b, c in enumerate(carries):
        if c is None or c.position != int(prefix.positions[b]) or c.seed != int(prefix.seeds[b]):
            continue
        lo, hi = int(pr.offsets[b]), int(pr.offsets[b + 1])
        ms, gots = [], []
        for m, y in zip(range(lo, hi), pr.ids[lo:hi].tolist()):
            got = c.candidates.get(y)
            if got is not None and int(st.depth[m]) < got.depth:
                ms.append(m)
                gots.append(got)
        if ms:                                       # every carry of one step starts after the same lead
            try:
                st.adopt(ms, [g.depth for g in gots], [g.table for g in gots], [g.last for g in gots],
                         [g.logits for g in gots], [g.paths for g in gots], gots[0].start, reused=True)
            except OutOfPaths:                       # a fixed-size runtime has no paths for them: evaluate anew
                continue


__all__ = ["Carry", "carry", "load"]
