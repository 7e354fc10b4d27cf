"""alpha calibration (paper Appendix B.1, Lemma 3.2) on the enumerable tiny model.

The model ``q`` is ``tiny_llama(16)``. The "true" distribution ``p`` is known: either the
entropy-tilted model ``q_a`` itself (so the true alpha* is ``a`` exactly) or a different model (the same
weights at another temperature, or another seed). Held-out texts are ancestral samples from ``p``
drawn with a fixed ``torch.Generator``. At horizon 1 the lookahead entropy is exact (no rollouts),
and at horizon 2 it can be enumerated, so every quantity (mu_p, mu_alpha, the cross-entropy
H(p, q_alpha) on the held-out prefixes) is also computed exactly and compared with the estimates.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from epic_kernels.calibration import (CalibrationData, CalibrationError, calibrate_alpha, collect_entropies,
                                      sample_tokens, solve_alpha)
from epic_kernels.testing import tiny_llama, tiny_tokenizer

V = 16


@pytest.fixture(scope="module")
def q():
    return tiny_llama(V, seed=1)


# ---------------------------------------------------------------------------------------------- #
# exact quantities by enumeration
# ---------------------------------------------------------------------------------------------- #
@torch.no_grad()
def log_next(model, prefixes, temperature=1.0):
    """log-probabilities ``[B, V]`` after equal-length prefixes."""
    logits = model(input_ids=torch.tensor(prefixes)).logits[:, -1].to(torch.float64)
    return torch.log_softmax(logits / temperature, -1)


@torch.no_grad()
def exact_h(model, prefixes, horizon):
    """Exact lookahead entropies ``[B, V]`` of every candidate after equal-length prefixes
    (horizon 1 or 2, untruncated rollout policy), by enumerating the rollout tokens."""
    B = len(prefixes)
    x = torch.tensor(prefixes)
    ids1 = torch.cat([x.repeat_interleave(V, 0), torch.arange(V).repeat(B).view(-1, 1)], 1)   # [B*V, t+1]
    lp1 = torch.log_softmax(model(input_ids=ids1).logits[:, -1].to(torch.float64), -1)
    h = -(lp1.exp() * lp1).sum(-1)
    if horizon == 2:
        ids2 = torch.cat([ids1.repeat_interleave(V, 0), torch.arange(V).repeat(B * V).view(-1, 1)], 1)
        lp2 = torch.log_softmax(model(input_ids=ids2).logits[:, -1].to(torch.float64), -1)
        h2 = -(lp2.exp() * lp2).sum(-1).view(B * V, V)
        h = h + (lp1.exp() * h2).sum(-1)
    elif horizon != 1:
        raise ValueError(horizon)
    return h.view(B, V)


def sample_texts(model, n, length, *, horizon=1, tilt=0.0, temperature=1.0, p_model=None, seed=0):
    """``n`` ancestral samples of ``length`` tokens from p: ``q^(1/temperature)`` tilted by
    ``exp(-tilt * H)`` (``p_model`` replaces q as the base when given)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (n, 1), generator=gen).tolist()
    for _ in range(length - 1):
        lp = log_next(p_model or model, x, temperature)
        if tilt:
            lp = lp - tilt * exact_h(model, x, horizon)
        y = torch.multinomial(torch.softmax(lp, -1), 1, generator=gen).flatten().tolist()
        x = [a + [b] for a, b in zip(x, y)]
    return x


class Exact:
    """Exact per-prefix tables on the held-out prefixes, in the order ``collect_entropies`` uses
    (text by text, prefix length 1..L-1): H [N, V], log q [N, V], log p [N, V]."""

    def __init__(self, model, texts, horizon, *, tilt=0.0, temperature=1.0, p_model=None):
        L = len(texts[0])
        def table(fn):
            return torch.stack([fn([t[:j] for t in texts]) for j in range(1, L)], 1).reshape(-1, V)
        self.H = table(lambda xs: exact_h(model, xs, horizon))
        self.LQ = table(lambda xs: log_next(model, xs))
        lp = table(lambda xs: log_next(p_model or model, xs, temperature))
        self.LP = torch.log_softmax(lp - tilt * self.H, -1)
        self.data_tokens = torch.tensor([t[j] for t in texts for j in range(1, L)])

    def log_q_alpha(self, alpha):
        return torch.log_softmax(self.LQ - alpha * self.H, -1)

    def mu_p(self):
        return float((self.LP.exp() * self.H).sum(-1).mean())

    def mu_alpha(self, alpha):
        return float((self.log_q_alpha(alpha).exp() * self.H).sum(-1).mean())

    def cross_entropy(self, alpha):
        """H(p, q_alpha) per token on these prefixes (next token enumerated under p)."""
        return float(-(self.LP.exp() * self.log_q_alpha(alpha)).sum(-1).mean())

    def alpha_star(self, lo=-20.0, hi=20.0):
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.mu_p() - self.mu_alpha(mid) < 0 else (lo, mid)
        return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------- #
# the sampler
# ---------------------------------------------------------------------------------------------- #
def test_sampler_draws_from_q_keyed():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, V, generator=gen, dtype=torch.float64) * 2
    n = 40000
    draws = sample_tokens(logits, 7, torch.tensor([5]), n)[0]
    freq = torch.bincount(draws, minlength=V).double() / n
    prob = torch.softmax(logits[0], -1)
    assert ((freq - prob).abs() <= 5 * (prob * (1 - prob) / n).sqrt() + 1e-4).all()
    # keyed: the same (seed, position, sample) gives the same token; another position another stream
    assert torch.equal(sample_tokens(logits, 7, torch.tensor([5]), 64), draws[:64].view(1, -1))
    assert not torch.equal(sample_tokens(logits, 7, torch.tensor([6]), 64), draws[:64].view(1, -1))
    assert not torch.equal(sample_tokens(logits, 8, torch.tensor([5]), 64), draws[:64].view(1, -1))
    # top-k truncation: only the 3 most likely tokens are ever drawn
    top3 = set(torch.topk(logits[0], 3).indices.tolist())
    assert set(sample_tokens(logits, 7, torch.tensor([5]), 2000, top_k=3)[0].tolist()) <= top3
    # a -inf entry (zero mass) is never drawn, even at the ends of the CDF
    masked = logits.clone()
    masked[0, -1] = masked[0, 0] = float("-inf")
    d = sample_tokens(masked, 1, torch.tensor([0]), 20000)[0]
    assert 0 not in d.tolist() and V - 1 not in d.tolist()


# ---------------------------------------------------------------------------------------------- #
# estimates against enumeration
# ---------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def tilted(q):
    """p = q_1 (tilt 1 at horizon 1): texts, their exact tables and the collected entropies."""
    texts = sample_texts(q, 48, 16, tilt=1.0, seed=0)
    data = collect_entropies(q, texts, horizon=1, rollouts=1, samples=32, progress=False)
    return texts, Exact(q, texts, 1, tilt=1.0), data


def test_entropies_are_the_enumerated_ones(tilted):
    texts, ex, data = tilted
    N = len(ex.data_tokens)
    assert data.tokens == N == 48 * 15 and data.samples == 32 and data.texts == 48
    torch.testing.assert_close(data.h_data, ex.H[torch.arange(N), ex.data_tokens], rtol=0, atol=1e-9)
    torch.testing.assert_close(data.h_samples, ex.H.gather(1, data.samples_tokens), rtol=0, atol=1e-9)


def test_importance_sampling_matches_exact_mu_alpha(tilted):
    _, ex, data = tilted
    for alpha in (-1.0, -0.3, 0.0, 0.5, 1.0):
        assert abs(data.mu_alpha(alpha) - ex.mu_alpha(alpha)) < 0.02, alpha
    # mu_p is a plain average of data-token entropies: within sampling error of its expectation
    se = float(data.h_data.std()) / math.sqrt(data.tokens)
    assert abs(data.mu_p - ex.mu_p()) < 4 * se


def test_g_is_monotone(tilted):
    _, ex, data = tilted
    grid = torch.linspace(-4, 4, 41).tolist()
    g_est = [data.g(a) for a in grid]
    g_ex = [ex.mu_p() - ex.mu_alpha(a) for a in grid]
    assert all(b >= a - 1e-12 for a, b in zip(g_est, g_est[1:]))
    assert all(b >= a - 1e-12 for a, b in zip(g_ex, g_ex[1:]))
    # F(alpha) = H(p, q_alpha) is convex with F' = g (Lemma 3.2's proof)
    F = [ex.cross_entropy(a) for a in grid]
    assert all(F[i - 1] + F[i + 1] - 2 * F[i] >= -1e-12 for i in range(1, len(F) - 1))
    h = 1e-5
    for a in (-1.0, 0.0, 1.5):
        num = (ex.cross_entropy(a + h) - ex.cross_entropy(a - h)) / (2 * h)
        assert abs(num - (ex.mu_p() - ex.mu_alpha(a))) < 1e-6


def test_recovers_the_true_alpha_and_lowers_cross_entropy(tilted):
    _, ex, data = tilted
    assert abs(ex.alpha_star() - 1.0) < 1e-6          # p = q_1 exactly: the enumerated root is 1
    res = solve_alpha(data, tol=1e-4)
    assert res.bracket[1] - res.bracket[0] <= 1e-4 and res.bracket[0] <= res.alpha <= res.bracket[1]
    assert abs(res.mu_p - res.mu_alpha) < 1e-3 and abs(res.g) < 1e-3       # moment matching
    assert 0 < res.alpha_stderr < 0.3
    assert abs(res.alpha - 1.0) < 3 * res.alpha_stderr + 0.05
    # Lemma 3.2: H(p, q_alpha*) <= H(p, q), for the enumerated and for the estimated alpha*
    assert ex.cross_entropy(1.0) <= ex.cross_entropy(0.0)
    assert ex.cross_entropy(res.alpha) < ex.cross_entropy(0.0) - 0.03
    assert res.ess_fraction > 0.5 and 1 <= res.ess_min <= res.ess_mean <= 32


@pytest.mark.parametrize("kind", ["cold", "hot", "other-model"])
def test_misspecified_p(q, kind):
    """p outside the family q_alpha: alpha* still matches moments and does not raise H(p, q_alpha)."""
    kw = dict(cold=dict(temperature=0.5), hot=dict(temperature=1.6),
              **{"other-model": dict(p_model=tiny_llama(V, seed=5))})[kind]
    texts = sample_texts(q, 40, 14, seed=11, **kw)
    ex = Exact(q, texts, 1, **kw)
    res = calibrate_alpha(q, texts, horizon=1, rollouts=1, samples=24, tol=1e-4, progress=False)
    a_ex = ex.alpha_star()
    assert abs(ex.mu_p() - ex.mu_alpha(a_ex)) < 1e-9                       # exact moment matching
    assert ex.cross_entropy(a_ex) <= ex.cross_entropy(0.0) + 1e-12        # Lemma 3.2 (3), exactly
    assert abs(res.mu_p - res.mu_alpha) < 1e-3
    assert abs(res.alpha - a_ex) < 3 * res.alpha_stderr + 0.05
    # the estimated alpha* loses at most a sliver of what the exact one gains
    assert ex.cross_entropy(res.alpha) - ex.cross_entropy(a_ex) < 0.01


def test_horizon_two_rao_blackwellized(q):
    """Horizon 2: rollouts make H an estimate; alpha* still lands near the enumerated root."""
    texts = sample_texts(q, 24, 10, horizon=2, tilt=0.8, seed=4)
    ex = Exact(q, texts, 2, tilt=0.8)
    res = calibrate_alpha(q, texts, horizon=2, rollouts=4, samples=16, tol=1e-4, progress=False)
    assert abs(ex.alpha_star() - 0.8) < 1e-6
    assert abs(res.mu_p - res.mu_alpha) < 1e-3
    assert abs(res.alpha - 0.8) < 3 * res.alpha_stderr + 0.1
    assert ex.cross_entropy(res.alpha) < ex.cross_entropy(0.0)


# ---------------------------------------------------------------------------------------------- #
# determinism, limits, bracket, warnings
# ---------------------------------------------------------------------------------------------- #
def _strip(res):
    d = res.to_dict()
    d.pop("seconds")
    return d


def test_deterministic_for_a_seed(q, tilted):
    texts = tilted[0][:12]
    kw = dict(horizon=2, rollouts=2, samples=6, progress=False)
    a = calibrate_alpha(q, texts, seed=3, **kw)
    b = calibrate_alpha(q, texts, seed=3, **kw)
    assert _strip(a) == _strip(b)
    d1 = collect_entropies(q, texts, seed=3, **kw)
    d2 = collect_entropies(q, texts, seed=3, chunk=5, **kw)           # chunking does not matter
    torch.testing.assert_close(d1.h_samples, d2.h_samples, rtol=0, atol=1e-12)
    assert torch.equal(d1.samples_tokens, d2.samples_tokens)
    d3 = collect_entropies(q, texts, seed=4, **kw)
    assert not torch.equal(d1.samples_tokens, d3.samples_tokens)
    assert not torch.equal(d1.h_data, d3.h_data)                       # other rollout noise


def test_limits_contexts_and_strings(q):
    texts = [[2, 3, 4, 5, 6], [7, 8], [9], [10, 11, 12, 13]]
    d = collect_entropies(q, texts, horizon=1, rollouts=1, samples=2, progress=False)
    assert d.tokens == 4 + 1 + 0 + 3 and d.texts == 3                  # a 1-token text has no prefix
    assert collect_entropies(q, texts, horizon=1, samples=2, max_tokens=6, progress=False).tokens == 6
    assert collect_entropies(q, texts, horizon=1, samples=2, max_texts=2, progress=False).tokens == 5
    with_ctx = collect_entropies(q, [[4, 5, 6]], contexts=[[2, 3]], horizon=1, samples=2, progress=False)
    plain = collect_entropies(q, [[2, 3, 4, 5, 6]], horizon=1, samples=2, progress=False)
    assert with_ctx.tokens == 3                                        # only the text's own tokens
    torch.testing.assert_close(with_ctx.h_data, plain.h_data[1:], rtol=0, atol=1e-12)
    tok = tiny_tokenizer(V)
    s = collect_entropies(q, ["bcde"], tokenizer=tok, horizon=1, samples=2, progress=False)
    i = collect_entropies(q, [tok("bcde")["input_ids"]], horizon=1, samples=2, progress=False)
    torch.testing.assert_close(s.h_data, i.h_data, rtol=0, atol=0)
    t = collect_entropies(q, [torch.tensor([[2, 3, 4]])], horizon=1, samples=2, progress=False)
    assert t.tokens == 2


def test_bracket_expands_with_a_warning(q):
    texts = sample_texts(q, 24, 12, tilt=2.5, seed=2)
    with pytest.warns(UserWarning, match="widened"):
        res = calibrate_alpha(q, texts, horizon=1, samples=16, bracket=(-0.5, 0.5), progress=False)
    assert res.bracket_expansions >= 1 and res.alpha > 0.5
    assert res.bracket[0] <= res.alpha <= res.bracket[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = calibrate_alpha(q, texts, horizon=1, samples=16, bracket=(-8, 8), progress=False)
    assert abs(wide.alpha - res.alpha) < 2e-3


def _synthetic(h_data, h_samples):
    h_samples = torch.tensor(h_samples, dtype=torch.float64)
    return CalibrationData(torch.tensor(h_data, dtype=torch.float64), h_samples,
                           torch.arange(len(h_data)), len(h_data), h_samples.numel())


def test_degenerate_weights_warn_and_unreachable_mu_p_raises():
    data = _synthetic([0.2] * 6, [[0.0] + [8.0] * 7] * 6)  # mu_p near the lower end: large alpha*
    with pytest.warns(UserWarning, match="effective sample size"):
        res = solve_alpha(data, tol=1e-6)
    assert res.alpha > 0 and res.ess_fraction < 0.25 and abs(res.g) < 1e-5
    with pytest.raises(CalibrationError, match="outside"):
        solve_alpha(_synthetic([9.0] * 3, [[1.0, 2.0]] * 3))
    with pytest.raises(CalibrationError, match="outside"):
        solve_alpha(_synthetic([1.0] * 3, [[1.0, 1.0]] * 3))   # every sample alike: no alpha moves mu


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts=[]), "empty"),
    (dict(texts="abc"), "list"),
    (dict(samples=0), "samples"),
    (dict(tol=0.0), "tol"),
    (dict(tol=-1e-3), "tol"),
    (dict(bracket=(1.0, -1.0)), "bracket"),
    (dict(bracket=(float("nan"), 1.0)), "bracket"),
    (dict(bracket=(0.0,)), "bracket"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_texts=0), "max_texts"),
    (dict(texts=[[3]]), "no text has a token"),
    (dict(texts=["abc"]), "tokenizer"),
    (dict(texts=[[1.5, 2.0]]), "integer"),
    (dict(contexts=[[1]]), "contexts"),
    (dict(seed=-1), "seed"),
    (dict(horizon=0), "horizon"),
])
def test_bad_inputs(q, kwargs, match):
    args = dict(texts=[[2, 3, 4], [5, 6, 7]], horizon=1, samples=2, progress=False)
    args.update(kwargs)
    texts = args.pop("texts")
    with pytest.raises(ValueError, match=match):
        calibrate_alpha(q, texts, **args)
