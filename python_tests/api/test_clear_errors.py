"""Clear errors up front instead of torch errors deep inside (issue 21, item 6).

Each case used to fail inside torch (an IndexError, a RuntimeError at ``.item()``, a TypeError) or to
do something silently wrong; each is now a ``ValueError`` (or an argparse error for the command
line) naming the problem and the fix, raised before anything changes: the cache passed in and the
model are as they were.
"""
import warnings

import pytest
import torch

import epic_kernels
from epic_kernels import defaults
from epic_kernels.engine import attention
from epic_kernels.testing import left_padded, prefill, random_prompts, tiny_llama, tiny_model

POSITIONS = 16       # the tiny GPT-2's learned position table


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2", 32, seed=2, n_positions=POSITIONS)


def _snapshot(kv):
    return [(layer.keys.clone(), layer.values.clone()) for layer in kv.layers]


def _unchanged(kv, before):
    return len(kv.layers) == len(before) and all(
        torch.equal(a, layer.keys) and torch.equal(b, layer.values) for (a, b), layer in zip(before, kv.layers))


# --------------------------------------------------------------------------------------------- #
# learned absolute positions (GPT-2's n_positions)                                              #
# --------------------------------------------------------------------------------------------- #
def test_sample_step_past_the_learned_positions(gpt2):
    """A 14-token prefix: horizon 2 feeds positions up to 15 (the last one), horizon 3 would feed 16,
    an IndexError inside torch before."""
    logits, kv, mask = prefill(gpt2, random_prompts(32, [14, 9], seed=1))
    before, impl = _snapshot(kv), gpt2.config._attn_implementation
    kw = dict(alpha=2.0, rollouts=2, engine="reference", attention_mask=mask, advance=False)
    with pytest.raises(ValueError, match=r"position 16, but GPT2LMHeadModel has learned absolute positions only "
                                         r"up to 15 \(n_positions=16\); use a shorter prompt or a smaller horizon"):
        epic_kernels.sample_step(logits, kv, gpt2, horizon=3, **kw)
    assert _unchanged(kv, before) and gpt2.config._attn_implementation == impl
    out = epic_kernels.sample_step(logits, kv, gpt2, horizon=2, **kw)      # the last position is fine
    assert out.stats.evaluated_deeper.sum() > 0                              # and it was reached


def test_generate_past_the_learned_positions(gpt2):
    ids, mask = left_padded(random_prompts(32, [10, 6], seed=3))
    kw = dict(alpha=2.0, horizon=3, top_k=None, rollout_top_k=None, engine="reference", attention_mask=mask)
    with pytest.raises(ValueError, match=r"would feed position 16, .*\(n_positions=16\); use a shorter prompt, "
                                         "fewer max_new_tokens or a smaller horizon"):
        epic_kernels.generate(gpt2, ids, max_new_tokens=5, **kw)
    out = epic_kernels.generate(gpt2, ids, max_new_tokens=4, **kw)           # reaches position 15
    assert out.sequences.shape == (2, 14)
    long_prompt = torch.tensor([random_prompts(32, [POSITIONS + 1], seed=4)[0]])
    with pytest.raises(ValueError, match="position 17"):
        epic_kernels.generate(gpt2, long_prompt, max_new_tokens=1, horizon=1, engine="reference")


def test_lookahead_entropy_and_calibration_past_the_learned_positions(gpt2, monkeypatch):
    """GPT-2 is refused by the fast engine that both run on, now before the text's forward (an
    IndexError for a text longer than the table before); a model with learned positions that the
    fast engine did run would get the position check (the refusal is lifted here to reach it)."""
    text = random_prompts(32, [POSITIONS + 4], seed=5)[0]
    with pytest.raises(ValueError, match="fast engine, which cannot run GPT2LMHeadModel"):
        epic_kernels.calibrate_alpha(gpt2, [text], horizon=2, samples=2, progress=False)
    monkeypatch.setattr(attention, "fork_refusal", lambda model, max_position=None: None)
    with pytest.raises(ValueError, match=r"position 20, .*\(n_positions=16\); use a shorter text"):
        epic_kernels.lookahead_entropy(gpt2, torch.tensor(text), horizon=2)
    with pytest.raises(ValueError, match=r"position 20, .*\(n_positions=16\); use shorter texts"):
        epic_kernels.calibrate_alpha(gpt2, [text[:10], text], horizon=2, samples=2, progress=False)


def test_rotary_models_have_no_position_limit(tiny):
    from epic_kernels.validate import position_limit

    assert position_limit(tiny) is None
    assert position_limit(tiny_model("gpt2", 32, n_positions=POSITIONS)) == (POSITIONS, "n_positions")


# --------------------------------------------------------------------------------------------- #
# masks, stopping criteria, calibration texts                                                   #
# --------------------------------------------------------------------------------------------- #
def test_sample_step_refuses_a_right_padded_mask_as_generate_does(tiny):
    """A right-padded mask silently changed the token in sample_step (generate refused it)."""
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        out = tiny(input_ids=ids, attention_mask=mask, past_key_values=epic_kernels.EpicCache(), use_cache=True)
    kv, before = out.past_key_values, None
    before = _snapshot(kv)
    with pytest.raises(ValueError, match="left-padded") as step_err:
        epic_kernels.sample_step(out.logits[:, -1], kv, tiny, alpha=0.5, attention_mask=mask)
    assert _unchanged(kv, before)
    with pytest.raises(ValueError, match="left-padded") as gen_err:
        epic_kernels.generate(tiny, ids, attention_mask=mask, max_new_tokens=2)
    assert str(step_err.value) == str(gen_err.value)
    assert "rows [0] have a 0 after a 1" in str(step_err.value)


class _Returns:
    def __init__(self, value):
        self.value = value

    def __call__(self, input_ids, scores):
        return self.value


@pytest.mark.parametrize("value, shown", [
    (True, "bool True"),                                     # was broadcast: every row stopped
    (torch.tensor(True), r"a torch.bool tensor of shape \(\)"),
    ("stop", "str 'stop'"),                                  # was torch's TypeError
    (torch.tensor([1, 0, 1]), r"a torch.int64 tensor of shape \(3,\)"),
    (torch.tensor([True, False]), r"a torch.bool tensor of shape \(2,\)"),
])
def test_stopping_criteria_must_return_a_bool_tensor_per_sequence(tiny, value, shown):
    ids = torch.tensor(random_prompts(32, [4, 4, 4], seed=6))
    with pytest.raises(ValueError, match=rf"stopping_criteria _Returns returned {shown}; it must return a bool "
                                         r"tensor of shape \[3\]"):
        epic_kernels.generate(tiny, ids, max_new_tokens=3, stopping_criteria=_Returns(value))


def test_stopping_criteria_bool_tensor_ends_only_its_rows(tiny):
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]])
    out = epic_kernels.generate(tiny, ids, max_new_tokens=3,
                                stopping_criteria=lambda input_ids, scores: input_ids[:, 0] == ids[1, 0])
    assert [len(t) for t in out.new_tokens] == [3, 1, 3]


@pytest.mark.parametrize("texts, contexts, message", [
    ([[]], None, r"texts\[0\] is empty"),
    ([[3, 4, 5], []], None, r"texts\[1\] is empty"),
    ([[3, 4], [5, 6, 40]], None, r"texts\[1\] holds token id 40 at index 2, outside the model's vocabulary \[0, 32\)"),
    ([[3, 4], [5, -1]], None, r"texts\[1\] holds token id -1 at index 1"),
    ([[3, 4], [5, 6]], [[1], [2, 99]], r"contexts\[1\] holds token id 99 at index 1"),
])
def test_calibration_names_the_bad_text(tiny, texts, contexts, message):
    with pytest.raises(ValueError, match=message):
        epic_kernels.calibrate_alpha(tiny, texts, contexts=contexts, horizon=1, samples=2, progress=False)


# --------------------------------------------------------------------------------------------- #
# the meta device                                                                               #
# --------------------------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return tiny_llama(32)


def test_a_model_on_the_meta_device(meta_model):
    ids = torch.tensor([[3, 4, 5]])
    match = "the model's parameter .* is on the meta device: its weights were never loaded"
    with pytest.raises(ValueError, match=match):
        epic_kernels.generate(meta_model, ids, max_new_tokens=2)
    with pytest.raises(ValueError, match=match):
        epic_kernels.lookahead_entropy(meta_model, ids, horizon=2)
    with pytest.raises(ValueError, match=match):
        epic_kernels.calibrate_alpha(meta_model, [[3, 4, 5]], horizon=1, samples=2, progress=False)


def test_tensors_on_the_meta_device(tiny, batch7):
    _, logits, kv, mask = batch7
    before = _snapshot(kv)
    with pytest.raises(ValueError, match="logits is on the meta device"):
        epic_kernels.sample_step(logits.to("meta"), kv, tiny, alpha=0.5, attention_mask=mask)
    assert _unchanged(kv, before)
    with pytest.raises(ValueError, match="input_ids is on the meta device"):
        epic_kernels.generate(tiny, torch.tensor([[3, 4, 5]], device="meta"), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask is on the meta device"):
        epic_kernels.generate(tiny, torch.tensor([[3, 4, 5]]), attention_mask=torch.ones(1, 3, device="meta"),
                              max_new_tokens=2)
    with pytest.raises(ValueError, match=r"texts\[0\] is on the meta device"):
        epic_kernels.calibrate_alpha(tiny, [torch.tensor([3, 4, 5], device="meta")], horizon=1, progress=False)


# --------------------------------------------------------------------------------------------- #
# a step whose search will be very long                                                         #
# --------------------------------------------------------------------------------------------- #
def test_sample_step_warns_before_a_very_long_step(tiny, batch7, monkeypatch):
    """sample_step warns as generate does (one helper), and before the step's first model call."""
    _, logits, kv, mask = batch7
    monkeypatch.setattr(defaults, "WARN_SURVIVORS", 4)
    seen = []
    hook = tiny.register_forward_pre_hook(lambda module, args: seen.append(len(record)))
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            epic_kernels.sample_step(logits, kv, tiny, alpha=1.0, horizon=2, attention_mask=mask, engine="fast")
    finally:
        hook.remove()
    said = [w for w in record if "candidates in its admissible window" in str(w.message)]
    assert len(said) == 1 and seen and seen[0] == len(record), (said, seen[:3])   # before the first call
    text = str(said[0].message)
    assert "rollout_top_k=50" in text and "top_k" in text and "smaller |alpha| (now 1.0)" in text
    assert said[0].filename == __file__                      # it points at the caller's line
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        epic_kernels.sample_step(logits, kv, tiny, alpha=1.0, horizon=2, attention_mask=mask, top_k=4)
    assert not [w for w in record if "admissible window" in str(w.message)]


def test_generate_warns_before_its_first_very_long_step(monkeypatch):
    model = tiny_llama(64, seed=1, init_range=0.02)
    monkeypatch.setattr(defaults, "WARN_SURVIVORS", 16)
    ids = torch.tensor(random_prompts(64, [5], seed=0))
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(len(record)))
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            epic_kernels.generate(model, ids, max_new_tokens=2, alpha=0.5, horizon=2, top_k=None,
                                  rollout_top_k=None, max_rows=4)
    finally:
        hook.remove()
    said = [w for w in record if "candidates in its admissible window" in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__
    assert seen[0] == 0 and seen[1] == len(record)      # the prefill, then the first step's first call


# --------------------------------------------------------------------------------------------- #
# model paths                                                                                   #
# --------------------------------------------------------------------------------------------- #
def test_load_model_names_a_directory_that_is_no_model(tmp_path):
    from epic_kernels.models import load_model

    with pytest.raises(FileNotFoundError, match="is not a model directory \\(no config.json and no .gguf file"):
        load_model(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pass the file itself"):
        load_model(tmp_path)
