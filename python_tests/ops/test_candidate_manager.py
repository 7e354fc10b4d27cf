"""The candidate-block manager, both backends side by side: the C++ class makes the Python
specification's decisions, request for request; ``make_manager`` follows the dispatch policy.
Host-side: its inputs may live on any device, it works on CPU copies (this file uses CPU tensors)."""
import itertools

import pytest
import torch

from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.core import ENTROPY_SLACK, SCORE_SLACK, admissible_bound
from epic_kernels.ops.candidate_manager import PyCandidateManager, make_manager
from epic_kernels.ops import gumbel_topk_prune
from epic_kernels.core import EpicConfig
from epic_kernels.reference import entropy_bound
from epic_kernels.core import Prefix

CASES = list(itertools.product([-1.0, 0.3, 1.0], [2, 4], [1, 2], [1, 3, 64], [None, 8]))


@pytest.mark.parametrize("alpha,horizon,rollouts,block,rollout_top_k", CASES)
def test_cpp_manager_matches_python(tiny, batch7, alpha, horizon, rollouts, block, rollout_top_k):
    _, logits, kv, mask = batch7
    cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                     block_size=block)
    prefix = Prefix.from_cache(kv, 99, 7, mask, tiny)
    view = prefix
    bound = admissible_bound(logits.shape[-1], rollout_top_k)
    assert bound == entropy_bound(logits.shape[-1], rollout_top_k) * (1 + 1e-6) + 1e-6
    pr = gumbel_topk_prune(logits.detach(), prefix.seeds, prefix.positions,
                           abs(alpha) * horizon * bound, 1, backend="reference")
    args = (pr.offsets, pr.ids, pr.scores, alpha, horizon, bound, block)
    cpp, py = make_manager(*args), PyCandidateManager(*args)
    assert not isinstance(cpp, PyCandidateManager), "the C++ manager is not built"
    ev = Evaluator(tiny, view, torch.repeat_interleave(torch.arange(7), pr.counts), pr.ids, cfg, "reference",
                   pr.scores.dtype)
    rounds = 0
    while True:
        (i1, d1), (i2, d2) = cpp.next_requests(), py.next_requests()
        assert torch.equal(i1, i2) and torch.equal(d1, d2), (rounds, i1, i2, d1, d2)
        if len(i1) == 0:
            break
        known, partial = ev.run(i1, d1)
        exact = ev.scores(i1, partial, pr.scores, alpha)
        cpp.update(i1, known, partial, exact)
        py.update(i1, known, partial, exact)
        rounds += 1
    assert torch.equal(cpp.winners(), py.winners())
    assert all(torch.equal(a, b) for a, b in zip(cpp.stats(), py.stats()))
    assert bool((cpp.winners() >= 0).all())


def test_cpp_manager_rejects_inconsistent_input():
    import epic_kernels._ext as ext

    assert ext.available()
    with pytest.raises(RuntimeError, match="disagree"):
        torch.classes.epic_kernels.CandidateManager(torch.tensor([0, 3]), torch.tensor([1, 2]),
                                                    torch.tensor([0.0, 1.0]), 0.2, 4, 3.0, 4,
                                                    ENTROPY_SLACK, SCORE_SLACK)
    with pytest.raises(RuntimeError, match="bound must be finite"):
        torch.classes.epic_kernels.CandidateManager(torch.tensor([0, 2]), torch.tensor([1, 2]),
                                                    torch.tensor([0.0, 1.0]), 0.2, 4, float("nan"), 4,
                                                    ENTROPY_SLACK, SCORE_SLACK)
    with pytest.raises(ValueError, match="disagree"):          # the Python validator, every backend
        make_manager(torch.tensor([0, 3]), torch.tensor([1, 2]), torch.tensor([0.0, 1.0]), 0.2, 4, 3.0, 4)
    with pytest.raises(ValueError, match="horizon and block_size"):
        make_manager(torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.0, 1.0]), 0.2, 0, 3.0, 4,
                     "reference")


def test_make_manager_follows_the_backend(monkeypatch):
    """``make_manager`` honours ``backend=`` and $EPIC_KERNELS_BACKEND (it used to ignore both);
    Triton has no manager: a forced ``triton`` gets the C++ one."""
    args = (torch.tensor([0, 2, 3]), torch.tensor([4, 9, 1]), torch.tensor([0.5, 0.25, 1.0]), 0.3, 2, 2.0, 4)
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    assert not isinstance(make_manager(*args), PyCandidateManager)
    assert isinstance(make_manager(*args, "reference"), PyCandidateManager)
    assert not isinstance(make_manager(*args, "triton"), PyCandidateManager)
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "reference")
    assert isinstance(make_manager(*args), PyCandidateManager)
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "cpu")
    assert not isinstance(make_manager(*args), PyCandidateManager)
