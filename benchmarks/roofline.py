"""Roofline of each GPU kernel, on paper: bytes, FLOPs and float64 / integer work per call at the
shapes users run, the time each takes at a GPU's peak rates, and (on a GPU) measured time /
roofline time. The one place the formulas live: docs/kernels.md's table and ``make gpu-check``'s
``roofline`` step both come from here.

    python benchmarks/roofline.py                  # print the paper table
    python benchmarks/roofline.py --docs           # rewrite docs/kernels.md's 'roofline' region
    python benchmarks/roofline.py --measure --device cuda --json out.json   # gpu_check: time each kernel

Cost model (per call; ``e`` bytes per element of the input dtype, bf16 = 2):

* ``softmax_entropy`` [B, V]: reads the logits once, B V e bytes; ~12 float32 operations per entry
  (online max / sum / weighted sum with one exp). With a keyed sample (SAMPLE) every entry also
  draws Philox noise and two float64 logs: 64 float64 and 29 32-bit integer-multiply instructions
  per entry, counted in the kernel's sm_90 PTX (512 and 234 per loop step of 8 entries per thread).
* ``gumbel_topk_prune`` [B, V]: the lse pass (as above, no sample) plus a scan pass that reads the
  logits again with noise for every entry: 2 B V e bytes, the same float64 work as one SAMPLE pass.
* ``fork_attention`` (one layer; the model call is 32 layers for Llama-3-8B): N rows of one sequence
  over a prefix of L tokens, H = 32 query / Hkv = 8 kv heads, head_dim 128, slots of T = 6 tokens.
  Bytes: the prefix K and V once (2 L Hkv D e), each row's q, out, new k / v and slot, and the chunk
  partials; FLOPs: q.k and p.v, 4 N H L D. The kernel executes more on tensor cores: query tiles
  padded to BLOCK_M and p.v twice (the hi / lo split of p), 2 (tiles BLOCK_M) Hkv L D (1 + 2).
  Worst-case bytes: the prefix once per query tile (if L2 kept nothing between the tiles).

Roofline time = max(bytes / HBM bandwidth, tensor FLOPs / dense BF16 peak, float64 instructions /
float64 issue rate, float32 operations / FP32 peak). Peaks (SXM parts, dense): H100 3.35 TB/s,
H200 4.8 TB/s HBM; both 989.4 TFLOPS BF16 tensor, 66.9 TFLOPS FP32, 33.5 TFLOPS FP64 (16.7 T
float64 FMA instructions/s): NVIDIA's datasheets as tabulated at
https://glennklockwood.com/garden/processors/h100 (H100) and
https://itkb.uw.cz/2026/06/nvidia-h200-vs-b300-precisions-cores.html (H200: same GH100 compute).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "kernels.md"
REGION = "roofline"
COMMAND = "python benchmarks/roofline.py --docs"

GPUS = {
    "H100": dict(hbm=3.35e12, bf16=989.4e12, fp32=66.9e12, fp64_instr=33.5e12 / 2),
    "H200": dict(hbm=4.8e12, bf16=989.4e12, fp32=66.9e12, fp64_instr=33.5e12 / 2),
}
F32_PER_ENTRY = 12                 # online softmax: sub, abs, neg, exp (ex2 + mul), compare, 2 fma, selects
F64_PER_SAMPLED_ENTRY = 512 / 8    # sm_90 PTX of the SAMPLE / scan loop step, 8 entries per thread
IMUL_PER_SAMPLED_ENTRY = 234 / 8
LLAMA3_8B = dict(H=32, Hkv=8, D=128, layers=32, T=6)


def softmax_entropy_cost(B: int, V: int, e: int = 2, sample: bool = False) -> dict:
    n = B * V
    return dict(bytes=n * e + B * (8 + (8 if sample else 0)), tc_flops=0.0, flops=F32_PER_ENTRY * n,
                fp32=F32_PER_ENTRY * n, fp64_instr=F64_PER_SAMPLED_ENTRY * n if sample else 0.0,
                imul=IMUL_PER_SAMPLED_ENTRY * n if sample else 0.0)


def gumbel_topk_prune_cost(B: int, V: int, e: int = 2) -> dict:
    n = B * V
    return dict(bytes=2 * n * e + B * 512 * 8, tc_flops=0.0, flops=2 * F32_PER_ENTRY * n, fp32=2 * F32_PER_ENTRY * n,
                fp64_instr=F64_PER_SAMPLED_ENTRY * n, imul=IMUL_PER_SAMPLED_ENTRY * n)


def fork_attention_cost(N: int, L: int, e: int = 2, H: int = 32, Hkv: int = 8, D: int = 128, T: int = 6,
                        sms: int = 132, layers: int = 1) -> dict:
    """One layer call (x ``layers``): N rows of one sequence over an L-token prefix."""
    import torch
    from epic_kernels.triton_kernels.fork_attention import num_chunks_for, prefix_config
    G = H // Hkv
    cfg = prefix_config(N * G, D, torch.bfloat16 if e == 2 else torch.float32)
    tiles = math.ceil(N * G / cfg["BLOCK_M"])
    C = _chunks(tiles * Hkv, L, cfg["BLOCK_N"], sms, num_chunks_for)
    prefix = 2 * L * Hkv * D * e
    rows = N * (2 * H * D * e + 2 * Hkv * D * e + 2 * T * Hkv * D * e)
    partials = 2 * N * H * C * (cfg["BLOCK_D"] + 2) * 4
    flops = 4 * N * H * L * D
    tc = 2 * tiles * cfg["BLOCK_M"] * Hkv * L * D * (1 + (2 if e == 2 else 1))
    return dict(bytes=layers * (prefix + rows + partials), bytes_worst=layers * (tiles * prefix + rows + partials),
                flops=layers * flops, tc_flops=layers * tc, fp32=0.0, fp64_instr=0.0, imul=0.0, tiles=tiles, chunks=C)


def _chunks(programs: int, L: int, block_n: int, sms: int, fn) -> int:
    import torch
    from epic_kernels.triton_kernels import fork_attention as tfa
    real = tfa._sm_count
    try:
        tfa._sm_count = lambda index: sms
        return fn(programs, L, block_n, torch.device("cuda", 0))[0]
    finally:
        tfa._sm_count = real


def roofline_s(cost: dict, gpu: dict) -> tuple[float, str]:
    """(seconds, what bounds it) at ``gpu``'s peaks."""
    terms = dict(memory=cost["bytes"] / gpu["hbm"], tensor=cost["tc_flops"] / gpu["bf16"],
                 fp32=cost["fp32"] / gpu["fp32"], fp64=cost["fp64_instr"] / gpu["fp64_instr"])
    bound = max(terms, key=terms.get)
    return terms[bound], bound


# the shapes of the paper table (users' shapes: B 1-256, V 32K-256K; fork at prefix 1K-32K, rows 8-512)
ROW_SHAPES = [(1, 32000), (8, 128256), (64, 128256), (256, 128256), (256, 256000)]
FORK_SHAPES = [(8, 1024), (64, 1024), (512, 1024), (8, 4096), (64, 4096), (512, 4096), (8, 32768), (64, 32768),
               (512, 32768)]

PUBLISHED = {
    "softmax_entropy": "vLLM's Triton top-k/top-p sampler kernel (a full-vocabulary pass per row): "
                       "0.157 ms at 128 x 131072 (top-k), 0.389 ms (top-p), 0.795 ms at 512 x 131072 (top-p), "
                       "8 warps; GPU not named in the thread ([vllm#51507](https://github.com/vllm-project/vllm/pull/51507))",
    "gumbel_topk_prune": "vLLM's Triton top-k masking 1.504 ms at 256 x 131072 vs 3.812 ms for its PyTorch sort "
                         "(GPU not named, [vllm#32558](https://github.com/vllm-project/vllm/pull/32558)); FlashInfer's "
                         "sorting-free sampling: over 50 % less sampling time in vLLM on 1 x H100, no per-kernel time "
                         "([blog](https://flashinfer.ai/2025/03/10/sampling.html))",
    "fork_attention": "FlashInfer cascade (shared-prefix) decode: up to 31x vLLM's PageAttention and 26x FlashInfer's "
                      "batch decode without cascading, prompt 32768, batch 256, H100 SXM 80GB; relative figures, no "
                      "absolute time ([blog](https://flashinfer.ai/2024/02/02/cascade-inference.html)). Hydragen: up to "
                      "32x end-to-end throughput (CodeLlama-13b), < 15 % throughput drop from a 1K to a 16K shared "
                      "prefix ([arXiv 2402.05099](https://arxiv.org/abs/2402.05099))",
}


def _fmt_bytes(b: float) -> str:
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def _fmt_us(s: float) -> str:
    return f"{s * 1e6:.3g}"


def paper_rows() -> list[dict]:
    rows = []
    for B, V in ROW_SHAPES:
        for sample in (False, True):
            rows.append(dict(kernel="softmax_entropy" + (" (SAMPLE)" if sample else ""), shape=f"B {B}, V {V}",
                             cost=softmax_entropy_cost(B, V, 2, sample), op="softmax_entropy"))
        rows.append(dict(kernel="gumbel_topk_prune", shape=f"B {B}, V {V}", cost=gumbel_topk_prune_cost(B, V, 2),
                         op="gumbel_topk_prune"))
    for N, L in FORK_SHAPES:
        c = fork_attention_cost(N, L, 2, **{k: LLAMA3_8B[k] for k in ("H", "Hkv", "D", "T")})
        rows.append(dict(kernel="fork_attention (1 layer)", shape=f"rows {N}, prefix {L}", cost=c, op="fork_attention"))
    return rows


def paper_table() -> str:
    L = ["| kernel | shape | bytes | FLOPs (tensor executed) | fp64 instr | H100 memory us | H200 memory us | "
         "compute us (tensor / fp64) | roofline us H100 / H200 | bound |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for r in paper_rows():
        c = r["cost"]
        h100, h200 = GPUS["H100"], GPUS["H200"]
        t100, b100 = roofline_s(c, h100)
        t200, b200 = roofline_s(c, h200)
        flops = f"{c['flops']:.3g}" + (f" ({c['tc_flops']:.3g})" if c["tc_flops"] else "")
        compute = f"{_fmt_us(c['tc_flops'] / h100['bf16'])} / {_fmt_us(c['fp64_instr'] / h100['fp64_instr'])}"
        L.append(f"| {r['kernel']} | {r['shape']} | {_fmt_bytes(c['bytes'])} | {flops} | {c['fp64_instr']:.3g} | "
                 f"{_fmt_us(c['bytes'] / h100['hbm'])} | {_fmt_us(c['bytes'] / h200['hbm'])} | {compute} | "
                 f"{_fmt_us(t100)} / {_fmt_us(t200)} | {b100}" + (f" / {b200}" if b200 != b100 else "") + " |")
    L += ["", "Nearest published figures (no timing of ours: these kernels have never run on a GPU):", ""]
    L += [f"* `{op}`: {text}." for op, text in PUBLISHED.items()]
    L += ["", f"*Generated by `{COMMAND}` from the formulas of `benchmarks/roofline.py` (peaks: H100 / H200 "
              "SXM, dense). Nothing here is measured; `make gpu-check` prints measured / roofline per kernel when "
              "it runs on a GPU, which has not happened yet.*"]
    return "\n".join(L) + "\n"


def rewrite_docs(body: str) -> bool:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_tables import rewrite_region

    return rewrite_region(DOC, REGION, body)


# ------------------------------------------------------------------------------------------------ #
# measured / roofline (make gpu-check)                                                             #
# ------------------------------------------------------------------------------------------------ #


def gpu_peaks(device) -> tuple[str, dict]:
    """The table entry for the running GPU (by name), else its bandwidth from the device properties
    with no compute roofs (memory-only roofline)."""
    import torch
    if device.type != "cuda":
        return "H100 (CPU run: constants only)", GPUS["H100"]
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPUS.items():
        if key in name:
            return name, peaks
    p = torch.cuda.get_device_properties(device)
    clock, bus = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
    bw = 2 * clock * 1e3 * bus / 8 if clock and bus else float("nan")
    return f"{name} (memory roof only)", dict(hbm=bw, bf16=math.inf, fp32=math.inf, fp64_instr=math.inf)


def _time(fn, device, reps: int) -> float:
    """Median seconds of ``fn()``: CUDA events around each call on a GPU, perf_counter on the CPU."""
    import torch
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(device_name: str, quick: bool) -> dict:
    """Time each kernel at a few of the paper's shapes (tiny ones on the CPU: a check of this code,
    not a measurement of a GPU) and divide by the roofline."""
    import torch
    sys.path.insert(0, str(ROOT))
    from epic_kernels import ops
    from epic_kernels.ops.fork_attention import fork_attention_impl
    device = torch.device(device_name)
    gpu_name, peaks = gpu_peaks(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    e = 2 if cuda else 4
    reps = 20 if cuda else 3
    rows_shapes = ([(8, 128256), (256, 128256)] if not quick else [(8, 128256)]) if cuda else [(4, 4096)]
    fork_shapes = ([(8, 4096), (64, 4096), (512, 4096), (8, 32768), (512, 32768)] if not quick
                   else [(64, 4096)]) if cuda else [(8, 256)]
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    backend = "triton" if cuda else None
    for B, V in rows_shapes:
        x = (torch.randn(B, V, generator=g) * 3).to(device, dtype)
        seeds, pos = torch.randint(0, 2**32, (B,)).to(device), torch.randint(0, 2**31, (B,)).to(device)
        cases = [("softmax_entropy", softmax_entropy_cost(B, V, e), lambda: ops.softmax_entropy(x, backend=backend)),
                 ("softmax_entropy (SAMPLE)", softmax_entropy_cost(B, V, e, True),
                  lambda: ops.softmax_entropy(x, seeds=seeds, streams=torch.ones_like(seeds), positions=pos,
                                              backend=backend)),
                 ("gumbel_topk_prune", gumbel_topk_prune_cost(B, V, e),
                  lambda: ops.gumbel_topk_prune(x, seeds, pos, 2.0, 8, backend=backend))]
        for name, cost, fn in cases:
            out.append(_row(name, f"B {B}, V {V}", cost, _time(fn, device, reps), peaks))
    m = LLAMA3_8B
    sms = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 4
    for N, L in fork_shapes:
        H, Hkv, D, T = m["H"], m["Hkv"], m["D"], m["T"]
        if not cuda:
            H, Hkv, D = 8, 2, 64
        q = torch.randn(N, H, 1, D, generator=g).to(device, dtype)
        k = torch.randn(N, Hkv, 1, D, generator=g).to(device, dtype)
        pool = torch.zeros(N, Hkv, T, D, dtype=dtype, device=device)
        K = torch.randn(1, Hkv, L, D, generator=g).to(device, dtype)
        valid = torch.ones(1, L, dtype=torch.bool, device=device)
        seq, slot, fill = torch.zeros(N, dtype=torch.int64), torch.arange(N), torch.full((N,), T - 1)
        fb = "triton" if cuda else "cpp"
        cost = fork_attention_cost(N, L, e, H, Hkv, D, T, sms)
        fn = lambda: fork_attention_impl(q, k, k, pool, pool, K, K, valid, seq, slot, fill, None, None, fb)  # noqa: E731
        out.append(_row("fork_attention (1 layer)", f"rows {N}, prefix {L}", cost, _time(fn, device, reps), peaks))
    return dict(device=str(device), gpu=gpu_name, dtype=str(dtype), rows=out)


def _row(name, shape, cost, seconds, peaks) -> dict:
    roof, bound = roofline_s(cost, peaks)
    return dict(kernel=name, shape=shape, measured_us=seconds * 1e6, roofline_us=roof * 1e6, bound=bound,
                ratio=seconds / roof if roof > 0 else float("nan"), bytes=cost["bytes"],
                achieved_gbps=cost["bytes"] / seconds / 1e9)


def measured_table(res: dict) -> str:
    L = [f"Device {res['gpu']} ({res['device']}), {res['dtype']}; median of CUDA-event timings per call "
         "(CPU: perf_counter), roofline from benchmarks/roofline.py.", "",
         "| kernel | shape | measured us | roofline us | bound | measured / roofline | achieved GB/s |",
         "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['kernel']} | {r['shape']} | {r['measured_us']:.3g} | {r['roofline_us']:.3g} | {r['bound']} | "
                 f"{r['ratio']:.2f}x | {r['achieved_gbps']:.3g} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", action="store_true", help=f"rewrite docs/kernels.md's '{REGION}' region")
    ap.add_argument("--measure", action="store_true", help="time each kernel on --device and divide by the roofline")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.measure:
        res = measure(args.device, args.quick)
        print(measured_table(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return 0
    body = paper_table()
    print(body)
    if args.docs:
        print(("rewrote " if rewrite_docs(body) else "unchanged ") + str(DOC.relative_to(ROOT)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
