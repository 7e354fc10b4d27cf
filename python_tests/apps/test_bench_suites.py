"""The benchmark suites' quick set (``benchmarks/suites``, their own pytest config), as a smoke test.

Runs ``pytest -c benchmarks/suites/pytest.ini benchmarks/suites --quick`` with one round per
benchmark (a smoke test of the code, not a measurement), then the JSON -> tables script and the
comparison script on its output: the machine info is in the JSON, every docs table renders, a run
compared with itself flags nothing. Well under a minute (the model cases decode a few tokens).
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
    assert {"softmax_entropy", "gumbel_topk_prune", "fork_attention", "plan_rows", "fork_layout",
            "candidate_manager"} <= tables
    txt = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tables.py"), str(out),
                          "--generate-json", str(tmp_path / "none.json")], capture_output=True, text=True, check=True).stdout
    for name in ("softmax_entropy", "gumbel_topk_prune", "fork_attention", "host_ops", "engine_step"):
        assert f"## {name}" in txt
    assert "eager / C++" in txt and epic["isa_body"] in txt
    cmp = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_compare.py"), str(out), str(out),
                          "--fail"], capture_output=True, text=True)
    assert cmp.returncode == 0 and "0 regression(s)" in cmp.stdout, cmp.stdout + cmp.stderr
