"""sample_step on the reference path: deterministic, batch-invariant, leaves the caller's cache alone."""
import torch

import epic_kernels
from epic_kernels.core import EpicConfig
from epic_kernels.reference import lazy_sample
from epic_kernels.core import Prefix
from epic_kernels.testing import prefill, random_prompts


def test_same_seed_same_tokens_and_cache_untouched(tiny, batch7):
    _, logits, kv, mask = batch7
    before = [(layer.keys.clone(), layer.values.clone()) for layer in kv.layers]
    runs = [epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=1.0, horizon=3, rollouts=2,
                                     seed=42, attention_mask=mask) for _ in range(2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.allclose(runs[0].entropy, runs[1].entropy, equal_nan=True)
    for (k, v), layer in zip(before, kv.layers):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values)
    draws = {tuple(epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=1.0, horizon=3, rollouts=2,
                                            seed=s, attention_mask=mask).tokens.tolist()) for s in range(5)}
    assert len(draws) > 1                       # the seed really is the key


def test_matches_reference_lazy_sampler(tiny, batch7):
    _, logits, kv, mask = batch7
    out = epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=-0.5, horizon=2, rollouts=4,
                                   seed=[3, 1, 4, 1, 5, 9, 2], attention_mask=mask, block_size=3)
    prefix = Prefix.from_cache(kv, [3, 1, 4, 1, 5, 9, 2], 7, mask, tiny)
    ref = lazy_sample(logits.detach(), prefix, tiny, EpicConfig(alpha=-0.5, horizon=2, rollouts=4, block_size=3))
    assert torch.equal(out.tokens, ref.tokens)


def test_batch_invariance(tiny):
    """Each sequence gets the same token alone as inside a left-padded batch with other prompts."""
    prompts = random_prompts(32, [3, 8, 5], seed=5)
    logits, kv, mask = prefill(tiny, prompts)
    seeds = [17, 2**31 + 1, 99]
    batch = epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=1.0, horizon=3, rollouts=2,
                                     seed=seeds, attention_mask=mask)
    for i, prompt in enumerate(prompts):
        l1, kv1, m1 = prefill(tiny, [prompt])
        alone = epic_kernels.sample_step(l1.detach(), kv1, tiny, alpha=1.0, horizon=3, rollouts=2,
                                         seed=[seeds[i]], attention_mask=m1)
        assert int(alone.tokens[0]) == int(batch.tokens[i])
        assert torch.allclose(alone.entropy, batch.entropy[i:i + 1], equal_nan=True)


def test_truncation_options_restrict_candidates(tiny, batch7):
    _, logits, kv, mask = batch7
    for seed in range(10):
        out = epic_kernels.sample_step(logits.detach(), kv, tiny, alpha=1.0, horizon=2, rollouts=2,
                                       seed=seed, attention_mask=mask, top_k=3, rollout_top_k=4)
        allowed = torch.topk(logits.detach(), 3, dim=-1).indices
        assert bool((allowed == out.tokens.view(-1, 1)).any(-1).all())
