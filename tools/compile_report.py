"""Compile every Triton kernel of epic_kernels for sm_80 and sm_90, without a GPU; report and check
registers, spills and shared memory.

    python tools/compile_report.py               # compile, print the table, exit 1 on a failure
    python tools/compile_report.py --docs        # also rewrite docs/kernels.md's generated region
    python tools/compile_report.py --json F      # the raw results

What is compiled: each kernel module's ``compile_space()`` (``epic_kernels/triton_kernels/*.py``),
the variants its compiled dispatch can launch (every constexpr configuration: block sizes, dtypes,
SAMPLE / SPLIT / TC flags, num_warps), each with example arguments at the engine's shapes. Each is
bound exactly as a launch binds it (Triton's own binder for a CUDA target: argument types,
``== 1`` and divisibility-by-16 specializations) and compiled with ``triton.compile`` and the
wheel's bundled ptxas for ``GPUTarget("cuda", 80 | 90, 32)``. No driver is needed.

Read back per variant: registers (ptxas ``-v``, the log Triton's own ptxas call prints with
``TRITON_DUMP_PTXAS_LOG``), spill stores / loads (same log), local memory and static shared memory
(``cuobjdump --dump-resource-usage`` on the cubin), dynamic shared memory (``metadata.shared``, what
Triton asks of the driver). Fails on: a compile error, any spill or local memory, static + dynamic
shared memory above the per-block opt-in limit (sm_80 163 KB = 166,912 B; sm_90 227 KB =
232,448 B: CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"),
registers x threads above 65,536. Nothing is cached across runs: Triton's cache goes to a fresh
temporary directory. Two worker processes.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "kernels.md"
REGION = "compile_report"
ARCHS = (80, 90)
# per-block shared memory opt-in limits in bytes (cudaDevAttrMaxSharedMemoryPerBlockOptin)
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
REGS_PER_BLOCK = 65536
MODULES = ("softmax_entropy", "gumbel_topk_prune", "fork_attention", "common")
COMMAND = "python tools/compile_report.py --docs"


def _prepare_env() -> None:
    os.environ.pop("TRITON_INTERPRET", None)               # compiled kernels, not the interpreter
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def space() -> list:
    """``[(module, Launch)]`` of every module, in a fixed order."""
    _prepare_env()
    import importlib
    out = []
    for name in MODULES:
        mod = importlib.import_module(f"epic_kernels.triton_kernels.{name}")
        out += [(name, launch) for launch in mod.compile_space()]
    return out


def describe(launch) -> str:
    """A variant's label: the dtype of its first tensor argument (the data) and its constexprs."""
    import torch
    first = next(a for a in launch.args if isinstance(a, torch.Tensor))
    meta = [f"{k}={str(v).removeprefix('fp') if k == 'ACC' else v}" for k, v in launch.kwargs.items()
            if k != "num_warps"]
    return " ".join([str(first.dtype).removeprefix("torch.")] + meta)


def _compile(kernel, args, kwargs, arch: int):
    """Bind ``args`` / ``kwargs`` as ``kernel[grid](*args, **kwargs)`` would for a CUDA target and
    compile; returns (compiled kernel, ptxas log)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode,
                  fpsan_homomorphic_casts=knobs.compilation.fpsan_homomorphic_casts)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    return compiled, log.getvalue()


def _resources(cubin: bytes) -> dict:
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not m:
        raise RuntimeError(f"cuobjdump gave no resource usage:\n{text}")
    return dict(zip(("reg_cuobjdump", "stack", "static_shared", "local"), map(int, m.groups())))


def compile_one(task: tuple[int, int]) -> dict:
    """Worker: compile variant ``index`` for ``arch``; a dict of what was read back (or the error)."""
    index, arch = task
    module, launch = space()[index]
    kernel = launch.kernel
    rec = dict(index=index, arch=arch, module=module, kernel=kernel.fn.__name__, variant=describe(launch),
               num_warps=launch.kwargs.get("num_warps", 4))
    t0 = time.perf_counter()
    try:
        compiled, log = _compile(kernel, launch.args, launch.kwargs, arch)
    except Exception as exc:                                     # noqa: BLE001 (reported, fails the run)
        rec.update(error=f"{type(exc).__name__}: {str(exc)[:2000]}", seconds=round(time.perf_counter() - t0, 2))
        return rec
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    m = re.search(r"Used (\d+) registers", log)
    s = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    rec.update(regs=int(m.group(1)) if m else None, spill_stores=int(s.group(1)) if s else None,
               spill_loads=int(s.group(2)) if s else None, dynamic_shared=int(compiled.metadata.shared),
               num_warps=int(compiled.metadata.num_warps), ptxas_log=log.strip()[-600:])
    rec.update(_resources(compiled.asm["cubin"]))
    return rec


def problems(rec: dict) -> list[str]:
    if "error" in rec:
        return [f"compile error: {rec['error'][:300]}"]
    out = []
    if rec["regs"] is None or rec["spill_stores"] is None:
        out.append("ptxas -v output not found")
    if rec.get("spill_stores") or rec.get("spill_loads") or rec["local"] or rec["stack"]:
        out.append(f"spills: {rec['spill_stores']} B stored, {rec['spill_loads']} B loaded, local {rec['local']} B, "
                   f"stack {rec['stack']} B")
    shared = rec["dynamic_shared"] + rec["static_shared"]
    if shared > SHARED_LIMIT[rec["arch"]]:
        out.append(f"shared memory {shared} B > {SHARED_LIMIT[rec['arch']]} B (sm_{rec['arch']})")
    if rec["regs"] and rec["regs"] * rec["num_warps"] * 32 > REGS_PER_BLOCK:
        out.append(f"{rec['regs']} registers x {rec['num_warps'] * 32} threads > {REGS_PER_BLOCK}")
    return out


def run(workers: int = 2) -> tuple[list[dict], float]:
    _prepare_env()
    n = len(space())
    tasks = [(i, arch) for i in range(n) for arch in ARCHS]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="epic-triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache                  # fresh: nothing from an earlier run
        if workers <= 1:
            results = [compile_one(t) for t in tasks]
        else:
            import multiprocessing as mp
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                results = list(pool.map(compile_one, tasks))
    return results, time.perf_counter() - t0


def table(results: list[dict], seconds: float) -> str:
    import triton
    by = {}
    for r in results:
        by.setdefault(r["index"], {})[r["arch"]] = r
    lines = ["| kernel | variant | warps | regs sm_80 / sm_90 | spills (B) | shared B sm_80 / sm_90 | ok |",
             "|---|---|---|---|---|---|---|"]
    for idx in sorted(by):
        a, b = by[idx].get(80, {}), by[idx].get(90, {})
        first = a or b

        def regs(r):
            return "error" if "error" in r else str(r.get("regs"))

        def shared(r):
            return "-" if "error" in r else str(r["dynamic_shared"] + r["static_shared"])

        spills = "-" if "error" in a or "error" in b else str(
            max(a.get("spill_stores", 0) + a.get("local", 0), b.get("spill_stores", 0) + b.get("local", 0)))
        ok = "yes" if not problems(a) and not problems(b) else "**no**"
        lines.append(f"| `{first['kernel']}` | {first['variant']} | {first['num_warps']} | {regs(a)} / {regs(b)} "
                     f"| {spills} | {shared(a)} / {shared(b)} | {ok} |")
    ok = [r for r in results if not problems(r)]
    regs = [r["regs"] for r in ok if r.get("regs")]
    lines += ["", f"*Generated by `{COMMAND}`: {len(by)} variants x sm_80 / sm_90 = {len(results)} compilations "
              f"with triton {triton.__version__} and its bundled ptxas, {seconds:.0f} s on this machine's CPU; "
              f"{len(results) - len(ok)} failed; registers {min(regs) if regs else '-'}-{max(regs) if regs else '-'}; "
              "shared = static + dynamic bytes per block; spills = spill-store + local bytes (all must be 0). "
              "Compiled, never run: no GPU has executed these kernels.*"]
    return "\n".join(lines) + "\n"


def rewrite_docs(body: str, path: Path = DOC) -> bool:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_tables import rewrite_region

    return rewrite_region(path, REGION, body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", action="store_true", help=f"rewrite the '{REGION}' region of docs/kernels.md")
    ap.add_argument("--json", default=None, help="write every result to this file")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    results, seconds = run(args.workers)
    body = table(results, seconds)
    print(body)
    bad = [(r, p) for r in results for p in problems(r)]
    for r, p in bad:
        print(f"FAIL sm_{r['arch']} {r['kernel']} [{r['variant']}]: {p}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(seconds=seconds, results=results), indent=1))
    if args.docs:
        print(("rewrote " if rewrite_docs(body) else "unchanged ") + str(DOC.relative_to(ROOT)), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
