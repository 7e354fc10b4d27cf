"""CPU benchmark of the C++ kernels: a thin wrapper over the suites (benchmarks/suites/bench_kernels.py).

Prints the CPU model, the ISA body the C++ kernels run (``torch.ops.epic_kernels._cpu_isa()``:
the multiversioned body the loader picked), threads and OpenMP wait policy, then runs the
``softmax_entropy`` and ``gumbel_topk_prune`` benchmarks of the suite (pytest-benchmark) and prints
their tables with the target lines: C++ ``softmax_entropy`` >= 3x torch eager and within 1.5x of
``torch.logsumexp`` (the second floor; ``x.sum`` is the first) at B=64, V=49,152.

    python benchmarks/bench_cpu_kernels.py                         # 1 thread, ~2 min
    python benchmarks/bench_cpu_kernels.py --threads 2 --json out.json
    python benchmarks/bench_cpu_kernels.py --streams               # softmax_entropy_sample, streams [N, S]

``--streams`` runs the suite's ``softmax_entropy_sample`` benchmarks instead (the engine's depth-1
rows: entropy and 2 keyed samples per row in one call against 2 calls; random and SmolLM2 logits).

``--topk`` times ``topk_support`` (the rollout policy's support, k = 50 of V = 49,152: every rollout
row of a step) in process, C++ against the reference's ``torch.topk`` path, as medians of
interleaved pairs (reference, C++) over N = 1, 16 and 64 rows of two kinds of logits: Gaussian
(sd 3) and model-like (one peak over a Gaussian tail, rows of a random permutation so the peak
moves).

    python benchmarks/bench_cpu_kernels.py --topk --threads 2    # ~1 min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads libgomp

import torch  # noqa: E402

from epic_kernels import _ext  # noqa: E402


def header(threads: int) -> str:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "suites"))
    from conftest import cpu_model, isa_body

    return (f"CPU: {cpu_model()} ({os.cpu_count()} cpus); C++ kernels' ISA body: {isa_body()}; {threads} thread(s); "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; torch {torch.__version__}; "
            f"load average {os.getloadavg()[0]:.1f}")


def targets(path) -> list[str]:
    data = json.load(open(path))
    med = {b["extra_info"]["impl"]: b["stats"]["median"] for b in data["benchmarks"]
           if b["extra_info"].get("table") == "softmax_entropy" and b["extra_info"].get("case") == "B=64 V=49152"}
    if not {"cpp", "eager", "logsumexp"} <= med.keys():
        return []
    e, l = med["eager"] / med["cpp"], med["cpp"] / med["logsumexp"]
    return [f"softmax_entropy >= 3x torch eager at B=64, V=49152: {e:.1f}x -> {'MET' if e >= 3 else 'MISSED'}",
            f"softmax_entropy within 1.5x of torch.logsumexp at B=64, V=49152: {l:.2f}x -> "
            f"{'MET' if l <= 1.5 else 'MISSED'}"]


def topk_table(V: int = 49152, k: int = 50, pairs: int = 15) -> int:
    """``--topk``: a markdown table of medians of interleaved pairs, per row count and kind of logits."""
    import statistics
    import time

    from epic_kernels.ops.topk_support import topk_support_impl, topk_support_reference

    g = torch.Generator().manual_seed(0)
    print(f"\n| logits | rows N | reference (torch.topk) us | C++ us | reference / C++ (median of {pairs} pairs) | pairs (min-max) |")
    print("|---|---|---|---|---|---|")
    for kind in ("gaussian", "model-like"):
        for N in (1, 16, 64):
            x = torch.randn(N, V, generator=g) * 3
            if kind == "model-like":
                x = x.log_softmax(-1)
                x[torch.arange(N), torch.randint(0, V, (N,), generator=g)] += 25
            reps = max(3, 400 // N)
            assert all(torch.equal(a, b) for a, b in zip(topk_support_reference(x, k), topk_support_impl(x, k, "cpp")))
            ref_t, cpp_t = [], []
            for _ in range(pairs):
                for f, out in ((lambda: topk_support_reference(x, k), ref_t), (lambda: topk_support_impl(x, k, "cpp"), cpp_t)):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        f()
                    out.append((time.perf_counter() - t0) / reps)
            ratios = [r / c for r, c in zip(ref_t, cpp_t)]
            print(f"| {kind} | {N} | {statistics.median(ref_t) * 1e6:.0f} | {statistics.median(cpp_t) * 1e6:.0f} | "
                  f"**{statistics.median(ratios):.2f}x** | {min(ratios):.2f}-{max(ratios):.2f} |", flush=True)
    print(f"\nk = {k}, V = {V}; load average after: {os.getloadavg()[0]:.2f}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    p.add_argument("--quick", action="store_true", help="the suite's quick shapes only")
    p.add_argument("--streams", action="store_true", help="the softmax_entropy_sample benchmarks instead")
    p.add_argument("--topk", action="store_true", help="time topk_support (C++ against torch.topk) instead")
    p.add_argument("--json", help="keep the suite's JSON here")
    args = p.parse_args(argv)
    if not _ext.available():
        print(f"the C++ extension is not built: {_ext.BUILD_HINT}", file=sys.stderr)
        return 1
    print(header(args.threads), flush=True)
    if args.topk:
        torch.set_num_threads(args.threads)
        return topk_table()
    out = args.json or os.path.join(tempfile.mkdtemp(), "bench_cpu_kernels.json")
    select = "softmax_entropy_sample" if args.streams else "(softmax_entropy or gumbel_topk_prune) and not sample"
    cmd = [sys.executable, "-m", "pytest", "-c", os.path.join(ROOT, "benchmarks", "suites", "pytest.ini"),
           os.path.join(ROOT, "benchmarks", "suites", "bench_kernels.py"), "-q", "-k", select,
           f"--threads={args.threads}", f"--benchmark-json={out}",
           "--benchmark-columns=median,iqr,rounds"] + (["--quick"] if args.quick else [])
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        return rc
    tables = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tables.py"), out,
                             "--generate-json", os.devnull + "-none", "--command",
                             "python benchmarks/bench_cpu_kernels.py" + (" --streams" if args.streams else "")],
                            capture_output=True, text=True).stdout
    print(tables)
    for line in targets(out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
