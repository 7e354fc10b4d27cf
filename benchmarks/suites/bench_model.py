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
* ``decode_steps``: a few decode steps from the same prefill, each implementation following its own
  tokens: the fast engine (``sample_step(engine="fast", advance=True)``, each step handed the
  previous step's ``prefetched``) against the naive exact sampler (``naive.py``, ``advance=True``).
  The tokens must agree at every step (exactness is checked while timing). The work per step comes
  from the library's public ``StepStats`` (calls, rows, prefetch rows, adopted rows, the
  algorithmic minimum, survivors, evaluations) beside the Lemma 4.1 prediction from each step's
  logits; an extra, untimed run of the fast steps under ``torch.profiler`` records the top aten
  ops (self CPU time per step) in ``extra_info["profile"]``.
* ``block_size``: ``generate`` for a few tokens at each manager block size; the tokens must not
  depend on it (asserted); calls and rows per token from ``GenerationOutput.summary()``.
* ``model_call``: one plain decode forward of N rows (an HF cache of the prompt repeated N times,
  SDPA) for N = 1 ... 128: how much of a model call is a fixed cost on this machine.
"""
from __future__ import annotations

import math

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
    rounds = 1 if quick else (3 if impl == "reference" or setting == "full vocab" else 6)
    out = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0 if quick else 1)
    if impl != "plain_forward":
        st = out.stats
        benchmark.extra_info.update(calls=st.forward_calls + st.finish_calls,
                                    rows=st.forward_tokens + st.finish_tokens, survivors=int(st.survivors.sum()))


@pytest.mark.parametrize("impl", ["epic", "hf_top_p"])
@pytest.mark.parametrize("kind", [pytest.param("writing", marks=pytest.mark.quick), "gsm8k"])
def bench_generate(benchmark, embedded, kind, impl, model_threads, quick, device):
    import bench_generate as G

    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, tok = embedded
    prompts = dict(G.prompt_set(tok, G.C.DEFAULT_DATA, 2))
    ids, mask = G.C.left_pad([prompts[kind]])
    n = 4 if quick else 32
    log = getattr(model, "_bench_call_log", None) or G.CallLog(model)
    model._bench_call_log = log
    runs = []

    def fn():
        if impl == "epic":
            runs.append(G.epic_run(model, log, ids, mask, n, {}, len(runs)))
        else:
            runs.append(G.hf_run(model, ids, mask, n, len(runs)))
    tag(benchmark, "generate", f"{kind}, batch 1, {n} tokens", impl, threads=model_threads, new_tokens=n)
    benchmark.pedantic(fn, rounds=1 if quick else 3, iterations=1, warmup_rounds=0)
    rates = sorted((n - 1) / r["decode_s"] for r in runs)
    benchmark.extra_info.update(decode_tok_s=rates[len(rates) // 2], decode_tok_s_rounds=rates,
                                prefill_s=sorted(r["prefill_s"] for r in runs)[len(runs) // 2])


def lemma_prediction(logits: torch.Tensor, alpha: float, horizon: int, rollout_top_k) -> float:
    """Paper Lemma 4.1: expected candidates within ``w`` of the max, ``sum a e^w / (1 + a e^w)``,
    ``w = |alpha| k log|supp pi|``."""
    V = logits.shape[-1]
    w = abs(alpha) * horizon * math.log(min(V, rollout_top_k) if rollout_top_k else V)
    a = torch.softmax(logits.double(), -1)
    a = a[a > 0]
    ew = math.exp(w)
    return float((a * ew / (1 + a * ew)).sum())


STEP_FIELDS = ("calls", "forward_tokens", "prefetch_rows", "prefetch_rows_won", "adopted_rows", "min_forward_tokens",
               "survivors", "evaluated_depth1", "evaluated_deeper")
NAIVE_FIELDS = ("calls", "forward_tokens", "survivors", "evaluated_depth1", "evaluated_deeper")   # what it counts


def _step_record(st) -> dict:
    return dict(calls=st.forward_calls + st.finish_calls, forward_tokens=st.forward_tokens + st.finish_tokens,
                prefetch_rows=st.prefetch_rows, prefetch_rows_won=st.prefetch_rows_won, adopted_rows=st.adopted_rows,
                min_forward_tokens=st.min_forward_tokens, survivors=int(st.survivors.sum()),
                evaluated_depth1=int(st.evaluated_depth1.sum()), evaluated_deeper=int(st.evaluated_deeper.sum()))


def _decode(impl, model, logits, kv, steps, kw, lemma=None):
    """``steps`` steps from the prefill, following the implementation's own tokens: (tokens, records)."""
    import epic_kernels
    from naive import naive_sample

    tokens, records, prefetched = [], [], None
    for _ in range(steps):
        if lemma is not None:             # the logits of each step, for the Lemma 4.1 prediction (after timing)
            lemma.append(logits)
        if impl == "fast":
            out = epic_kernels.sample_step(logits, kv, model, engine="fast", advance=True, prefetched=prefetched, **kw)
            prefetched = out.prefetched
        else:
            out = naive_sample(logits, kv, model, advance=True, **kw)
        tokens.append(int(out.tokens[0]))
        records.append(_step_record(out.stats))
        logits, kv = out.next_logits, out.kv
    return tokens, records


_TRAJECTORY = {}          # setting -> the fast engine's tokens (every implementation must return them)


@pytest.mark.parametrize("impl", ["fast", "naive"])
@pytest.mark.parametrize("setting", [pytest.param("top-50", marks=pytest.mark.quick), "full vocab"])
def bench_decode_steps(benchmark, embedded, prefix, setting, impl, model_threads, quick, device):
    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, _ = embedded
    ids, logits, kv = prefix
    steps = 2 if quick else 8
    kw = dict(alpha=0.2, horizon=4, rollouts=2, seed=0, **SETTINGS[setting])
    runs = []
    lemma = []

    def fn():
        runs.append(_decode(impl, model, logits, kv, steps, kw, lemma if not lemma else None))
    tag(benchmark, "decode_steps", setting, impl, threads=model_threads, steps=steps)
    rounds = 1 if quick else (2 if impl == "naive" and setting == "full vocab" else 3)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    want = _TRAJECTORY.setdefault(setting, runs[0][0])
    for toks, _ in runs:                          # exactness: same tokens in every round, as the fast engine
        assert toks == want, f"{impl} tokens {toks} != fast engine's {want}"
    from epic_kernels.truncation import truncate

    recs = runs[0][1]
    fields = STEP_FIELDS if impl == "fast" else NAIVE_FIELDS
    mean = {k: sum(r[k] for r in recs) / len(recs) for k in fields}
    pred = [lemma_prediction(truncate(x, kw["top_k"]), kw["alpha"], kw["horizon"], kw["rollout_top_k"]) for x in lemma]
    benchmark.extra_info.update(per_step=mean, lemma=sum(pred) / len(pred), tokens=want,
                                s_per_step=benchmark.stats.stats.median / steps)
    if impl == "fast":
        benchmark.extra_info["profile"] = _profile(model, logits, kv, 1 if quick else 2, kw)


def _profile(model, logits, kv, steps, kw, top=12) -> dict:
    """Top aten ops by self CPU time over ``steps`` fast decode steps (torch.profiler; untimed)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _decode("fast", model, logits, kv, steps, kw)
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) / 1e3 / steps
    return dict(steps=steps, self_ms_per_step=total,
                ops=[dict(op=e.key, self_ms_per_step=e.self_cpu_time_total / 1e3 / steps, calls_per_step=e.count / steps)
                     for e in ev[:top]])


_BLOCK_TOKENS = {}


@pytest.mark.parametrize("block", [1, pytest.param(4, marks=pytest.mark.quick), 16,
                                   pytest.param(32, marks=pytest.mark.quick)])
def bench_block_size(benchmark, embedded, block, model_threads, quick, device):
    """``generate`` at each block size of the best-first manager (top-50): the same tokens, fewer calls."""
    from epic_kernels import generate
    from epic_kernels.models import chat_prompt_ids

    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, tok = embedded
    ids = chat_prompt_ids(tok, "Write a short story about a lighthouse keeper who finds a message in a bottle.")
    n = 2 if quick else 16
    outs = []
    tag(benchmark, "block_size", f"block {block}", "epic", threads=model_threads, block=block, new_tokens=n)
    benchmark.pedantic(lambda: outs.append(generate(model, ids, max_new_tokens=n, top_k=50, rollout_top_k=50,
                                                    block_size=block)), rounds=1, iterations=1, warmup_rounds=0)
    out = outs[-1]
    want = _BLOCK_TOKENS.setdefault(n, out.new_tokens)
    assert out.new_tokens == want, "the block size changed the tokens"
    sm = out.summary()
    benchmark.extra_info.update(calls_per_token=sm["forward_calls_per_token"], rows_per_token=sm["forward_tokens_per_token"],
                                survivors=sm["mean_survivors"], tokens=sm["tokens"])


@pytest.mark.parametrize("rows", [pytest.param(1, marks=pytest.mark.quick), 2, 4, pytest.param(8, marks=pytest.mark.quick),
                                  16, 32, 64, 128])
def bench_model_call(benchmark, embedded, prefix, rows, model_threads, quick, device):
    """One decode forward of ``rows`` rows over an HF cache of the prompt repeated ``rows`` times."""
    import copy

    if device.type != "cpu":
        pytest.skip("the embedded model runs on the CPU here")
    model, _ = embedded
    ids, logits, kv0 = prefix
    kv = copy.deepcopy(kv0)
    kv.batch_repeat_interleave(rows)
    L = ids.shape[1]
    tok = torch.full((rows, 1), int(logits[0].argmax()))
    pos = torch.full((rows, 1), L)

    def fn():
        model(input_ids=tok, position_ids=pos, past_key_values=kv, use_cache=True)
        kv.crop(-1)
    tag(benchmark, "model_call", f"{rows} rows", "plain_forward", threads=model_threads, rows=rows)
    benchmark.pedantic(fn, rounds=1 if quick else 5, iterations=1, warmup_rounds=0 if quick else 1)
