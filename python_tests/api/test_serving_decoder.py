"""epic_kernels.serving without vLLM: the decoder over a fake transport that answers requests with a
tiny float64 Llama and a seeded Gumbel-max sampler with vLLM's two properties (the noise of sample i
at generated position j depends only on (seed + i, j)). The real engine is tested in python_tests/vllm."""
import subprocess
import sys

import pytest
import torch

from epic_kernels.serving import EngineInfo, Request, Response, Sample, SeedPropertyError, ServingError
from epic_kernels.serving.api import check_seed_properties
from epic_kernels.serving.decoder import EpicServingDecoder
from epic_kernels.serving.transport import sort_logprobs
from epic_kernels.testing import random_prompts, tiny_llama

V = 32


class FakeTransport:
    def __init__(self, model, max_logprobs=20, prefix_caching=True, broken_replay=False):
        self.model, self.broken = model, broken_replay
        self.info = EngineInfo(max_logprobs=max_logprobs, prefix_caching=prefix_caching, vocab_size=V,
                               eos_token_ids=[1], tokenizer=None, raw_logprobs=True)
        self.rounds = 0

    @torch.no_grad()
    def _sample(self, prompt, r: Request, i: int):
        seq, tokens, ids, vals = list(prompt), [], [], []
        for j in range(r.max_tokens):
            logq = torch.log_softmax(self.model(input_ids=torch.tensor([seq])).logits[0, -1], -1)
            a, b = sort_logprobs(list(enumerate(logq.tolist())), r.logprobs)
            ids.append(a)
            vals.append(b)
            if r.top_k is None:
                t = int(torch.argmax(logq))
            else:
                g = torch.Generator().manual_seed((r.seed + i) * 1000 + j + 7 * self.broken * len(prompt))
                noise = -torch.log(-torch.log(torch.rand(V, generator=g, dtype=torch.float64)))
                keep = torch.topk(logq, r.top_k).indices
                t = int(keep[torch.argmax(logq[keep] + noise[keep])])
            tokens.append(t)
            seq.append(t)
        return Sample(tokens, ids, vals)

    def generate(self, requests):
        self.rounds += 1
        return [Response([self._sample(r.prompt, r, i) for i in range(r.n)], 0) for r in requests]

    def close(self):
        pass


@pytest.fixture(scope="module")
def fake():
    return FakeTransport(tiny_llama(V, seed=2))


KW = dict(alpha=0.8, horizon=3, rollouts=2, top_k=12, rollout_top_k=8)


@pytest.mark.parametrize("refine", ["eager", "full", "adaptive"])
def test_lazy_equals_exhaustive_on_a_fake_engine(fake, refine):
    prompts = random_prompts(V, [5, 8, 3], seed=4)
    lazy = EpicServingDecoder(fake, refine=refine, **KW).generate(prompts, max_new_tokens=6, seed=[1, 2, 3],
                                                                  eos_token_id=None)
    full = EpicServingDecoder(fake, **KW).generate(prompts, max_new_tokens=6, seed=[1, 2, 3], eos_token_id=None,
                                                   exhaustive=True)
    assert lazy.new_tokens == full.new_tokens
    assert sum(r.generated for s in lazy.steps for r in s) < sum(r.generated for s in full.steps for r in s)


def test_policies_trade_rounds_for_engine_tokens(fake):
    prompts = random_prompts(V, [6, 6], seed=5)
    out = {p: EpicServingDecoder(fake, refine=p, **KW).generate(prompts, max_new_tokens=6, seed=[4, 5],
                                                                eos_token_id=None) for p in ("eager", "adaptive")}
    assert out["eager"].new_tokens == out["adaptive"].new_tokens
    assert out["eager"].summary()["rounds_per_token"] <= out["adaptive"].summary()["rounds_per_token"]


def test_alone_equals_in_a_batch_and_eos(fake):
    prompts = random_prompts(V, [4, 9, 6], seed=6)
    dec = EpicServingDecoder(fake, **KW)
    batch = dec.generate(prompts, max_new_tokens=8, seed=[7, 8, 9])
    alone = dec.generate(prompts[1:2], max_new_tokens=8, seed=8)
    assert alone.new_tokens[0] == batch.new_tokens[1]
    for toks, why in zip(batch.new_tokens, batch.finish_reasons):
        assert (why == "eos") == (toks[-1] == 1) and (why == "length") == (len(toks) == 8 and toks[-1] != 1)


def test_seed_properties_and_a_broken_engine(fake):
    prompts = random_prompts(V, [5, 5], seed=7)
    rep = check_seed_properties(fake, [prompts[0], prompts[0]], rollout_top_k=8, seeds=range(6))
    assert rep.replay_broken == 0 and rep.shared_same_seed == 1.0 > rep.shared_other_seed
    broken = FakeTransport(fake.model, broken_replay=True)     # noise that depends on the prompt's length
    with pytest.raises(SeedPropertyError, match="does not replay|depend on more than the seed"):
        check_seed_properties(broken, [prompts[0], prompts[1] + [3]], rollout_top_k=8, seeds=range(6))


def test_engine_checks_are_clear_errors(fake):
    with pytest.raises(ServingError, match="full-vocabulary"):
        EpicServingDecoder(fake, top_k=None)
    with pytest.raises(ServingError, match="max_logprobs=20"):
        EpicServingDecoder(fake, top_k=24, rollout_top_k=8)
    with pytest.raises(ServingError, match="prefix caching is off"):
        EpicServingDecoder(FakeTransport(fake.model, prefix_caching=False), **KW)
    with pytest.raises(ValueError, match="refine"):
        EpicServingDecoder(fake, refine="greedy", **KW)


def test_importing_the_package_imports_neither_vllm_nor_openai():
    code = ("import sys, epic_kernels, epic_kernels.serving; "
            "print('vllm' in sys.modules, 'openai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
