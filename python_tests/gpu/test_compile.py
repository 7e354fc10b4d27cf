"""Every Triton kernel of the package compiles for sm_80 and sm_90 without a GPU, without spills and
within the per-block shared memory limits, at every variant its compiled dispatch can launch.

* ``test_every_variant_compiles_for_sm80_and_sm90``: ``tools/compile_report.py`` (a subprocess,
  Triton compiled rather than interpreted, a fresh Triton cache, two workers; ~75 s on 2 cores)
  over each kernel module's ``compile_space()``; fails on a compile error, a spill, shared memory
  above the limit, or a kernel of the package missing from the compile spaces. The table of
  docs/kernels.md must list the same variants (its numbers: ``python tools/compile_report.py --docs``).
* ``test_compile_space_covers_every_launch``: the CPU counterpart that ties the compile spaces to the
  dispatch: the wrappers run (interpreted) over a sweep of dtypes, head dims, row counts, vocabularies
  and flags with the compiled launch configuration (block sizes, warps, TC), every launch is
  recorded, and each must be a variant of ``compile_space()``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "python_tests", "ops"))

import compile_report  # noqa: E402
import _cases_triton as TR  # noqa: E402  (TRITON_INTERPRET=1 without CUDA)

MODULES = compile_report.MODULES


def _kernels_in_package() -> set:
    """Names of every ``@triton.jit`` kernel (``_..._kernel``) defined in epic_kernels/triton_kernels."""
    names = set()
    folder = os.path.join(ROOT, "epic_kernels", "triton_kernels")
    for f in os.listdir(folder):
        if f.endswith(".py"):
            text = open(os.path.join(folder, f)).read()
            names |= set(re.findall(r"@triton\.jit[^\n]*\ndef (_\w+_kernel)\(", text))
    return names


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_CACHE_DIR")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compile_report.py"), "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data


def test_every_variant_compiles_for_sm80_and_sm90(report):
    proc, data = report
    assert data is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = data["results"]
    bad = [f"sm_{r['arch']} {r['kernel']} [{r['variant']}]: {p}" for r in results for p in compile_report.problems(r)]
    assert not bad, "\n".join(bad)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {r["arch"] for r in results} == {80, 90}
    assert len(results) == 2 * len({r["index"] for r in results})
    for r in results:                                   # what the checks read was really there
        assert r["regs"] and r["regs"] <= 255 and r["spill_stores"] == 0 == r["spill_loads"] == r["local"]
        assert 0 <= r["dynamic_shared"] + r["static_shared"] <= compile_report.SHARED_LIMIT[r["arch"]]
    compiled = {r["kernel"] for r in results}
    assert compiled == _kernels_in_package(), "a kernel of the package has no compile_space() entry"
    # docs/kernels.md's generated table lists exactly these variants
    text = open(compile_report.DOC).read()
    region = re.search(r"<!-- begin generated: compile_report -->\n(.*?)<!-- end generated: compile_report -->",
                       text, re.S)
    assert region, "docs/kernels.md has no compile_report region"
    rows = {(m.group(1), m.group(2)) for m in re.finditer(r"^\| `(\w+)` \| ([^|]+?) \|", region.group(1), re.M)}
    want = {(r["kernel"], r["variant"]) for r in results}
    assert rows == want, f"docs table out of date (run {compile_report.COMMAND}): " \
                         f"missing {sorted(want - rows)[:5]}, extra {sorted(rows - want)[:5]}"


def test_report_flags_spills_shared_memory_and_errors():
    """The failure rules themselves (a report that could not fail would prove nothing)."""
    ok = dict(arch=90, regs=128, spill_stores=0, spill_loads=0, local=0, stack=0, dynamic_shared=1024,
              static_shared=1024, num_warps=4)
    assert compile_report.problems(ok) == []
    assert "spills" in compile_report.problems(dict(ok, spill_stores=8, spill_loads=8))[0]
    assert "spills" in compile_report.problems(dict(ok, local=16))[0]
    assert "shared memory" in compile_report.problems(dict(ok, dynamic_shared=227 * 1024))[0]
    assert compile_report.problems(dict(ok, arch=80, dynamic_shared=163 * 1024 - 1024)) == []
    assert "shared memory" in compile_report.problems(dict(ok, arch=80, dynamic_shared=163 * 1024))[0]
    assert "registers" in compile_report.problems(dict(ok, regs=255, num_warps=16))[0]
    assert "compile error" in compile_report.problems(dict(arch=80, error="CompilationError: x"))[0]


# ------------------------------------------------------------------------------------------------ #
# the compile spaces against the launches the dispatch makes                                       #
# ------------------------------------------------------------------------------------------------ #


class _Recorder:
    """Stands in for a kernel: records each launch's key, then runs the interpreted kernel. Not an
    InterpretedFunction, so the wrappers plan as for compiled kernels."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log
        self.fn = kernel.fn

    def __getitem__(self, grid):
        from epic_kernels.triton_kernels.common import launch_key

        def launch(*args, **kwargs):
            self.log.add(launch_key(self.kernel, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # bfloat16 takes the compiled (tensor-core) path here, whose
def test_compile_space_covers_every_launch(monkeypatch):   # interpreted dot is garbage: only launches are recorded
    tk = TR._ops()
    from epic_kernels.triton_kernels import common, fork_attention, gumbel_topk_prune, softmax_entropy
    from epic_kernels.triton_kernels.common import launch_key
    mods = dict(softmax_entropy=softmax_entropy, gumbel_topk_prune=gumbel_topk_prune,
                fork_attention=fork_attention, common=common)
    declared = {launch_key(*launch) for name in MODULES for launch in mods[name].compile_space()}
    log: set = set()
    for mod in mods.values():
        for name in [n for n in dir(mod) if n.startswith("_") and n.endswith("_kernel")]:
            monkeypatch.setattr(mod, name, _Recorder(getattr(mod, name), log))
        if hasattr(mod, "check_device"):
            monkeypatch.setattr(mod, "check_device", lambda *a: None)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for rows, V in ((1, 5000), (9, 2000)):                    # a split row; rows enough for no split
            x = (torch.randn(rows, V, generator=g, dtype=torch.float64) * 3).to(dtype)
            seeds, pos = torch.randint(0, 2**32, (rows,)), torch.randint(0, 2**31, (rows,))
            tk.softmax_entropy_triton(x)
            tk.softmax_entropy_triton(x, seeds, 1, pos)
            tk.gumbel_topk_prune_triton(x, seeds, pos, 0.0, 3)     # width 0: too few survivors, dense rows
        for D in (20, 128, 256):
            if not fork_attention.supports(dtype, D):
                continue
            for n_rows in (2, 40):                                # <= 16 and > 16 query vectors per kv head
                H, Hkv, L, T = 4, 2, 8, 3
                q = torch.randn(n_rows, H, 1, D, generator=g).to(dtype)
                kv = torch.randn(n_rows, Hkv, 1, D, generator=g).to(dtype)
                pool = torch.zeros(n_rows, Hkv, T, D, dtype=dtype)
                K = torch.randn(1, Hkv, L, D, generator=g).to(dtype)
                idx = torch.arange(n_rows)
                tk.fork_attention_triton(q, kv, kv, pool, pool.clone(), K, K, torch.ones(1, L, dtype=torch.bool),
                                         torch.zeros(n_rows, dtype=torch.int64), idx, idx % T, None, None, 2.0)
    common.philox_noise_triton(torch.tensor([1]), torch.arange(4096).view(1, -1))
    missing = sorted(log - declared)
    assert not missing, f"launches no compile_space() declares (tools/compile_report.py would not compile them): " \
                        f"{missing[:4]}"
    kernels = {k[0] for k in log}
    assert kernels == _kernels_in_package(), kernels ^ _kernels_in_package()
