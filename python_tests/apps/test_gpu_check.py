"""tools/gpu_check.py (``make gpu-check``) on the CPU: every step runs, the report is complete.

The GPU run itself cannot happen here; ``--cpu --quick`` takes the same steps with CPU tensors
(the CUDA build as a dry run, the device test, EPIC vs HF top-p on a tiny Llama, the roofline
measurement code at tiny shapes, the kernel suite's quick set with ``--device cpu``), so the driver,
the report and the benchmark path are exercised by the normal suite (~60 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import gpu_check  # noqa: E402

STEPS = ["environment", "build", "extension", "tests", "e2e", "roofline", "bench"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "EPIC_TEST_DEVICE", "EPIC_KERNELS_BACKEND")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--cpu", "--quick",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return proc, out


def test_cpu_mode_runs_every_step_and_writes_the_report(cpu_run):
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rep = json.loads((out / "report.json").read_text())
    for key in ("schema", "mode", "ok", "total_s", "env", "steps", "tests", "bench", "extension", "git", "e2e",
                "roofline"):
        assert key in rep, key
    assert rep["mode"] == "cpu" and rep["ok"] is True
    assert [s["name"] for s in rep["steps"]] == STEPS
    status = {s["name"]: s["status"] for s in rep["steps"]}
    assert status == dict(environment="pass", build="dry-run", extension="pass", tests="pass", e2e="pass",
                          roofline="pass", bench="pass")
    assert "setup.py build_ext --inplace" in rep["steps"][1]["would_run"]
    assert "MAX_JOBS=" in rep["steps"][1]["would_run"]
    for s in rep["steps"]:
        assert s["duration_s"] >= 0 and s["log"] and (out / s["log"]).exists()
    for key in ("python", "torch", "torch_cuda", "triton", "transformers", "nvcc", "flashinfer", "cpus"):
        assert key in rep["env"], key
    assert rep["extension"]["loaded"] and "CPU" in rep["extension"]["kernels"]["softmax_entropy"]
    t = rep["tests"]
    assert t["files"] == ["python_tests/gpu/test_cuda.py"]
    assert t["tests"] > 10 and t["passed"] > 10 and t["failures"] == 0 and t["errors"] == 0
    assert (out / "pytest-junit.xml").exists()
    e = rep["e2e"]                                   # EPIC vs HF top-p, tiny float32 Llama on the CPU
    assert e["ok"] and e["problems"] == [] and e["epic_tokens_per_s"] > 0 and e["hf_tokens_per_s"] > 0
    assert e["fast_equals_reference"].endswith("(4 tokens, torch.float32)")
    r = rep["roofline"]                              # the measured / roofline code path (CPU: not a GPU result)
    kernels = {x["kernel"] for x in r["rows"]}
    assert {"softmax_entropy", "softmax_entropy (SAMPLE)", "gumbel_topk_prune", "fork_attention (1 layer)"} <= kernels
    assert all(x["measured_us"] > 0 and x["roofline_us"] > 0 and x["ratio"] > 0 for x in r["rows"])
    b = rep["bench"]
    assert b["machine"]["device"] == "cpu" and b["machine"]["gpu"] is None and b["benchmarks"] > 0
    assert set(b["tables_timed"]) == {"softmax_entropy", "softmax_entropy_sample", "gumbel_topk_prune"}
    timed = {(r["table"], r["impl"]) for r in b["rows"] if r["median_ms"] > 0}
    for want in [("softmax_entropy", "cpp"), ("softmax_entropy", "eager"), ("softmax_entropy", "logsumexp"),
                 ("gumbel_topk_prune", "cpp"), ("gumbel_topk_prune", "reference")]:
        assert want in timed, want
    assert not any(r["impl"] == "triton" for r in b["rows"])             # CPU: Triton is skipped, not timed
    assert any("Triton kernels are timed on CUDA only" in x for x in b["skipped"])
    assert (out / "bench.json").exists() and "## softmax_entropy" in (out / "tables.md").read_text()
    assert "eager / C++" in b["tables"]["softmax_entropy"] and "reference / C++" in b["tables"]["gumbel_topk_prune"]
    md = (out / "report.md").read_text()
    assert md.startswith("# GPU check: PASSED") and "### softmax_entropy" in md and "### gumbel_topk_prune" in md
    assert "| bench | pass |" in md and "GPU: none" in md
    assert "## End to end: EPIC vs Hugging Face top-p" in md and "## Roofline: measured / roofline" in md
    assert md in proc.stdout                                    # printed at the end


def test_a_failed_step_fails_the_run_and_is_reported():
    rep = dict(ok=False, mode="cuda", quick=False, started_at="t", total_s=1.0, git={}, note=None,
               env={"torch": "x"}, steps=[dict(name="build", status="fail", duration_s=2.0,
                                               detail="build failed: exit code 1 (see build.log)")],
               tests=dict(files=["a.py"], tests=3, passed=1, failures=1, errors=1, skipped=0,
                          failed_tests=["a.py::t1", "a.py::t2"]), bench=None)
    md = gpu_check.render_markdown(rep)
    assert md.startswith("# GPU check: FAILED")
    assert "| build | fail | 2.0 | build failed: exit code 1 (see build.log) |" in md
    assert "* `a.py::t1`" in md and "* `a.py::t2`" in md


def test_test_counts_survive_a_killed_pytest(tmp_path):
    """Without junit XML (pytest timed out), counts come from the -v log, xdist's format included,
    and the short summary at the end is not counted twice."""
    log = tmp_path / "tests.log"
    log.write_text("python_tests/a.py::t[1] PASSED   [ 10%]\n"
                   "python_tests/a.py::u FAILED [ 20%]\n"
                   "[gw1] [ 30%] PASSED python_tests/b.py::v\n"
                   "[gw0] [ 40%] ERROR python_tests/b.py::w\n"
                   "python_tests/a.py::s SKIPPED (why) [ 50%]\n"
                   "FAILED python_tests/a.py::u - assert 0\n")
    c = gpu_check._log_counts(str(log))
    assert (c["tests"], c["passed"], c["failures"], c["errors"], c["skipped"]) == (5, 2, 1, 1, 1)
    assert c["failed_tests"] == ["python_tests/a.py::u", "python_tests/b.py::w"]
