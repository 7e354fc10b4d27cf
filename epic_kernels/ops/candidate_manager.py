"""The candidate-block manager: bounds, pruning, the stopping rule, blocks and the adaptive horizon,
for every sequence of a batch at once (docs/algorithm.md).

Two implementations of one protocol: ``PyCandidateManager`` below (the readable specification) and
the C++ class ``torch.classes.epic_kernels.CandidateManager`` (csrc/cpu/candidate_manager.cpp), the
same logic decision for decision. ``make_manager`` builds the one ``ops.dispatch`` picks (op
``"candidate_manager"``: ``cpp`` when the extension is built, for tensors of any device, since the
manager copies its inputs to the host; else the specification, with one warning).

Protocol, once per step::

    mgr = make_manager(offsets, ids, z, alpha, horizon, bound, block_size)
    while True:
        idx, depth = mgr.next_requests()      # evaluate candidate idx[n] through depth[n]
        if len(idx) == 0: break
        mgr.update(idx, known_depth, partial_sum, exact_score)
    mgr.winners()                             # [B] candidate index of each sequence's winner
    mgr.stats()                               # ([B] depth-1 evaluations, [B] deeper evaluations)

Candidates are the survivors of the first prune, grouped by sequence (CSR ``offsets``). ``z`` are
their perturbed scores; ``bound`` is the admissible per-depth entropy bound ``U`` **already
inflated** by the float slack (``core.admissible_bound(vocab, top_k)``); ``partial_sum`` the RB
estimate through ``known_depth``; ``exact_score`` the score computed exactly like the reference's
(NaN until ``known_depth == horizon``). The bounds widen by ``core.ENTROPY_SLACK`` and
``core.SCORE_SLACK``, which both implementations take from ``core`` (the C++ class as constructor
arguments), so every slack value lives in core.py.
"""
from __future__ import annotations

import math

import torch

from ..core import ENTROPY_SLACK, SCORE_SLACK
from ..reference import rollout_horizon
from .dispatch import choose

OP = "candidate_manager"


class PyCandidateManager:
    """The specification: the C++ class makes the same decisions, request for request."""

    def __init__(self, offsets, ids, z, alpha: float, horizon: int, bound: float, block_size: int):
        self.offsets = offsets.tolist()
        self.ids = ids.tolist()
        self.z = z.double().tolist()
        self.alpha, self.k, self.block = float(alpha), int(horizon), int(block_size)
        self.U = float(bound)          # already admissible: core.admissible_bound
        M, B = len(self.ids), len(self.offsets) - 1
        self.depth = [0] * M
        self.partial = [0.0] * M
        self.exact = [math.nan] * M
        self.alive = [True] * M
        self.win = [-1] * B
        self.evaluated_depth1 = [0] * B
        self.evaluated_deeper = [0] * B
        for b in range(B):
            if self.offsets[b + 1] - self.offsets[b] == 1:
                self.win[b] = self.offsets[b]

    def update(self, idx, depth, partial, exact):
        for m, d, p, e in zip(idx.tolist(), depth.tolist(), partial.double().tolist(), exact.double().tolist()):
            self.depth[m], self.partial[m], self.exact[m] = d, p, e

    def _bounds(self, m):
        if self.depth[m] >= self.k:
            return self.exact[m], self.exact[m]
        a, p, z = self.alpha, self.partial[m], self.z[m]
        h_slack = ENTROPY_SLACK * (1 + abs(p))
        h_lo, h_hi = p - h_slack, p + (self.k - self.depth[m]) * self.U + h_slack
        lo, hi = (z - a * h_hi, z - a * h_lo) if a >= 0 else (z - a * h_lo, z - a * h_hi)
        s_slack = SCORE_SLACK * (1 + abs(z) + abs(a) * (abs(p) + self.k * self.U))
        return lo - s_slack, hi + s_slack

    def next_requests(self):
        req_idx, req_depth = [], []
        for b in range(len(self.win)):
            if self.win[b] >= 0:
                continue
            cands = [m for m in range(self.offsets[b], self.offsets[b + 1]) if self.alive[m]]
            if all(self.depth[m] == 0 for m in cands):          # depth 1 for every survivor
                req_idx += cands
                req_depth += [1] * len(cands)
                self.evaluated_depth1[b] += len(cands)
                continue
            bounds = {m: self._bounds(m) for m in cands}
            best_lb = max(lb for lb, _ in bounds.values())
            for m in cands:                                       # prune
                if bounds[m][1] < best_lb:
                    self.alive[m] = False
            cands = [m for m in cands if self.alive[m]]
            best = max(cands, key=lambda m: (bounds[m][0], -self.ids[m]))
            lb = bounds[best][0]
            if all(lb > bounds[d][1] or (lb == bounds[d][1] and self.ids[best] < self.ids[d])
                   for d in cands if d != best):
                self.win[b] = best                                # stopping rule
                continue
            order = sorted(cands, key=lambda m: (-bounds[m][1], self.ids[m]))
            block = [m for m in order if self.depth[m] < self.k][: self.block]
            rest = [m for m in order if m not in block]
            threshold = bounds[rest[0]][1] if rest else -math.inf
            for m in block:
                h = rollout_horizon(bounds[m][1] - threshold, self.depth[m], self.k, abs(self.alpha) * self.U)
                req_idx.append(m)
                req_depth.append(h)
                self.evaluated_deeper[b] += 1
        return torch.tensor(req_idx, dtype=torch.int64), torch.tensor(req_depth, dtype=torch.int64)

    def winners(self):
        return torch.tensor(self.win, dtype=torch.int64)

    def stats(self):
        return (torch.tensor(self.evaluated_depth1, dtype=torch.int64),
                torch.tensor(self.evaluated_deeper, dtype=torch.int64))


def check_manager(offsets, ids, z, alpha, horizon, bound, block_size) -> None:
    """The validator (``ValueError``): CSR offsets over M candidates, finite alpha and bound >= 0,
    horizon and block_size >= 1."""
    for name, t in (("offsets", offsets), ("ids", ids), ("z", z)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor")
    if len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(ids) or len(ids) != len(z):
        raise ValueError("offsets, ids and z disagree on the number of candidates (offsets must run "
                         "from 0 to len(ids) = len(z))")
    if len(offsets) > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError("offsets must be non-decreasing")
    if not math.isfinite(alpha) or not math.isfinite(bound) or bound < 0:
        raise ValueError(f"alpha must be finite and bound finite and >= 0, got {alpha}, {bound}")
    if int(horizon) < 1 or int(block_size) < 1:
        raise ValueError("horizon and block_size must be >= 1")


def make_manager_impl(offsets, ids, z, alpha, horizon, bound, block_size, backend: str = "reference"):
    """No validation (the C++ constructor checks its inputs, RuntimeError). ``backend`` from
    ``dispatch.choose(device, backend, "candidate_manager")``; ``"triton"`` resolves to the op's
    own choice."""
    if backend not in ("cpp", "reference"):
        backend = choose("cpu", backend, OP)
    if backend == "cpp":
        return torch.classes.epic_kernels.CandidateManager(
            offsets.to(torch.int64), ids.to(torch.int64), z.to(torch.float64), float(alpha), int(horizon),
            float(bound), int(block_size), ENTROPY_SLACK, SCORE_SLACK)
    return PyCandidateManager(offsets, ids, z, alpha, horizon, bound, block_size)


def make_manager(offsets, ids, z, alpha, horizon, bound, block_size, backend: str | None = None):
    """The manager ``dispatch.choose`` picks (``backend`` or ``$EPIC_KERNELS_BACKEND`` forces one):
    the C++ class or ``PyCandidateManager``, same protocol. ``bound`` is the admissible bound
    ``core.admissible_bound(vocab, top_k)``."""
    check_manager(offsets, ids, z, float(alpha), horizon, float(bound), block_size)
    return make_manager_impl(offsets, ids, z, alpha, horizon, bound, block_size, choose("cpu", backend, OP))


__all__ = ["PyCandidateManager", "make_manager", "make_manager_impl", "check_manager"]
