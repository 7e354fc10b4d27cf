"""The lazy, exact best-first search of one EPIC step, for every sequence of a batch at once.

The search is engine-agnostic: it talks to a candidate manager (bounds, pruning, stopping rule,
blocks and the adaptive horizon: ``ops.candidate_manager``) and to an *evaluator*, the one narrow
interface through which a step reaches the model:

    ev.want(idx, depth)        evaluate candidates idx[n] through depth[n] (at least)
    ev.pending() -> bool       is any wanted evaluation not done yet?
    ev.results(idx)            (depth reached, partial RB sum) of candidates idx
    ev.scores(idx, partial, z, alpha)   exact scores where the estimate is complete, NaN elsewhere

How the evaluator gets its work done (fork attention over a shared prefix in one process, a
serving engine's requests, ...) is its own business; ``advance`` only decides what to ask next.

``Search`` is a resumable state machine rather than a loop so that a speculative next step
(``prefetch.py``) can be driven one model call at a time inside another step's calls:

    search = Search(mgr, ev, z, alpha)
    while search.advance():     # True while the evaluator has wanted work
        <make one model call that advances every pending evaluation by one depth>
    search.mgr.winners()
"""
from __future__ import annotations

import torch

from ..core import PruneResult
from ..ops.gumbel_topk_prune import gumbel_topk_prune_impl


def prune_on_host(logits, seeds, positions, width, backend):
    """The first prune on the logits' device, its (small) result on the CPU, where the search and
    its bookkeeping run."""
    dev = logits.device
    pr = gumbel_topk_prune_impl(logits, seeds.to(dev), positions.to(dev), width, 1, backend)
    return pr if dev.type == "cpu" else PruneResult(*(t.cpu() for t in pr))



class Search:
    def __init__(self, mgr, ev, z: torch.Tensor, alpha: float):
        self.mgr, self.ev, self.z, self.alpha = mgr, ev, z, float(alpha)
        self.asked: torch.Tensor | None = None      # candidates of the manager's outstanding request
        self.decided = False

    def advance(self) -> bool:
        """Hand finished evaluations to the manager and ask for its next requests; True while the
        evaluator has work, False once every sequence has its winner."""
        if self.ev.pending():
            return True
        if self.decided:
            return False
        if self.asked is not None:
            known, partial = self.ev.results(self.asked)
            self.mgr.update(self.asked, known, partial, self.ev.scores(self.asked, partial, self.z, self.alpha))
            self.asked = None
        idx, depth = self.mgr.next_requests()
        if len(idx) == 0:
            self.decided = True
            return False
        self.ev.want(idx, depth)
        self.asked = idx
        return True

    def winners(self) -> torch.Tensor:
        """``[B]`` candidate index of each sequence's winner (-1: not decided yet)."""
        return self.mgr.winners()


__all__ = ["Search", "prune_on_host"]
