"""Benchmark the Triton kernels against the memory roofline and torch eager (CUDA only).

    python benchmarks/bench_triton_kernels.py                 # all shapes, float32 and bfloat16
    python benchmarks/bench_triton_kernels.py --peak-gbps 2039 --dtypes float32 --json out.json

Roofline: every op must read the logits at least once, so ``bytes = B * V * itemsize`` and
``t_roofline = bytes / peak_bandwidth``. ``--peak-gbps`` gives the datasheet bandwidth; without it the
script uses a measured device-to-device copy bandwidth (a slightly lower, achievable peak). The prune
reads the logits twice by design (an lse pass, then the noise/threshold scan): its column ``reads``
says so, and ``%roof`` is always against one read. Without a GPU this prints a message and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCHES = (1, 8, 64)
VOCABS = (32000, 49152, 128256)


def copy_bandwidth_gbps() -> float:
    """Achievable DRAM bandwidth: a 1 GiB device-to-device copy moves 2 GiB (read + write)."""
    import triton.testing
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=5, rep=50)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def bench(fn) -> float:
    """Median time of ``fn`` in microseconds (triton.testing.do_bench flushes L2 between runs)."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median") * 1e3


def cases(B: int, V: int, dtype: torch.dtype):
    from epic_kernels import reference as R
    from epic_kernels.triton_kernels import gumbel_topk_prune_triton, softmax_entropy_triton
    x = (torch.randn(B, V, device="cuda") * 3).to(dtype)
    seeds = torch.randint(0, 2**32, (B,), device="cuda")
    pos = torch.randint(0, 2**31, (B,), device="cuda")
    streams = torch.ones(B, dtype=torch.int64, device="cuda")
    yield ("softmax_entropy", 1, lambda: softmax_entropy_triton(x), lambda: R.softmax_entropy(x))
    yield ("entropy+sample", 1, lambda: softmax_entropy_triton(x, seeds, streams, pos),
           lambda: (R.softmax_entropy(x), R.gumbel_argmax(x, seeds, streams, pos)))
    yield ("gumbel_prune", 2, lambda: gumbel_topk_prune_triton(x, seeds, pos, 4.0, 8),
           lambda: R.gumbel_topk_prune(x, seeds, pos, 4.0, 8))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peak-gbps", type=float, default=None, help="datasheet DRAM bandwidth in GB/s")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--vocabs", default=",".join(map(str, VOCABS)))
    ap.add_argument("--no-eager", action="store_true", help="skip the torch eager baselines")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton_kernels: no CUDA GPU available; nothing measured (this is not a failure).")
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_triton_kernels: TRITON_INTERPRET=1 is set; unset it to benchmark compiled kernels.")
        return 0
    peak = args.peak_gbps or copy_bandwidth_gbps()
    name = torch.cuda.get_device_name()
    print(f"# {name}; peak {'(datasheet)' if args.peak_gbps else '(measured copy)'} {peak:.0f} GB/s; "
          f"torch {torch.__version__}")
    head = f"{'op':<16} {'B':>3} {'V':>7} {'dtype':<9} {'MB':>7} {'reads':>5} {'roof_us':>8} {'triton_us':>9} " \
           f"{'GB/s':>7} {'%roof':>6} {'eager_us':>9} {'speedup':>7}"
    print(head)
    rows = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        for B in map(int, args.batches.split(",")):
            for V in map(int, args.vocabs.split(",")):
                nbytes = B * V * torch.empty((), dtype=dtype).element_size()
                roof = nbytes / (peak * 1e9) * 1e6
                for op, reads, fast, eager in cases(B, V, dtype):
                    t = bench(fast)
                    te = float("nan") if args.no_eager else bench(eager)
                    row = dict(op=op, B=B, V=V, dtype=dname, bytes=nbytes, reads=reads, roofline_us=roof,
                               triton_us=t, achieved_gbps=nbytes * reads / (t * 1e-6) / 1e9,
                               pct_roofline=100 * roof / t, eager_us=te, speedup=te / t)
                    rows.append(row)
                    print(f"{op:<16} {B:>3} {V:>7} {dname:<9} {nbytes / 1e6:>7.2f} {reads:>5} {roof:>8.1f} "
                          f"{t:>9.1f} {row['achieved_gbps']:>7.0f} {row['pct_roofline']:>5.0f}% {te:>9.1f} "
                          f"{row['speedup']:>6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, peak_gbps=peak, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
