"""Fixtures of the vLLM tests: one in-process engine for the whole session (small KV cache, the
embedded model converted to safetensors once), the embedded model under transformers for the
reference, and a `vllm serve` started on 127.0.0.1 only when a test asks for it (bounded start-up
wait, always stopped)."""
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402

SERVER_START_TIMEOUT = 420        # seconds: a cold torch.compile on this 2-core machine takes ~70 s
SERVER_MAX_LOGPROBS = 30          # below the decoder's default 50, for the "above max_logprobs" test
MAX_MODEL_LEN = 1024
MESSAGES = ["Write a haiku about tea.", "Name three colours of the rainbow.", "What is 12 times 7?",
            "Give me a tip for learning to cook.", "Describe a cat in one sentence."]


@pytest.fixture(scope="session")
def hf_dir():
    from epic_kernels.models import embedded_hf_dir

    return embedded_hf_dir()


@pytest.fixture(scope="session")
def transport(hf_dir):
    from epic_kernels.serving import OfflineTransport

    t = OfflineTransport.start(hf_dir, max_model_len=MAX_MODEL_LEN)
    yield t
    t.close()


@pytest.fixture(scope="session")
def tokenizer(transport):
    return transport.info.tokenizer


def chat_ids(tokenizer, message: str) -> list:
    """Token ids of a user message in the chat template."""
    enc = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                        tokenize=True)
    return [int(t) for t in (enc["input_ids"] if hasattr(enc, "keys") else enc)]


@pytest.fixture(scope="session")
def prompts(tokenizer):
    """Chat-template token ids of MESSAGES."""
    return [chat_ids(tokenizer, m) for m in MESSAGES]


@pytest.fixture(scope="session")
def hf_model(hf_dir):
    """The same weights under transformers, float32: the library's reference runs on it."""
    from epic_kernels.models import load_model

    model, _ = load_model(hf_dir)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(hf_dir, tmp_path_factory):
    """``vllm serve`` on 127.0.0.1 at a free port; yields its URL; stopped (process group) at the end."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    # `vllm serve` itself: vllm-cpu 0.32's `vllm` script asks for the metadata of a distribution named
    # "vllm" and fails (it is "vllm-cpu"); the server module it starts runs fine
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir), "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(MAX_MODEL_LEN), "--max-logprobs", str(SERVER_MAX_LOGPROBS), "--block-size", "32",
           "--enable-prefix-caching", "--seed", "0", "--max-num-batched-tokens", "16384"]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start within {SERVER_START_TIMEOUT}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url + "/v1"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
