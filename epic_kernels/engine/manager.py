"""The candidate-block manager: bounds, pruning, the stopping rule, blocks and the adaptive horizon,
for every sequence of a batch at once.

The C++ class ``torch.classes.epic_kernels.CandidateManager`` (csrc/cpu/candidate_manager.cpp) is
the implementation the engine uses; ``PyCandidateManager`` below is the same logic in Python, used
when the extension is not built and as the readable specification the C++ code is tested against.

Protocol, once per step::

    mgr = CandidateManager(offsets, ids, z, alpha, horizon, bound, block_size)
    while True:
        idx, depth = mgr.next_requests()      # evaluate candidate idx[n] through depth[n]
        if len(idx) == 0: break
        mgr.update(idx, known_depth, partial_sum, exact_score)
    mgr.winners()                             # [B] candidate index of each sequence's winner

Candidates are the survivors of the first prune, grouped by sequence (CSR ``offsets``). ``z`` are
their perturbed scores; ``partial_sum`` the RB estimate through ``known_depth``; ``exact_score`` the
score computed exactly like the reference's (NaN until ``known_depth == horizon``).
"""
from __future__ import annotations

import math

import torch

from .. import _ext
from ..reference import rollout_horizon

BOUND_REL_SLACK = 1e-6      # U is inflated by this much (relative) plus 1e-6 absolute
ENTROPY_SLACK = 1e-5        # a partial estimate's interval widens by this * (1 + |partial|)
SCORE_SLACK = 1e-6          # bounds widen by this * (1 + |z| + |alpha| (|partial| + k U))


class PyCandidateManager:
    def __init__(self, offsets, ids, z, alpha: float, horizon: int, bound: float, block_size: int):
        self.offsets = offsets.tolist()
        self.ids = ids.tolist()
        self.z = z.double().tolist()
        self.alpha, self.k, self.block = float(alpha), int(horizon), int(block_size)
        self.U = bound * (1 + BOUND_REL_SLACK) + 1e-6
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


def make_manager(offsets, ids, z, alpha, horizon, bound, block_size, prefer_cpp: bool = True):
    """The C++ manager when the extension provides it, else the Python one (same protocol)."""
    if prefer_cpp and _cpp_manager_available():
        return torch.classes.epic_kernels.CandidateManager(
            offsets.to(torch.int64), ids.to(torch.int64), z.to(torch.float64), float(alpha), int(horizon),
            float(bound), int(block_size))
    return PyCandidateManager(offsets, ids, z, alpha, horizon, bound, block_size)


def _cpp_manager_available() -> bool:
    if not _ext.available():
        return False
    try:
        torch.classes.epic_kernels.CandidateManager
    except (RuntimeError, AttributeError):
        return False
    return True
