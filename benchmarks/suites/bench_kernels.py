"""Kernel microbenchmarks against the baselines they are judged by, in one session.

* ``softmax_entropy``: the C++ op (``torch.ops.epic_kernels.softmax_entropy``: kernel + glue), the
  public op (``epic_kernels.ops.softmax_entropy``: validation included), ``scan_first`` (the
  public op as it was: ``check_logits``' NaN / +inf / dead-row scans, then the C++ op), torch eager
  (``log_softmax``, ``exp``, product, ``sum``: what the op replaces), ``torch.logsumexp`` (one
  reduction with an exp per entry: the floor any entropy pass is held to) and ``x.sum(-1)`` (one
  read: the bandwidth floor). Logits ``N(0, 3^2)``; shapes of docs/kernels.md.
* ``softmax_entropy_sample``: the engine's depth-1 rows (entropy + 2 keyed samples, N 70): one call
  with ``streams [N, 2]`` against two calls with ``streams [N]``, one stream, and no sample.
* ``gumbel_topk_prune``: the C++ op against the reference (``reference.gumbel_topk_prune``), width
  ``0.8 log V``, top_k 8.
* ``triton`` (``--device cuda`` only): the Triton kernels of both ops through the engine's entry
  point (``softmax_entropy_impl`` / ``gumbel_topk_prune_impl`` with ``backend="triton"``).
* ``fork_kv``: the KV side of forking one sequence into R rows (prefix L, the embedded model's 30
  layers): HF ``copy.deepcopy`` + ``batch_repeat_interleave`` against the engine's slot pool, bytes
  added in ``extra_info``; and one layer's attention of those R rows at depth 2 (``fork_depth2``):
  SDPA over the R copies, the torch path of ``fork_attention`` and the C++ op (``fork_shapes.py``).
* ``fork_attention``: one layer call at the engine's shapes (N rows, prefix L, slots filled 0..3):
  the C++ op as the engine calls it, its torch path, and SDPA over N copies of the prefix.
* ``plan_rows`` / ``fork_layout``: the C++ ops against their torch specifications.
* the candidate manager: ``make_manager`` + one full ``plan`` of the blocks, C++ against the
  reference manager.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import sync, tag

SOFTMAX_SHAPES = [(1, 32000), (1, 49152), (1, 128256), (8, 32000), (8, 49152), (8, 128256),
                  (64, 32000), (64, 49152), (64, 128256)]
QUICK_SOFTMAX = {(64, 49152)}
SOFTMAX_IMPLS = ["cpp", "triton", "public", "scan_first", "eager", "logsumexp", "sum"]


def _q(cases, quick_set):
    return [pytest.param(c, marks=pytest.mark.quick) if c in quick_set else c for c in cases]


def eager_entropy(x):
    lp = torch.log_softmax(x, dim=-1)
    return -(lp.exp() * lp).sum(-1)


def _logits(B, V, device, std=3.0):
    g = torch.Generator().manual_seed(B * 1_000_003 + V)
    return (torch.randn(B, V, generator=g) * std).to(device)


def _triton(device, op, make):
    """``make(op's _impl)`` when Triton can run here (CUDA), else skip."""
    import importlib

    if device.type != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only (the CPU has only the Triton interpreter)")
    from epic_kernels.ops import dispatch

    why = dispatch.why_not("triton", device, op)
    if why:
        pytest.skip(f"triton: {why}")
    return make(getattr(importlib.import_module(f"epic_kernels.ops.{op}"), f"{op}_impl"))


def _need_cpp(device, op):
    """Skip unless the C++ extension has a kernel of ``op`` for ``device``."""
    from epic_kernels.ops import dispatch

    why = dispatch.why_not("cpp", device, op)
    if why:
        pytest.skip(f"cpp: {why}")


def _run(benchmark, fn, device):
    s = sync(device)

    def call():
        out = fn()
        s()
        return out
    return benchmark(call)


@pytest.mark.parametrize("impl", SOFTMAX_IMPLS)
@pytest.mark.parametrize("shape", _q(SOFTMAX_SHAPES, QUICK_SOFTMAX), ids=lambda s: f"B{s[0]}-V{s[1]}")
def bench_softmax_entropy(benchmark, shape, impl, device, threads):
    from epic_kernels import _ext
    from epic_kernels.ops import softmax_entropy

    B, V = shape
    x = _logits(B, V, device)
    if impl == "cpp":
        _need_cpp(device, "softmax_entropy")
        op = _ext.ops().softmax_entropy
        fn = lambda: op(x)  # noqa: E731
    elif impl == "triton":
        fn = _triton(device, "softmax_entropy", lambda f: lambda: f(x, backend="triton"))
    elif impl == "public":
        fn = lambda: softmax_entropy(x)  # noqa: E731
    elif impl == "scan_first":       # the public op before bad values were read from the kernel's lse
        from epic_kernels.validate import check_logits

        _need_cpp(device, "softmax_entropy")
        op = _ext.ops().softmax_entropy
        fn = lambda: (check_logits(x, empty_batch=True), op(x))  # noqa: E731
    elif impl == "eager":
        fn = lambda: eager_entropy(x)  # noqa: E731
    elif impl == "logsumexp":
        fn = lambda: torch.logsumexp(x, -1)  # noqa: E731
    else:
        fn = lambda: x.sum(-1)  # noqa: E731
    tag(benchmark, "softmax_entropy", f"B={B} V={V}", impl, B=B, V=V, threads=threads)
    _run(benchmark, fn, device)


SAMPLE_IMPLS = ["one_call", "separate", "one_stream", "entropy_only"]


@pytest.mark.parametrize("impl", SAMPLE_IMPLS)
@pytest.mark.parametrize("logits", [pytest.param("randn", marks=pytest.mark.quick), "smollm2"])
def bench_softmax_entropy_sample(benchmark, logits, impl, device, threads, request):
    """The engine's depth-1 rows: entropy + S = 2 keyed rollout samples per row, N = 70, V = 49152.
    ``one_call``: ``streams [N, 2]`` (one softmax pass); ``separate``: 2 calls with ``streams [N]``;
    ``one_stream``: 1 call, 1 sample; ``entropy_only``: ``softmax_entropy`` (no sample). Logits
    ``N(0, 3^2)`` (noise needed for most entries: the worst case) or the embedded SmolLM2's next-token
    logits along a text (peaked: most noise skipped). The two ways give the same tokens (asserted)."""
    from epic_kernels import _ext

    _need_cpp(device, "softmax_entropy")
    N, V, S = 70, 49152, 2
    if logits == "randn":
        x = _logits(N, V, device)
    else:
        x = _model_logits(request.getfixturevalue("embedded"), N).to(device)
        V = x.shape[1]
    g = torch.Generator().manual_seed(11)
    seeds = torch.randint(0, 2**32, (N,), generator=g).to(device)
    positions = torch.randint(0, 4096, (N,), generator=g).to(device)
    streams = (1 + torch.arange(S)).expand(N, S).contiguous().to(device)
    cols = [streams[:, k].contiguous() for k in range(S)]
    ops = _ext.ops()
    one = ops.softmax_entropy_sample(x, seeds, streams, positions)
    sep = [ops.softmax_entropy_sample(x, seeds, c, positions) for c in cols]
    assert torch.equal(one[2], torch.stack([o[2] for o in sep], 1)), "streams [N, S] and S calls disagree"
    fn = {"one_call": lambda: ops.softmax_entropy_sample(x, seeds, streams, positions),
          "separate": lambda: [ops.softmax_entropy_sample(x, seeds, c, positions) for c in cols],
          "one_stream": lambda: ops.softmax_entropy_sample(x, seeds, cols[0], positions),
          "entropy_only": lambda: ops.softmax_entropy(x)}[impl]
    tag(benchmark, "softmax_entropy_sample", {"randn": "N(0, 3^2)", "smollm2": "SmolLM2 text"}[logits], impl,
        N=N, V=V, S=S, threads=threads)
    _run(benchmark, fn, device)


STREAM_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his "
    "father had taught him. At the top he trimmed the wick, polished the great lens, and watched "
    "the fishing boats return through the narrowing channel. Storms came often in autumn, and on "
    "those nights he stayed awake until dawn, listening to the waves break against the rocks below "
    "and writing in the logbook that had passed through four generations of his family.")


def _model_logits(embedded, rows):
    """``[rows, V]`` next-token logits of the embedded model at the first positions of a text."""
    model, tok = embedded
    ids = tok(STREAM_TEXT, return_tensors="pt").input_ids
    while ids.shape[1] < rows:
        ids = torch.cat([ids, ids], 1)
    with torch.no_grad():
        return model(input_ids=ids[:, :rows]).logits[0].float().contiguous()


PRUNE_SHAPES = [(1, 32000), (1, 49152), (8, 49152), (64, 49152)]


@pytest.mark.parametrize("impl", ["cpp", "triton", "reference"])
@pytest.mark.parametrize("shape", _q(PRUNE_SHAPES, {(8, 49152)}), ids=lambda s: f"B{s[0]}-V{s[1]}")
def bench_gumbel_topk_prune(benchmark, shape, impl, device, threads, quick):
    from epic_kernels import _ext, reference as R

    B, V = shape
    x = _logits(B, V, device)
    g = torch.Generator().manual_seed(7)
    seeds = torch.randint(0, 2**32, (B,), generator=g).to(device)
    positions = torch.randint(0, 4096, (B,), generator=g).to(device)
    width = torch.full((B,), 0.2 * 4 * math.log(V), device=device)
    if impl == "cpp":
        _need_cpp(device, "gumbel_topk_prune")
        op = _ext.ops().gumbel_topk_prune
        fn = lambda: op(x, seeds, positions, width, 8)  # noqa: E731
    elif impl == "triton":
        fn = _triton(device, "gumbel_topk_prune", lambda f: lambda: f(x, seeds, positions, width, 8, backend="triton"))
    else:
        fn = lambda: R.gumbel_topk_prune(x, seeds, positions, width, 8)  # noqa: E731
    tag(benchmark, "gumbel_topk_prune", f"B={B} V={V}", impl, B=B, V=V, threads=threads)
    if impl == "reference":       # 10 ms - 2 s a call: a few rounds
        s = sync(device)
        benchmark.pedantic(lambda: (fn(), s()), rounds=1 if quick else 3, iterations=1, warmup_rounds=0 if quick else 1)
    else:
        _run(benchmark, fn, device)


FORK_SHAPES = [(4, 100), (8, 100), (16, 100), (40, 100), (4, 200), (8, 200), (16, 200), (40, 200)]


@pytest.mark.parametrize("impl", ["cpp", "torch", "sdpa"])
@pytest.mark.parametrize("shape", _q(FORK_SHAPES, {(8, 200)}), ids=lambda s: f"N{s[0]}-L{s[1]}")
def bench_fork_attention(benchmark, shape, impl, device, threads):
    """One layer call: N rows of one sequence, prefix L, slots filled 0..3 of 5 (fork_shapes.py)."""
    if device.type != "cpu":
        pytest.skip("fork attention has a C++ kernel on CPU only (the reference runs on CUDA)")
    import fork_shapes as F

    N, L = shape
    fns, err = F.engine_shape_fns(N, L)
    if impl == "sdpa":
        g = torch.Generator().manual_seed(3)
        K = torch.randn(N, F.KV_HEADS, L + 4, F.HEAD_DIM, generator=g)
        Vv = torch.randn(N, F.KV_HEADS, L + 4, F.HEAD_DIM, generator=g)
        q = torch.randn(N, F.HEADS, 1, F.HEAD_DIM, generator=g)
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, K, Vv, enable_gqa=True)  # noqa: E731
    elif impl not in fns:
        pytest.skip(f"{impl} fork attention unavailable")
    else:
        fn = fns[impl]
    tag(benchmark, "fork_attention", f"N={N} L={L}", impl, N=N, L=L, threads=threads, max_abs_diff=err)
    benchmark(fn)


KV_SHAPES = [(128, 4), (128, 16), (128, 64), (512, 4), (512, 16), (512, 64), (2048, 4), (2048, 16)]
HF_FORK_MAX_BYTES = 1.5 * 2**30          # larger HF forks (2048 x 64: 5.6 GiB) are not run


@pytest.fixture(scope="module")
def kv_cache():
    import fork_shapes as F

    caches = {}

    def get(L):
        if L not in caches:
            caches.clear()                                     # one prefix length held at a time
            caches[L] = F.random_cache(L)
        return caches[L]
    return get


@pytest.mark.parametrize("impl", ["hf_copy", "engine_pool"])
@pytest.mark.parametrize("shape", _q(KV_SHAPES, {(128, 4)}), ids=lambda s: f"L{s[0]}-R{s[1]}")
def bench_fork_kv(benchmark, shape, impl, kv_cache, device, threads):
    """Fork one sequence of prefix L into R rows: R copies of the HF cache vs the engine's slot pool."""
    if device.type != "cpu":
        pytest.skip("the fork benchmarks use CPU caches")
    import fork_shapes as F

    L, R = shape
    cache = kv_cache(L)
    prefix = F.cache_bytes(cache)
    added = R * prefix if impl == "hf_copy" else F.engine_fork(R, 4).nbytes()
    if impl == "hf_copy" and added > HF_FORK_MAX_BYTES:
        pytest.skip(f"HF fork of {added / 2**30:.1f} GiB not run")
    fn = (lambda: F.hf_fork(cache, R)) if impl == "hf_copy" else (lambda: F.engine_fork(R, 4))
    tag(benchmark, "fork_kv", f"L={L} R={R}", impl, L=L, R=R, threads=threads, added_bytes=added,
        prefix_bytes=prefix)
    benchmark(fn)


@pytest.mark.parametrize("impl", ["sdpa", "torch", "cpp"])
@pytest.mark.parametrize("shape", _q(KV_SHAPES, {(128, 4)}), ids=lambda s: f"L{s[0]}-R{s[1]}")
def bench_fork_depth2(benchmark, shape, impl, kv_cache, device, threads):
    """One layer's attention of the R forked rows at depth 2: SDPA over the copies vs fork attention."""
    if device.type != "cpu":
        pytest.skip("the fork benchmarks use CPU caches")
    import fork_shapes as F

    L, R = shape
    fns, errs = F.attention_fns(kv_cache(L), R, 4)
    if impl not in fns:
        pytest.skip(f"{impl} fork attention unavailable")
    tag(benchmark, "fork_depth2", f"L={L} R={R}", impl, L=L, R=R, threads=threads,
        max_abs_diff_vs_sdpa=errs.get(impl))
    benchmark(fns[impl])


def _planner_state(M, K=2, seqs=2, seed=0):
    g = torch.Generator().manual_seed(seed + M)
    depth = torch.randint(0, 4, (M,), generator=g)
    goal = torch.clamp(depth + torch.randint(0, 2, (M,), generator=g), max=4)
    seq = torch.sort(torch.randint(0, seqs, (M,), generator=g)).values
    tokens = torch.randint(0, 49152, (M,), generator=g)
    last = torch.randint(0, 49152, (M, K), generator=g)
    base = torch.randint(50, 300, (M,), generator=g)
    return depth, goal, seq, tokens, last, base


@pytest.mark.parametrize("impl", ["cpp", "reference"])
@pytest.mark.parametrize("M", _q([4, 16, 140], {16}))
def bench_plan_rows(benchmark, M, impl, threads):
    import importlib

    P = importlib.import_module("epic_kernels.ops.plan_rows")

    args = _planner_state(M)
    tag(benchmark, "plan_rows", f"M={M}", impl, M=M, threads=threads)
    benchmark(lambda: P.plan_rows_impl(*args, 2, 1, backend=impl))


@pytest.mark.parametrize("impl", ["cpp", "reference"])
@pytest.mark.parametrize("case", _q([(4, 1), (40, 1), (280, 8)], {(40, 1)}), ids=lambda c: f"N{c[0]}-B{c[1]}")
def bench_fork_layout(benchmark, case, impl, threads):
    import importlib

    FL = importlib.import_module("epic_kernels.ops.fork_layout")

    N, B = case
    seq = torch.sort(torch.randint(0, B, (N,), generator=torch.Generator().manual_seed(N))).values
    tag(benchmark, "fork_layout", f"N={N} B={B}", impl, N=N, B=B, threads=threads)
    benchmark(lambda: FL.fork_layout_impl(seq, B, backend=impl))


@pytest.mark.parametrize("impl", ["cpp", "reference"])
@pytest.mark.parametrize("survivors", _q([5, 70, 400], {70}))
def bench_candidate_manager(benchmark, survivors, impl, threads):
    """Build the manager over one row's survivors and drain it (every block planned and finished)."""
    from epic_kernels import core
    import importlib

    CM = importlib.import_module("epic_kernels.ops.candidate_manager")

    g = torch.Generator().manual_seed(survivors)
    z = torch.sort(torch.randn(survivors, generator=g, dtype=torch.float64) * 2, descending=True).values
    ids = torch.randperm(49152, generator=g)[:survivors]
    offsets = torch.tensor([0, survivors])
    bound = core.admissible_bound(49152, 50)

    h1 = torch.rand(survivors, generator=g, dtype=torch.float64) * 3      # each candidate's entropy per depth

    def run():
        mgr = CM.make_manager_impl(offsets, ids, z, 0.2, 4, bound, 32, backend=impl)
        rounds = 0
        while True:
            idx, depth = mgr.next_requests()
            if len(idx) == 0:
                return rounds
            partial = h1[idx] * depth
            exact = torch.where(depth == 4, z[idx] - 0.2 * partial, torch.full_like(partial, float("nan")))
            mgr.update(idx, depth, partial, exact)
            rounds += 1
    tag(benchmark, "candidate_manager", f"survivors={survivors}", impl, survivors=survivors, threads=threads)
    benchmark(run)
