"""The exactness contract: the lazy sampler returns the exhaustive sampler's token, token for token."""
import itertools

import pytest
import torch

from epic_kernels.core import EpicConfig
from epic_kernels.reference import (exhaustive_sample, gumbel_argmax, lazy_sample,
                                    perturbed_scores)
from epic_kernels.core import Prefix
from epic_kernels.testing import prefill, random_prompts
from epic_kernels.truncation import truncate

ALPHAS = [-1.0, -0.2, 0.0, 0.2, 1.0]
GRID = list(itertools.product(ALPHAS, [1, 2, 4], [1, 2, 4], [False, True]))
SEEDS = [11, 2**32 - 5, 12345]


def _cases(tiny, batch7, truncated):
    """(logits, kv, mask) for batch 7 (different prompt lengths) and batch 1."""
    _, logits7, kv7, mask7 = batch7
    logits1, kv1, mask1 = prefill(tiny, random_prompts(32, [6], seed=9))
    out = []
    for logits, kv, mask in [(logits7, kv7, mask7), (logits1, kv1, mask1)]:
        if truncated:
            logits = truncate(logits, top_k=12)
            logits[:, 5] = float("-inf")          # a hole that top-k alone would not make
        out.append((logits.detach(), kv, mask))
    return out


@pytest.fixture(scope="module")
def grid(tiny, batch7):
    """Run lazy and exhaustive over the whole grid once; one entry per configuration."""
    results = {}
    for alpha, horizon, rollouts, truncated in GRID:
        cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts,
                         rollout_top_k=8 if truncated else None, block_size=2)
        runs = []
        for (logits, kv, mask), seed in itertools.product(_cases(tiny, batch7, truncated), SEEDS):
            prefix = Prefix.from_cache(kv, seed, logits.shape[0], mask, tiny)
            lazy = lazy_sample(logits, prefix, tiny, cfg)
            full = exhaustive_sample(logits, prefix, tiny, cfg)
            plain = torch.argmax(perturbed_scores(logits, prefix.seeds, prefix.positions), dim=-1)
            runs.append((logits, seed, lazy, full, plain))
        results[(alpha, horizon, rollouts, truncated)] = runs
    return results


@pytest.mark.parametrize("alpha,horizon,rollouts,truncated", GRID)
def test_lazy_equals_exhaustive(grid, alpha, horizon, rollouts, truncated):
    for logits, seed, lazy, full, _ in grid[(alpha, horizon, rollouts, truncated)]:
        assert torch.equal(lazy.tokens, full.tokens), (
            f"lazy {lazy.tokens.tolist()} != exhaustive {full.tokens.tolist()} (seed {seed})")
        assert bool(torch.isfinite(logits.gather(1, lazy.tokens.view(-1, 1))).all())
        assert lazy.stats.forward_tokens <= full.stats.forward_tokens * 2
        if alpha == 0:
            assert lazy.stats.forward_calls == 0


def test_grid_was_big_and_not_trivial(grid):
    """At least 2,000 (seed, row) cases; deep refinement happened; EPIC often chose a token other
    than plain Gumbel-max (so the entropies really mattered); lazy saved forward tokens overall."""
    runs = [run for config in grid.values() for run in config]
    cases = sum(len(lazy.tokens) for _, _, lazy, _, _ in runs)
    deeper = sum(int(lazy.stats.evaluated_deeper.sum()) for _, _, lazy, _, _ in runs)
    differs = sum(int((lazy.tokens != plain).sum()) for _, _, lazy, _, plain in runs)
    lazy_tokens = sum(lazy.stats.forward_tokens for _, _, lazy, _, _ in runs)
    full_tokens = sum(full.stats.forward_tokens for _, _, _, full, _ in runs)
    print(f"cases={cases} deeper={deeper} differs={differs} lazy/full tokens={lazy_tokens}/{full_tokens}")
    assert cases >= 2000, cases
    assert deeper > 500, deeper
    assert differs > 50, differs
    assert lazy_tokens < 0.5 * full_tokens, (lazy_tokens, full_tokens)


def test_alpha_zero_is_plain_gumbel_max(tiny, batch7):
    _, logits, kv, mask = batch7
    for seed in range(40):
        prefix = Prefix.from_cache(kv, seed, logits.shape[0], mask, tiny)
        res = lazy_sample(logits.detach(), prefix, tiny, EpicConfig(alpha=0.0, horizon=4, rollouts=2))
        z = perturbed_scores(logits.detach(), prefix.seeds, prefix.positions)
        assert torch.equal(res.tokens, torch.argmax(z, dim=-1))
        # the same token as Gumbel-max on the raw logits with the same step key
        assert torch.equal(res.tokens, gumbel_argmax(logits.detach(), prefix.seeds, 0, prefix.positions))
        assert res.stats.forward_calls == 0


def test_single_candidate_needs_no_forward(tiny, batch7):
    _, logits, kv, mask = batch7
    one_hot = torch.full_like(logits, float("-inf"))
    one_hot[torch.arange(7), torch.arange(7) + 3] = 0.0
    prefix = Prefix.from_cache(kv, 3, 7, mask, tiny)
    res = lazy_sample(one_hot, prefix, tiny, EpicConfig(alpha=1.0, horizon=4, rollouts=4))
    assert res.tokens.tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert res.stats.forward_calls == 0
