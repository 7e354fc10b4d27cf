"""epic_kernels.generate: batch invariance, equality with a loop of reference steps, the Hugging Face
integration, bounded memory over long runs, and input checks."""
import gc

import pytest
import torch
from transformers import LogitsProcessorList

import epic_kernels
from epic_kernels.hf import EpicLogitsProcessor, custom_generate
from epic_kernels.core import EpicConfig
from epic_kernels.reference import lazy_sample
from epic_kernels.core import Prefix
from epic_kernels.testing import left_padded, prefill, random_prompts

KW = dict(alpha=0.8, horizon=3, rollouts=2)


def test_batch_invariance(tiny):
    prompts = random_prompts(32, [3, 9, 5, 1], seed=8)
    ids, mask = left_padded(prompts)
    seeds = [11, 22, 33, 44]
    batch = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=12, seed=seeds,
                                  eos_token_id=1, **KW)
    for i, p in enumerate(prompts):
        alone = epic_kernels.generate(tiny, torch.tensor([p]), max_new_tokens=12, seed=[seeds[i]],
                                      eos_token_id=1, **KW)
        assert alone.new_tokens[0] == batch.new_tokens[i]


def test_equals_a_loop_of_reference_steps(tiny):
    prompts = random_prompts(32, [4, 6], seed=2)
    ids, mask = left_padded(prompts)
    out = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=8, seed=[7, 8], top_k=12, **KW)
    cfg = EpicConfig(**KW)
    seqs = [list(p) for p in prompts]
    for _ in range(8):                   # re-prefill every step: the plainest possible loop
        logits, kv, m = prefill(tiny, seqs)
        prefix = Prefix.from_cache(kv, [7, 8], 2, m, tiny)
        tokens = lazy_sample(epic_kernels.truncate(logits.detach(), top_k=12), prefix, tiny, cfg).tokens
        for s, t in zip(seqs, tokens.tolist()):
            s.append(t)
    assert [s[len(p):] for s, p in zip(seqs, prompts)] == out.new_tokens


def test_hugging_face_integrations_match(tiny):
    ids, mask = left_padded(random_prompts(32, [2, 5], seed=4))
    ours = epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=8, seed=[5, 9], top_k=10, **KW)
    hf = tiny.generate(ids, attention_mask=mask, custom_generate=custom_generate, epic_alpha=KW["alpha"],
                       epic_horizon=KW["horizon"], epic_rollouts=KW["rollouts"], epic_seed=[5, 9],
                       do_sample=True, top_k=10, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(hf, ours.sequences)
    proc = EpicLogitsProcessor(tiny, attention_mask=mask, seed=[5, 9], top_k=10, **KW)
    hf2 = tiny.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]),
                        do_sample=True, top_k=10, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(hf2, ours.sequences)


def _rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def test_long_generation_has_no_memory_growth(tiny):
    """1,000 steps: resident memory after step 1,000 exceeds that after step 200 by less than the KV
    the generation keeps plus 20 MiB of slack (allocator noise); per-step state is freed."""
    import ctypes

    marks = {}

    def on_step(step, rows, tokens):
        if step in (200, 999):
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            marks[step] = _rss()

    out = epic_kernels.generate(tiny, torch.tensor([[3, 4, 5]]), max_new_tokens=1000, seed=1,
                                alpha=0.5, horizon=2, rollouts=2, on_step=on_step)
    assert len(out.new_tokens[0]) == 1000
    layers, heads, head_dim = 2, 2, 8
    kv_bytes = 2 * layers * heads * head_dim * 8 * 2048      # capacity doubling: at most 2,048 slots
    assert marks[999] - marks[200] < kv_bytes + 20 * 2**20, (marks, kv_bytes)


def test_eos_as_tensor_or_numpy_int(tiny):
    """eos_token_id as a 0-d tensor, a numpy integer or a list gives the same decode."""
    import numpy as np

    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    outs = [epic_kernels.generate(tiny, ids, max_new_tokens=10, eos_token_id=e, **KW).new_tokens
            for e in (5, torch.tensor(5), np.int64(5), [5], torch.tensor([5]))]
    assert all(o == outs[0] for o in outs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_ids=torch.zeros(2, 0, dtype=torch.int64)), "at least one sequence of at least one token"),
    (dict(input_ids=torch.zeros(0, 3, dtype=torch.int64)), "at least one sequence"),
    (dict(input_ids=torch.ones(2, 3)), "integer"),
    (dict(input_ids=torch.tensor([[3, 4, 32], [6, 7, 8]])), r"\[0, 32\) \(the model's vocabulary\)"),
    (dict(input_ids=torch.tensor([[3, -1, 5], [6, 7, 8]])), "must lie in"),
    (dict(pad_token_id=None), "pad_token_id must be a token id, got None"),
    (dict(eos_token_id="</s>"), "eos_token_id must be a token id or a list"),
    (dict(eos_token_id=[2, 2.5]), "integer token ids"),
    (dict(eos_token_id=99), "not a token id of this model"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(attention_mask=torch.ones(2, 4, dtype=torch.int64)), "shape of input_ids"),
    (dict(attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]])), "empty"),
    (dict(attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]])), "left-padded"),
    (dict(seed=[1]), "1 seeds for a batch of 2"),
    (dict(horizon=0), "horizon"),
    (dict(engine="turbo"), "engine"),
])
def test_bad_input(tiny, kwargs, message):
    args = dict(input_ids=torch.tensor([[3, 4, 5], [6, 7, 8]]), max_new_tokens=2, alpha=0.2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        epic_kernels.generate(tiny, **args)
