"""epic-serve --engine vllm --upstream URL: the OpenAI-compatible server in front of a running `vllm serve`,
its sequences batched continuously over the serving decoder (``serving.batch.ServingBatch``). With a seed a
request's text equals ``epic_kernels.serving.generate``'s on the same server, alone or beside others; what the
vLLM engine cannot run is a 400 naming the field."""
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from epic_kernels.serving import generate as serving_generate

from conftest import SERVER_MAX_LOGPROBS, chat_ids  # noqa: E402  (python_tests/vllm on the path, as test_serving.py)

KW = dict(top_k=20, epic_rollout_top_k=20, epic_alpha=0.5, epic_horizon=2, epic_rollouts=2)


@pytest.fixture(scope="module")
def epic_server(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "epic_kernels.service.cli", "--engine", "vllm", "--upstream", server,
                             "--port", str(port), "--max-context", "512"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "epic-serve exited"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "epic-serve did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.kill()
        proc.wait(30)


def _solo(server, ids, seed, n):
    out = serving_generate(server, [ids], max_new_tokens=n, seed=seed, alpha=KW["epic_alpha"], horizon=KW["epic_horizon"],
                           rollouts=KW["epic_rollouts"], top_k=KW["top_k"], rollout_top_k=KW["epic_rollout_top_k"])
    return out.texts[0]


def test_requests_through_vllm_equal_the_serving_decoder_alone(server, epic_server, tokenizer):
    client = openai.OpenAI(base_url=epic_server + "/v1", api_key="none", max_retries=0, timeout=300)
    model = client.models.list().data[0].id
    messages = ["Write a haiku about tea.", "What is 12 times 7?", "Name three colours."]
    got = {}

    def run(i):
        got[i] = client.chat.completions.create(model=model, messages=[{"role": "user", "content": messages[i]}],
                                                max_tokens=6 + 2 * i, seed=40 + i, stream=i == 1,
                                                extra_body=KW)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, message in enumerate(messages):
        res = got[i]
        text = ("".join(ch.choices[0].delta.content or "" for ch in res if ch.choices) if i == 1
                else res.choices[0].message.content)
        assert text == _solo(server, chat_ids(tokenizer, message), 40 + i, 6 + 2 * i), i


@pytest.mark.parametrize("extra, field", [
    (dict(top_p=0.9), "top_p"),
    (dict(epic_entropies=True), "epic_entropies"),
    (dict(top_k=SERVER_MAX_LOGPROBS + 1), None),      # found by the engine (the server's limit): named in the text
    (dict(epic_rollout_top_k=None), "epic_rollout_top_k"),
])
def test_what_the_vllm_engine_cannot_run_is_a_400(epic_server, extra, field):
    model = httpx.get(epic_server + "/v1/models").json()["data"][0]["id"]
    body = dict(dict(model=model, prompt="Hi", max_tokens=2, **KW), **extra)
    r = httpx.post(epic_server + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    if field is None:
        assert "--max-logprobs 31 or lower top_k" in r.json()["error"]["message"]
