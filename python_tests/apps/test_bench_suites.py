"""The benchmark suites' quick set (``benchmarks/suites``, their own pytest config), as a smoke test.

Runs ``pytest -c benchmarks/suites/pytest.ini benchmarks/suites --quick`` with one round per
benchmark (a smoke test of the code, not a measurement), then the JSON -> tables script and the
comparison script on its output: the machine info is in the JSON, every docs table renders, the
work counts come from the engine's StepStats, the naive baseline returned the fast engine's tokens
(the suite asserts it), a run compared with itself flags nothing. Most of its time is loading the
embedded model once (17-25 s here); each model benchmark then runs one round of a few tokens.
Measured back to back at load 6.5 on the 2-core machine: 49 s, the same as the smaller quick set
it replaced (which had no fork, decode-step, block-size, model-call or streams benchmarks).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_suites_json_tables_and_compare(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("EPIC_TEST_DEVICE", "EPIC_KERNELS_BACKEND")}
    env["OMP_WAIT_POLICY"] = env.get("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", os.path.join(ROOT, "benchmarks", "suites", "pytest.ini"),
         os.path.join(ROOT, "benchmarks", "suites"), "-q", "--quick", f"--benchmark-json={out}",
         "--benchmark-min-rounds=1", "--benchmark-max-time=0.0001", "--benchmark-warmup=off", "-p", "no:randomly"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    epic = data["machine_info"]["epic"]
    for key in ("cpu_model", "isa_body", "threads", "omp_wait_policy", "git", "loadavg_start", "loadavg_end"):
        assert key in epic, key
    tables = {b["extra_info"]["table"] for b in data["benchmarks"]}
    assert {"softmax_entropy", "gumbel_topk_prune", "fork_attention", "fork_kv", "fork_depth2", "plan_rows",
            "fork_layout", "candidate_manager", "engine_step", "decode_steps", "block_size", "model_call",
            "generate"} <= tables
    steps = {b["extra_info"]["impl"]: b["extra_info"] for b in data["benchmarks"]
             if b["extra_info"]["table"] == "decode_steps"}
    assert steps["fast"]["tokens"] == steps["naive"]["tokens"] and steps["fast"]["per_step"]["calls"] >= 1
    assert steps["fast"]["profile"]["ops"] and steps["fast"]["lemma"] > 0
    txt = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tables.py"), str(out),
                          "--generate-json", str(tmp_path / "none.json")], capture_output=True, text=True, check=True).stdout
    for name in ("softmax_entropy", "gumbel_topk_prune", "fork_attention", "host_ops", "engine_step", "fork_kv",
                 "decode_steps", "step_profile", "block_size", "model_call"):
        assert f"## {name}" in txt
    assert "eager / C++" in txt and epic["isa_body"] in txt
    cmp = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_compare.py"), str(out), str(out),
                          "--fail"], capture_output=True, text=True)
    assert cmp.returncode == 0 and "0 regression(s)" in cmp.stdout, cmp.stdout + cmp.stderr
