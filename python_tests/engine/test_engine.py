"""The fast engine returns the reference sampler's tokens, forks without copying the prefix, and
hands back the winner's forward."""
import copy
import itertools

import pytest
import torch

import epic_kernels
from epic_kernels.engine import fast_sample
from epic_kernels.engine.evaluator import Evaluator
from epic_kernels.core import EpicConfig
from epic_kernels.reference import lazy_sample
from epic_kernels.core import Prefix
from epic_kernels.validate import cache_layers
from epic_kernels.testing import prefill, random_prompts, tiny_llama

GRID = list(itertools.product([-1.0, -0.3, 0.3, 1.0], [1, 2, 3, 4], [1, 2, 4], [None, 8]))


@pytest.mark.parametrize("alpha,horizon,rollouts,rollout_top_k", GRID)
def test_fast_equals_reference(tiny, batch7, alpha, horizon, rollouts, rollout_top_k):
    """Batches of prompts of different lengths (left padding), every sign of alpha, horizons 1-4."""
    _, logits, kv, mask = batch7
    logits = logits.detach()
    for seed, block in [(7, 1), (2**32 - 9, 3), (1234, 64)]:
        cfg = EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                         block_size=block)
        prefix = Prefix.from_cache(kv, seed, 7, mask, tiny)
        fast = fast_sample(logits, prefix, tiny, cfg)
        ref = lazy_sample(logits, prefix, tiny, cfg)
        assert torch.equal(fast.tokens, ref.tokens), (seed, block, fast.tokens.tolist(), ref.tokens.tolist())
        assert torch.equal(fast.stats.survivors, ref.stats.survivors)


def test_next_logits_and_kv_equal_a_plain_forward(tiny, batch7):
    _, logits, kv, mask = batch7
    before = [(k.clone(), v.clone()) for k, v in cache_layers(kv)]
    out = epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=1.0, horizon=3, rollouts=2, seed=4,
                                   attention_mask=mask)
    for (k, v), (k2, v2) in zip(before, cache_layers(kv)):      # the caller's cache is untouched
        assert torch.equal(k, k2) and torch.equal(v, v2)
    plain = copy.deepcopy(kv)
    ref = tiny(input_ids=out.tokens.view(-1, 1), attention_mask=out.attention_mask,
               position_ids=mask.sum(-1, keepdim=True), past_key_values=plain, use_cache=True)
    assert torch.allclose(out.next_logits, ref.logits[:, -1], atol=1e-10)
    for (k, v), (k2, v2) in zip(cache_layers(out.kv), cache_layers(plain)):
        assert torch.allclose(k, k2, atol=1e-12) and torch.allclose(v, v2, atol=1e-12)
    assert out.stats.forwards_saved == int((out.stats.survivors > 1).sum())
    assert out.stats.forwards_saved > 0


def test_sample_step_engines_agree(tiny, batch7):
    _, logits, kv, mask = batch7
    for seed in range(6):
        kwargs = dict(alpha=-0.7, horizon=3, rollouts=2, seed=seed, attention_mask=mask, top_p=0.9)
        fast = epic_kernels.sample_step(logits.detach(), kv, tiny, engine="fast", **kwargs)
        ref = epic_kernels.sample_step(logits.detach(), kv, tiny, engine="reference", **kwargs)
        assert torch.equal(fast.tokens, ref.tokens)
        assert torch.allclose(fast.next_logits, ref.next_logits, atol=1e-10)


def test_generate_engines_agree_with_padding_and_eos(tiny):
    prompts = random_prompts(32, [2, 7, 4], seed=3)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = (torch.arange(L) >= torch.tensor([L - len(p) for p in prompts]).view(-1, 1)).long()
    kwargs = dict(attention_mask=mask, max_new_tokens=10, alpha=0.8, horizon=3, rollouts=2, seed=[4, 5, 6],
                  eos_token_id=[1, 17])
    fast = epic_kernels.generate(tiny, ids, engine="fast", **kwargs)
    ref = epic_kernels.generate(tiny, ids, engine="reference", **kwargs)
    assert fast.new_tokens == ref.new_tokens
    assert fast.summary()["forwards_saved"] > 0


def _peak_added_bytes(fn):
    """Peak resident memory added while ``fn`` runs (Linux). Free heap memory is first returned to
    the OS (malloc_trim), so every byte ``fn`` touches must be faulted in and shows in the peak
    (VmHWM, reset through clear_refs)."""
    import ctypes

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return status("VmHWM") - base


def test_fork_memory_is_rollouts_times_horizon_not_prefix():
    """A 2,048-token prefix forked into 64 rollouts (32 candidates x 2) evaluated to depth 4 adds less
    than 5 % of the KV bytes that 64 full copies of the prefix would, measured as peak RSS."""
    model = tiny_llama(64, seed=2, hidden=256, heads=8, kv_heads=8, layers=2)
    logits, kv, mask = prefill(model, random_prompts(64, [2048], seed=1))
    prefix = Prefix.from_cache(kv, 1, 1, mask, model)
    copies = 64 * sum(k.numel() * k.element_size() * 2 for k, _ in cache_layers(kv))
    cfg = EpicConfig(alpha=1.0, horizon=4, rollouts=2)
    cands = torch.arange(32)

    def evaluator():
        return Evaluator(model, prefix, torch.zeros(32, dtype=torch.int64), cands, cfg,
                         "reference", torch.float64)
    evaluator().run(cands, torch.full((32,), 4))          # warm up the allocator and code paths
    ev = evaluator()
    added = _peak_added_bytes(lambda: ev.run(cands, torch.full((32,), 4)))
    assert ev.rt.rows == 32 * (1 + 2 * 3)
    print(f"fork added {added / 2**20:.1f} MiB; 64 copies would be {copies / 2**20:.0f} MiB")
    assert added < 0.05 * copies, (added, copies)

    def naive():                                          # the measurement can see a real copy
        forked = copy.deepcopy(kv)
        forked.batch_repeat_interleave(64)
        return forked
    assert _peak_added_bytes(naive) > 0.9 * copies
