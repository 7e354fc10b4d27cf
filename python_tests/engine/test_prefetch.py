"""Prefetch (engine/prefetch.py): the next step's first evaluations made inside this step's model
calls. It must never change a token, it must actually be used, and it must be ignored whenever the
next step is not the one it was made for."""
import copy

import pytest
import torch

import epic_kernels
from epic_kernels.testing import left_padded, prefill, random_prompts


CASES = [dict(alpha=a, horizon=k, rollouts=K, top_k=tk, rollout_top_k=rk)
         for a, k, K, tk, rk in [(0.8, 1, 1, None, None), (-0.6, 2, 2, 12, 10), (0.3, 3, 3, None, 8),
                                 (1.5, 4, 2, 12, None), (-1.2, 4, 1, None, None), (0.5, 2, 4, 16, 16)]]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: f"a{kw['alpha']}-k{kw['horizon']}-K{kw['rollouts']}")
def test_generate_same_tokens_with_and_without_prefetch(tiny, kw):
    ids, mask = left_padded(random_prompts(32, [3, 8, 5, 1], seed=kw["horizon"]))
    seeds = [3, 1, 4, 1]
    on = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=seeds, **kw)
    off = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=seeds, prefetch=False, **kw)
    ref = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=seeds, engine="reference", **kw)
    assert on.new_tokens == off.new_tokens == ref.new_tokens
    assert off.summary()["prefetched"] == 0


def test_prefetch_is_used_and_saves_calls(tiny):
    """Summed over the cases: candidates are adopted, and the engine makes fewer model calls."""
    adopted, calls_on, calls_off = 0, 0, 0
    for kw in CASES:
        ids, mask = left_padded(random_prompts(32, [4, 6], seed=11))
        on = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=[5, 6], **kw).summary()
        off = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=[5, 6], prefetch=False,
                                    **kw).summary()
        adopted += on["prefetched"]
        calls_on += on["forward_calls_per_token"] * on["tokens"] + on["tokens"] - on["forwards_saved"]
        calls_off += off["forward_calls_per_token"] * off["tokens"] + off["tokens"] - off["forwards_saved"]
    assert adopted > 0
    assert calls_on < calls_off


def test_prefetch_predicts_through_a_logits_processor(tiny):
    """A processor that depends on the ids so far (a repetition penalty) is applied to the
    would-be next ids: predictions still hit, tokens still equal."""
    from transformers import RepetitionPenaltyLogitsProcessor

    proc = RepetitionPenaltyLogitsProcessor(1.8)
    ids, mask = left_padded(random_prompts(32, [5, 7], seed=3))
    kw = dict(alpha=0.9, horizon=3, rollouts=2, top_k=6, rollout_top_k=6, seed=[2, 9], max_new_tokens=12)
    on = epic_kernels.generate(tiny, ids, attention_mask=mask, logits_processor=proc, **kw)
    off = epic_kernels.generate(tiny, ids, attention_mask=mask, logits_processor=proc, prefetch=False, **kw)
    ref = epic_kernels.generate(tiny, ids, attention_mask=mask, logits_processor=proc, engine="reference", **kw)
    assert on.new_tokens == off.new_tokens == ref.new_tokens
    assert on.summary()["prefetched"] > 0


def _loop(tiny, prompts, kw, steps, use_prefetch, tamper=None):
    logits, kv, mask = prefill(tiny, prompts)
    pre, tokens, adopted = None, [], 0
    for t in range(steps):
        out = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, engine="fast",
                                       prefetched=pre if use_prefetch else None, **kw)
        adopted += out.stats.adopted
        tokens.append(out.tokens.tolist())
        logits, kv, mask, pre = out.next_logits, out.kv, out.attention_mask, out.prefetched
        if tamper is not None:
            logits, kv = tamper(t, logits, kv)
    return tokens, adopted


def test_sample_step_loop_with_prefetched(tiny):
    prompts = random_prompts(32, [4, 9, 2], seed=6)
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[7, 8, 9], top_k=6, rollout_top_k=6)
    on, adopted = _loop(tiny, prompts, kw, 10, True)
    off, none = _loop(tiny, prompts, kw, 10, False)
    assert on == off and adopted > 0 and none == 0


def test_prefetched_is_ignored_for_another_cache_or_other_logits(tiny):
    prompts = random_prompts(32, [4, 9, 2], seed=6)
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[7, 8, 9], top_k=6, rollout_top_k=6)
    reference, _ = _loop(tiny, prompts, kw, 8, False)
    # an equal copy of the cache is not the cache the prefetch was made for: unused
    same, adopted = _loop(tiny, prompts, kw, 8, True, tamper=lambda t, lg, kv: (lg, copy.deepcopy(kv)))
    assert same == reference and adopted == 0
    # changed logits (a caller's own processing): the prediction misses, tokens follow the new logits
    bump = lambda t, lg, kv: (lg + torch.linspace(0, 3, lg.shape[-1], dtype=lg.dtype), kv)
    changed_on, adopted = _loop(tiny, prompts, kw, 8, True, tamper=bump)
    changed_off, _ = _loop(tiny, prompts, kw, 8, False, tamper=bump)
    assert changed_on == changed_off and adopted == 0


def test_prefetched_of_the_wrong_type_is_an_error(tiny):
    logits, kv, mask = prefill(tiny, random_prompts(32, [4], seed=1))
    with pytest.raises(ValueError, match="prefetched must be"):
        epic_kernels.sample_step(logits, kv, tiny, alpha=0.5, attention_mask=mask, prefetched={"a": 1})


def test_step_statistics_account_for_prefetched_rows(tiny):
    """Rows fed = the step's own rows + rows for the next step; own + adopted (+ reused from the
    previous winner's rollouts) = what the step used."""
    from epic_kernels.core import EpicConfig

    cfg = EpicConfig(alpha=0.9, horizon=3, rollouts=2)
    pre, won, adopted = None, 0, 0
    for st in _fast_loop(tiny, random_prompts(32, [5, 3], seed=4), cfg, torch.tensor([1, 2]), 10, 6)[1]:
        own = st.forward_tokens - st.prefetch_rows
        assert own >= 0 and st.prefetch_rows_won <= st.prefetch_rows
        # everything the step's candidates reached was fed by this step or adopted, nothing twice
        assert own + st.adopted_rows + st.reused_rows >= st.min_forward_tokens
        assert st.adopted_rows <= won
        won, adopted = st.prefetch_rows_won, adopted + st.adopted
    assert adopted > 0


def _fast_loop(tiny, prompts, cfg, seeds, steps, top_k, prefetch=True):
    """``steps`` fast-engine steps (reference kernels) through ``api.run_step``; tokens and stats."""
    from epic_kernels.api import run_step
    from epic_kernels.cache import EpicCache
    from epic_kernels.core import Prefix
    from epic_kernels.truncation import truncate

    logits, kv, mask = prefill(tiny, prompts)
    cache = EpicCache.from_cache(kv)
    pre, tokens, stats = None, [], []
    transform = (lambda x, seq, toks: truncate(x, top_k)) if prefetch else None
    for _ in range(steps):
        out = run_step(truncate(logits, top_k), cache, Prefix.view(cache, mask, seeds), tiny, cfg, fast=True,
                       backend="reference", prefetched=pre, transform=transform)
        tokens.append(out.tokens.tolist())
        stats.append(out.stats)
        logits, cache, mask, pre = out.next_logits, out.kv, out.attention_mask, out.prefetched
    return tokens, stats


def test_two_steps_ahead_entries_are_used_and_change_nothing(tiny):
    """A decided bet bets again on its own winner (the step after next); those entries are
    continued or handed on, and the tokens stay those of the engine without prefetch."""
    from epic_kernels.core import EpicConfig

    carried = 0
    for alpha, k, K, top_k in [(0.3, 4, 2, 12), (-0.5, 2, 3, 8), (0.6, 3, 1, 10)]:
        cfg = EpicConfig(alpha=alpha, horizon=k, rollouts=K, rollout_top_k=top_k)
        prompts = random_prompts(32, [5, 5, 3], seed=1)
        seeds = torch.tensor([1, 2, 3])
        on, extra = _fast_loop(tiny, prompts, cfg, seeds, 16, top_k)
        off, _ = _fast_loop(tiny, prompts, cfg, seeds, 16, top_k, prefetch=False)
        assert on == off
        carried += sum(e.prefetch_ahead for e in extra)
    assert carried > 0


def test_prefetch_with_sequences_leaving_the_batch(tiny):
    """Sequences that emit EOS leave the batch; the hand-over follows the remaining rows."""
    ids, mask = left_padded(random_prompts(32, [3, 8, 5, 2, 6], seed=12))
    kw = dict(alpha=0.7, horizon=3, rollouts=2, top_k=8, rollout_top_k=8, seed=[4, 5, 6, 7, 8],
              max_new_tokens=20, eos_token_id=[3, 4])
    on = epic_kernels.generate(tiny, ids, attention_mask=mask, **kw)
    off = epic_kernels.generate(tiny, ids, attention_mask=mask, prefetch=False, **kw)
    assert on.new_tokens == off.new_tokens
    lengths = [len(t) for t in on.new_tokens]
    assert min(lengths) < max(lengths)            # some sequences did leave early
    assert on.summary()["prefetched"] > 0


def test_a_hand_over_is_used_once(tiny):
    """A hand-over refers to paths in its step's slot pool: the next step that claims the pool keeps
    them and frees the rest. Passing the same ``prefetched`` to a second step (branching from one
    state) must not adopt paths the first step has since overwritten: the second step ignores it
    and still returns the reference tokens."""
    logits, kv, mask = prefill(tiny, random_prompts(32, [5, 3], seed=7))
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[3, 4], engine="fast")
    first = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, **kw)
    args = (first.next_logits, first.kv, tiny)
    ref = epic_kernels.sample_step(*args, attention_mask=first.attention_mask, **{**kw, "engine": "reference"})
    a = epic_kernels.sample_step(*args, attention_mask=first.attention_mask, prefetched=first.prefetched, **kw)
    b = epic_kernels.sample_step(*args, attention_mask=first.attention_mask, prefetched=first.prefetched, **kw)
    assert a.stats.adopted > 0 and b.stats.adopted == 0
    assert torch.equal(a.tokens, ref.tokens) and torch.equal(b.tokens, ref.tokens)
    assert not first.prefetched.made_for(first.kv)


def test_a_pool_held_by_a_running_step_is_not_shared(tiny):
    """A step whose pool another step holds (threads sharing one ``prefetched``) runs on a new pool
    and ignores the hand-over: same tokens, nothing adopted."""
    logits, kv, mask = prefill(tiny, random_prompts(32, [5, 3], seed=7))
    kw = dict(alpha=0.9, horizon=3, rollouts=2, seed=[3, 4], engine="fast")
    first = epic_kernels.sample_step(logits, kv, tiny, attention_mask=mask, **kw)
    args = (first.next_logits, first.kv, tiny)
    ref = epic_kernels.sample_step(*args, attention_mask=first.attention_mask, **{**kw, "engine": "reference"})
    pool = first.prefetched.pool
    assert first.prefetched.made_for(first.kv)
    pool.busy = True                     # claimed by a step in another thread, after our check
    try:
        out = epic_kernels.sample_step(*args, attention_mask=first.attention_mask, prefetched=first.prefetched, **kw)
    finally:
        pool.unclaim()
    assert out.stats.adopted == 0 and out.prefetched.pool is not pool
    assert torch.equal(out.tokens, ref.tokens)
