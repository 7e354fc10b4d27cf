"""The engine step and whole decodes on the embedded SmolLM2, against their baselines, one session.

* ``engine_step``: one EPIC step at a fixed prefix (a GSM8K prompt's prefill), the fast engine
  (``sample_step(engine="fast", advance=False)``: no prefetch, so every round does the same work)
  against the reference sampler (``engine="reference"``) and a plain forward of one decode token
  (the cost of a plain sampling step). Settings: defaults (top-50) and full vocabulary.
* ``generate``: a short whole decode, EPIC defaults against HF ``generate(do_sample=True,
  top_p=0.9, top_k=None)`` on the same prompt; each round's steady-state decode tokens/s (first to
  last token) is kept in ``extra_info`` beside pytest-benchmark's wall time. The trusted figures
  (128 tokens, 8 prompts, batch 1 and 8, interleaved pairs, cost-model floor) come from
  ``benchmarks/bench_generate.py``, which does not fit the 15 minutes of ``make bench``.
"""
from __future__ import annotations

import pytest
import torch

from conftest import tag

SETTINGS = {"top-50": dict(top_k=50, rollout_top_k=50), "full vocab": dict(top_k=None, rollout_top_k=None)}


@pytest.fixture(scope="module")
def prefix(embedded):
    from experiments import common as C

    model, tok = embedded
    ids = C.chat_prompts(tok, C.DEFAULT_DATA, 1)[0]
    out = model(input_ids=ids, use_cache=True)
    return ids, out.logits[:, -1, :], out.past_key_values


@pytest.mark.parametrize("impl", ["fast", "reference", "plain_forward"])
@pytest.mark.parametrize("setting", [pytest.param("top-50", marks=pytest.mark.quick), "full vocab"])
def bench_engine_step(benchmark, embedded, prefix, setting, impl, model_threads, quick, device):
    import epic_kernels

    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, _ = embedded
    ids, logits, kv = prefix
    kw = dict(alpha=0.2, horizon=4, rollouts=2, seed=0, **SETTINGS[setting])
    if impl == "plain_forward":
        L = kv.get_seq_length()
        tok = torch.tensor([[int(logits.argmax())]])

        def fn():
            model(input_ids=tok, past_key_values=kv, use_cache=True)
            kv.crop(-1)
            assert kv.get_seq_length() == L
    else:
        fn = lambda: epic_kernels.sample_step(logits, kv, model, engine=impl, advance=False, **kw)  # noqa: E731
    tag(benchmark, "engine_step", setting, impl, threads=model_threads)
    rounds = 2 if quick else (3 if impl == "reference" or setting == "full vocab" else 6)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["epic", "hf_top_p"])
@pytest.mark.parametrize("kind", [pytest.param("writing", marks=pytest.mark.quick), "gsm8k"])
def bench_generate(benchmark, embedded, kind, impl, model_threads, quick, device):
    import bench_generate as G

    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, tok = embedded
    prompts = dict(G.prompt_set(tok, G.C.DEFAULT_DATA, 2))
    ids, mask = G.C.left_pad([prompts[kind]])
    n = 6 if quick else 32
    log = getattr(model, "_bench_call_log", None) or G.CallLog(model)
    model._bench_call_log = log
    runs = []

    def fn():
        if impl == "epic":
            runs.append(G.epic_run(model, log, ids, mask, n, {}, len(runs)))
        else:
            runs.append(G.hf_run(model, ids, mask, n, len(runs)))
    tag(benchmark, "generate", f"{kind}, batch 1, {n} tokens", impl, threads=model_threads, new_tokens=n)
    benchmark.pedantic(fn, rounds=2 if quick else 3, iterations=1, warmup_rounds=0)
    rates = sorted((n - 1) / r["decode_s"] for r in runs)
    benchmark.extra_info.update(decode_tok_s=rates[len(rates) // 2], decode_tok_s_rounds=rates,
                                prefill_s=sorted(r["prefill_s"] for r in runs)[len(runs) // 2])
