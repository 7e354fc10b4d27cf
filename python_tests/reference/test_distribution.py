"""Frequency checks: with exact entropies, EPIC samples follow q_alpha computed in closed form.

Chi-square goodness of fit, rejecting at p < 1e-4: a correct sampler fails such a check with
probability 1e-4 for a random choice of seeds (the seeds here are fixed, so the test is
deterministic). Each check also verifies that it has power: the same samples must be rejected
as draws from the un-tilted distribution q.
"""
import pytest
import torch

from epic_kernels.core import EpicConfig
from epic_kernels.reference import lazy_sample
from epic_kernels.core import Prefix
from epic_kernels.testing import exact_lookahead_entropies, prefill

P_REJECT = 1e-4
DRAWS = 20_000
CHUNK = 2_500


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper-tail p-value of Pearson's statistic; bins with expected count < 5 are merged."""
    expected = probs * counts.sum()
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum().view(1)])
        expected = torch.cat([expected[~small], expected[small].sum().view(1)])
    stat = ((counts - expected) ** 2 / expected).sum()
    df = len(counts) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0), stat / 2.0))


def draw(model, prompt, cfg, draws=DRAWS):
    """Token counts of ``draws`` EPIC samples after ``prompt``, one sequence seed per draw."""
    logits, kv, mask = prefill(model, [prompt] * CHUNK)
    counts = torch.zeros(logits.shape[-1], dtype=torch.float64)
    for start in range(0, draws, CHUNK):
        seeds = list(range(start, start + CHUNK))
        prefix = Prefix.from_cache(kv, seeds, CHUNK, mask, model)
        tokens = lazy_sample(logits, prefix, model, cfg).tokens
        counts += torch.bincount(tokens, minlength=logits.shape[-1]).double()
    return counts, logits[0].double()


def q_alpha(logits, entropies, alpha):
    return torch.softmax(logits - alpha * entropies, dim=-1)


@pytest.mark.parametrize("alpha", [-1.0, 1.5])
def test_horizon1_matches_closed_form(tiny16, alpha):
    prompt = [3, 7, 2, 9]
    counts, logits = draw(tiny16, prompt, EpicConfig(alpha=alpha, horizon=1, rollouts=1))
    h = exact_lookahead_entropies(tiny16, prompt, horizon=1)
    assert chi_square_p(counts, q_alpha(logits, h, alpha)) > P_REJECT
    assert chi_square_p(counts, q_alpha(logits, h, 0.0)) < P_REJECT   # the test has power


def test_horizon2_many_rollouts_close_to_closed_form(tiny16):
    """Horizon 2 with 8 rollouts: the RB estimate is close to exact, so 10,000 draws land within
    total-variation 0.04 of q_alpha (sampling noise alone is ~0.015 at 10,000 draws over 16
    tokens), while they are clearly farther from q."""
    prompt = [5, 1, 8]
    alpha = 1.5
    counts, logits = draw(tiny16, prompt, EpicConfig(alpha=alpha, horizon=2, rollouts=8),
                          draws=10_000)
    h = exact_lookahead_entropies(tiny16, prompt, horizon=2)
    empirical = counts / counts.sum()
    tv = 0.5 * (empirical - q_alpha(logits, h, alpha)).abs().sum()
    tv_plain = 0.5 * (empirical - q_alpha(logits, h, 0.0)).abs().sum()
    print(f"TV to q_alpha {tv:.4f}, to q {tv_plain:.4f}")
    assert tv < 0.04
    assert tv_plain > 3 * tv
