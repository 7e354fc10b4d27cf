"""Bounded memory (``max_rows``, docs/engine.md "Bounded memory"): a model call carries at most
``max_rows`` rows and at most ``max_rows`` candidates keep their depth-1 logits, whatever the
number of survivors; the tokens are the same with the cap as without it and as the reference's."""
import pytest
import torch

import epic_kernels
from epic_kernels.engine import evaluator as evaluator_mod
from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.engine.runtime import ForkRuntime
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
    forward, absorb_all = ForkRuntime._forward, evaluator_mod.absorb_all

    def forward_spy(rt, rows):
        seen["rows"] = max(seen["rows"], len(rows))
        return forward(rt, rows)

    def absorb_spy(parts):
        absorb_all(parts)
        for ev, _, _ in parts:
            seen["kept"] = max(seen["kept"], len(ev.state.logits))
            seen["slots"] = max(seen["slots"], ev.rt.in_use())
    monkeypatch.setattr(ForkRuntime, "_forward", forward_spy)
    monkeypatch.setattr(evaluator_mod, "absorb_all", absorb_spy)
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


@pytest.fixture
def poisoned_release(monkeypatch):
    """Slots given back to the pool are overwritten with large noise, so a row that reads a slot
    nobody wrote for it (rather than stale contents that happen to be right) changes the results."""
    from epic_kernels.engine.runtime import SlotPool

    release = SlotPool.release
    gen = torch.Generator().manual_seed(0)

    def poison(pool, ids):
        ids = [int(i) for i in ids]
        for t in pool.keys + pool.values:
            t[ids] = 50.0 * torch.randn(t[ids].shape, generator=gen, dtype=t.dtype).to(t.device)
        release(pool, ids)
    monkeypatch.setattr(SlotPool, "release", poison)


def test_capped_prefetch_never_reads_an_unwritten_slot(monkeypatch, poisoned_release):
    """A cap that trims completed candidates' slots, with prefetch on: a winner that lost its slot
    has its depth-1 row run again, and no bet may copy that slot before the row has run (a bet is
    placed on kept candidates only). Every step's winner estimate (where the search took the winner
    to the same depth) and token are the uncapped run's."""
    import weakref

    from epic_kernels.engine import prefetch
    from epic_kernels.testing import tiny_llama

    in_flight = weakref.WeakKeyDictionary()      # evaluator -> candidates whose restore row is in this call
    plan, absorb_all, bet_init, winner_kv = (Evaluator.plan, evaluator_mod.absorb_all, prefetch._Bet.__init__,
                                             Evaluator.winner_kv)
    bets_on_unwritten, depths = [], []

    def plan_spy(ev, *a, **k):
        rows = plan(ev, *a, **k)
        in_flight[ev] = set() if rows is None else set(rows.restore.tolist())
        return rows

    def absorb_spy(parts):
        for ev, _, _ in parts:
            in_flight[ev] = set()
        absorb_all(parts)

    def bet_spy(bet, src, b, m, *a, **k):
        if m in in_flight.get(src, ()):
            bets_on_unwritten.append((b, m))
        bet_init(bet, src, b, m, *a, **k)

    def winner_kv_spy(ev, m):
        depths.append(ev.state.depth[m].clone())
        return winner_kv(ev, m)
    monkeypatch.setattr(Evaluator, "plan", plan_spy)
    monkeypatch.setattr(evaluator_mod, "absorb_all", absorb_spy)
    monkeypatch.setattr(prefetch._Bet, "__init__", bet_spy)
    monkeypatch.setattr(Evaluator, "winner_kv", winner_kv_spy)

    model = tiny_llama(128, seed=1, init_range=0.2)
    B = 8
    logits0, kv0, mask0 = prefill(model, random_prompts(128, [3 + i % 7 for i in range(B)], seed=2))

    def run(max_rows):
        logits, kv, mask, handed = logits0, kv0, mask0, None
        tokens, estimates, hits, restored = [], [], 0, 0
        depths.clear()
        for _ in range(8):
            out = epic_kernels.sample_step(logits, kv, model, alpha=0.5, horizon=3, rollouts=2, seed=list(range(B)),
                                           attention_mask=mask, top_k=None, rollout_top_k=None, engine="fast",
                                           prefetched=handed, max_rows=max_rows)
            tokens.append(out.tokens)
            estimates.append(out.entropy)
            hits += out.stats.prefetch_hits
            restored += out.stats.restored
            logits, kv, mask, handed = out.next_logits, out.kv, out.attention_mask, out.prefetched
        return torch.stack(tokens), torch.stack(estimates), torch.stack(depths), hits, restored

    free_tokens, free_est, free_depth, _, _ = run(None)
    tokens, est, depth, hits, restored = run(24)
    assert hits > 0 and restored > 0             # prefetch was used, and winners had lost their slots
    assert bets_on_unwritten == []
    assert torch.equal(tokens, free_tokens)
    same = depth == free_depth
    assert same.float().mean() > 0.8
    torch.testing.assert_close(est[same], free_est[same], rtol=0, atol=1e-12)
