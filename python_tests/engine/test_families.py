"""Exact on every model family, or a clear refusal.

Tiny random models of each family (float64) x (DynamicCache, StaticCache, the family's default
cache) x (batch 1, left-padded batch 2): ``engine="auto"`` equals the reference engine token for
token over a few chained steps and its next logits equal a fresh forward of the whole text, or the
call is refused with a ValueError naming the cache layer that cannot be read."""
import warnings

import pytest
import torch
from transformers import DynamicCache, StaticCache

import epic_kernels
from epic_kernels.api import use_fast_engine
from epic_kernels.engine.attention import fork_refusal
from epic_kernels.testing import random_prompts, tiny_model

# (name, family, config overrides, does the fast engine run it at these lengths?)
CASES = [
    ("llama", "llama", {}, True),
    ("qwen2", "qwen2", {}, True),
    ("qwen3", "qwen3", {}, True),
    ("mistral-window-4", "mistral", dict(sliding_window=4), False),      # shorter than the prompt
    ("mistral-window-64", "mistral", dict(sliding_window=64), True),     # longer than prompt + decode
    ("gemma2-softcap", "gemma2", dict(sliding_window=64), True),
    ("gemma2-no-softcap", "gemma2", dict(sliding_window=64, attn_logit_softcapping=None), True),
    ("gemma2-window-4", "gemma2", dict(sliding_window=4), False),
    ("phi3", "phi3", {}, True),
    ("mixtral-moe", "mixtral", {}, True),
    ("gpt2", "gpt2", {}, False),                 # no model.layers[i].self_attn: reference engine
    ("gpt-neox", "gpt_neox", {}, False),
]
PROMPT = 7
STEPS = 3
KW = dict(alpha=0.6, horizon=2, rollouts=2, top_k=8, rollout_top_k=8)


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, family, overrides, fast = request.param
    # Gemma2's eager attention takes its softmax in float32: a float64 model's -1.8e308 mask becomes
    # -inf there, so a left-padded batch gives NaN (transformers' own forward); run it in float32
    dtype = torch.float32 if family == "gemma2" else torch.float64
    return name, tiny_model(family, 32, seed=3, dtype=dtype, **overrides), fast


def _prefill(model, lengths, kind):
    prompts = random_prompts(32, lengths, seed=5)
    L = max(lengths)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    cache = {"dynamic": DynamicCache(), "static": StaticCache(config=model.config, max_cache_len=64),
             "default": None}[kind]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True)
    return ids, mask, out.logits[:, -1, :], out.past_key_values


def _has_sliding_layers(model):
    return getattr(model.config, "sliding_window", None) is not None


def _chain(model, logits, kv, mask, engine, seeds):
    tokens, step = [], None
    for _ in range(STEPS):
        step = epic_kernels.sample_step(logits, kv, model, attention_mask=mask, engine=engine, seed=seeds,
                                        prefetched=None if step is None else step.prefetched, **KW)
        tokens.append(step.tokens.tolist())
        logits, kv, mask = step.next_logits, step.kv, step.attention_mask
    return tokens, step


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", ["dynamic", "static", "default"])
def test_auto_equals_reference_or_refuses(case, kind, batch):
    name, model, fast = case
    lengths = [PROMPT] if batch == 1 else [PROMPT, PROMPT - 3]
    ids, mask, logits, kv = _prefill(model, lengths, kind)
    window = getattr(model.config, "sliding_window", None)
    refuse = _has_sliding_layers(model) and (kind == "static" or (kind == "default" and window < PROMPT))
    seeds = [11, 12][:batch]
    if refuse:
        with pytest.raises(ValueError, match=r"(SlidingWindowLayer).*(prefill with a cache that keeps every token)"):
            epic_kernels.sample_step(logits, kv, model, attention_mask=mask, seed=seeds, **KW)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # "using the reference engine" where it must
        assert use_fast_engine("auto", model, PROMPT + STEPS + KW["horizon"] + 2) == fast, fork_refusal(model, 99)
        auto, last = _chain(model, logits, kv, mask, "auto", seeds)
    ref, _ = _chain(model, logits, kv, mask, "reference", seeds)
    assert auto == ref, name
    # the next logits equal a fresh forward of prompt + sampled tokens, without any cache
    full = torch.cat([ids, torch.tensor(auto).T], dim=1)
    full_mask = torch.cat([mask, torch.ones(batch, STEPS, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        fresh = model(input_ids=full, attention_mask=full_mask,
                      position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1, :]
    tol = 1e-5 if model.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(last.next_logits, fresh, rtol=tol, atol=tol)


def test_generate_decodes_sliding_window_models_past_their_window():
    """Mistral and Gemma2 with windows of 4 tokens: prompts and decodes longer than the window."""
    for family in ("mistral", "gemma2"):
        model = tiny_model(family, 32, seed=4, sliding_window=4)
        ids = torch.tensor(random_prompts(32, [9, 9], seed=2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            auto = epic_kernels.generate(model, ids, max_new_tokens=6, seed=[1, 2], **KW)
        ref = epic_kernels.generate(model, ids, max_new_tokens=6, seed=[1, 2], engine="reference", **KW)
        assert auto.new_tokens == ref.new_tokens


def test_fast_is_refused_by_name_and_auto_warns_once():
    model = tiny_model("mistral", 32, seed=1, sliding_window=4)
    _, mask, logits, kv = _prefill(model, [PROMPT], "dynamic")
    with pytest.raises(ValueError, match="sliding window of 4 tokens binds"):
        epic_kernels.sample_step(logits, kv, model, attention_mask=mask, engine="fast", **KW)
    with pytest.warns(RuntimeWarning, match="using the reference engine"):
        epic_kernels.api._warned.clear()
        epic_kernels.sample_step(logits, kv, model, attention_mask=mask, **KW)
    assert "self_attn layout" in fork_refusal(tiny_model("gpt2", 32))
    assert fork_refusal(tiny_model("gemma2", 32, sliding_window=64), 20) is None


def test_fork_attention_refuses_a_layer_that_bypasses_it():
    """A model whose attention does not go through the attention interface would silently ignore
    the fork: every call checks that each layer attended through it."""
    from epic_kernels.engine.attention import ForkBatch

    model = tiny_model("llama", 32, seed=1)
    _, mask, logits, kv = _prefill(model, [PROMPT], "dynamic")
    real = model.config._attn_implementation
    original = ForkBatch.build.__func__

    def skipping(cls, *args, **kwargs):
        fb = original(cls, *args, **kwargs)
        fb.calls = -100                       # as if the layers had not called fork attention
        return fb

    ForkBatch.build = classmethod(skipping)
    try:
        with pytest.raises(RuntimeError, match="went through fork attention"):
            epic_kernels.sample_step(logits, kv, model, attention_mask=mask, engine="fast", **KW)
    finally:
        ForkBatch.build = classmethod(original)
    assert model.config._attn_implementation == real


@pytest.mark.parametrize("dtype,agree_at_least,logit_tol", [(torch.bfloat16, 12, 0.1), (torch.float16, 14, 0.02)])
def test_half_precision_agreement(dtype, agree_at_least, logit_tol):
    """Half-precision models: fork attention accumulates in float32 (as the model's own attention),
    but the model's other matmuls round differently for a different batch of rows, so fast and
    reference engines can part on a near-tie. Measured (docs/engine.md): bfloat16 13 of 15
    sequences agree, float16 15 of 15; the next logits lie within 0.0625 (bfloat16) and 0.009
    (float16) of a fresh forward's."""
    model = tiny_model("llama", 32, seed=0, dtype=dtype)
    agree = 0
    for s in range(15):
        ids = torch.tensor(random_prompts(32, [6], seed=100 + s))
        kw = dict(alpha=0.6, horizon=3, rollouts=2, seed=[s], max_new_tokens=8, top_k=None, rollout_top_k=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)       # the C++ fork attention takes float32/64
            fast = epic_kernels.generate(model, ids, engine="fast", **kw)
        agree += fast.new_tokens == epic_kernels.generate(model, ids, engine="reference", **kw).new_tokens
    assert agree >= agree_at_least
    ids = torch.tensor(random_prompts(32, [6, 6, 6], seed=7))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        step = epic_kernels.sample_step(out.logits[:, -1], out.past_key_values, model, alpha=0.6, horizon=3,
                                        engine="fast", seed=[1, 2, 3])
        fresh = model(input_ids=torch.cat([ids, step.tokens.view(-1, 1)], 1)).logits[:, -1]
    assert float((step.next_logits.float() - fresh.float()).abs().max()) <= logit_tol
