"""Cross-step rollout reuse (engine/reuse.py): the winner's rollouts evaluated candidates of the
next step. Reuse must never change a token, its carried evaluations must be exactly the ones the
next step would compute, it must actually be used, and it must be ignored whenever the next step
is not the one it was made for."""
import copy

import pytest
import torch

import epic_kernels
from epic_kernels.api import run_step
from epic_kernels.cache import EpicCache
from epic_kernels.core import EpicConfig, Prefix
from epic_kernels.engine import reuse
from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.engine.step import fast_sample
from epic_kernels.testing import left_padded, prefill, random_prompts
from epic_kernels.truncation import truncate

CASES = [dict(alpha=a, horizon=k, rollouts=K, top_k=tk, rollout_top_k=rk)
         for a, k, K, tk, rk in [(0.8, 2, 1, None, None), (-0.6, 3, 2, 12, 10), (0.3, 3, 3, None, 8),
                                 (1.5, 4, 2, 12, None), (-1.2, 4, 1, None, None), (0.5, 2, 4, 16, 16)]]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: f"a{kw['alpha']}-k{kw['horizon']}-K{kw['rollouts']}")
def test_generate_same_tokens_with_and_without_reuse(tiny, kw):
    ids, mask = left_padded(random_prompts(32, [3, 8, 5, 1], seed=kw["horizon"] + 7))
    seeds = [3, 1, 4, 1]
    run = lambda **o: epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=seeds,
                                            **kw, **o)
    ref = run(engine="reference")
    for prefetch in (True, False):
        on, off = run(prefetch=prefetch), run(prefetch=prefetch, reuse=False)
        assert on.new_tokens == off.new_tokens == ref.new_tokens
        assert off.summary()["reused"] == 0


def test_reuse_is_used_and_accounted(tiny):
    """Summed over the cases (prefetch off, so nothing else fills the next step): candidates are
    reused, each for 1 + K (depth - 1) rows, and the engine feeds fewer rows of its own."""
    reused = rows = own_on = own_off = 0
    for kw in CASES:
        ids, mask = left_padded(random_prompts(32, [4, 6], seed=11))
        run = lambda **o: epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=[5, 6],
                                                prefetch=False, **kw, **o)
        on, off = run(), run(reuse=False)
        assert on.new_tokens == off.new_tokens
        s_on, s_off = on.summary(), off.summary()
        reused, rows = reused + s_on["reused"], rows + s_on["reused_rows"]
        assert s_on["reused"] <= s_on["reused_rows"] <= s_on["reused"] * (1 + kw["rollouts"] * (kw["horizon"] - 2))
        own_on += sum(s.forward_tokens for s in on.steps)
        own_off += sum(s.forward_tokens for s in off.steps)
    assert reused > 0 and rows > reused          # some went deeper than depth 1
    assert own_on < own_off


def _step(tiny, cache, mask, seeds, logits, cfg):
    prefix = Prefix.view(cache, mask, seeds)
    return fast_sample(logits, prefix, tiny, cfg, "reference"), prefix


@pytest.mark.parametrize("alpha,k,K,rk", [(0.4, 4, 2, None), (0.9, 3, 1, 8), (-0.7, 4, 3, 6)])
def test_carried_evaluations_are_the_ones_the_next_step_computes(tiny, alpha, k, K, rk):
    """Every carried candidate's entropies, rollout tokens, depth-1 logits and path KV equal a fresh
    evaluation of it in the next step (same keys), to float rounding."""
    cfg = EpicConfig(alpha=alpha, horizon=k, rollouts=K, rollout_top_k=rk)
    logits, kv, mask = prefill(tiny, random_prompts(32, [5, 3, 7], seed=2))
    cache, seeds = EpicCache.from_cache(kv), torch.tensor([4, 5, 6])
    checked = 0
    for _ in range(6):
        step, prefix = _step(tiny, cache, mask, seeds, logits, cfg)
        nxt = cache.fork()
        nxt.append(step.next_keys, step.next_values)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        nprefix = Prefix.view(nxt, mask, seeds)
        for b, c in enumerate(step.prefetched.carries):
            assert c is None or c.position == int(nprefix.positions[b])
            if c is None:
                continue
            for y, got in c.candidates.items():
                ev = Evaluator(tiny, nprefix, torch.tensor([b]), torch.tensor([y]), cfg, "reference", got.table.dtype)
                ev.run(torch.tensor([0]), torch.tensor([got.depth]))
                d = got.depth
                torch.testing.assert_close(got.table[:d], ev.state.table[0, :d], rtol=1e-5, atol=1e-5)
                assert torch.equal(got.last, ev.state.last[0])
                torch.testing.assert_close(got.logits, ev.state.logits[0], rtol=1e-5, atol=1e-5)
                K2 = len(got.paths)                  # the carried paths, read where they are in the step's pool
                carried = step.prefetched.pool.read(got.paths, got.start, d)
                fresh = ev.rt.pool.read(ev.state.paths[0, :K2], 0, d)
                torch.testing.assert_close(carried, fresh, rtol=1e-5, atol=1e-5)
                checked += 1
        logits, cache = step.next_logits, nxt
    assert checked > 0


def _loop(tiny, prompts, kw, steps, tamper=None):
    logits, kv, mask = prefill(tiny, prompts)
    pre, tokens, reused = None, [], 0
    for t in range(steps):
        out = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, engine="fast", prefetched=pre, **kw)
        reused += out.stats.reused
        tokens.append(out.tokens.tolist())
        logits, kv, mask, pre = out.next_logits, out.kv, out.attention_mask, out.prefetched
        if tamper is not None:
            logits, kv, kw = tamper(t, logits, kv, kw)
    return tokens, reused


def test_carries_are_ignored_for_another_cache_or_other_settings(tiny):
    prompts = random_prompts(32, [4, 9, 2], seed=6)
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[7, 8, 9], top_k=6, rollout_top_k=6)
    _, used = _loop(tiny, prompts, kw, 8)
    assert used > 0
    # an equal copy of the cache is not the cache the carries were made for: unused
    same, used = _loop(tiny, prompts, kw, 8, tamper=lambda t, lg, kv, o: (lg, copy.deepcopy(kv), o))
    assert used == 0
    # other settings from step 3 on (the rollout policy): what was handed over is ignored, and the
    # tokens are those of a loop that never had it
    switch = lambda t, lg, kv, o: (lg, kv, dict(o, rollout_top_k=None, rollouts=3) if t >= 2 else o)
    changed, _ = _loop(tiny, prompts, kw, 8, tamper=switch)
    fresh = lambda t, lg, kv, o: (lg, copy.deepcopy(kv), dict(o, rollout_top_k=None, rollouts=3) if t >= 2 else o)
    unhanded, _ = _loop(tiny, prompts, kw, 8, tamper=fresh)
    assert changed == unhanded


def test_reuse_with_sequences_leaving_the_batch(tiny):
    ids, mask = left_padded(random_prompts(32, [3, 8, 5, 2, 6], seed=12))
    kw = dict(alpha=0.7, horizon=3, rollouts=2, top_k=8, rollout_top_k=8, seed=[4, 5, 6, 7, 8],
              max_new_tokens=20, eos_token_id=[3, 4], prefetch=False)
    on = epic_kernels.generate(tiny, ids, attention_mask=mask, **kw)
    off = epic_kernels.generate(tiny, ids, attention_mask=mask, reuse=False, **kw)
    ref = epic_kernels.generate(tiny, ids, attention_mask=mask, engine="reference", **kw)
    assert on.new_tokens == off.new_tokens == ref.new_tokens
    assert any(len(t) < 20 for t in on.new_tokens) and on.summary()["reused"] > 0


def test_carry_respects_max_rows(tiny):
    """With a one-row cap the kept depth-2 logits are bounded too; the tokens do not change."""
    cfg = EpicConfig(alpha=0.6, horizon=3, rollouts=2, max_rows=1)
    logits, kv, mask = prefill(tiny, random_prompts(32, [5, 6], seed=3))
    cache, seeds = EpicCache.from_cache(kv), torch.tensor([1, 2])
    tokens = {}
    for use in (True, False):
        lg, c, m, pre, toks = logits, cache, mask, None, []
        for _ in range(6):
            out = run_step(truncate(lg, 12), c, Prefix.view(c, m, seeds), tiny, cfg, fast=True, backend="reference",
                           prefetched=pre, reuse=use)
            toks.append(out.tokens.tolist())
            lg, c, m, pre = out.next_logits, out.kv, out.attention_mask, out.prefetched
        tokens[use] = toks
    assert tokens[True] == tokens[False]


def test_hand_over_is_ignored_for_another_model(tiny):
    """A hand-over made with one model object is not used with another (here an equal copy)."""
    other = copy.deepcopy(tiny)
    logits, kv, mask = prefill(tiny, random_prompts(32, [5, 6], seed=9))
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[1, 2], top_k=6, rollout_top_k=6)
    out = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, engine="fast", **kw)
    assert out.prefetched is not None
    same = epic_kernels.sample_step(out.next_logits, out.kv, tiny, attention_mask=out.attention_mask, engine="fast",
                                    prefetched=out.prefetched, **kw)
    moved = epic_kernels.sample_step(out.next_logits, out.kv, other, attention_mask=out.attention_mask, engine="fast",
                                     prefetched=out.prefetched, **kw)
    assert same.stats.adopted + same.stats.reused > 0
    assert moved.stats.adopted == moved.stats.reused == 0
    assert torch.equal(same.tokens, moved.tokens)
