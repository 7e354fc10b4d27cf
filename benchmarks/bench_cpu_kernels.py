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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    p.add_argument("--quick", action="store_true", help="the suite's quick shapes only")
    p.add_argument("--streams", action="store_true", help="the softmax_entropy_sample benchmarks instead")
    p.add_argument("--json", help="keep the suite's JSON here")
    args = p.parse_args(argv)
    if not _ext.available():
        print(f"the C++ extension is not built: {_ext.BUILD_HINT}", file=sys.stderr)
        return 1
    print(header(args.threads), flush=True)
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
