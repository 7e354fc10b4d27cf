"""The Hugging Face integration honours generate's options, or refuses them by name.

``model.generate(custom_generate=epic_kernels.hf.custom_generate, ...)`` and the Hub-style folder
(``custom_generate=epic_kernels.hf.CUSTOM_GENERATE_DIR``) against ``epic_kernels.generate``."""
import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

import epic_kernels
from epic_kernels.hf import CUSTOM_GENERATE_DIR, custom_generate
from epic_kernels.testing import random_prompts, tiny_tokenizer

KW = dict(epic_alpha=0.5, epic_horizon=2, epic_rollouts=2, epic_seed=3, do_sample=True, top_k=8,
          max_new_tokens=12, pad_token_id=0)


@pytest.fixture
def ids():
    return torch.tensor([random_prompts(32, [5], seed=1)[0]])


def _ours(tiny, ids, **kw):
    return epic_kernels.generate(tiny, ids, alpha=0.5, horizon=2, rollouts=2, seed=3, top_k=8,
                                 max_new_tokens=12, eos_token_id=1, **kw)


class Recorder:
    def __init__(self):
        self.got = []

    def put(self, value):
        self.got.append(value.tolist())

    def end(self):
        self.got.append("end")


def test_sequences_equal_epic_generate(tiny, ids):
    out = tiny.generate(ids, custom_generate=custom_generate, **KW)
    assert torch.equal(out, _ours(tiny, ids).sequences)


def test_user_stopping_criteria_and_max_time(tiny, ids):
    class StopAfter5(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= ids.shape[1] + 5, dtype=torch.bool)

    out = tiny.generate(ids, custom_generate=custom_generate, stopping_criteria=StoppingCriteriaList([StopAfter5()]),
                        **KW)
    assert out.shape[1] == ids.shape[1] + 5
    assert torch.equal(out, _ours(tiny, ids).sequences[:, :ids.shape[1] + 5])
    fast = tiny.generate(ids, custom_generate=custom_generate, max_time=1e-9, **KW)
    assert fast.shape[1] == ids.shape[1] + 1


def test_stop_strings_with_a_tokenizer(tiny, ids):
    full = _ours(tiny, ids).new_tokens[0]
    tok = tiny_tokenizer(64)           # its alphabet must spell transformers' probe string "abcdef"
    stop = tok.convert_ids_to_tokens(full[3])
    cut = full.index(full[3]) + 1
    out = tiny.generate(ids, custom_generate=custom_generate, epic_stop_strings=[stop], epic_tokenizer=tok, **KW)
    assert out[0, ids.shape[1]:].tolist() == full[:cut]
    hub = tiny.generate(ids, custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, stop_strings=[stop],
                        tokenizer=tok, **KW)
    assert torch.equal(hub, out)
    with pytest.raises(ValueError, match="epic_tokenizer"):
        tiny.generate(ids, custom_generate=custom_generate, epic_stop_strings=[stop], **KW)


def test_streamer_receives_every_token(tiny, ids, capsys):
    rec = Recorder()
    out = tiny.generate(ids, custom_generate=custom_generate, streamer=rec, **KW)
    assert rec.got[0] == ids.tolist() and rec.got[-1] == "end"
    assert [t[0] for t in rec.got[1:-1]] == out[0, ids.shape[1]:].tolist()
    tok = tiny_tokenizer(32)
    tiny.generate(ids, custom_generate=custom_generate, streamer=TextStreamer(tok, skip_prompt=True), **KW)
    printed = capsys.readouterr().out.strip()
    assert printed == tok.decode(out[0, ids.shape[1]:].tolist())


def test_return_dict_with_scores_and_logits(tiny, ids):
    res = tiny.generate(ids, custom_generate=custom_generate, return_dict_in_generate=True, output_scores=True,
                        output_logits=True, **KW)
    ours = _ours(tiny, ids, output_scores=True, output_logits=True)
    assert torch.equal(res.sequences, ours.sequences)
    assert len(res.scores) == len(res.logits) == ours.sequences.shape[1] - ids.shape[1]
    # the scores are the processed logits (HF's top-k 8 warper): exactly 8 finite per row
    assert all(int(torch.isfinite(s).sum()) == 8 for s in res.scores)
    assert all(torch.isfinite(x).all() for x in res.logits)
    for s, t in zip(res.scores, res.sequences[0, ids.shape[1]:].tolist()):
        assert torch.isfinite(s[0, t])                 # every token was a candidate


def test_num_return_sequences_gives_each_copy_its_own_seed(tiny, ids):
    out = tiny.generate(ids, custom_generate=custom_generate, num_return_sequences=3, **KW)
    assert out.shape[0] == 3
    batch = epic_kernels.generate(tiny, ids.repeat(3, 1), alpha=0.5, horizon=2, rollouts=2, seed=3, top_k=8,
                                  max_new_tokens=12, eos_token_id=1)
    assert torch.equal(out, batch.sequences)
    assert len({tuple(r) for r in out.tolist()}) > 1


@pytest.mark.parametrize("kwargs,message", [
    (dict(do_sample=False), "do_sample=False"),
    (dict(num_beams=2), "beam search"),
    (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions"),
    (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states"),
])
def test_what_cannot_be_honoured_is_an_error(tiny, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.generate(ids, custom_generate=custom_generate, **{**KW, **kwargs})


def test_hub_style_folder(tiny, ids):
    kw = {k: v for k, v in KW.items()}
    out = tiny.generate(ids, custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, **kw)
    assert torch.equal(out, _ours(tiny, ids).sequences)
    rec = Recorder()
    tiny.generate(ids, custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True, streamer=rec, **kw)
    assert rec.got[0] == ids.tolist() and [t[0] for t in rec.got[1:-1]] == out[0, ids.shape[1]:].tolist()
    with open(f"{CUSTOM_GENERATE_DIR}/README.md") as f:
        front = f.read().split("---")[1]
    assert "custom_generate" in front and "library_name: transformers" in front
