"""Lookahead-entropy estimators: RB (eq. 47) and MC (eq. 45) are unbiased; RB has lower variance."""
import torch

from epic_kernels.core import EpicConfig
from epic_kernels.reference import mc_estimate, partial_sums, rb_estimate, softmax_entropy
from epic_kernels.core import Prefix
from epic_kernels.reference import rollout_entropies
from epic_kernels.testing import exact_lookahead_entropy, prefill

PROMPT = [4, 11, 2, 7]


def _estimates(model, candidate, horizon, rollouts, n_seeds, top_k=None):
    """RB and MC estimates for ``n_seeds`` sequence seeds, from the very same rollouts."""
    logits, kv, mask = prefill(model, [PROMPT] * n_seeds)
    prefix = Prefix.from_cache(kv, list(range(n_seeds)), n_seeds, mask, model)
    cfg = EpicConfig(alpha=1.0, horizon=horizon, rollouts=rollouts, rollout_top_k=top_k)
    rows = torch.arange(n_seeds)
    table, log_probs, calls, tokens = rollout_entropies(
        model, prefix, rows, torch.full_like(rows, candidate), torch.full_like(rows, horizon), cfg)
    assert calls == horizon
    assert tokens == n_seeds * (1 + rollouts * (horizon - 1))      # 1 + K (k - 1) per candidate
    return rb_estimate(table), mc_estimate(log_probs)


def test_rb_variance_below_mc_on_same_rollouts(tiny16):
    rb, mc = _estimates(tiny16, candidate=6, horizon=3, rollouts=2, n_seeds=3000)
    exact = exact_lookahead_entropy(tiny16, PROMPT, 6, 3)
    # both unbiased: means within 4 standard errors of the enumerated value
    for est in (rb, mc):
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / len(est) ** 0.5 + 1e-9
    assert float(rb.var()) < 0.5 * float(mc.var()), (float(rb.var()), float(mc.var()))


def test_horizon1_rb_is_exact_and_deterministic(tiny16):
    rb, _ = _estimates(tiny16, candidate=3, horizon=1, rollouts=4, n_seeds=5)
    exact = exact_lookahead_entropy(tiny16, PROMPT, 3, 1)
    assert torch.allclose(rb, torch.full_like(rb, exact), atol=1e-10)


def test_truncated_policy_entropy_within_bound(tiny16):
    rb, _ = _estimates(tiny16, candidate=5, horizon=3, rollouts=2, n_seeds=50, top_k=3)
    assert float(rb.max()) <= 3 * torch.log(torch.tensor(3.0)).item() + 1e-9
    exact = exact_lookahead_entropy(tiny16, PROMPT, 5, 3, rollout_top_k=3)
    assert abs(float(rb.mean()) - exact) < 4 * float(rb.std()) / 50**0.5 + 1e-9


def test_softmax_entropy_reference():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                           [5.0, float("-inf"), float("-inf"), float("-inf")],
                           [1e4, -1e4, 0.0, float("-inf")],
                           [1.0, 2.0, 3.0, 4.0]])
    h, lse = softmax_entropy(logits)
    p = torch.softmax(logits[3], -1)
    assert torch.allclose(h, torch.tensor([torch.log(torch.tensor(4.0)), 0.0, 0.0, -(p * p.log()).sum()]))
    assert torch.allclose(lse, torch.logsumexp(logits, -1))


def test_partial_sums_are_bitwise_each_rows_rb_estimate():
    """The search compares partial sums against completed estimates, so each row's partial sum must be
    exactly ``rb_estimate`` of that row through its own depth (every depth, both dtypes, K = 1..3)."""
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.float64):
        for K in (1, 2, 3):
            table = torch.rand(40, 4, K, generator=g, dtype=torch.float64).to(dtype) * 7
            depth = torch.randint(0, 5, (40,), generator=g)
            got = partial_sums(table, depth)
            want = torch.stack([rb_estimate(table[n:n + 1], int(depth[n]))[0] for n in range(40)])
            assert got.dtype == dtype and torch.equal(got, want)
    assert partial_sums(torch.zeros(0, 4, 2), torch.zeros(0, dtype=torch.int64)).shape == (0,)
