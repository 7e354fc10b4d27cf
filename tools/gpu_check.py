"""GPU readiness in one command: build with CUDA, test on CUDA, benchmark, report.

    make gpu-check                                   # = python3 tools/gpu_check.py
    python3 tools/gpu_check.py --quick               # the suite's quick shapes only
    python3 tools/gpu_check.py --cpu --quick         # the same steps on the CPU (tests this script)

Made for a rented CUDA machine with no network: a system ``python3`` with torch (a CUDA build),
triton, transformers, pytest and ninja, ``nvcc`` on the PATH, and only this repository (no virtual
env, no embedded GGUF model, nothing beside it). Versions are read, never pinned. Steps, each in its
own subprocess with its own timeout (and all within ``--deadline-s``), each recorded whether or not
an earlier one failed:

1. ``environment``: versions of python, torch (+ CUDA), triton, transformers, pytest, setuptools,
   ninja, nvcc, the compiler; GPU name, capability, memory, SMs; whether ``flashinfer`` imports.
2. ``build``: ``python3 setup.py build_ext --inplace`` with ``MAX_JOBS`` = the CPUs and
   ``TORCH_CUDA_ARCH_LIST`` = this GPU's capability only (one architecture: a faster build), ninja.
   ``--cpu``: a dry run that checks the command can run (setup.py evaluates, ninja and setuptools
   are there) without building.
3. ``extension``: ``epic_kernels._C`` loads from this tree, has a CUDA kernel of ``softmax_entropy``
   (``--cpu``: a CPU kernel) and gives the right entropy on one small input.
4. ``tests``: pytest with ``EPIC_TEST_DEVICE=cuda`` and without ``TRITON_INTERPRET`` (Triton
   compiled) on ``python_tests/gpu/test_cuda.py`` (the ops with every backend, the Triton fork
   attention, and the fast engine on the device: tokens == the reference engine's), the op tests
   (``python_tests/ops``: the fork-attention kernel's tests compiled on CUDA among them) and
   ``python_tests/engine/test_fork_triton.py`` (the fast engine with the Triton fork attention on
   four model families); junit XML and the log go to the output folder. Test files are named
   explicitly, so nothing that needs the embedded model is collected.
5. ``e2e``: ``tools/gpu_e2e.py``: EPIC's fast engine against Hugging Face top-p sampling on a small
   bfloat16 Llama built from a config (no download): tokens/s of both, calls per token, the Triton
   fork attention must have run, fast == reference engine on a short decode (a count: bfloat16).
6. ``roofline``: ``benchmarks/roofline.py --measure``: each GPU kernel timed (CUDA events) at a few
   of the docs' roofline shapes; measured time / roofline time per kernel.
7. ``bench``: the kernel suite of ``make bench`` (``benchmarks/suites/bench_kernels.py``, pytest-benchmark)
   with ``--device cuda`` (``--cpu``: ``cpu``): ``softmax_entropy``, ``softmax_entropy_sample`` and
   ``gumbel_topk_prune`` with every implementation that runs there (C++, Triton on CUDA, the public
   op, torch eager, ``torch.logsumexp``, ``x.sum``, the reference prune); its JSON and the tables
   ``benchmarks/bench_tables.py`` makes from it, the form of the docs' tables.

Writes ``report.md`` and ``report.json`` (plus each step's log) to ``--out``, else ``$OUT``, else
``out/gpu-check/``; prints the report; exits 1 if any step failed. This script itself imports
nothing beyond the standard library, so a broken torch still yields a report.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_TEST = "test_cuda.py"
# per-step timeouts in seconds (the whole run is also capped by --deadline-s); on an H200 with 16
# CPUs the expected times are about 10, 60-120, 10, 60-120 (Triton compiles every variant the tests
# reach), 30, 20 and (never measured there) 60-90 s; --deadline-s caps the sum at 8 minutes
TIMEOUTS = dict(environment=60, build=240, extension=60, tests=180, e2e=90, roofline=60, bench=120)
# the bench step: the device kernels of the suite (the host ops run on the CPU whatever the device:
# `make bench` has them), pytest-benchmark's time per benchmark kept short for the GPU machine's limits
BENCH_SELECT = "softmax_entropy or gumbel_topk_prune"
BENCH_TABLES = ("softmax_entropy", "softmax_entropy_sample", "gumbel_topk_prune")
BENCH_MAX_TIME_S = 0.1


# ------------------------------------------------------------------------------------------------ #
# probes: run in a subprocess as `gpu_check.py --probe NAME` (they import torch; the driver does not) #
# ------------------------------------------------------------------------------------------------ #


def _version(module: str):
    import importlib
    try:
        m = importlib.import_module(module)
        return getattr(m, "__version__", "unknown version")
    except Exception as exc:                                   # noqa: BLE001 (reported)
        return f"ERROR {type(exc).__name__}: {str(exc)[:200]}"


def _first_line(cmd) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        return lines[0] if out.returncode == 0 and lines else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def probe_environment() -> dict:
    import platform
    info = dict(python=sys.version.split()[0], python_executable=sys.executable, platform=platform.platform(),
                cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET"))
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    sms=p.multi_processor_count)
        clock, bus = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
        if clock and bus:
            info["theoretical_bandwidth_gbps"] = round(2 * clock * 1e3 * bus / 8 / 1e9)
    for mod in ("triton", "transformers", "pytest", "setuptools", "numpy"):
        info[mod] = _version(mod)
    info["xdist"] = _version("xdist") if _has("xdist") else None
    from torch.utils import cpp_extension as ce
    info["ninja"] = _first_line(["ninja", "--version"]) if ce.is_ninja_available() else None
    info["cuda_home"] = ce.CUDA_HOME
    nvcc = shutil.which("nvcc") or (os.path.join(ce.CUDA_HOME, "bin", "nvcc") if ce.CUDA_HOME else None)
    info["nvcc"] = None
    if nvcc and os.path.exists(nvcc):
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"release ([\d.]+)", out)
        info["nvcc"] = f"{m.group(1) if m else out.strip().splitlines()[-1]} ({nvcc})"
    info["cxx"] = _first_line([os.environ.get("CXX", "c++"), "--version"])
    info["driver"] = _first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    info["flashinfer"] = _version("flashinfer") if _has("flashinfer") else "not installed"
    return info


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def probe_extension(device: str) -> dict:
    import torch
    sys.path.insert(0, ROOT)
    from epic_kernels import _ext
    m = _ext.load()
    info = dict(loaded=m is not None, error=None if m is not None else str(_ext.error()),
                module_file=getattr(m, "__file__", None))
    if m is None:
        return info
    if info["module_file"]:
        info["module_mtime"] = os.path.getmtime(info["module_file"])
    keys = {}
    for op in ("softmax_entropy", "softmax_entropy_sample", "gumbel_topk_prune", "fork_attention"):
        keys[op] = [k for k in ("CPU", "CUDA")
                    if torch._C._dispatch_has_kernel_for_dispatch_key(f"epic_kernels::{op}", k)]
    info["kernels"] = keys
    key = "CUDA" if device == "cuda" else "CPU"
    info["has_kernel"] = key in keys["softmax_entropy"]
    if info["has_kernel"]:
        x = torch.randn(4, 1000, dtype=torch.float64).mul(3).float()
        h, lse = torch.ops.epic_kernels.softmax_entropy(x.to(device))
        lp = torch.log_softmax(x.double(), -1)
        want_h, want_lse = -(lp.exp() * lp).sum(-1), torch.logsumexp(x.double(), -1)
        info["smoke_max_err"] = max(float((h.cpu().double() - want_h).abs().max()),
                                    float((lse.cpu().double() - want_lse).abs().max()))
    return info


# ------------------------------------------------------------------------------------------------ #
# driver                                                                                           #
# ------------------------------------------------------------------------------------------------ #


class Run:
    def __init__(self, args):
        self.args, self.out = args, args.out
        self.mode = "cpu" if args.cpu else "cuda"
        self.t0 = time.monotonic()
        self.steps: list[dict] = []
        self.env: dict = {}
        self.extension: dict = {}
        self.tests: dict = {}
        self.bench: dict | None = None
        self.e2e: dict | None = None
        self.roofline: dict | None = None

    def child_env(self, **extra) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.pop("EPIC_KERNELS_BACKEND", None)                     # automatic dispatch unless a test forces one
        if self.mode == "cuda":
            env.pop("TRITON_INTERPRET", None)                     # Triton compiled, not interpreted
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def timeout(self, step: str) -> float:
        left = self.args.deadline_s - (time.monotonic() - self.t0)
        return max(1.0, min(TIMEOUTS[step], left - 5))

    def execute(self, name: str, cmd: list[str], env=None, log: str | None = None) -> dict:
        """Run ``cmd`` with the step's timeout; output to ``log``. Returns a partial step record."""
        log = log or os.path.join(self.out, f"{name}.log")
        timeout = self.timeout(name)
        start = time.monotonic()
        with open(log, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                # own session: on a timeout the whole group goes (pytest's and the build's children too)
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.child_env(), stdout=f,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                f.write(f"\ncould not start: {exc}\n")
                proc = None
            rc, timed_out = None, False
            if proc is not None:
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc)
                    f.write(f"\n[gpu_check: killed after {timeout:.0f} s]\n")
        return dict(command=" ".join(cmd), rc=rc, timed_out=timed_out, timeout_s=round(timeout), out_dir=self.out,
                    seconds=round(time.monotonic() - start, 1), log=os.path.relpath(log, self.out))

    def record(self, name: str, status: str, detail: str, started: float, **fields):
        step = dict(name=name, status=status, detail=detail,
                    duration_s=round(time.monotonic() - started, 1), **fields)
        self.steps.append(step)
        print(f"gpu_check: {name:<12} {status:<8} {step['duration_s']:>6.1f} s  {detail}", flush=True)
        return step

    def probe(self, name: str, *probe_args: str) -> tuple[dict, dict | None]:
        path = os.path.join(self.out, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
        res = self.execute(name, [self.args.python, os.path.abspath(__file__), "--probe", *probe_args,
                                  "--probe-out", path])
        data = None
        if res["rc"] == 0 and os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        return res, data

    # -- steps ------------------------------------------------------------------------------------ #

    def step_environment(self):
        t = time.monotonic()
        res, data = self.probe("environment", "environment")
        if data is None:
            return self.record("environment", "fail", _why(res, "the probe failed"), t, **res)
        self.env = data
        problems = [f"{m}: {data[m]}" for m in ("transformers", "pytest") if str(data[m]).startswith("ERROR")]
        if self.mode == "cuda":
            if not data.get("torch_cuda"):
                problems.append(f"torch {data['torch']} is not a CUDA build")
            if not data.get("cuda_available"):
                problems.append("torch sees no CUDA device")
            if str(data["triton"]).startswith("ERROR"):
                problems.append(f"triton: {data['triton']}")
            if not data.get("nvcc"):
                problems.append("nvcc not found (PATH or CUDA_HOME)")
            if not data.get("ninja"):
                problems.append("ninja not found")
        summary = ", ".join(f"{k} {data.get(k)}" for k in ("python", "torch", "torch_cuda", "triton", "transformers")
                            ) + (f", {data.get('gpu')} (sm {data.get('capability')})" if data.get("gpu") else "")
        return self.record("environment", "fail" if problems else "pass",
                           "; ".join(problems) if problems else summary, t, **res)

    def build_command(self) -> tuple[list[str], dict]:
        cpus = str(self.env.get("cpus") or os.cpu_count() or 2)
        arch = self.args.arch or self.env.get("capability")
        env = dict(MAX_JOBS=cpus, TORCH_CUDA_ARCH_LIST=arch, EPIC_KERNELS_NO_CUDA=None)
        return [self.args.python, "setup.py", "build_ext", "--inplace"], env

    def step_build(self):
        t = time.monotonic()
        cmd, extra = self.build_command()
        shown = " ".join(f"{k}={v}" for k, v in extra.items() if v) + " " + " ".join(cmd)
        if self.mode == "cpu":
            # dry run: setup.py must evaluate (it imports torch and lists the extension's sources),
            # and the build needs setuptools and ninja; nothing is compiled
            res = self.execute("build", [self.args.python, "setup.py", "--name"],
                               env=self.child_env(**{**extra, "TORCH_CUDA_ARCH_LIST": None}))
            problems = [] if res["rc"] == 0 else [_why(res, "`setup.py --name` failed")]
            with open(os.path.join(self.out, "build.log")) as f:
                if res["rc"] == 0 and "epic_kernels" not in f.read():
                    problems.append("`setup.py --name` did not print epic_kernels")
            if self.env and not self.env.get("ninja"):
                problems.append("ninja not found")
            if self.env and str(self.env.get("setuptools", "ERROR")).startswith("ERROR"):
                problems.append("setuptools does not import")
            return self.record("build", "fail" if problems else "dry-run",
                               "; ".join(problems) if problems else f"not built (--cpu); would run: {shown}",
                               t, would_run=shown, **res)
        if not extra["TORCH_CUDA_ARCH_LIST"]:
            return self.record("build", "fail", "no GPU capability known (environment step failed); not built", t,
                               would_run=shown)
        res = self.execute("build", cmd, env=self.child_env(**extra))
        ok = res["rc"] == 0
        return self.record("build", "pass" if ok else "fail", shown if ok else _why(res, "build failed"), t, **res)

    def step_extension(self):
        t = time.monotonic()
        res, data = self.probe("extension", "extension", "--device", self.mode)
        if data is None:
            return self.record("extension", "fail", _why(res, "the probe failed"), t, **res)
        self.extension = data
        key = "CUDA" if self.mode == "cuda" else "CPU"
        problems = []
        if not data["loaded"]:
            problems.append(f"epic_kernels._C does not load: {data['error']}")
        elif not data.get("has_kernel"):
            problems.append(f"no {key} kernel of epic_kernels::softmax_entropy (built without CUDA?)")
        elif data.get("smoke_max_err") is None or data["smoke_max_err"] > 1e-4:
            problems.append(f"softmax_entropy on {self.mode} is wrong: max error {data.get('smoke_max_err')}")
        newest, note = _newest_source(), ""
        if data.get("module_mtime") and newest and data["module_mtime"] < newest[0]:
            stale = f"{os.path.basename(data['module_file'])} is older than {newest[1]} (a stale build)"
            if self.mode == "cuda":
                problems.append(stale)
            else:
                note = f"; warning: {stale}"                     # --cpu builds nothing: only say so
        detail = "; ".join(problems) if problems else (
            f"{os.path.basename(data['module_file'] or '?')}; {key} kernels of " +
            ", ".join(op for op, ks in data["kernels"].items() if key in ks) +
            f"; smoke error {data['smoke_max_err']:.1e}{note}")
        return self.record("extension", "fail" if problems else "pass", detail, t, **res)

    def test_files(self) -> list[str]:
        device_tests = sorted(glob.glob(os.path.join(ROOT, "python_tests", "**", DEVICE_TEST), recursive=True))
        files = [os.path.relpath(p, ROOT) for p in device_tests]
        if self.mode == "cpu" and self.args.quick:
            return files                                          # the device test alone (seconds)
        ops = sorted(os.path.relpath(p, ROOT) for p in
                     glob.glob(os.path.join(ROOT, "python_tests", "ops", "**", "test_*.py"), recursive=True))
        # the device test first: if the op tests run out of time, the contract has still been checked
        engine = [os.path.join("python_tests", "engine", "test_fork_triton.py")]
        return files + [p for p in ops if p not in files] + engine

    def step_tests(self):
        t = time.monotonic()
        files = self.test_files()
        if not files:
            return self.record("tests", "fail", "no test files found", t)
        junit = os.path.join(self.out, "pytest-junit.xml")
        if os.path.exists(junit):
            os.remove(junit)
        cmd = [self.args.python, "-m", "pytest", *files, "-v", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
        if self.mode == "cuda" and self.env.get("xdist") and int(self.env.get("cpus") or 1) >= 8:
            cmd += ["-n", "4"]          # pytest-xdist, where installed: Triton compiles on 4 cores at once
        res = self.execute("tests", cmd, env=self.child_env(EPIC_TEST_DEVICE=self.mode))
        self.tests = _junit_counts(junit) or _log_counts(os.path.join(self.out, "tests.log"))
        self.tests["files"] = files
        c = self.tests
        ok = res["rc"] == 0 and c.get("tests", 0) > 0 and not c.get("failures") and not c.get("errors")
        detail = (f"{c.get('passed', '?')} passed, {c.get('failures', '?')} failed, {c.get('errors', '?')} errors, "
                  f"{c.get('skipped', '?')} skipped ({c.get('source')})")
        if not ok:
            detail = _why(res, "pytest failed") + "; " + detail
        return self.record("tests", "pass" if ok else "fail", detail, t, **res)

    def _json_step(self, name: str, cmd: list[str]) -> tuple[dict, dict | None]:
        path = os.path.join(self.out, f"{name}.json")
        if os.path.exists(path):
            os.remove(path)
        res = self.execute(name, cmd + ["--json", path])
        data = None
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        return res, data

    def step_e2e(self):
        """EPIC vs Hugging Face top-p on a small Llama built from a config (tools/gpu_e2e.py)."""
        t = time.monotonic()
        cmd = [self.args.python, os.path.join(ROOT, "tools", "gpu_e2e.py"), "--device", self.mode]
        if self.args.quick or self.mode == "cpu":
            cmd.append("--quick")
        res, self.e2e = self._json_step("e2e", cmd)
        d = self.e2e or {}
        ok = res["rc"] == 0 and d.get("ok")
        detail = (f"EPIC {d['epic_tokens_per_s']:.1f} tok/s vs HF top-p {d['hf_tokens_per_s']:.1f} tok/s "
                  f"({d['epic_over_hf_time']:.2f}x the time); Triton fork-attention layer calls "
                  f"{d['fork_attention_triton_layer_calls']}; fast == reference: {d['fast_equals_reference']}"
                  if "epic_tokens_per_s" in d else "no results")
        if not ok:
            detail = _why(res, "the end-to-end decode failed") + "; " + "; ".join(d.get("problems", [])) + \
                "; " + detail
        return self.record("e2e", "pass" if ok else "fail", detail, t, **res)

    def step_roofline(self):
        """Measured time / roofline time per GPU kernel (benchmarks/roofline.py --measure)."""
        t = time.monotonic()
        cmd = [self.args.python, os.path.join(ROOT, "benchmarks", "roofline.py"), "--measure", "--device", self.mode]
        if self.args.quick:
            cmd.append("--quick")
        res, self.roofline = self._json_step("roofline", cmd)
        rows = (self.roofline or {}).get("rows", [])
        ok = res["rc"] == 0 and bool(rows)
        detail = (", ".join(f"{r['kernel']} [{r['shape']}] {r['ratio']:.1f}x" for r in rows)
                  if rows else "no results")
        if self.mode == "cpu":
            detail = "CPU (a check of the code; ratios against GPU roofs mean nothing): " + detail
        if not ok:
            detail = _why(res, "the roofline measurement failed") + "; " + detail
        return self.record("roofline", "pass" if ok else "fail", detail, t, **res)

    def step_bench(self):
        """The kernel suite (``benchmarks/suites/bench_kernels.py``, the ops ``make bench`` times on the
        CPU) with ``--device`` this mode's device; the JSON is pytest-benchmark's, the tables are
        ``benchmarks/bench_tables.py``'s, the same code that writes the docs' tables."""
        t = time.monotonic()
        path = os.path.join(self.out, "bench.json")
        for old in (path, os.path.join(self.out, "tables.md")):
            if os.path.exists(old):
                os.remove(old)
        cmd = [self.args.python, "-m", "pytest", "-c", os.path.join("benchmarks", "suites", "pytest.ini"),
               os.path.join("benchmarks", "suites", "bench_kernels.py"), "-q", "-p", "no:randomly",
               "--device", self.mode, "-k", BENCH_SELECT, f"--benchmark-json={path}",
               f"--benchmark-max-time={BENCH_MAX_TIME_S}"]
        if self.args.quick:
            cmd.append("--quick")
        res = self.execute("bench", cmd)
        self.bench = None
        if os.path.exists(path):
            self.bench = bench_summary(path)
            tab = subprocess.run([self.args.python, os.path.join(ROOT, "benchmarks", "bench_tables.py"), path,
                                  "--generate-json", os.path.join(self.out, "no-generate.json"),
                                  "--command", "make gpu-check" + (" ARGS=--cpu" if self.mode == "cpu" else "")],
                                 capture_output=True, text=True, timeout=60)
            if tab.returncode == 0:
                with open(os.path.join(self.out, "tables.md"), "w") as f:
                    f.write(tab.stdout)
                self.bench["tables"] = {name: body for name, body in _sections(tab.stdout).items()
                                        if name in BENCH_TABLES}
            else:
                self.bench["tables_error"] = (tab.stderr or tab.stdout)[-500:]
        b = self.bench or {}
        ok = res["rc"] == 0 and b.get("benchmarks", 0) > 0 and "tables_error" not in b
        detail = (f"{b['benchmarks']} timings ({', '.join(sorted(b['tables_timed']))}), {len(b['skipped'])} skipped"
                  if b else "no results")
        if not ok:
            detail = _why(res, "the benchmark failed") + "; " + detail
        return self.record("bench", "pass" if ok else "fail", detail, t, **res)

    # -- report ----------------------------------------------------------------------------------- #

    def report(self) -> dict:
        ok = all(s["status"] in ("pass", "dry-run", "skipped") for s in self.steps)
        rep = dict(schema=1, tool="tools/gpu_check.py", mode=self.mode, quick=self.args.quick, ok=ok,
                   started_at=self.args.started_at, total_s=round(time.monotonic() - self.t0, 1),
                   out_dir=self.out, git=_git(), env=self.env, steps=self.steps, extension=self.extension,
                   tests=self.tests, bench=self.bench, e2e=self.e2e, roofline=self.roofline,
                   note=("--cpu: CPU tensors; a test of the script, not GPU results"
                         if self.mode == "cpu" else None))
        with open(os.path.join(self.out, "report.json"), "w") as f:
            json.dump(rep, f, indent=1)
        md = render_markdown(rep)
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write(md)
        return rep


def _newest_source() -> tuple[float, str] | None:
    """(mtime, path) of the newest file the extension is built from (setup.py, csrc/)."""
    paths = [os.path.join(ROOT, "setup.py")] + [
        p for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True)
        if p.endswith((".cpp", ".h", ".cu", ".cuh")) and os.sep + "tests" + os.sep not in p]
    found = [(os.path.getmtime(p), os.path.relpath(p, ROOT)) for p in paths if os.path.isfile(p)]
    return max(found) if found else None


def _kill_group(proc: subprocess.Popen) -> None:
    import signal
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _why(res: dict, what: str) -> str:
    if res.get("timed_out"):
        return f"{what}: timed out after {res['timeout_s']} s (see {res['log']})"
    if res.get("rc") is None:
        return f"{what}: could not start (see {res['log']})"
    return f"{what}: exit code {res['rc']} (see {res['log']}{_last_error(res)})"


def _last_error(res: dict) -> str:
    """': <the last line that looks like an error>' of a step's log, or ''."""
    path = os.path.join(res.get("out_dir", ""), res["log"])
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines()[-200:] if ln.strip()]
    except OSError:
        return ""
    hits = [ln for ln in lines if re.search(r"Error|error:|FAILED|Exception", ln)]
    return f": {hits[-1][:200]}" if hits else ""


def _junit_counts(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    c["seconds"] = round(sum(float(s.get("time", 0)) for s in suites), 1)
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    c["failed_tests"] = failed[:50]
    c["source"] = "junit xml"
    return c


def _log_counts(path: str) -> dict:
    """Counts from a ``pytest -v`` log (when pytest was killed before writing its XML)."""
    text = open(path).read() if os.path.exists(path) else ""
    # `path::test PASSED [ 3%]`, or with pytest-xdist `[gw0] [ 3%] PASSED path::test`
    line = r"^(?:(\S+::\S+) {w}\b|\[gw\d+\] (?:\[\s*\d+%\] )?{w} (\S+::\S+))"
    c = {k: len(re.findall(line.format(w=word), text, re.M)) for k, word in
         (("passed", "PASSED"), ("failures", "FAILED"), ("errors", "ERROR"), ("skipped", "SKIPPED"))}
    c["tests"] = sum(c.values())
    c["failed_tests"] = [a or b for w in ("FAILED", "ERROR") for a, b in re.findall(line.format(w=w), text, re.M)][:50]
    c["source"] = "pytest log (no junit xml: pytest did not finish)"
    return c


def _git() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return dict(commit=commit or None, dirty=bool(dirty)) if commit else {}
    except (OSError, subprocess.TimeoutExpired):
        return {}


def bench_summary(path: str) -> dict:
    """What report.json keeps of the suite's JSON: machine, counts, and every median (ms)."""
    with open(path) as f:
        data = json.load(f)
    rows = [dict(table=b["extra_info"].get("table"), case=b["extra_info"].get("case"),
                 impl=b["extra_info"].get("impl"), median_ms=b["stats"]["median"] * 1e3,
                 iqr_ms=b["stats"]["iqr"] * 1e3, rounds=b["stats"]["rounds"]) for b in data.get("benchmarks", [])]
    skipped = _skipped(os.path.join(os.path.dirname(path), "bench.log"))
    return dict(json=os.path.basename(path), machine=data.get("machine_info", {}).get("epic", {}),
                datetime=data.get("datetime"), benchmarks=len(rows), rows=rows,
                tables_timed=sorted({r["table"] for r in rows if r["table"]}), skipped=skipped)


def _skipped(log: str) -> list[str]:
    """``SKIPPED [n] file:line: reason`` lines of pytest's ``-ra`` summary."""
    try:
        with open(log, errors="replace") as f:
            return [ln.strip() for ln in f if ln.startswith("SKIPPED")]
    except OSError:
        return []


def _sections(text: str) -> dict:
    """bench_tables.py's printout (``## name`` then the table) as ``{name: body}``."""
    out, name = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def render_markdown(rep: dict) -> str:
    env = rep["env"] or {}
    L = [f"# GPU check: {'PASSED' if rep['ok'] else 'FAILED'}", ""]
    if rep.get("note"):
        L += [f"**{rep['note']}**", ""]
    L += [f"Mode `{rep['mode']}`{' (quick)' if rep['quick'] else ''}, started {rep['started_at']}, "
          f"{rep['total_s']} s in all; commit {rep['git'].get('commit', 'unknown')}"
          f"{' (uncommitted changes)' if rep['git'].get('dirty') else ''}.", ""]
    L += ["| step | status | seconds | detail |", "|---|---|---|---|"]
    L += [f"| {s['name']} | {s['status']} | {s['duration_s']} | {s['detail'].replace('|', '/')} |" for s in rep["steps"]]
    L += ["", "## Environment", "", "| what | value |", "|---|---|"]
    for k in ("gpu", "capability", "gpu_memory_gib", "sms", "driver", "python", "torch", "torch_cuda", "triton",
              "transformers", "pytest", "setuptools", "ninja", "nvcc", "cuda_home", "cxx", "flashinfer", "cpus",
              "theoretical_bandwidth_gbps"):
        if env.get(k) is not None:
            L.append(f"| {k} | {env[k]} |")
    t = rep["tests"] or {}
    if t:
        L += ["", "## Tests", "", f"`{' '.join(t.get('files', []))}` with `EPIC_TEST_DEVICE={rep['mode']}`: "
              f"{t.get('tests')} tests, {t.get('passed')} passed, {t.get('failures')} failed, {t.get('errors')} "
              f"errors, {t.get('skipped')} skipped (junit: `pytest-junit.xml`, log: `tests.log`)."]
        if t.get("failed_tests"):
            L += ["", "Failed:", ""] + [f"* `{n}`" for n in t["failed_tests"]]
    e = rep.get("e2e")
    if e:
        L += ["", "## End to end: EPIC vs Hugging Face top-p", "",
              f"{e.get('gpu') or e['device']}, {e['dtype']}, Llama {e['model']}, batch {e['batch']}, prompt "
              f"{e['prompt']}, {e['new_tokens']} new tokens: EPIC {e.get('epic_tokens_per_s', float('nan')):.1f} "
              f"tok/s, HF top-p {e.get('hf_tokens_per_s', float('nan')):.1f} tok/s; fast == reference engine: "
              f"{e.get('fast_equals_reference')}; problems: {e.get('problems') or 'none'}."]
    r = rep.get("roofline")
    if r and r.get("rows"):
        L += ["", "## Roofline: measured / roofline", "", f"Device {r['gpu']} ({r['device']}), {r['dtype']}; "
              "roofline from benchmarks/roofline.py.", "",
              "| kernel | shape | measured us | roofline us | bound | measured / roofline |", "|---|---|---|---|---|---|"]
        L += [f"| {x['kernel']} | {x['shape']} | {x['measured_us']:.3g} | {x['roofline_us']:.3g} | {x['bound']} | "
              f"{x['ratio']:.2f}x |" for x in r["rows"]]
    b = rep["bench"]
    if b:
        m = b.get("machine", {})
        L += ["", "## Microbenchmarks", "",
              f"`benchmarks/suites/bench_kernels.py --device {m.get('device', rep['mode'])}` (pytest-benchmark, "
              f"`-k \"{BENCH_SELECT}\"`{', --quick' if m.get('quick') else ''}): {b['benchmarks']} timings in "
              f"`{b['json']}`; tables by `benchmarks/bench_tables.py` (all of them in `tables.md`). "
              f"GPU: {m.get('gpu') or 'none'}; CPU {m.get('cpu_model', '?')}, git {m.get('git', '?')}. "
              "Medians of rounds (CUDA: synchronized after every call, no L2 flush); ratios within this run.", ""]
        for name in BENCH_TABLES:
            if b.get("tables", {}).get(name):
                L += [f"### {name}", "", b["tables"][name], ""]
        if b.get("tables_error"):
            L += ["Tables failed: `" + b["tables_error"].replace("`", "'")[-300:] + "`", ""]
        if b.get("skipped"):
            L += ["Skipped:", ""] + [f"* {x}" for x in b["skipped"]] + [""]
    elif any(s["name"] == "bench" for s in rep["steps"]):
        L += ["", "## Microbenchmarks", "", "No results (see `bench.log`)."]
    return "\n".join(L) + "\n"


def default_out() -> str:
    return os.environ.get("OUT") or os.path.join(ROOT, "out", "gpu-check")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run the steps with CPU tensors (no CUDA build)")
    ap.add_argument("--quick", action="store_true", help="the suite's quick shapes (--cpu: the device test only)")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else out/gpu-check)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for every step (default: this one)")
    ap.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST (default: this GPU's capability)")
    ap.add_argument("--deadline-s", type=float, default=480.0, help="the whole run's time limit")
    ap.add_argument("--skip-build", action="store_true", help="use the extension already built in place")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        data = probe_environment() if args.probe == "environment" else probe_extension(args.device)
        with open(args.probe_out, "w") as f:
            json.dump(data, f, indent=1)
        return 0
    args.out = os.path.abspath(args.out or default_out())
    os.makedirs(args.out, exist_ok=True)
    args.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run = Run(args)
    print(f"gpu_check: mode {run.mode}, output {args.out}, python {args.python}", flush=True)
    steps = [run.step_environment, run.step_build, run.step_extension, run.step_tests, run.step_e2e,
             run.step_roofline, run.step_bench]
    for step in steps:
        if step == run.step_build and args.skip_build:
            run.record("build", "skipped", "--skip-build: the extension already built in place is used",
                       time.monotonic())
            continue
        try:
            step()
        except Exception as exc:                                   # noqa: BLE001 (a bug here must not lose the report)
            run.record(step.__name__.removeprefix("step_"), "fail", f"gpu_check error: {type(exc).__name__}: {exc}",
                       time.monotonic())
    rep = run.report()
    print()
    print(open(os.path.join(args.out, "report.md")).read())
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
