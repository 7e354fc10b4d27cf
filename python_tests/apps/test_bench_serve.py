"""benchmarks/bench_serve.py runs end to end (a tiny smoke configuration): the server and the
in-process side make the same number of tokens, and the JSON has every run."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serve_smoke(tmp_path):
    out = tmp_path / "serve.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--pairs", "1", "--tokens", "3",
                          "--prompts", "2", "--solo-prompts", "1", "--threads", "1", "--json", str(out)],
                         check=True, timeout=600, capture_output=True, text=True)
    assert "| server, 2 clients (pair 1) | 6 |" in run.stdout and "in process batch 2: **" in run.stdout
    got = json.loads(out.read_text())
    assert len(got["pairs"]) == 1 and got["ratio_median"] > 0
    pair = got["pairs"][0]
    assert pair["server"]["tokens"] == pair["inproc"]["tokens"] == 6
    assert set(got["runs"]) == {"server_1", "server_4", "inproc_1"} and got["runs"]["inproc_1"]["tokens"] == 3
