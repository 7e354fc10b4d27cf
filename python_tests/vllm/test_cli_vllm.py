"""epic-generate --engine vllm and --server URL: the same flags as the HF engine, and --json."""
import json

import epic_kernels.serving.offline as offline
from epic_kernels.cli.generate import main
from epic_kernels.serving import EpicServingDecoder


class _Borrowed:
    """The session's engine, lent to the CLI (its close() must not stop it)."""

    def __init__(self, transport):
        self.t, self.info = transport, transport.info

    def generate(self, requests):
        return self.t.generate(requests)

    def close(self):
        pass


def test_engine_vllm_writes_json(transport, tokenizer, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(offline.OfflineTransport, "start", classmethod(lambda cls, path, **kw: _Borrowed(transport)))
    path = tmp_path / "out.json"
    code = main(["--engine", "vllm", "--prompt", "Say hello.", "--max-new-tokens", "6", "--seed", "3",
                 "--horizon", "3", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0 and "--- EPIC (vLLM) ---" in out and "[summary]" in out
    rec = json.loads(path.read_text())
    assert rec["engine"] == "vllm" and 1 <= len(rec["tokens"]) <= 6 and len(rec["steps"]) == len(rec["tokens"])
    assert {"rounds", "requests", "generated", "survivors"} <= set(rec["steps"][0])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                        tokenize=True, return_tensors="pt")
    ids = (ids["input_ids"] if hasattr(ids, "keys") else ids)[0].tolist()
    same = EpicServingDecoder(transport, horizon=3).generate([ids], max_new_tokens=6, seed=3)
    assert rec["tokens"] == same.new_tokens[0] and rec["text"] == same.texts[0]


def test_server_url_writes_json(server, tmp_path, capsys):
    path = tmp_path / "out.json"
    code = main(["--server", server, "--prompt", "Say hello.", "--max-new-tokens", "4", "--top-k", "30",
                 "--rollout-top-k", "30", "--quiet-steps", "--json", str(path)])
    assert code == 0, capsys.readouterr().err
    rec = json.loads(path.read_text())
    assert rec["engine"] == "vllm" and rec["server"] == server and 1 <= len(rec["tokens"]) <= 4


def test_server_errors_are_messages(capsys):
    assert main(["--server", "http://127.0.0.1:9", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach a vLLM server at http://127.0.0.1:9/v1" in err and "Traceback" not in err
