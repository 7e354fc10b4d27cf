"""CPU benchmark of the C++ kernels against PyTorch eager and the pure-PyTorch reference.

For every (B, V): median wall time over repeats, the variants timed round-robin inside each repeat
(so background load hits them alike), and ratios from the same run:

* ``softmax_entropy`` (C++) vs torch eager ``-(log_softmax(x).exp() * log_softmax(x)).sum(-1)`` and
  vs one ``x.sum(-1)`` pass over the same tensor (the bandwidth floor of any one-pass kernel);
* ``gumbel_topk_prune`` (C++) vs ``reference.gumbel_topk_prune``, width ``0.2 * 4 * log(V)``.

Logits are ``N(0, std^2)`` (default std 3: every entry is within reach of the window, so every
entry needs its noise, the worst case for the prune kernel's skipping). No GPU is used: the GPU
columns are left empty; a GPU run must be compared with the roofline ``bytes read / bandwidth``
given in the last column (one read of the float32 logits at 2.0 TB/s, an A100-80GB).

    python benchmarks/bench_cpu_kernels.py                       # the table of docs/kernels.md
    python benchmarks/bench_cpu_kernels.py --threads 1 --json out.json

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
import math
import os
import platform
import statistics
import sys
import time
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from epic_kernels import _ext, reference as R  # noqa: E402

GPU_BANDWIDTH = 2.0e12   # bytes/s, A100-80GB HBM2e


def eager_entropy(x: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(x, dim=-1)
    return -(lp.exp() * lp).sum(-1)


def time_round_robin(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable; one call of each per repeat, in turn. ``repeats`` may be a
    dict giving a different count per name (slow references)."""
    counts = {k: (repeats[k] if isinstance(repeats, dict) else repeats) for k in fns}
    for fn in fns.values():      # warm-up (allocator, lazy init)
        fn()
    times = {k: [] for k in fns}
    for r in range(max(counts.values())):
        for name, fn in fns.items():
            if r < counts[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_case(B: int, V: int, args) -> dict:
    gen = torch.Generator().manual_seed(B * 1_000_003 + V)
    x = torch.randn(B, V, generator=gen) * args.std
    seeds = torch.randint(0, 2**32, (B,), generator=gen)
    positions = torch.randint(0, 4096, (B,), generator=gen)
    width = torch.full((B,), 0.2 * 4 * math.log(V))
    ops = _ext.ops()
    fns = {
        "cpp_entropy": lambda: ops.softmax_entropy(x),
        "eager_entropy": lambda: eager_entropy(x),
        "sum_pass": lambda: x.sum(-1),
        "cpp_prune": lambda: ops.gumbel_topk_prune(x, seeds, positions, width, args.top_k),
        "ref_prune": lambda: R.gumbel_topk_prune(x, seeds, positions, width, args.top_k),
    }
    reps = {k: args.repeats for k in fns}
    reps["ref_prune"] = args.ref_repeats
    t = time_round_robin(fns, reps)
    survivors = ops.gumbel_topk_prune(x, seeds, positions, width, args.top_k)[2]
    return {
        "B": B, "V": V, **{f"{k}_ms": v * 1e3 for k, v in t.items()},
        "eager_over_cpp": t["eager_entropy"] / t["cpp_entropy"],
        "cpp_over_sum": t["cpp_entropy"] / t["sum_pass"],
        "ref_over_cpp_prune": t["ref_prune"] / t["cpp_prune"],
        "mean_survivors": float(survivors.double().mean()),
        "gpu_floor_us": B * V * 4 / GPU_BANDWIDTH * 1e6,
    }


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


def markdown(rows: list[dict]) -> str:
    head = ("| B | V | C++ entropy ms | eager ms | x.sum ms | eager / C++ | C++ / sum | C++ prune ms "
            "| reference prune ms | reference / C++ | survivors | GPU entropy | GPU prune | GPU floor µs |")
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r['B']} | {r['V']} | {r['cpp_entropy_ms']:.3f} | {r['eager_entropy_ms']:.3f} "
            f"| {r['sum_pass_ms']:.3f} | {r['eager_over_cpp']:.1f}x | {r['cpp_over_sum']:.2f}x "
            f"| {r['cpp_prune_ms']:.2f} | {r['ref_prune_ms']:.1f} | {r['ref_over_cpp_prune']:.1f}x "
            f"| {r['mean_survivors']:.0f} |  |  | {r['gpu_floor_us']:.2f} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if (r["B"], r["V"]) == (64, 49152):
            out.append(f"softmax_entropy >= 2x faster than eager at B=64,V=49152: "
                       f"{r['eager_over_cpp']:.1f}x -> {'MET' if r['eager_over_cpp'] >= 2 else 'MISSED'}")
            out.append(f"softmax_entropy within 2x of the sum pass at B=64,V=49152: "
                       f"{r['cpp_over_sum']:.2f}x -> {'MET' if r['cpp_over_sum'] <= 2 else 'MISSED'}")
    worst = min(rows, key=lambda r: r["ref_over_cpp_prune"])
    out.append(f"gumbel_topk_prune >= 5x faster than the reference everywhere: worst "
               f"{worst['ref_over_cpp_prune']:.1f}x (B={worst['B']}, V={worst['V']}) -> "
               f"{'MET' if worst['ref_over_cpp_prune'] >= 5 else 'MISSED'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--vocabs", type=int, nargs="+", default=[32000, 49152, 128256])
    p.add_argument("--repeats", type=int, default=30, help="timed calls of each fast variant")
    p.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the slow reference")
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
    rows = []
    for B in args.batches:
        for V in args.vocabs:
            rows.append(bench_case(B, V, args))
            print(f"  B={B:<3} V={V:<6} done", file=sys.stderr, flush=True)
    setup = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
             platform.machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
             "std": args.std, "top_k": args.top_k,
             "repeats": args.repeats, "ref_repeats": args.ref_repeats, "command": " ".join(sys.argv)}
    print(f"fp32, {setup['threads']} threads, torch {setup['torch']}, logits N(0, {args.std}^2), "
          f"width 0.8 log V, top_k {args.top_k}; medians of {args.repeats} (reference: {args.ref_repeats}); "
          f"load average {load_before[0]:.1f} before, {setup['loadavg_after'][0]:.1f} after")
    print()
    print(markdown(rows))
    print()
    for line in targets(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
