"""EPIC on vLLM (epic_kernels.serving), on the embedded SmolLM2 converted to safetensors: exactness
against the library's reference, the lazy rule against exhaustive evaluation, seeds, the server
transport against the offline one, the seeded sampler's properties, and bad input."""
import math
import shutil

import pytest
import torch

import epic_kernels
from epic_kernels import philox
from epic_kernels.reference import perturbed_scores, policy_logits, rb_estimate, softmax_entropy
from epic_kernels.serving import EpicServingDecoder, SeedPropertyError, ServingError, check_seed_properties
from epic_kernels.truncation import truncate


def _left_pad(seqs):
    n = max(len(s) for s in seqs)
    ids = torch.tensor([[0] * (n - len(s)) + list(s) for s in seqs])
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


@torch.no_grad()
def _policy_entropy_after(model, seq, last: int, rollout_top_k: int) -> torch.Tensor:
    """Reference entropies of the rollout policy after each of the ``last`` final prefixes of ``seq``."""
    logits = model(input_ids=torch.tensor([seq]), logits_to_keep=last).logits[0, -last:]
    ent, _ = softmax_entropy(policy_logits(logits, rollout_top_k))
    return ent


def _vllm_score(trace, token, alpha, seed, top_k):
    """The decoder's score of ``token`` at a traced step: z from its root logprobs and the step noise,
    its estimate if it was evaluated (None if not a candidate)."""
    ids, vals = trace["root_ids"][:top_k], torch.tensor(trace["root_values"][:top_k])
    if token not in ids:
        return None
    lse = torch.logsumexp(vals, 0)
    g = philox.noise_at(torch.tensor([seed]), philox.STEP_STREAM, torch.tensor([trace["position"]]),
                        torch.tensor([[token]]))[0, 0]
    z = float(vals[ids.index(token)] - lse + g)
    if token in trace["ids"]:
        m = trace["ids"].index(token)
        return z - alpha * trace["partial"][m] if trace["depth"][m] else z
    return z


# -------------------------------------------------------------------------------------------- #
def test_horizon1_matches_the_reference_on_200_cases(transport, prompts, hf_model):
    """Horizon 1 has no rollout sampling: the decoder must choose the reference's token (HF model,
    float32) on >= 99 % of 200 (seed, step) cases, and every disagreement must be a near-tie: the
    reference's score gap between the two tokens is below the float discrepancy of their scores
    between vLLM and HF."""
    alpha, top_k, steps = 0.5, 50, 10
    seqs = [p for p in prompts for _ in range(4)]
    seeds = list(range(100, 100 + len(seqs)))
    dec = EpicServingDecoder(transport, alpha=alpha, horizon=1, rollouts=2, top_k=top_k, rollout_top_k=50)
    out = dec.generate(seqs, max_new_tokens=steps, seed=seeds, eos_token_id=None, trace=True)
    agree, disagreements = 0, []
    for t in range(steps):
        ids, mask = _left_pad([s + out.new_tokens[b][:t] for b, s in enumerate(seqs)])
        with torch.no_grad():
            o = hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True)
        logits = o.logits[:, -1].detach()
        ref = epic_kernels.sample_step(logits, o.past_key_values, hf_model, alpha=alpha, horizon=1, rollouts=2,
                                       seed=seeds, attention_mask=mask, top_k=top_k, rollout_top_k=50,
                                       advance=False, engine="reference")
        for b in range(len(seqs)):
            mine, theirs = out.new_tokens[b][t], int(ref.tokens[b])
            if mine == theirs:
                agree += 1
                continue
            trace = out.steps[b][t].trace
            prefix = seqs[b] + out.new_tokens[b][:t]
            z_ref = perturbed_scores(truncate(logits[b:b + 1], top_k=top_k), torch.tensor([seeds[b]]),
                                     torch.tensor([len(prefix)]))[0]
            s_ref = {y: float(z_ref[y]) - alpha * float(_policy_entropy_after(hf_model, prefix + [y], 1, 50)[0])
                     for y in (mine, theirs)}
            s_mine = {y: _vllm_score(trace, y, alpha, seeds[b], top_k) for y in (mine, theirs)}
            gap = s_ref[theirs] - s_ref[mine]
            noise = sum(abs(s_ref[y] - s_mine[y]) for y in (mine, theirs) if s_mine[y] is not None)
            disagreements.append(dict(seq=b, step=t, mine=mine, reference=theirs, gap=gap, float_discrepancy=noise,
                                      both_candidates=None not in s_mine.values()))
    print(f"\nhorizon 1: {agree} of {len(seqs) * steps} cases agree; disagreements: {disagreements}")
    assert agree >= 0.99 * len(seqs) * steps, (agree, disagreements)
    for d in disagreements:                 # each one a documented near-tie
        assert d["both_candidates"] and d["gap"] <= d["float_discrepancy"] + 1e-6, d


def test_rb_estimates_equal_the_reference_on_vllms_rollouts(transport, prompts, hf_model):
    """Horizon 3: for every evaluated candidate, the decoder's RB estimate (through the depth it
    reached) equals the reference estimator's on the rollout tokens vLLM sampled, to 1e-3 nats."""
    k, K, rtk = 3, 2, 50
    dec = EpicServingDecoder(transport, alpha=0.5, horizon=k, rollouts=K, top_k=50, rollout_top_k=rtk,
                             refine="adaptive")
    out = dec.generate(prompts[:2], max_new_tokens=4, seed=[3, 4], eos_token_id=None, trace=True)
    checked, deep = 0, 0
    for b, recs in enumerate(out.steps):
        for t, rec in enumerate(recs):
            tr = rec.trace
            prefix = prompts[b] + out.new_tokens[b][:t]
            for m, d in enumerate(tr["depth"]):
                if d == 0:
                    continue
                y = tr["ids"][m]
                table = torch.zeros(1, k, K)
                if d == 1:
                    table[0, 0, :] = _policy_entropy_after(hf_model, prefix + [y], 1, rtk)[0]
                else:
                    deep += 1
                    for r in range(K):
                        path = tr["paths"][m][r][: d - 1]
                        table[0, :d, r] = _policy_entropy_after(hf_model, prefix + [y] + path, d, rtk)
                ref = float(rb_estimate(table, d)[0])
                assert abs(ref - tr["partial"][m]) < 1e-3, (b, t, m, d, ref, tr["partial"][m])
                checked += 1
    assert checked >= 10 and deep >= 3, (checked, deep)


@pytest.mark.parametrize("refine", ["eager", "adaptive"])
def test_lazy_equals_exhaustive(transport, prompts, refine):
    """Every candidate evaluated to full depth (the oracle on vLLM) and the lazy rule choose the
    same tokens for the same seeds."""
    kw = dict(alpha=1.0, horizon=2, rollouts=2, top_k=16, rollout_top_k=50)
    seqs, seeds = [prompts[0], prompts[0], prompts[2]], [11, 12, 13]
    lazy = EpicServingDecoder(transport, refine=refine, **kw).generate(seqs, max_new_tokens=5, seed=seeds,
                                                                       eos_token_id=None)
    full = EpicServingDecoder(transport, **kw).generate(seqs, max_new_tokens=5, seed=seeds, eos_token_id=None,
                                                        exhaustive=True)
    assert lazy.new_tokens == full.new_tokens
    lazy_gen = sum(r.generated for s in lazy.steps for r in s)
    full_gen = sum(r.generated for s in full.steps for r in s)
    assert lazy_gen < full_gen               # and it cost less
    assert max(r.survivors for s in lazy.steps for r in s) > 1      # the search really ran


def test_seeds_same_twice_and_alone_equals_in_a_batch(transport, prompts):
    dec = EpicServingDecoder(transport, alpha=0.2, horizon=3, rollouts=2)
    batch = dec.generate(prompts[:3], max_new_tokens=12, seed=[5, 6, 7], eos_token_id=None)
    again = dec.generate(prompts[:3], max_new_tokens=12, seed=[5, 6, 7], eos_token_id=None)
    alone = dec.generate([prompts[1]], max_new_tokens=12, seed=6, eos_token_id=None)
    assert batch.new_tokens == again.new_tokens
    assert alone.new_tokens[0] == batch.new_tokens[1]
    other = dec.generate([prompts[1]], max_new_tokens=12, seed=999, eos_token_id=None)
    assert other.new_tokens[0] != alone.new_tokens[0]       # the seed matters
    s = batch.summary()
    assert s["rounds_per_token"] >= 1 and s["generated_per_token"] > 1 and len(batch.texts) == 3


def test_eos_and_max_length(transport, prompts, tokenizer):
    dec = EpicServingDecoder(transport, horizon=2)
    out = dec.generate([prompts[2], prompts[4]], max_new_tokens=48, seed=0)
    for toks, why in zip(out.new_tokens, out.finish_reasons):
        assert why in ("eos", "length")
        assert (toks[-1] in transport.info.eos_token_ids) == (why == "eos")
        assert all(t not in transport.info.eos_token_ids for t in toks[:-1])
    assert "eos" in out.finish_reasons        # the instruct model ends its answers
    short = dec.generate([prompts[2]], max_new_tokens=3, seed=0)
    assert short.new_tokens[0] == out.new_tokens[0][:3] and short.finish_reasons == ["length"]
    assert dec.generate(prompts[:1], max_new_tokens=0).new_tokens == [[]]


def test_seeded_sampler_properties_hold_on_vllm(transport, tokenizer):
    """The two properties the decoder relies on, verified on the engine: a refinement replays the
    shallower request's rollout tokens; the seed alone decides the random numbers (two alike prompts
    draw the same token far more often with one seed than with independent ones), so candidates that
    share a seed share random numbers."""
    from conftest import chat_ids

    pair = [chat_ids(tokenizer, "Write a haiku about tea."), chat_ids(tokenizer, "Write a haiku about coffee.")]
    rep = check_seed_properties(transport, pair, seeds=range(24))
    assert rep.replay_broken == 0 and rep.replay_checked == 24 * 2 * 2
    assert rep.shared_same_seed > rep.shared_other_seed + 0.15, rep


def test_a_broken_replay_is_detected():
    """If an engine's refinement does not start with the tokens it sampled before, the decoder says so."""
    from epic_kernels.core import EpicConfig
    from epic_kernels.serving.evaluator import Refinement, RequestEvaluator
    from epic_kernels.serving.transport import Response, Sample

    cfg = EpicConfig(alpha=0.5, horizon=3, rollouts=2, rollout_top_k=4)
    ev = RequestEvaluator((1, 2, 3), torch.tensor([5, 6]), cfg, 4, 0, 3, Refinement("adaptive"), "reference")
    pos = lambda: (torch.tensor([1, 2, 3, 4]), torch.tensor([-1.0, -1.5, -2.0, -2.5]))

    def resp(paths):
        return Response([Sample(p, [pos()[0]] * len(p), [pos()[1]] * len(p)) for p in paths])

    ev.want(torch.tensor([0]), torch.tensor([2]))
    ev.absorb(0, 2, resp([[7, 8], [9, 10]]))
    ev.want(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(SeedPropertyError, match="did not replay rollout 1"):
        ev.absorb(0, 3, resp([[7, 8, 1], [9, 11, 1]]))


def test_server_transport_equals_offline(server, transport, prompts):
    from epic_kernels.serving import ServerTransport

    remote = ServerTransport(server)
    try:
        assert remote.info.prefix_caching is True        # read from the server's /metrics
        kw = dict(alpha=0.5, horizon=3, rollouts=2, top_k=30, rollout_top_k=30)
        here = EpicServingDecoder(transport, **kw).generate(prompts[:2], max_new_tokens=8, seed=[21, 22],
                                                            eos_token_id=None)
        there = EpicServingDecoder(remote, **kw).generate(prompts[:2], max_new_tokens=8, seed=[21, 22],
                                                          eos_token_id=None)
        assert there.new_tokens == here.new_tokens
        assert there.texts == here.texts
        with pytest.raises(ServingError, match="--max-logprobs 50"):    # above the server's max_logprobs (30)
            EpicServingDecoder(remote, top_k=50, rollout_top_k=50)
    finally:
        remote.close()


# -- bad input: clear errors that change no state ------------------------------------------------ #
def test_full_vocabulary_is_refused(transport):
    for kw in (dict(top_k=None), dict(rollout_top_k=None)):
        with pytest.raises(ServingError, match="full-vocabulary EPIC.*out of scope"):
            EpicServingDecoder(transport, **kw)


def test_top_k_above_max_logprobs_is_refused(transport):
    with pytest.raises(ServingError, match="max_logprobs=50"):
        EpicServingDecoder(transport, top_k=64, rollout_top_k=50)


def test_prefix_caching_off_is_refused(transport, prompts, monkeypatch):
    from epic_kernels.serving import OfflineTransport

    cache = transport.llm.llm_engine.vllm_config.cache_config
    monkeypatch.setattr(cache, "enable_prefix_caching", False)
    with pytest.raises(ServingError, match="prefix caching is off"):
        EpicServingDecoder(OfflineTransport(transport.llm))
    monkeypatch.undo()
    assert EpicServingDecoder(transport).generate(prompts[:1], max_new_tokens=2, seed=0).new_tokens[0]


def test_unreachable_url_is_refused():
    from epic_kernels.serving import ServerTransport

    with pytest.raises(ServingError, match="cannot reach a vLLM server at http://127.0.0.1:9/v1"):
        ServerTransport("http://127.0.0.1:9", timeout=3)


def test_model_without_tokenizer_is_refused(hf_dir, tmp_path):
    from epic_kernels.serving import OfflineTransport

    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).symlink_to(hf_dir / name)
    with pytest.raises(ServingError, match="has no tokenizer"):
        OfflineTransport.start(tmp_path)


def test_bad_prompts_are_refused_and_change_nothing(transport, prompts):
    dec = EpicServingDecoder(transport, horizon=2)
    first = dec.generate(prompts[:1], max_new_tokens=4, seed=1).new_tokens
    for bad in ([], [[]], [[-1, 3]], [[10**9]], "text"):
        with pytest.raises(ServingError, match="prompt"):
            dec.generate(bad, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(prompts[:1], max_new_tokens=-1)
    assert dec.generate(prompts[:1], max_new_tokens=4, seed=1).new_tokens == first
