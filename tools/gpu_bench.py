"""Kernel microbenchmarks for ``tools/gpu_check.py``: epic_kernels' ops vs torch eager (and FlashInfer).

    python3 tools/gpu_bench.py --device cuda --json out/bench.json        # the GPU check's grid
    python3 tools/gpu_bench.py --device cpu --quick --json /tmp/b.json    # tests the script itself

What is timed (every implementation of one configuration interleaved in the same run; medians):

* ``softmax_entropy`` (entropy + lse of every row): Triton and the C++ kernel through the path the
  engine calls (``softmax_entropy_impl``, no input validation), the public op with automatic dispatch
  (``ops.softmax_entropy``: validation included), torch eager (``softmax`` + ``log_softmax`` +
  ``sum`` + ``logsumexp``) and ``torch.logsumexp`` alone, the memory floor (one read of the logits).
* ``gumbel_topk_prune`` (keyed Gumbel perturbation, front-runner, window survivors, top-k): Triton,
  the C++ kernel, a torch eager equivalent (``rand`` Gumbel noise + ``logsumexp`` + ``max`` + window
  mask + ``nonzero`` + ``topk``) and, where ``flashinfer`` imports, its sampling ops of comparable
  work (``top_k_mask_logits``, ``sampling_from_logits``; neither computes the same result).

CUDA: CUDA events around each call, L2 flushed (a 256 MiB write) before each, warm-up calls first
(Triton compiles there), medians of interleaved repeats. CPU: ``perf_counter``, no flush. GB/s is
``B * V * itemsize / time`` (one read of the logits; the prune reads them twice by design) against
the measured device-to-device copy bandwidth and, when torch exposes the memory clock and bus width,
the theoretical peak. Every number written was measured in this run; an implementation that cannot
run is listed with its reason, and configurations left when ``--budget-s`` runs out are listed as
not run. Results are written after every configuration, so a timeout keeps what was measured.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

GRID = dict(B=(1, 8, 64, 256), V=(49152, 151936), dtypes=("float32", "bfloat16"))
QUICK_CUDA = dict(B=(1, 64), V=(151936,), dtypes=("float32",))
CPU_GRID = dict(B=(1, 8), V=(4096, 32768), dtypes=("float32", "bfloat16"))
QUICK_CPU = dict(B=(1, 8), V=(4096,), dtypes=("float32",))
WIDTH, TOP_K = 3.0, 8


def backend_names():
    """(C++ backend name, backends): "cpu" on main, "cpp" after the rename (alias "cpu" kept)."""
    for name in ("epic_kernels.ops", "epic_kernels.ops.dispatch", "epic_kernels.ops._dispatch"):
        try:
            names = getattr(importlib.import_module(name), "BACKENDS", None)
        except ImportError:
            continue
        if names:
            return ("cpp" if "cpp" in names else "cpu"), tuple(names)
    return None, ()


def _impl(op: str):
    """The engine's unvalidated entry point of ``op`` if it exists, else None."""
    try:
        mod = importlib.import_module(f"epic_kernels.ops.{op}")
        return getattr(mod, f"{op}_impl", None)
    except ImportError:
        return None


class Timer:
    def __init__(self, device: torch.device, repeats: int):
        self.device, self.repeats = device, repeats
        self.flush = torch.empty(64 * 2**20, dtype=torch.float32, device=device) if device.type == "cuda" else None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, fns: dict) -> dict:
        """Median microseconds of each callable, repeats interleaved (rotating order)."""
        names = list(fns)
        samples = {n: [] for n in names}
        for r in range(self.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            if self.device.type == "cuda":
                events = []
                for n in order:
                    self.flush.zero_()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fns[n]()
                    end.record()
                    events.append((n, start, end))
                torch.cuda.synchronize()
                for n, start, end in events:
                    samples[n].append(start.elapsed_time(end) * 1e3)
            else:
                for n in order:
                    t0 = time.perf_counter()
                    fns[n]()
                    samples[n].append((time.perf_counter() - t0) * 1e6)
        return {n: dict(median_us=statistics.median(s), min_us=min(s), repeats=len(s)) for n, s in samples.items()}


def copy_bandwidth_gbps(device: torch.device, timer: Timer) -> float:
    """Measured: a device-to-device copy of 512 MiB (CPU: 64 MiB) moves twice its size."""
    n = (2**27 if device.type == "cuda" else 2**24)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    timer.sync()
    t = timer.run({"copy": lambda: dst.copy_(src)})["copy"]["median_us"]
    return 2 * n * 4 / (t * 1e-6) / 1e9


def theoretical_gbps(device: torch.device):
    """2 x memory clock x bus width, when this torch exposes them (recent versions); else None."""
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def eager_softmax_entropy(x):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = torch.softmax(x, -1, dtype=acc)
    lp = torch.log_softmax(x, -1, dtype=acc)
    return -(p * lp).sum(-1), torch.logsumexp(x.to(acc), -1)


def eager_prune(x, width, top_k):
    """The same work in torch eager: Gumbel noise (torch's generator, not keyed), centring by the
    logsumexp, front-runner, survivors within ``width`` (compacted with ``nonzero``), top-k."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(acc)
    lse = torch.logsumexp(xf, -1, keepdim=True)
    z = xf - lse - torch.log(-torch.log(torch.rand_like(xf)))
    front = z.max(-1, keepdim=True)
    survivors = (z >= front.values - width).nonzero()
    return survivors, front, z.topk(top_k, -1), lse


def max_err(a, b) -> float:
    a, b = a.double(), b.double()
    ok = a == b
    return float(torch.where(ok, torch.zeros_like(a), (a - b).abs() / (1 + b.abs())).max())


def softmax_cases(x, device, cpp, notes):
    from epic_kernels import ops
    impl = _impl("softmax_entropy")
    cases, skipped = {}, {}
    for backend in ("triton", cpp):
        if backend is None:
            continue
        if backend == "triton" and device.type != "cuda":
            skipped["triton"] = "CPU: only the Triton interpreter runs here, whose timings mean nothing"
            continue
        try:
            ops.choose(device, backend)
            routed = "dispatch accepts it"
        except Exception as exc:                               # noqa: BLE001 (reported)
            routed = f"dispatch refuses it ({exc})"
        if impl is not None:
            fn = (lambda b: lambda: impl(x, backend=b))(backend)
            how = f"epic_kernels.ops.softmax_entropy.softmax_entropy_impl(x, backend={backend!r})"
        else:
            fn = (lambda b: lambda: ops.softmax_entropy(x, backend=b))(backend)
            how = f"epic_kernels.ops.softmax_entropy(x, backend={backend!r})"
        name = "triton" if backend == "triton" else "cpp"
        notes.setdefault(f"softmax_entropy/{name}", f"{how}; {routed}")
        cases[name] = fn
    cases["ops (auto, validated)"] = lambda: ops.softmax_entropy(x)
    notes.setdefault("softmax_entropy/ops (auto, validated)",
                     f"epic_kernels.ops.softmax_entropy(x): input validation + automatic dispatch "
                     f"(picks {ops.choose(device)!r} here)")
    cases["torch eager"] = lambda: eager_softmax_entropy(x)
    cases["torch.logsumexp"] = lambda: torch.logsumexp(x, -1)
    return cases, skipped


def prune_cases(x, seeds, pos, device, cpp, notes):
    impl = _impl("gumbel_topk_prune")
    from epic_kernels import ops
    cases, skipped = {}, {}
    for backend in ("triton", cpp):
        if backend is None:
            continue
        name = "triton" if backend == "triton" else "cpp"
        if backend == "triton" and device.type != "cuda":
            skipped[name] = "CPU: only the Triton interpreter runs here, whose timings mean nothing"
            continue
        if backend == cpp and not torch._C._dispatch_has_kernel_for_dispatch_key(
                "epic_kernels::gumbel_topk_prune", "CUDA" if device.type == "cuda" else "CPU"):
            skipped[name] = f"the extension has no {device.type.upper()} kernel of gumbel_topk_prune"
            continue
        if impl is not None:
            fn = (lambda b: lambda: impl(x, seeds, pos, WIDTH, TOP_K, backend=b))(backend)
            how = "epic_kernels.ops.gumbel_topk_prune.gumbel_topk_prune_impl"
        else:
            fn = (lambda b: lambda: ops.gumbel_topk_prune(x, seeds, pos, WIDTH, TOP_K, backend=b))(backend)
            how = "epic_kernels.ops.gumbel_topk_prune"
        notes.setdefault(f"gumbel_topk_prune/{name}", f"{how}(x, seeds, positions, {WIDTH}, {TOP_K}, "
                                                      f"backend={backend!r})")
        cases[name] = fn
    cases["torch eager"] = lambda: eager_prune(x, WIDTH, TOP_K)
    return cases, skipped


def flashinfer_cases(x, device, notes):
    """FlashInfer's sampling ops of comparable work (neither computes the prune's result), with torch
    eager again, interleaved. Timed after everything else: FlashInfer may JIT-compile on first use."""
    fi = _flashinfer()
    if isinstance(fi, str):
        return {}, {"flashinfer": fi}
    if device.type != "cuda":
        return {}, {"flashinfer": "CUDA only"}
    if x.dtype == torch.float64:
        return {}, {"flashinfer": "no float64 support"}
    s, cases = fi.sampling, {"torch eager": lambda: eager_prune(x, WIDTH, TOP_K)}
    if hasattr(s, "top_k_mask_logits"):
        cases["flashinfer top_k_mask_logits"] = lambda: s.top_k_mask_logits(x, TOP_K)
        notes.setdefault("gumbel_topk_prune/flashinfer top_k_mask_logits",
                         f"flashinfer.sampling.top_k_mask_logits(x, {TOP_K}): top-k only, no noise, no window")
    if hasattr(s, "sampling_from_logits"):
        cases["flashinfer sampling_from_logits"] = lambda: s.sampling_from_logits(x)
        notes.setdefault("gumbel_topk_prune/flashinfer sampling_from_logits",
                         "flashinfer.sampling.sampling_from_logits(x): one sample per row, no window, no top-k")
    if len(cases) == 1:
        return {}, {"flashinfer": "flashinfer.sampling has neither top_k_mask_logits nor sampling_from_logits"}
    return cases, {}


_FI = {}


def _flashinfer():
    """The flashinfer module, or why it is not used (a string)."""
    if "m" not in _FI:
        if importlib.util.find_spec("flashinfer") is None:
            _FI["m"] = "flashinfer is not installed"
        else:
            try:
                _FI["m"] = importlib.import_module("flashinfer")
            except Exception as exc:                           # noqa: BLE001 (reported)
                _FI["m"] = f"flashinfer does not import: {type(exc).__name__}: {exc}"
    return _FI["m"]


def check_softmax(out, want) -> str:
    h, lse = out[0], out[1]
    err = max(max_err(h, want[0]), max_err(lse, want[1]))
    return "ok" if err < 1e-3 else f"MISMATCH vs eager: max rel err {err:.2e}"


def prune_checker(x, seeds, pos):
    """Compare each kernel's front-runners and survivor counts with the reference backend's."""
    impl = _impl("gumbel_topk_prune")
    try:
        if impl is not None:
            want = impl(x, seeds, pos, WIDTH, TOP_K, backend="reference")
        else:
            from epic_kernels import ops
            want = ops.gumbel_topk_prune(x, seeds, pos, WIDTH, TOP_K, backend="reference")
    except Exception as exc:                                   # noqa: BLE001 (reported)
        want = f"unchecked: the reference failed ({type(exc).__name__}: {str(exc)[:200]})"

    def check(name, out):
        if name not in ("triton", "cpp"):
            return None
        if isinstance(want, str):
            return want
        same = torch.equal(out.front_ids.cpu(), want.front_ids.cpu()) and torch.equal(
            out.counts.cpu(), want.counts.cpu())
        return "ok" if same else "MISMATCH vs reference: front_ids or survivor counts differ"
    return check


def measure(fns: dict, timer: Timer, check=None) -> tuple[dict, dict]:
    """Warm up (compiles), optionally check outputs, then time. Returns (timings, errors)."""
    errors, live, checks = {}, {}, {}
    for name, fn in fns.items():
        try:
            out = None
            for _ in range(3):
                out = fn()
            timer.sync()
            live[name] = fn
            if check is not None:
                checks[name] = check(name, out)
        except Exception as exc:                               # noqa: BLE001 (reported per implementation)
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    times = timer.run(live) if live else {}
    for name, c in checks.items():
        if c is not None:
            times[name]["check"] = c
    return times, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="a small grid")
    ap.add_argument("--json", required=True, help="write the results here (after every configuration)")
    ap.add_argument("--budget-s", type=float, default=55.0, help="stop starting configurations after this")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (CUDA 30, CPU 10)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("gpu_bench: TRITON_INTERPRET=1 is set; compiled Triton kernels are required", file=sys.stderr)
            return 2
        grid = QUICK_CUDA if args.quick else GRID
    else:
        grid = QUICK_CPU if args.quick else CPU_GRID
    repeats = args.repeats or (30 if device.type == "cuda" else 10)
    timer = Timer(device, repeats)
    cpp, backends = backend_names()
    from epic_kernels import _ext
    if not _ext.available():
        cpp_missing = f"the C++ extension does not load: {_ext.error()}"
    elif device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "epic_kernels::softmax_entropy", "CUDA"):
        cpp_missing = "the C++ extension has no CUDA kernels"
    else:
        cpp_missing = None
    result = dict(
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__, quick=args.quick, repeats=repeats, backends=list(backends), cpp_backend=cpp,
        timing=("CUDA events, L2 flushed before each call, medians of interleaved repeats"
                if device.type == "cuda" else "perf_counter, medians of interleaved repeats (no L2 flush)"),
        copy_gbps=copy_bandwidth_gbps(device, timer), theoretical_gbps=theoretical_gbps(device),
        width=WIDTH, top_k=TOP_K, notes={}, rows=[], not_run=[], elapsed_s=None)
    if cpp_missing:
        result["notes"]["cpp"] = cpp_missing
        cpp = None
    theo = result["theoretical_gbps"]
    if theo is not None and not result["copy_gbps"] <= theo <= 4 * result["copy_gbps"]:
        # the clock's unit differs between torch versions: a figure the copy contradicts is dropped
        result["notes"]["theoretical_gbps"] = (f"dropped: {theo:.0f} GB/s from memory clock x bus width is "
                                               f"inconsistent with the measured copy")
        result["theoretical_gbps"] = None

    def write():
        result["elapsed_s"] = round(time.perf_counter() - t_start, 2)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json)

    def make_inputs(dname, V, B):
        gen = torch.Generator(device=device).manual_seed(B * 7 + V)
        x = (torch.randn(B, V, device=device, generator=gen) * 3).to(getattr(torch, dname))
        seeds = torch.randint(0, 2**32, (B,), device=device, generator=gen)
        return x, seeds, torch.randint(0, 2**31, (B,), device=device, generator=gen)

    def add_rows(op, dname, V, B, nbytes, cases, skipped, check=None, keep=None):
        times, errors = measure(cases, timer, check)
        eager = times.get("torch eager", {}).get("median_us")
        for name in cases:
            if keep is not None and name not in keep:
                continue
            row = dict(op=op, B=B, V=V, dtype=dname, bytes=nbytes, impl=name)
            if name in times:
                t = times[name]["median_us"]
                row.update(times[name])
                row["gbps"] = nbytes / (t * 1e-6) / 1e9
                row["pct_copy_bw"] = 100 * row["gbps"] / result["copy_gbps"]
                if result["theoretical_gbps"]:
                    row["pct_theoretical_bw"] = 100 * row["gbps"] / result["theoretical_gbps"]
                row["speedup_vs_eager"] = eager / t if eager else None
            else:
                row["error"] = errors.get(name, "not measured")
            result["rows"].append(row)
        for name, why in skipped.items():
            result["rows"].append(dict(op=op, B=B, V=V, dtype=dname, bytes=nbytes, impl=name, skipped=why))

    configs = [(d, V, B) for d in grid["dtypes"] for V in grid["V"] for B in grid["B"]]
    for i, (dname, V, B) in enumerate(configs):
        if time.perf_counter() - t_start > args.budget_s:
            result["not_run"] += [dict(dtype=d, V=v, B=b, reason=f"time budget of {args.budget_s:.0f} s spent")
                                  for d, v, b in configs[i:]]
            break
        x, seeds, pos = make_inputs(dname, V, B)
        nbytes = x.numel() * x.element_size()
        want = eager_softmax_entropy(x.double())
        cases, skipped = softmax_cases(x, device, cpp, result["notes"])
        add_rows("softmax_entropy", dname, V, B, nbytes, cases, skipped,
                 lambda name, out: None if name == "torch.logsumexp" else check_softmax(out, want))
        cases, skipped = prune_cases(x, seeds, pos, device, cpp, result["notes"])
        add_rows("gumbel_topk_prune", dname, V, B, nbytes, cases, skipped, prune_checker(x, seeds, pos))
        del x, want
        write()
    done = [(d, V, B) for d, V, B in configs if not any((c["dtype"], c["V"], c["B"]) == (d, V, B)
                                                        for c in result["not_run"])]
    for dname, V, B in done:                  # FlashInfer last: its first call may JIT-compile
        x, seeds, pos = make_inputs(dname, V, B)
        cases, skipped = flashinfer_cases(x, device, result["notes"])
        if cases and time.perf_counter() - t_start > args.budget_s:
            skipped, cases = {"flashinfer": f"time budget of {args.budget_s:.0f} s spent"}, {}
        add_rows("gumbel_topk_prune", dname, V, B, x.numel() * x.element_size(), cases, skipped,
                 keep=[n for n in cases if n != "torch eager"])
        write()
    write()
    # problems of this library's kernels fail the step; FlashInfer's own errors are only reported
    bad = [r for r in result["rows"] if not r["impl"].startswith("flashinfer")
           and ("error" in r or str(r.get("check", "")).startswith("MISMATCH"))]
    for r in bad:
        print(f"gpu_bench: {r['op']} {r['impl']} B={r['B']} V={r['V']} {r['dtype']}: "
              f"{r.get('error') or r.get('check')}", file=sys.stderr)
    print(f"gpu_bench: {len(result['rows'])} rows, {len(bad)} problems, {len(result['not_run'])} configurations "
          f"not run, {result['elapsed_s']} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
