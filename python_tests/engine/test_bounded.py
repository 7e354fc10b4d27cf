"""Bounded memory (``max_rows``, docs/engine.md "Bounded memory"): a model call carries at most
``max_rows`` rows and at most ``max_rows`` candidates keep their depth-1 logits, whatever the
number of survivors; the tokens are the same with the cap as without it and as the reference's."""
import pytest
import torch

import epic_kernels
from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.testing import left_padded, prefill, random_prompts


CASES = [dict(alpha=a, horizon=k, rollouts=K, top_k=tk, rollout_top_k=rk)
         for a, k, K, tk, rk in [(0.8, 1, 1, None, None), (-0.6, 2, 2, 12, 10), (0.3, 3, 3, None, 8),
                                 (1.5, 4, 2, None, None)]]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: f"a{kw['alpha']}-k{kw['horizon']}-K{kw['rollouts']}")
@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_same_tokens_with_any_cap(tiny, kw, prefetch):
    ids, mask = left_padded(random_prompts(32, [3, 8], seed=kw["horizon"]))
    run = lambda **x: epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=6, seed=[3, 1],
                                            prefetch=prefetch, **kw, **x)
    ref = run(engine="reference")
    off = run(max_rows=None)
    assert off.new_tokens == ref.new_tokens
    for cap in (1, 5):
        assert run(max_rows=cap).new_tokens == ref.new_tokens, cap


def _max_rows_seen(monkeypatch):
    seen = {"rows": 0, "kept": 0, "slots": 0}
    forward, absorb = Evaluator._forward1, Evaluator.absorb

    def forward_spy(ev, seq, *a, **k):
        seen["rows"] = max(seen["rows"], len(seq))
        return forward(ev, seq, *a, **k)

    def absorb_spy(ev, rows, logits):
        absorb(ev, rows, logits)
        seen["kept"] = max(seen["kept"], len(ev.next_logits))
        seen["slots"] = max(seen["slots"], ev.pool.used - len(ev.pool.free))
    monkeypatch.setattr(Evaluator, "_forward1", forward_spy)
    monkeypatch.setattr(Evaluator, "absorb", absorb_spy)
    return seen


@pytest.mark.parametrize("vocab", [64, 256])
def test_rows_and_kept_logits_do_not_grow_with_survivors(monkeypatch, vocab):
    """Full vocabulary, a flat distribution: every token survives. With the cap, no forward takes
    more than ``max_rows`` rows and no evaluator keeps more depth-1 logits than ``max_rows`` plus
    the candidates being refined (at most ``block_size`` per sequence), for 64 or 256 survivors
    alike; the slot pool does not grow with them either."""
    from epic_kernels.testing import tiny_llama

    model = tiny_llama(vocab, seed=1, init_range=0.02)        # nearly uniform next-token distributions
    logits, kv, mask = prefill(model, random_prompts(vocab, [6, 9], seed=2))
    kw = dict(alpha=0.5, horizon=3, rollouts=2, seed=[1, 2], attention_mask=mask, engine="fast", block_size=4)
    seen = _max_rows_seen(monkeypatch)
    cap = 8
    out = epic_kernels.sample_step(logits, kv, model, max_rows=cap, **kw)
    assert int(out.stats.survivors.min()) > vocab // 2
    assert seen["rows"] <= cap and out.stats.max_call_rows <= cap
    assert seen["kept"] <= cap + 2 * 4
    # slots in use: 4 max_rows before completed candidates give theirs back, plus one call's worth
    assert seen["slots"] <= 4 * cap + 2 * cap + 2 * 2 * 4, seen
    free = epic_kernels.sample_step(logits, kv, model, max_rows=None, **kw)
    assert torch.equal(out.tokens, free.tokens)
    torch.testing.assert_close(out.next_logits, free.next_logits, rtol=0, atol=1e-12)   # a restored winner: same row, another batch
    assert free.stats.max_call_rows > cap


def test_generate_warns_once_on_many_survivors(monkeypatch):
    from epic_kernels import defaults
    from epic_kernels.testing import tiny_llama

    model = tiny_llama(64, seed=1, init_range=0.02)
    monkeypatch.setattr(defaults, "WARN_SURVIVORS", 16)
    ids = torch.tensor(random_prompts(64, [5], seed=0))
    with pytest.warns(RuntimeWarning, match="rollout_top_k") as rec:
        epic_kernels.generate(model, ids, max_new_tokens=3, alpha=0.5, horizon=2, top_k=None, rollout_top_k=None,
                              max_rows=4)
    assert sum("candidates in its admissible" in str(w.message) for w in rec) == 1
