"""The embedded SmolLM2-135M-Instruct (float32): the fast engine and the reference decode the same
30 tokens, and a fast step's next logits equal a plain forward's."""
import pytest
import torch

import epic_kernels
from epic_kernels.models import chat_prompt_ids, load_model


@pytest.fixture(scope="module")
def smol():
    return load_model()


def test_fast_equals_reference_for_30_steps(smol):
    model, tok = smol
    ids = chat_prompt_ids(tok, "Name three colours of the rainbow.")
    kwargs = dict(max_new_tokens=30, alpha=0.2, horizon=4, rollouts=2, top_k=50, rollout_top_k=50, seed=3)
    fast = epic_kernels.generate(model, ids, engine="fast", **kwargs)
    ref = epic_kernels.generate(model, ids, engine="reference", **kwargs)
    assert len(fast.new_tokens[0]) == 30
    assert fast.new_tokens == ref.new_tokens, (tok.decode(fast.new_tokens[0]), tok.decode(ref.new_tokens[0]))
    s = fast.summary()
    assert s["mean_survivors"] > 1 and s["forwards_saved"] > 0     # the search and the reuse really ran
    assert s["forward_calls_per_token"] <= 4                         # at most `horizon` calls per token


def test_cross_step_reuse_changes_no_token_over_32_steps(smol):
    """Rollout reuse on vs off (prefetch off, so the reused evaluations are not made on a bet
    instead) vs the reference, two prompts of different kinds in one batch."""
    model, tok = smol
    from epic_kernels.testing import left_padded

    prompts = [chat_prompt_ids(tok, p)[0].tolist() for p in
               ("Write a short story about a lighthouse keeper.", "What is 12 times 7? Answer with a number.")]
    ids, mask = left_padded(prompts)
    kwargs = dict(attention_mask=mask, max_new_tokens=32, alpha=0.3, top_k=50, rollout_top_k=50, seed=[5, 6])
    on = epic_kernels.generate(model, ids, engine="fast", prefetch=False, **kwargs)
    off = epic_kernels.generate(model, ids, engine="fast", prefetch=False, reuse=False, **kwargs)
    ref = epic_kernels.generate(model, ids, engine="reference", **kwargs)
    assert on.new_tokens == off.new_tokens == ref.new_tokens
    assert on.summary()["reused"] > 0 and off.summary()["reused"] == 0


def test_next_logits_equal_a_plain_forward(smol):
    model, tok = smol
    ids = chat_prompt_ids(tok, "Say hello.")
    out = model(input_ids=ids, use_cache=True)
    step = epic_kernels.sample_step(out.logits[:, -1].detach(), out.past_key_values, model, alpha=0.5, seed=1,
                                    top_k=50, rollout_top_k=50)
    plain = model(input_ids=step.tokens.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    assert torch.allclose(step.next_logits, plain.logits[:, -1], atol=2e-3, rtol=1e-4)
