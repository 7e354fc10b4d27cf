"""The fast engine with the Triton fork attention (``EPIC_KERNELS_BACKEND_FORK_ATTENTION=triton``;
interpreted on CPU tensors here, compiled on CUDA under ``make gpu-check``): tokens equal the
reference engine's and the next logits a fresh forward's, as ``test_families.py`` checks for the
C++ kernel.

Every family that test_families.py runs on the fast engine: Llama, Qwen2, Qwen3, Mistral (window 64),
Phi3, Mixtral (float64) and Gemma2 with and without soft-capping (float32: its soft-capping runs in
the Triton kernels), each with a left-padded batch of 2 over a DynamicCache and three chained steps
with prefetch (the cache types and batch 1 of test_families.py run on the C++ kernel only, to keep the
interpreter's time small); and one short ``generate`` with EOS. Every fast run is
checked to have gone through the Triton kernel (and Gemma2's soft-capped layers too).
"""
import warnings

import pytest
import torch
from transformers import DynamicCache

import epic_kernels
from epic_kernels.testing import random_prompts, tiny_model

import importlib.util
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops"))
import _cases_triton as TR  # noqa: E402  (TRITON_INTERPRET=1 without CUDA; the kernels decorated for it)

assert importlib.util.find_spec("triton") is not None

# every family test_families.py runs on the fast engine (the others are refused and run the reference)
CASES = [("llama", "llama", {}), ("qwen2", "qwen2", {}), ("qwen3", "qwen3", {}),
         ("mistral-window-64", "mistral", dict(sliding_window=64)),
         ("gemma2-softcap", "gemma2", dict(sliding_window=64)),
         ("gemma2-no-softcap", "gemma2", dict(sliding_window=64, attn_logit_softcapping=None)),
         ("phi3", "phi3", {}), ("mixtral-moe", "mixtral", {})]
KW = dict(alpha=0.6, horizon=2, rollouts=2, top_k=8, rollout_top_k=8)
STEPS = 3


@pytest.fixture
def triton_fork(monkeypatch):
    """Force Triton for fork attention only; count the calls that reach its kernels."""
    tk = TR._ops()
    from epic_kernels.triton_kernels import fork_attention as tfa
    calls = {"n": 0, "softcap": 0}
    real = tfa.fork_attention_triton

    def spy(*args, **kwargs):
        calls["n"] += 1
        calls["softcap"] += (args[13] if len(args) > 13 else kwargs.get("softcap")) is not None
        return real(*args, **kwargs)

    monkeypatch.setattr(tfa, "fork_attention_triton", spy)
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setenv("EPIC_KERNELS_BACKEND_FORK_ATTENTION", "triton")
    assert tk is not None
    return calls


def _device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@pytest.mark.parametrize("name, family, overrides", CASES, ids=[c[0] for c in CASES])
def test_fast_engine_with_triton_fork_equals_reference(triton_fork, name, family, overrides):
    dtype = torch.float32 if family == "gemma2" else torch.float64
    dev = _device()
    model = tiny_model(family, 32, seed=3, dtype=dtype, **overrides).to(dev)
    prompts = random_prompts(32, [7, 4], seed=5)
    ids = torch.tensor([[0] * (7 - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (7 - len(p)) + [1] * len(p) for p in prompts], device=dev)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=DynamicCache(), use_cache=True)

    def chain(engine):
        logits, kv, m, step, tokens = out.logits[:, -1, :], out.past_key_values, mask, None, []
        for _ in range(STEPS):
            step = epic_kernels.sample_step(logits, kv, model, attention_mask=m, engine=engine, seed=[11, 12],
                                            prefetched=None if step is None else step.prefetched, **KW)
            tokens.append(step.tokens.tolist())
            logits, kv, m = step.next_logits, step.kv, step.attention_mask
        return tokens, step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast, last = chain("fast")
    assert triton_fork["n"] > 0, "the fast engine never reached the Triton fork attention"
    if name == "gemma2-softcap":
        assert triton_fork["softcap"] > 0, "Gemma2's soft-capped layers did not run on Triton"
    calls = triton_fork["n"]
    ref, _ = chain("reference")
    assert triton_fork["n"] == calls                      # the reference engine has no fork attention
    assert fast == ref, name
    full = torch.cat([ids, torch.tensor(fast, device=dev).T], dim=1)
    full_mask = torch.cat([mask, torch.ones(2, STEPS, dtype=mask.dtype, device=dev)], dim=1)
    with torch.no_grad():
        fresh = model(input_ids=full, attention_mask=full_mask,
                      position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1, :]
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(last.next_logits, fresh, rtol=tol, atol=tol)


def test_generate_with_triton_fork_equals_reference(triton_fork):
    """A whole decode (EOS, per-sequence seeds) on a tiny Llama."""
    dev = _device()
    model = tiny_model("llama", 32, seed=1).to(dev)
    prompts = random_prompts(32, [5, 3], seed=2)
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=dev)
    kw = dict(attention_mask=mask, max_new_tokens=5, alpha=0.8, horizon=2, rollouts=2, seed=[4, 5],
              eos_token_id=1)
    fast = epic_kernels.generate(model, ids, engine="fast", **kw)
    assert triton_fork["n"] > 0
    ref = epic_kernels.generate(model, ids, engine="reference", **kw)
    assert fast.new_tokens == ref.new_tokens
