"""The service's engine thread in process (tiny model, no HTTP) and its incremental text: a fault in
a shared step fails only the request that causes it; stop strings end the text exactly where the
whole text would, whatever the token boundaries."""
from __future__ import annotations

import threading

import pytest
import torch

import epic_kernels  # noqa: E402
from epic_kernels.service.detok import TextStream  # noqa: E402
from epic_kernels.service.metrics import Metrics  # noqa: E402
from epic_kernels.service.scheduler import Fail, Finish, Job, Scheduler, Settings, Token  # noqa: E402
from epic_kernels.testing import random_prompts, tiny_llama, tiny_tokenizer  # noqa: E402

SETTINGS = Settings(alpha=0.7, horizon=2, rollouts=2, rollout_top_k=8, top_k=8, top_p=None)


def _run(model, jobs_spec, fault_at=None):
    """Submit every job before the engine starts (so they share its first batch); returns each job's
    events."""
    if fault_at is not None:
        forward = model.forward

        def faulty(*args, **kwargs):
            ids, pos = kwargs.get("input_ids"), kwargs.get("position_ids")
            if ids is not None and pos is not None and ids.shape[-1] == 1 and int(pos.max()) >= fault_at:
                raise RuntimeError("injected fault")
            return forward(*args, **kwargs)
        model.forward = faulty
    try:
        sched = Scheduler(model, tiny_tokenizer(32), metrics=Metrics(), max_running=8, max_queue=8, max_context=64)
        events, done = [[] for _ in jobs_spec], threading.Semaphore(0)

        def sink(i):
            def deliver(ev):
                events[i].append(ev)
                if isinstance(ev, (Finish, Fail)):
                    done.release()
            return deliver
        for i, (prompt, seed, n) in enumerate(jobs_spec):
            sched.submit(Job(prompt=prompt, settings=SETTINGS, seed=seed, max_tokens=n, deliver=sink(i)))
        sched.start()
        for _ in jobs_spec:
            assert done.acquire(timeout=120)
        sched.drain(0)
        assert sched.join(30)
        return events
    finally:
        if fault_at is not None:
            del model.forward


def _alone(model, prompt, seed, n):
    out = epic_kernels.generate(model, torch.tensor([prompt]), max_new_tokens=n, seed=[seed], alpha=SETTINGS.alpha,
                                horizon=SETTINGS.horizon, rollouts=SETTINGS.rollouts,
                                rollout_top_k=SETTINGS.rollout_top_k, top_k=SETTINGS.top_k)
    return out.new_tokens[0]


def test_a_fault_in_a_shared_step_fails_only_its_request():
    model = tiny_llama(32, seed=2)
    prompts = random_prompts(32, [4, 6, 20, 5], seed=3)        # the third reaches position 20 at once
    spec = [(p, 10 + i, 6) for i, p in enumerate(prompts)]
    events = _run(model, spec, fault_at=20)
    assert isinstance(events[2][-1], Fail) and events[2][-1].status == 500 and "injected fault" in events[2][-1].message
    for i in (0, 1, 3):
        assert isinstance(events[i][-1], Finish) and events[i][-1].reason == "length"
        assert [e.token for e in events[i] if isinstance(e, Token)] == _alone(model, *spec[i]), i


def test_without_a_fault_everyone_gets_the_tokens_it_gets_alone():
    model = tiny_llama(32, seed=2)
    spec = [(p, 30 + i, 3 + i) for i, p in enumerate(random_prompts(32, [4, 9, 2, 7, 5], seed=4))]
    events = _run(model, spec)
    for i, s in enumerate(spec):
        assert [e.token for e in events[i] if isinstance(e, Token)] == _alone(model, *s)
        usage = events[i][-1].usage
        assert usage["completion_tokens"] == s[2] and usage["epic"]["mean_batch_size"] > 1


class _CharTokenizer:
    """One character per token (id = code point), so any split of a text into tokens can be tried."""

    def decode(self, ids, **kwargs):
        return "".join(map(chr, ids))


@pytest.mark.parametrize("text, stop, want", [
    ("hello world. bye", ["."], "hello world"),
    ("hello world. bye", ["wor", "o w"], "hell"),               # the earliest stop wins
    ("abcabd", ["abd"], "abc"),                                  # a held-back prefix that did not match first
    ("no stop here", ["xyz"], "no stop here"),
    ("tail ab", ["abc"], "tail ab"),                             # held back to the end, then flushed
])
def test_stop_strings_cut_the_text_whatever_the_token_boundaries(text, stop, want):
    tok = _CharTokenizer()
    s = TextStream(tok, [], stop)
    out = ""
    for ch in text:
        out += s.push(ord(ch))
        if s.stopped:
            break
    out += s.flush()
    assert out == want


def test_incomplete_characters_wait_for_their_last_byte():
    from epic_kernels.models import load_model

    _, tok = load_model()
    text = "Café ☕ naïve 日本語 done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    s = TextStream(tok, [], [])
    pieces = [s.push(i) for i in ids] + [s.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


@pytest.mark.parametrize("argv, message", [
    (["--engine", "vllm"], "go together"),
    (["--upstream", "http://127.0.0.1:9/v1"], "go together"),
    (["--engine", "vllm", "--upstream", "http://x/v1", "--model", "EMBEDDED"], "serves its own"),
])
def test_vllm_engine_flags_go_together(argv, message, capsys):
    from epic_kernels.models import embedded_model_path
    from epic_kernels.service.cli import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args([str(embedded_model_path()) if a == "EMBEDDED" else a for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_no_request_is_queued_once_the_engine_stopped_or_while_draining():
    from epic_kernels.service.scheduler import ShuttingDown

    sched = Scheduler(tiny_llama(32, seed=2), tiny_tokenizer(32), metrics=Metrics(), max_context=64)
    job = Job(prompt=[1, 2], settings=SETTINGS, seed=0, max_tokens=1, deliver=lambda ev: None)
    sched.error = RuntimeError("boom")                 # what the engine loop records when it dies
    with pytest.raises(ShuttingDown, match="engine stopped .*boom"):
        sched.submit(job)
    sched.error = None
    sched.drain(5)
    with pytest.raises(ShuttingDown, match="shutting down"):
        sched.submit(job)
    assert not sched.waiting
