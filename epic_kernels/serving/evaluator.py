"""The request evaluator: the evaluator interface of ``engine/search.py`` (``want``, ``pending``,
``results``, ``scores``) implemented with serving-engine requests, for one sequence's step.

* depth 1 of candidate ``y``: one request ``prefix + y``, ``max_tokens=1, logprobs=L``; its one
  position's logprobs give the entropy of the rollout policy ``pi`` (renormalised top
  ``rollout_top_k`` of q) for every rollout, and, should ``y`` win, the next step's root logprobs;
* depth ``d > 1``: one request ``prefix + y``, ``n=rollouts, max_tokens=d, top_k=rollout_top_k``,
  seeded by ``rollout_seed(sequence seed, position)`` (the same for every candidate of the step):
  position ``j`` of sample ``r`` gives the depth-``j`` entropy of rollout ``r``.

The refinement policy (``Refinement``) may evaluate deeper than the search asked (``want`` means
"at least"), which trades engine tokens for rounds; it never changes the winner. Entropies already
known are kept: a refinement only adds depths, and it checks that the engine's seeded sampler
reproduced the rollout tokens the shallower evaluation saw (``SeedPropertyError`` if not).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import philox
from ..ops.softmax_entropy import softmax_entropy_impl
from ..reference.primitives import partial_sums, score
from .metadata import Root
from .transport import Request, SeedPropertyError

# the Philox stream of the per-(sequence, position) rollout seed; the step and rollout streams use
# 0 and 1 + r < 2**31 - 1 (philox.MAX_ROLLOUTS), so this one is never theirs
ROLLOUT_SEED_STREAM = 2**31 - 1
ROLLOUT_SEED_MASK = 0x3FFFFFFF       # 30 bits: seed + sample index stays a positive int32


def rollout_seed(seed: int, position: int) -> int:
    """The engine seed of every rollout request of sequence ``seed`` at ``position``: a function of
    those two only, so candidates share random numbers and a refinement replays the same rollouts."""
    s = philox.stream_seed(torch.tensor([seed], dtype=torch.int64), ROLLOUT_SEED_STREAM)
    return int(philox.randint(s, torch.tensor([position], dtype=torch.int64))[0]) & ROLLOUT_SEED_MASK


@dataclass(frozen=True)
class Refinement:
    """How deep each request goes.

    ``adaptive``: exactly the depths the search asks for (the library's adaptive horizon);
    ``full``: any evaluation deeper than 1 goes to the full horizon at once (no second partial round);
    ``eager`` (default): ``full``, and a step whose first prune leaves at most ``eager_max``
    survivors sends them straight to the full horizon, skipping the depth-1 round.
    """

    mode: str = "eager"
    eager_max: int = 8

    def __post_init__(self):
        if self.mode not in ("adaptive", "full", "eager"):
            raise ValueError(f"refine must be 'adaptive', 'full' or 'eager', got {self.mode!r}")
        if not isinstance(self.eager_max, int) or self.eager_max < 1:
            raise ValueError(f"eager_max must be an int >= 1, got {self.eager_max!r}")

    def depth(self, asked: int, known: int, first_round: bool, wanted: int, horizon: int) -> int:
        if self.mode == "adaptive":
            return asked
        if asked > 1:
            return horizon
        if self.mode == "eager" and first_round and known == 0 and wanted <= self.eager_max:
            return horizon
        return asked


def entropies(values: torch.Tensor, rollout_top_k: int, backend: str) -> torch.Tensor:
    """Entropy of the rollout policy from top logprobs ``values [N, L]`` (sorted descending): the
    softmax of the first ``rollout_top_k`` is the renormalised top-k of q, exactly."""
    ent, _, _ = softmax_entropy_impl(values[:, :rollout_top_k].contiguous(), backend=backend)
    return ent


class RequestEvaluator:
    """Evaluations of candidates ``ids [M]`` after ``prefix`` (one sequence, one step)."""

    def __init__(self, prefix: tuple, ids: torch.Tensor, cfg, logprobs: int, seed: int, position: int,
                 refine: Refinement, backend: str):
        self.prefix, self.ids, self.cfg, self.L = prefix, ids, cfg, logprobs
        self.refine, self.backend = refine, backend
        self.seed = rollout_seed(seed, position)
        M, k, K = len(ids), cfg.horizon, cfg.rollouts
        self.depth = torch.zeros(M, dtype=torch.int64)
        self.goal = torch.zeros(M, dtype=torch.int64)
        self.table = torch.zeros(M, k, K, dtype=torch.float32)
        self.paths: list = [None] * M          # candidate -> K rollout token lists (from its deepest request)
        self.next_root: dict = {}               # candidate -> Root of the position after it
        self.requested = torch.zeros(M, dtype=torch.bool)

    # -- the search's interface -----------------------------------------------------------------
    def want(self, idx: torch.Tensor, depth: torch.Tensor) -> None:
        self.goal[idx] = torch.maximum(self.goal[idx], depth)

    def pending(self) -> bool:
        return bool((self.depth < self.goal).any())

    def results(self, idx: torch.Tensor):
        return self.depth[idx].clone(), partial_sums(self.table[idx], self.depth[idx])

    def scores(self, idx, partial, z, alpha):
        exact = score(z[idx], alpha, partial)
        return torch.where(self.depth[idx] >= self.cfg.horizon, exact, torch.full_like(exact, float("nan")))

    # -- requests -------------------------------------------------------------------------------
    def plan(self) -> list:
        """``(candidate, depth, Request)`` for every candidate whose wanted depth is not reached."""
        todo = (self.depth < self.goal).nonzero().flatten().tolist()
        first = not bool(self.requested.any())
        out = []
        for m in todo:
            d = self.refine.depth(int(self.goal[m]), int(self.depth[m]), first, len(todo), self.cfg.horizon)
            prompt = self.prefix + (int(self.ids[m]),)
            if d == 1:
                req = Request(prompt, 1, self.L)
            else:
                req = Request(prompt, d, self.L, n=self.cfg.rollouts, seed=self.seed, top_k=self.cfg.rollout_top_k)
            self.requested[m] = True
            out.append((m, d, req))
        return out

    def absorb(self, m: int, d: int, response) -> None:
        """File candidate ``m``'s response to a request through depth ``d``."""
        K, known = self.cfg.rollouts, int(self.depth[m])
        samples = response.samples
        if m not in self.next_root:
            self.next_root[m] = Root(samples[0].ids[0], samples[0].values[0])
        if known == 0:                          # depth 1 is shared by every rollout
            self.table[m, 0, :] = entropies(samples[0].values[0].view(1, -1), self.cfg.rollout_top_k,
                                            self.backend)[0]
        if d > 1:
            if len(samples) != K or any(len(s.tokens) != d or len(s.values) != d for s in samples):
                raise SeedPropertyError(f"the engine returned {len(samples)} samples of "
                                        f"{[len(s.tokens) for s in samples]} tokens for a request of n={K}, "
                                        f"max_tokens={d}")
            old = self.paths[m]
            if old is not None:                 # refined: the first tokens must replay exactly
                h = len(old[0])
                for r in range(K):
                    if list(samples[r].tokens[:h]) != list(old[r]):
                        raise SeedPropertyError(
                            f"the engine's seeded sampler did not replay rollout {r} of candidate "
                            f"{int(self.ids[m])} (seed {self.seed}): {list(old[r])} at depth {h}, then "
                            f"{list(samples[r].tokens[:h])} at depth {d}; exact EPIC needs a candidate refined "
                            "from depth h to depth k to see the same first h rollout tokens (docs/vllm.md)")
            start = max(known, 1)
            if d > start:
                vals = torch.stack([torch.stack(s.values[start:d]) for s in samples])     # [K, d - start, L]
                ent = entropies(vals.view(-1, vals.shape[-1]), self.cfg.rollout_top_k, self.backend)
                self.table[m, start:d, :] = ent.view(K, d - start).T
            self.paths[m] = [list(s.tokens) for s in samples]
        self.depth[m] = max(known, d)


__all__ = ["RequestEvaluator", "Refinement", "rollout_seed", "entropies", "ROLLOUT_SEED_STREAM"]
