"""``epic-serve`` end to end: a server started here on 127.0.0.1 (bounded start, always stopped),
driven by the official ``openai`` client and by raw HTTP.

Texts are compared with ``epic_kernels.generate`` on the same prompt, seed and settings, in this
process, after the server's load (the two would otherwise share the 2 cores)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import openai  # noqa: E402  (requirements.txt: the test env has it)

import epic_kernels  # noqa: E402
from epic_kernels.models import chat_prompt_ids, eos_ids, load_model  # noqa: E402

NAME = "smollm2-135m-instruct"
# cheap EPIC settings for the tests (every request sends them)
EPIC = dict(top_k=8, epic_alpha=0.6, epic_horizon=2, epic_rollouts=2, epic_rollout_top_k=50)
FAULT_AT = 150              # the main server's injected fault: model calls at positions >= 150 raise
CONTEXT = 480
STORY = "Once upon a time, in a land far away,"     # with seed 1 it runs well past 30 tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *flags, start_timeout=180.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "epic_kernels.service.cli", "--port", str(self.port),
                                      "--threads", "1", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.output: list[str] = []
        threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"epic-serve exited with {self.proc.returncode}:\n{''.join(self.output)}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"epic-serve did not start within {start_timeout} s:\n{''.join(self.output)}")
            time.sleep(0.3)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=300)

    def metrics(self) -> dict:
        """``/metrics`` as {sample name with labels: value}."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def server():
    s = Server("--max-running", "16", "--max-queue", "64", "--max-context", str(CONTEXT),
               "--fault-after-position", str(FAULT_AT))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return load_model()


def _solo(model_and_tokenizer, prompt_ids, seed, max_tokens):
    """What ``epic_kernels.generate`` makes of one prompt alone: (text, tokens)."""
    model, tok = model_and_tokenizer
    out = epic_kernels.generate(model, torch.tensor([prompt_ids]), max_new_tokens=max_tokens, seed=seed,
                                eos_token_id=eos_ids(model, tok), alpha=EPIC["epic_alpha"], horizon=EPIC["epic_horizon"],
                                rollouts=EPIC["epic_rollouts"], rollout_top_k=EPIC["epic_rollout_top_k"],
                                top_k=EPIC["top_k"])
    tokens = [t for t in out.new_tokens[0] if t not in eos_ids(model, tok)]
    return tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False), out.new_tokens[0]


def _extra():
    return {k: v for k, v in EPIC.items() if k.startswith("epic_") or k == "top_k"}


def test_openai_client_completions_and_chat_equal_generate(server, model_and_tokenizer):
    c = server.client
    prompt = "The three primary colours are"
    done = c.completions.create(model=NAME, prompt=prompt, max_tokens=10, seed=7, extra_body=_extra())
    streamed = c.completions.create(model=NAME, prompt=prompt, max_tokens=10, seed=7, stream=True,
                                    stream_options={"include_usage": True}, extra_body=_extra())
    chunks = list(streamed)
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    usage = chunks[-1].usage
    messages = [{"role": "user", "content": "Name a fruit."}]
    chat = c.chat.completions.create(model=NAME, messages=messages, max_tokens=8, seed=3,
                                     extra_body=dict(_extra(), epic_entropies=True))
    chat_streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=NAME, messages=messages, max_tokens=8, seed=3, stream=True, extra_body=_extra()) if ch.choices)

    tok = model_and_tokenizer[1]
    want, tokens = _solo(model_and_tokenizer, tok(prompt)["input_ids"], 7, 10)
    assert done.choices[0].text == text == want
    assert done.usage.completion_tokens == usage.completion_tokens == len(tokens)
    assert done.choices[0].finish_reason == ("stop" if len(tokens) < 10 else "length")
    epic = done.usage.model_extra["epic"]
    assert epic["seed"] == 7 and epic["steps"] == len(tokens) and epic["model_calls"] >= 1 and epic["rows"] >= 1
    chat_ids = chat_prompt_ids(tok, "Name a fruit.")[0].tolist()
    want_chat, chat_tokens = _solo(model_and_tokenizer, chat_ids, 3, 8)
    assert chat.choices[0].message.content == chat_streamed == want_chat
    assert chat.usage.prompt_tokens == len(chat_ids)
    entropies = chat.usage.model_extra["epic"]["entropies"]
    assert len(entropies) == len(chat_tokens) and all(e >= 0 for e in entropies)
    assert [m.id for m in c.models.list().data] == [NAME]
    # ignore_eos (vLLM's extension): a request that ends early alone runs to max_tokens
    short = c.completions.create(model=NAME, prompt="Tell me everything about", max_tokens=6, seed=1, extra_body=_extra())
    full = c.completions.create(model=NAME, prompt="Tell me everything about", max_tokens=6, seed=1,
                                extra_body=dict(_extra(), ignore_eos=True))
    assert short.usage.completion_tokens < 6 and short.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == 6 and full.choices[0].finish_reason == "length"
    assert full.choices[0].text.startswith(short.choices[0].text)


def test_sixteen_clients_get_their_solo_texts_while_the_batch_grows_and_shrinks(server, model_and_tokenizer):
    tok = model_and_tokenizer[1]
    words = ["Once upon a time", "The weather today", "In mathematics, a prime", "My favourite food",
             "The ocean is", "A good book", "Computers can", "Yesterday I"]
    jobs = [(c, r, f"{words[(c + r) % len(words)]}", 100 * c + r, 2 + (c + 2 * r) % 7) for c in range(16) for r in range(4)]
    before = server.metrics()
    peaks = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peaks.append(server.metrics()["epic_running_sequences"])
            time.sleep(0.2)

    def client(c):
        out = []
        for (cc, r, prompt, seed, n) in jobs:
            if cc == c:
                res = server.client.completions.create(model=NAME, prompt=prompt, max_tokens=n, seed=seed,
                                                       stream=r % 2 == 1, extra_body=_extra())
                text = res.choices[0].text if r % 2 == 0 else "".join(ch.choices[0].text for ch in res if ch.choices)
                out.append(((c, r), text))
        return out

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(16) as pool:
        results = dict(kv for part in pool.map(client, range(16)) for kv in part)
    stop.set()
    watcher.join()
    after = server.metrics()
    assert len(results) == 64
    assert max(peaks) >= 4 and after["epic_running_sequences"] == 0       # grew, and emptied again
    big = after['epic_step_batch_size_count'] - after['epic_step_batch_size_bucket{le="3.0"}'] - (
        before['epic_step_batch_size_count'] - before['epic_step_batch_size_bucket{le="3.0"}'])
    assert big > 0                                                         # steps of 4+ sequences
    assert after['epic_requests_total{outcome="completed"}'] - before.get('epic_requests_total{outcome="completed"}', 0) == 64
    for (c, r, prompt, seed, n) in jobs:
        want, _ = _solo(model_and_tokenizer, tok(prompt)["input_ids"], seed, n)
        assert results[(c, r)] == want, (c, r, prompt, seed, n)


def test_a_client_that_disconnects_frees_its_sequence_within_a_step(server, model_and_tokenizer):
    body = dict(model=NAME, prompt=STORY, max_tokens=120, seed=1, stream=True, **EPIC)
    other = {}

    def neighbour():
        other["res"] = server.client.completions.create(model=NAME, prompt="Hello", max_tokens=12, seed=9,
                                                        extra_body=_extra())

    before = server.metrics()
    t = threading.Thread(target=neighbour)
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        t.start()
        lines = resp.iter_lines()
        got = [line for line, _ in zip(lines, range(6)) if line.startswith("data:")]
        assert got
        steps_at_close = server.metrics()["epic_steps_total"]
    # closed: the sequence leaves at the next step boundary
    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        if m.get('epic_requests_total{outcome="cancelled"}', 0) > before.get('epic_requests_total{outcome="cancelled"}', 0):
            break
        assert time.monotonic() < deadline, "the cancelled sequence was never freed"
        time.sleep(0.05)
    assert m["epic_steps_total"] - steps_at_close <= 3     # the step in flight, the neighbour's turns
    t.join()
    want, _ = _solo(model_and_tokenizer, model_and_tokenizer[1]("Hello")["input_ids"], 9, 12)
    assert other["res"].choices[0].text == want


def _post(server, body, raw=False):
    data = body if raw else json.dumps(body)
    return httpx.post(server.url + "/v1/completions", content=data, headers={"content-type": "application/json"},
                      timeout=60)


@pytest.mark.parametrize("body, param", [
    ('{"model": "x", "prompt": ', None),                                            # malformed JSON
    (dict(model="gpt-4", prompt="hi"), "model"),
    (dict(model=NAME, prompt="hi", max_tokens=-1), "max_tokens"),
    ('{"model": "%s", "prompt": "hi", "epic_alpha": NaN}' % NAME, "epic_alpha"),
    (dict(model=NAME, prompt="hi", epic_horizon=0), "epic_horizon"),
    (dict(model=NAME, prompt="word " * (CONTEXT + 10)), "prompt"),                  # over the context
    (dict(model=NAME, prompt="hi", max_tokens=10_000), "max_tokens"),
    (dict(model=NAME, prompt="hi", temperature=0.5), "temperature"),
    (dict(model=NAME, prompt="hi", n=2), "n"),
    (dict(model=NAME, prompt="hi", frobnicate=1), "frobnicate"),                    # unknown field
    (dict(model=NAME, prompt=[1, 2, 10 ** 9]), "prompt"),                           # token id out of vocab
    (dict(model=NAME, prompt=""), "prompt"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    r = _post(server, body, raw=isinstance(body, str))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_an_engine_fault_fails_only_its_request(server, model_and_tokenizer):
    tok = model_and_tokenizer[1]
    long_prompt = "one two three " * 60                        # past FAULT_AT tokens: its steps fault
    assert FAULT_AT < len(tok(long_prompt)["input_ids"]) < CONTEXT - 8
    results = {}

    def run(key, prompt, n, seed):
        try:
            results[key] = server.client.completions.create(model=NAME, prompt=prompt, max_tokens=n, seed=seed,
                                                            extra_body=_extra()).choices[0].text
        except openai.APIStatusError as err:
            results[key] = err

    threads = [threading.Thread(target=run, args=(f"ok{i}", "Good morning", 6 + i, 20 + i)) for i in range(3)]
    threads.append(threading.Thread(target=run, args=("bad", long_prompt, 4, 1)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = results["bad"]
    assert isinstance(bad, openai.InternalServerError) and "injected fault" in str(bad)
    for i in range(3):
        assert results[f"ok{i}"] == _solo(model_and_tokenizer, tok("Good morning")["input_ids"], 20 + i, 6 + i)[0]
    assert httpx.get(server.url + "/health").status_code == 200


def test_overload_is_a_429_and_sigterm_drains_and_exits_0():
    s = Server("--max-running", "1", "--max-queue", "1", "--shutdown-timeout", "4")
    try:
        long_body = dict(model=NAME, prompt=STORY, max_tokens=400, seed=1, stream=True, **EPIC)
        events = {}

        def stream(key):
            with httpx.stream("POST", s.url + "/v1/completions", json=long_body, timeout=120) as resp:
                events[key] = (resp.status_code, [line for line in resp.iter_lines() if line.startswith("data:")])

        first = threading.Thread(target=stream, args=("running",))
        first.start()
        while s.metrics()["epic_running_sequences"] < 1:
            time.sleep(0.05)
        second = threading.Thread(target=stream, args=("queued",))
        second.start()
        while s.metrics()["epic_waiting_requests"] < 1:
            time.sleep(0.05)
        over = _post(s, dict(model=NAME, prompt="hi", max_tokens=2))
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
        assert over.json()["error"]["type"] == "rate_limit_error"

        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0
        assert time.monotonic() - start < 4 + 15
        first.join(30)
        second.join(30)
        status, lines = events["running"]
        assert status == 200 and "shut down" in json.loads(lines[-1][5:])["error"]["message"]
        status, lines = events["queued"]
        assert status == 503 or "shut down" in lines[-1]
    finally:
        s.stop()
