"""lookahead_entropy: every prefix of a text forks from one KV and matches the reference rollouts."""
import pytest
import torch

from epic_kernels.entropy import lookahead_entropy
from epic_kernels.core import EpicConfig
from epic_kernels.reference import rb_estimate
from epic_kernels.core import Prefix
from epic_kernels.reference import rollout_entropies
from epic_kernels.testing import exact_lookahead_entropy, prefill

TEXT = [3, 7, 2, 9, 4, 1, 5, 12]


def test_matches_reference_rollouts_at_every_prefix(tiny16):
    h = lookahead_entropy(tiny16, torch.tensor(TEXT), horizon=3, rollouts=2, seed=5)
    cfg = EpicConfig(alpha=1.0, horizon=3, rollouts=2)
    for i, t in enumerate(range(1, len(TEXT))):
        _, kv, mask = prefill(tiny16, [TEXT[:t]])
        table, _, _, _ = rollout_entropies(tiny16, Prefix.from_cache(kv, 5, 1, mask, tiny16), torch.tensor([0]),
                                           torch.tensor([TEXT[t]]), torch.tensor([3]), cfg)
        assert abs(float(h[i]) - float(rb_estimate(table)[0])) < 1e-10


def test_horizon1_exact_and_candidate_matrix(tiny16):
    cands = torch.tensor([[0, 5], [3, 3], [15, 1]])
    h = lookahead_entropy(tiny16, torch.tensor(TEXT), positions=torch.tensor([1, 4, 8]), candidates=cands,
                          horizon=1, rollouts=1)
    assert h.shape == (3, 2)
    for i, t in enumerate([1, 4, 8]):
        for j in range(2):
            assert abs(float(h[i, j]) - exact_lookahead_entropy(tiny16, TEXT[:t], int(cands[i, j]), 1)) < 1e-10


@pytest.mark.parametrize("kwargs,message", [
    (dict(positions=torch.tensor([0])), "positions must lie"),
    (dict(positions=torch.tensor([8])), "need positions < T"),
    (dict(candidates=torch.tensor([1, 2])), "candidates must be"),
    (dict(positions=torch.tensor([1, 2]), candidates=torch.tensor([3, 16])), r"candidates must lie in \[0, 16\)"),
    (dict(positions=torch.tensor([1, 2]), candidates=torch.tensor([3.0, 4.0])), "integer token ids"),
    (dict(positions=torch.tensor([1.0])), "positions must be integers"),
    (dict(horizon=0), "horizon"),
])
def test_bad_input(tiny16, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lookahead_entropy(tiny16, torch.tensor(TEXT), **kwargs)


@pytest.mark.parametrize("ids,message", [
    (torch.tensor([TEXT, TEXT]), r"one text, \[T\] or \[1, T\]"),
    (torch.tensor(TEXT, dtype=torch.float32), "integer tensor"),
    (torch.tensor([TEXT[:3] + [16]]), r"\[0, 16\) \(the model's vocabulary\)"),
    (torch.zeros(1, 0, dtype=torch.int64), "at least one"),
])
def test_bad_texts(tiny16, ids, message):
    with pytest.raises(ValueError, match=message):
        lookahead_entropy(tiny16, ids)


def test_keeps_no_vocabulary_sized_logits(tiny16, monkeypatch):
    """Measuring entropies keeps no per-candidate logits (only a decoding step needs them)."""
    from epic_kernels.engine import evaluator as E

    made = []
    real = E.Evaluator.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        made.append(self)
    monkeypatch.setattr(E.Evaluator, "__init__", spy)
    cands = torch.arange(16).view(1, 16).repeat(7, 1)
    h = lookahead_entropy(tiny16, torch.tensor(TEXT), candidates=cands, horizon=2, rollouts=2)
    assert h.shape == (7, 16) and torch.isfinite(h).all()
    assert made and all(len(ev.state.logits) == 0 for ev in made)
