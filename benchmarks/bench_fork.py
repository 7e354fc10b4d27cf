"""Fork cost: the engine's slot pool against ``copy.deepcopy`` + ``batch_repeat_interleave`` of the
Hugging Face cache, on the embedded model's cache shapes (30 layers, 3 KV heads, head_dim 64, float32;
a random ``DynamicCache``, no model run).

For each prefix length L and rollout count R (one sequence forked into R rows):

* **fork, KV side.** HF: ``copy.deepcopy(cache)`` then ``batch_repeat_interleave(R)`` (R full copies
  of the prefix). Engine: a ``SlotPool`` (per layer ``[R, kv_heads, horizon, head_dim]``) reserved
  for R slots, plus the depth-1 fan-out ``copy_slots`` (slot 0's first token into slots 1..R-1): the
  prefix itself is read in place. Time (median of interleaved repeats) and bytes added
  (HF: R copies of the prefix; engine: ``pool.nbytes()``).
* **attention of one layer for those R rows** at depth 2 (each row: the shared prefix + 2 own tokens).
  HF: ``scaled_dot_product_attention`` over the R copies (GQA); engine, two implementations of
  ``fork_attention``: the torch path (``ops.fork_attention.fork_attention_reference``: one matmul per sequence over the
  prefix + a tiny per-row suffix part, merged by log-sum-exp, ~25 small ops) and the fused C++ op
  (``torch.ops.epic_kernels.fork_attention``, what the engine runs on CPU tensors).

A second table times one layer call at the engine's own shapes: N rows of one sequence (N in
``--engine-rows``, a prefix of L in ``--engine-lengths``), fills 0..3 of a 5-token slot, the torch
path against the C++ op (medians of ``--engine-repeats`` interleaved calls).

    python benchmarks/bench_fork.py
    python benchmarks/bench_fork.py --quick --json fork.json
"""
from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the repository root: no PYTHONPATH needed
from experiments import common as C  # noqa: E402  (first: it sets OMP_WAIT_POLICY before torch loads)

import torch  # noqa: E402

from epic_kernels.engine import attention as A  # noqa: E402
from epic_kernels.core import Prefix  # noqa: E402

LAYERS, KV_HEADS, HEADS, HEAD_DIM = 30, 3, 9, 64


def random_cache(L: int, seed: int = 0):
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g), torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g))
            for _ in range(LAYERS)]
    return DynamicCache(ddp_cache_data=data)


def hf_fork(cache, R):
    forked = copy.deepcopy(cache)
    forked.batch_repeat_interleave(R)
    return forked


def engine_fork(R, horizon):
    pool = A.SlotPool(LAYERS, KV_HEADS, HEAD_DIM, horizon, torch.float32)
    pool.reserve(R)
    if R > 1:
        pool.copy_slots(torch.zeros(R - 1, dtype=torch.int64), torch.arange(1, R), 1)
    return pool


def cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def _fork_call(fb, fn, q, k, v):
    """``fn`` (``A.fork_attention``'s torch path or the C++ op) as the engine calls it for layer 0."""
    module = types.SimpleNamespace(layer_idx=0)

    def call():
        A._local.batch = fb
        try:
            return fn(module, q, k, v, scaling=HEAD_DIM ** -0.5)[0]
        finally:
            A._local.batch = None
    return call


def fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill):
    """``{"torch": ..., "cpp": ...}``: one layer call of fork attention by each implementation, as the
    engine calls it (``cpp`` is ``fork_attention`` itself, which runs the C++ op on CPU tensors; it
    is missing when the extension is not built or EPIC_KERNELS_BACKEND=reference)."""
    mask = torch.ones(K0.shape[0], K0.shape[2], dtype=torch.int64)
    view = Prefix([(K0, V0)], mask, mask.sum(-1), torch.zeros(K0.shape[0], dtype=torch.int64))
    fns = {"torch": _fork_call(A.ForkBatch.build(view, pool, seq, slot, fill, torch.float32, backend="reference"),
                               A.fork_attention, q, k_new, v_new)}
    fb = A.ForkBatch.build(view, pool, seq, slot, fill, torch.float32)
    if fb.backend == "cpp":
        fns["cpp"] = _fork_call(fb, A.fork_attention, q, k_new, v_new)
    return fns


def attention_fns(cache, R, horizon, seed=1):
    """Callables for one layer's attention of R depth-2 rows: HF sdpa over copies, and fork attention
    (torch path, C++ op); the largest |difference| of each fork output from sdpa's."""
    g = torch.Generator().manual_seed(seed)
    L = cache.layers[0].keys.shape[2]
    q = torch.randn(R, HEADS, 1, HEAD_DIM, generator=g)
    k_new = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)
    v_new = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)
    own = torch.randn(R, KV_HEADS, 1, HEAD_DIM, generator=g)          # each row's depth-1 token
    K0, V0 = cache.layers[0].keys, cache.layers[0].values
    K_hf = torch.cat([K0.expand(R, -1, -1, -1), own, k_new], 2).contiguous()      # the copies
    V_hf = torch.cat([V0.expand(R, -1, -1, -1), own, v_new], 2).contiguous()

    def hf():
        return torch.nn.functional.scaled_dot_product_attention(q, K_hf, V_hf, enable_gqa=True)

    pool = A.SlotPool(1, KV_HEADS, HEAD_DIM, horizon, torch.float32)
    pool.reserve(R)
    pool.keys[0][:R, :, 0] = own[:, :, 0]
    pool.values[0][:R, :, 0] = own[:, :, 0]
    seq, slot = torch.zeros(R, dtype=torch.int64), torch.arange(R)
    fill = torch.ones(R, dtype=torch.int64)
    fns = {"sdpa": hf, **fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill)}
    ref = hf().transpose(1, 2)                     # [R, 1, H, D]; same math: fork == sdpa over copies
    errs = {name: float((fn() - ref).abs().max()) for name, fn in fns.items() if name != "sdpa"}
    return fns, errs


def engine_shape_fns(N, L, seed=2):
    """One layer call at the engine's shapes: N rows of one sequence with a prefix of L tokens, each
    row's slot filled to 0..3 of 5 tokens. Torch path and C++ op, and their largest |difference|."""
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g)
    V0 = torch.randn(1, KV_HEADS, L, HEAD_DIM, generator=g)
    q = torch.randn(N, HEADS, 1, HEAD_DIM, generator=g)
    k_new = torch.randn(N, KV_HEADS, 1, HEAD_DIM, generator=g)
    v_new = torch.randn(N, KV_HEADS, 1, HEAD_DIM, generator=g)
    pool = A.SlotPool(1, KV_HEADS, HEAD_DIM, 5, torch.float32)
    pool.reserve(N)
    pool.keys[0].normal_(generator=g)
    pool.values[0].normal_(generator=g)
    seq, slot, fill = torch.zeros(N, dtype=torch.int64), torch.arange(N), torch.arange(N) % 4
    fns = fork_callables(K0, V0, q, k_new, v_new, pool, seq, slot, fill)
    err = float((fns["cpp"]() - fns["torch"]()).abs().max()) if "cpp" in fns else float("nan")
    return fns, err


def interleaved(fns: dict, repeats: int) -> dict:
    for fn in fns.values():                        # warm-up
        fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            _, dt = C.timed(fns[name])
            times[name].append(dt)
    return {k: C.median(v) for k, v in times.items()}


def main(argv=None):
    p = C.base_parser(__doc__.split("\n")[0])
    p.add_argument("--lengths", default="128,512,2048")
    p.add_argument("--rollouts", default="4,16,64")
    p.add_argument("--horizon", type=int, default=4, help="slot length (tokens per rollout row)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--max-gb", type=float, default=8.0, help="skip HF forks larger than this")
    p.add_argument("--engine-rows", default="4,8,16,40", help="rows per layer call, engine-shape table")
    p.add_argument("--engine-lengths", default="100,200", help="prefix lengths, engine-shape table")
    p.add_argument("--engine-repeats", type=int, default=300, help="interleaved calls per engine shape")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.rollouts, args.repeats = "128,512", "4,16", 3
        args.engine_rows, args.engine_lengths, args.engine_repeats = "4,40", "100", 20
    C.setup_torch(args.threads)
    torch.set_grad_enabled(False)
    cases = [(int(L), int(R)) for L in args.lengths.split(",") for R in args.rollouts.split(",")]
    results, rows = [], []
    for L, R in C.progress_bar(cases, args.no_progress, desc="fork cases"):
        cache = random_cache(L)
        prefix_bytes = cache_bytes(cache)
        hf_bytes = R * prefix_bytes
        reps = args.repeats if hf_bytes < 1e9 else max(3, args.repeats // 3)
        fns = {"engine": lambda: engine_fork(R, args.horizon)}
        if hf_bytes <= args.max_gb * 2**30:
            fns["hf"] = lambda: hf_fork(cache, R)
        t = interleaved(fns, reps)
        eng_bytes = engine_fork(R, args.horizon).nbytes()
        att, errs = attention_fns(cache, R, args.horizon)
        ta = interleaved(att, args.repeats)
        nan = float("nan")
        r = dict(L=L, R=R, prefix_MiB=prefix_bytes / 2**20, hf_fork_ms=t.get("hf", nan) * 1e3,
                 engine_fork_ms=t["engine"] * 1e3, fork_time_ratio=t.get("hf", nan) / t["engine"],
                 hf_added_MiB=hf_bytes / 2**20, engine_added_MiB=eng_bytes / 2**20,
                 bytes_ratio=hf_bytes / eng_bytes, hf_attn_ms=ta["sdpa"] * 1e3, fork_attn_ms=ta["torch"] * 1e3,
                 cpp_attn_ms=ta.get("cpp", nan) * 1e3, attn_ratio=ta["sdpa"] / ta["torch"],
                 attn_ratio_cpp=ta["sdpa"] / ta.get("cpp", nan), torch_over_cpp=ta["torch"] / ta.get("cpp", nan),
                 attn_max_abs_err=errs["torch"], cpp_max_abs_err=errs.get("cpp", nan), repeats=reps)
        results.append(r)
        rows.append([L, R, r["hf_fork_ms"], r["engine_fork_ms"], r["fork_time_ratio"], r["hf_added_MiB"],
                     r["engine_added_MiB"], r["bytes_ratio"], r["hf_attn_ms"], r["fork_attn_ms"], r["cpp_attn_ms"],
                     r["attn_ratio"], r["attn_ratio_cpp"], r["torch_over_cpp"],
                     f"{max(errs.values()):.1e}"])
        del cache
    engine = []
    shapes = [(int(N), int(L)) for L in args.engine_lengths.split(",") for N in args.engine_rows.split(",")]
    for N, L in C.progress_bar(shapes, args.no_progress, desc="engine shapes"):
        fns, err = engine_shape_fns(N, L)
        t = interleaved(fns, args.engine_repeats)
        engine.append(dict(N=N, L=L, torch_ms=t["torch"] * 1e3, cpp_ms=t.get("cpp", float("nan")) * 1e3,
                           torch_over_cpp=t["torch"] / t.get("cpp", float("nan")), max_abs_diff=err,
                           repeats=args.engine_repeats))
    print(f"\n## bench_fork: {LAYERS} layers, {KV_HEADS} KV heads ({HEADS} query heads), head_dim {HEAD_DIM}, "
          f"float32, slot length {args.horizon}, {args.threads} threads; CPU only (no GPU)\n")
    print(C.md_table(["prefix L", "rollouts R", "HF deepcopy+repeat ms", "engine pool ms", "time HF/engine",
                      "HF added MiB", "engine added MiB", "bytes HF/engine", "attn 1 layer: sdpa on copies ms",
                      "fork torch path ms", "fork C++ op ms", "sdpa/torch", "sdpa/C++", "torch/C++",
                      "max |diff| vs sdpa"], rows))
    print(f"\n## fork attention, one layer call at engine shapes: N rows of one sequence, prefix L, "
          f"fills 0..3 of 5 slot tokens; medians of {args.engine_repeats} interleaved calls\n")
    print(C.md_table(["rows N", "prefix L", "torch path ms", "C++ op ms", "torch / C++", "max |diff|"],
                     [[e["N"], e["L"], e["torch_ms"], e["cpp_ms"], e["torch_over_cpp"], f"{e['max_abs_diff']:.1e}"]
                      for e in engine]))
    C.write_json(args.json, dict(machine=C.machine(), args=vars(args), results=results, engine_shapes=engine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
