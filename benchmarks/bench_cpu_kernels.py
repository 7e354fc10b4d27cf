"""CPU benchmark of the C++ kernels: a thin wrapper over the suites (benchmarks/suites/bench_kernels.py).

Prints the CPU model, the ISA body the C++ kernels run (``torch.ops.epic_kernels._cpu_isa()``:
the multiversioned body the loader picked), threads and OpenMP wait policy, then runs the
``softmax_entropy`` and ``gumbel_topk_prune`` benchmarks of the suite (pytest-benchmark) and prints
their tables with the target lines: C++ ``softmax_entropy`` >= 3x torch eager and within 1.5x of
``torch.logsumexp`` (the second floor; ``x.sum`` is the first) at B=64, V=49,152.

    python benchmarks/bench_cpu_kernels.py                         # 1 thread, ~2 min
    python benchmarks/bench_cpu_kernels.py --threads 2 --json out.json

``--streams S`` times instead ``softmax_entropy_sample`` with S rollout streams per row (the engine's
depth-1 rows: entropy and K = S keyed samples): one call with ``streams [N, S]`` (one softmax pass)
against S calls with ``streams [N]``, interleaved, on ``N(0, std^2)`` logits (noise needed for most
entries: the worst case) and on the embedded SmolLM2's logits of a text (peaked: most noise skipped):

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_cpu_kernels.py --threads 2 --streams 2 --repeats 200

``--library PATH`` times another build of the ops instead of ``epic_kernels._C`` (e.g. an older commit's
``build/cmake/libepic_kernels_ops.so`` from ``csrc/build_cmake.sh``; its tokens are printed as a digest
to compare); a build without ``[N, S]`` streams gets the S separate calls only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import statistics
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads libgomp

import torch  # noqa: E402

from epic_kernels import _ext  # noqa: E402


def time_round_robin(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable; one call of each per repeat, in turn (the --streams mode)."""
    for fn in fns.values():      # warm-up (allocator, lazy init)
        fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


STREAM_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his "
    "father had taught him. At the top he trimmed the wick, polished the great lens, and watched "
    "the fishing boats return through the narrowing channel. Storms came often in autumn, and on "
    "those nights he stayed awake until dawn, listening to the waves break against the rocks below "
    "and writing in the logbook that had passed through four generations of his family.")


def model_logits(rows: int) -> torch.Tensor:
    """``[rows, 49152]`` next-token logits of the embedded SmolLM2 at the first positions of a text."""
    from epic_kernels.models import load_model

    model, tok = load_model()
    ids = tok(STREAM_TEXT, return_tensors="pt").input_ids
    while ids.shape[1] < rows:
        ids = torch.cat([ids, ids], 1)
    with torch.no_grad():
        return model(input_ids=ids[:, :rows]).logits[0].float().contiguous()


def bench_streams(args) -> list[dict]:
    """One ``softmax_entropy_sample`` with ``streams [N, S]`` vs S calls with ``streams [N]``."""
    N, V, S = args.stream_rows, args.stream_vocab, args.streams
    gen = torch.Generator().manual_seed(N * 1_000_003 + V)
    cases = []
    if args.stream_logits in ("randn", "both"):
        cases.append((f"N(0, {args.std:g}^2)", torch.randn(N, V, generator=gen) * args.std))
    if args.stream_logits in ("model", "both"):
        try:
            cases.append(("SmolLM2 text", model_logits(N)))
        except Exception as exc:                       # no embedded model: say so, time the rest
            print(f"  model logits unavailable ({exc}); skipped", file=sys.stderr)
    ops = torch.ops.epic_kernels if args.library else _ext.ops()
    seeds = torch.randint(0, 2**32, (N,), generator=gen)
    positions = torch.randint(0, 4096, (N,), generator=gen)
    streams = (1 + torch.arange(S)).expand(N, S).contiguous()
    cols = [streams[:, k].contiguous() for k in range(S)]
    rows = []
    for name, x in cases:
        sep = [ops.softmax_entropy_sample(x, seeds, c, positions) for c in cols]
        tokens = torch.stack([o[2] for o in sep], 1)
        try:
            one = ops.softmax_entropy_sample(x, seeds, streams, positions)
        except RuntimeError:                           # a build from before [N, S] streams
            one = None
        if one is not None:
            assert torch.equal(one[2], tokens), "tokens differ"
            assert torch.equal(one[0], sep[0][0]) and torch.equal(one[1], sep[0][1])
        fns = {
            "one_call": lambda: ops.softmax_entropy_sample(x, seeds, streams, positions),
            "separate": lambda: [ops.softmax_entropy_sample(x, seeds, c, positions) for c in cols],
            "one_stream": lambda: ops.softmax_entropy_sample(x, seeds, cols[0], positions),
            "entropy_only": lambda: ops.softmax_entropy(x),
        }
        if one is None:
            del fns["one_call"]
        t = time_round_robin(fns, args.repeats)
        rows.append({"logits": name, "N": N, "V": x.shape[1], "S": S,
                     **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                     "speedup": t["separate"] / t["one_call"] if one is not None else None,
                     "tokens_digest": f"{zlib.crc32(tokens.contiguous().numpy().tobytes()):08x}"})
        print(f"  {name} done", file=sys.stderr, flush=True)
    return rows


def markdown_streams(rows: list[dict]) -> str:
    S = rows[0]["S"] if rows else 0
    head = (f"| logits | N | V | one call, streams [N, {S}] ms | {S} calls, streams [N] ms | speedup "
            "| one call, streams [N] ms | softmax_entropy (no sample) ms |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        one = f"{r['one_call_ms']:.3f}" if "one_call_ms" in r else "(not supported)"
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        lines.append(f"| {r['logits']} | {r['N']} | {r['V']} | {one} | {r['separate_ms']:.3f} "
                     f"| {speedup} | {r['one_stream_ms']:.3f} | {r['entropy_only_ms']:.3f} |")
    return "\n".join(lines) + "\n\ntokens digest: " + ", ".join(f"{r['logits']} {r['tokens_digest']}" for r in rows)


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
    p.add_argument("--repeats", type=int, default=30, help="--streams: interleaved repeats")
    p.add_argument("--std", type=float, default=3.0, help="standard deviation of the random logits")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--json", help="also write the rows and the setup to this file")
    p.add_argument("--streams", type=int, default=0,
                   help="S >= 1: time softmax_entropy_sample with S streams per row instead (see above)")
    p.add_argument("--stream-rows", type=int, default=70, help="rows N of the --streams case")
    p.add_argument("--stream-vocab", type=int, default=49152, help="V of the random --streams logits")
    p.add_argument("--stream-logits", choices=["randn", "model", "both"], default="both")
    p.add_argument("--library", help="with --streams: load the ops from this shared library instead")
    args = p.parse_args(argv)

    if args.library:
        if not args.streams:
            p.error("--library needs --streams")
        torch.ops.load_library(args.library)
    elif not _ext.available():
        print(f"the C++ extension is not built: {_ext.BUILD_HINT}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    if args.streams:
        rows = bench_streams(args)
        print(f"{args.library or 'epic_kernels._C'}: fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; medians of {args.repeats} "
              f"interleaved repeats; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
        print()
        print(markdown_streams(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"command": " ".join(sys.argv), "loadavg_before": load_before,
                           "loadavg_after": os.getloadavg(), "rows": rows}, f, indent=2)
        return 0
    print(header(args.threads), flush=True)
    out = args.json or os.path.join(tempfile.mkdtemp(), "bench_cpu_kernels.json")
    cmd = [sys.executable, "-m", "pytest", "-c", os.path.join(ROOT, "benchmarks", "suites", "pytest.ini"),
           os.path.join(ROOT, "benchmarks", "suites", "bench_kernels.py"), "-q", "-k",
           "softmax_entropy or gumbel_topk_prune", f"--threads={args.threads}", f"--benchmark-json={out}",
           "--benchmark-columns=median,iqr,rounds"] + (["--quick"] if args.quick else [])
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        return rc
    tables = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_tables.py"), out,
                             "--generate-json", os.devnull + "-none"], capture_output=True, text=True).stdout
    print(tables)
    for line in targets(out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
