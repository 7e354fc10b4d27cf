"""``DecodeBatch``: sequences that join a running batch between steps and leave it when they finish
get exactly the tokens they get alone (``generate`` with the same prompt and seed), on several model
families and both engines; leaving frees rows and the padding columns no row needs."""
import pytest
import torch

import epic_kernels
from epic_kernels.batch import DecodeBatch, SequenceError
from epic_kernels.core import EpicConfig
from epic_kernels.testing import left_padded, random_prompts, tiny_model

KW = dict(alpha=0.7, horizon=2, rollouts=2)
TRUNC = dict(top_k=8)
# (joins at step, prompt length, max new tokens, seed)
SCHEDULE = [(0, 5, 9, 11), (0, 3, 4, 12), (2, 9, 6, 13), (3, 4, 7, 14), (3, 12, 3, 15), (6, 6, 5, 16)]


def _alone(model, prompt, n, seed, engine):
    out = epic_kernels.generate(model, torch.tensor([prompt]), max_new_tokens=n, seed=[seed], engine=engine,
                                rollout_top_k=8, **KW, **TRUNC)
    return out.new_tokens[0]


def _run_schedule(model, prompts, engine, prefetch=True, reuse=True, together=True):
    """Drive a DecodeBatch through SCHEDULE; returns the tokens of each sequence and the batch sizes."""
    cfg = EpicConfig(rollout_top_k=8, **KW)
    batch = DecodeBatch(model, cfg, engine=engine, prefetch=prefetch, reuse=reuse, max_position=40, **TRUNC)
    got, owner, sizes = {}, {}, []
    step = 0
    while step < 20:
        joining = [i for i, s in enumerate(SCHEDULE) if s[0] == step]
        # prompts joining at one step: prefilled together (left padded), or one by one as a server does
        for group in ([joining] if together and joining else [[i] for i in joining]):
            ids, mask = left_padded([prompts[i] for i in group])
            handles = batch.admit(ids, mask, torch.tensor([SCHEDULE[i][3] for i in group]))
            for h, i in zip(handles, group):
                owner[h], got[i] = i, []
        if len(batch) == 0:
            if all(len(got.get(i, ())) == s[2] for i, s in enumerate(SCHEDULE)):
                break
            step += 1
            continue
        sizes.append(len(batch))
        last = all(len(got[owner[h]]) + 1 == SCHEDULE[owner[h]][2] for h in batch.handles)
        res = batch.step(advance=not last)
        done = []
        for h, t in zip(res.handles, res.tokens.tolist()):
            got[owner[h]].append(t)
            if len(got[owner[h]]) == SCHEDULE[owner[h]][2]:
                done.append(h)
        batch.remove(done)
        step += 1
    return got, sizes


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2"])
def test_joining_and_leaving_give_the_tokens_of_a_sequence_alone(family):
    extra = dict(sliding_window=64) if family == "gemma2" else {}
    model = tiny_model(family, 32, seed=3, **extra)
    prompts = random_prompts(32, [s[1] for s in SCHEDULE], seed=4)
    # (a padded prefill of the tiny Gemma2 gives NaN logits in transformers itself: one by one there)
    got, sizes = _run_schedule(model, prompts, "auto", together=family != "gemma2")
    assert max(sizes) >= 3 and sizes[-1] < max(sizes)          # the batch grew and shrank
    for i, (_, _, n, seed) in enumerate(SCHEDULE):
        assert got[i] == _alone(model, prompts[i], n, seed, "auto"), f"sequence {i}"


def test_reference_engine_and_no_prefetch_or_reuse_give_the_same_tokens(tiny):
    prompts = random_prompts(32, [s[1] for s in SCHEDULE], seed=5)
    fast, _ = _run_schedule(tiny, prompts, "fast")
    plain, _ = _run_schedule(tiny, prompts, "fast", prefetch=False, reuse=False)
    ref, _ = _run_schedule(tiny, prompts, "reference")
    one_by_one, _ = _run_schedule(tiny, prompts, "fast", together=False)
    assert fast == plain == ref == one_by_one


def test_leaving_frees_rows_and_padding_columns(tiny):
    batch = DecodeBatch(tiny, EpicConfig(**KW), **TRUNC)
    prompts = random_prompts(32, [3, 10, 5], seed=6)
    long_ = batch.admit(*left_padded([prompts[1]]), torch.tensor([1]))
    short = batch.admit(*left_padded([prompts[0], prompts[2]]), torch.tensor([2, 3]))
    assert len(batch) == 3 and batch.columns == 10
    batch.step()
    assert batch.columns == 11
    batch.remove(long_)
    assert batch.handles == short and batch.columns == 6          # the longest remaining: 5 + 1 token
    assert batch.cache.get_seq_length() == 6 and tuple(batch.mask.shape) == (2, 6)
    batch.remove([12345])                                           # unknown handles: nothing happens
    assert batch.handles == short
    batch.remove(short)
    assert len(batch) == 0 and batch.cache is None
    with pytest.raises(RuntimeError, match="empty"):
        batch.step()


def test_nan_logits_name_their_sequences_and_change_nothing():
    """transformers' tiny Gemma2 gives NaN logits for a left-padded prompt: a clear error naming that
    sequence (was an IndexError deep in the engine), the batch unchanged, the others go on."""
    model = tiny_model("gemma2", 32, seed=3, sliding_window=64)
    batch = DecodeBatch(model, EpicConfig(rollout_top_k=8, **KW), max_position=40, **TRUNC)
    ok = batch.admit(*left_padded([[12, 26, 3, 25, 11]]), torch.tensor([1]))
    bad = batch.admit(*left_padded([[12, 26, 3, 25, 11], [28, 31, 18]]), torch.tensor([2, 3]))
    with pytest.raises(SequenceError, match=f"NaN for sequences \\[{bad[1]}\\]") as err:
        batch.step()
    assert err.value.handles == [bad[1]] and len(batch) == 3 and batch.columns == 5
    batch.remove(err.value.handles)
    first = batch.step().tokens.tolist()
    alone = [_alone(model, [12, 26, 3, 25, 11], 1, s, "auto")[0] for s in (1, 2)]
    assert first == alone
