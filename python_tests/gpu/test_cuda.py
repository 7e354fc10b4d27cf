"""The ops and the fast engine on the device named by ``EPIC_TEST_DEVICE`` (default ``cpu``).

On CPU this is part of the normal suite (a few seconds); ``tools/gpu_check.py`` runs it with
``EPIC_TEST_DEVICE=cuda`` and Triton compiled (no ``TRITON_INTERPRET``), which makes it the GPU
readiness test of the kernels and of the engine. The oracle is always the pure-PyTorch reference
evaluated **on the CPU**: every device result is moved back and compared there.

What must hold on the device:

* ``ops.softmax_entropy`` / ``ops.gumbel_topk_prune`` with every backend that can run there equal the
  reference (entropy / lse / scores to the tolerances of the backends' own tests; tokens, survivor
  sets, front-runners and top-k ids exactly). On CUDA, the C++ backend must be reachable whenever
  the extension was built with CUDA kernels, and those kernels are also checked through
  ``torch.ops.epic_kernels`` directly, so a dispatch bug cannot hide a kernel bug or vice versa.
* ``ops.fork_attention`` with every backend that can run on the device (on CUDA: the Triton kernels,
  compiled; on the CPU: C++ and Triton interpreted) equals a dense float64 attention on the CPU, for
  every dtype, GQA, per-row limits and soft-capping, and writes the pools exactly.
* ``sample_step`` (two chained steps, with prefetch) and ``generate`` with the fast engine on a tiny
  float64 Llama on the device give the reference engine's tokens, with the fork attention the
  dispatcher picks for the device (Triton on CUDA); a float32 model decodes too.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

import epic_kernels
from epic_kernels import _ext, ops, reference as R
from epic_kernels.ops.gumbel_topk_prune import gumbel_topk_prune_impl
from epic_kernels.ops.softmax_entropy import softmax_entropy_impl
from epic_kernels.testing import random_prompts, tiny_llama

DEVICE = torch.device(os.environ.get("EPIC_TEST_DEVICE", "cpu"))
CPU = torch.device("cpu")


def _backend_names() -> tuple[str, str, list[str]]:
    """(name of the C++ backend, where BACKENDS was found, the distinct backends to test).

    The C++ backend is called "cpu" on main and may become "cpp" (with "cpu" kept as an alias);
    the alias is not tested twice."""
    for mod_name in ("epic_kernels.ops", "epic_kernels.ops.dispatch", "epic_kernels.ops._dispatch"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        names = getattr(mod, "BACKENDS", None)
        if names:
            cpp = "cpp" if "cpp" in names else "cpu"
            return cpp, mod_name, [b for b in ("reference", cpp, "triton") if b in names]
    raise RuntimeError("epic_kernels.ops exposes no BACKENDS tuple")


CPP, _, BACKEND_NAMES = _backend_names()
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _cuda_kernel(op: str) -> bool:
    return _ext.available() and torch._C._dispatch_has_kernel_for_dispatch_key(f"epic_kernels::{op}", "CUDA")


def _usable(backend: str) -> None:
    """Skip (with the reason) when ``backend`` cannot run on DEVICE for lack of a GPU build (the same
    test runs on the CPU in the normal suite); fail when it should run."""
    if backend == "triton":
        assert HAS_TRITON, "triton is a pinned test dependency (requirements.txt) and is not installed"
        if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton runs on CPU tensors only under TRITON_INTERPRET=1")
    if backend == CPP:
        if DEVICE.type == "cpu":
            assert _ext.available(), f"the C++ extension is not built: {_ext.error()}"
        elif not _cuda_kernel("softmax_entropy"):
            pytest.skip("the C++ extension was not built with CUDA kernels")
    # what is left must run: the dispatcher may not refuse it
    assert ops.choose(DEVICE, backend) == backend


def test_requested_device_is_usable():
    if DEVICE.type == "cuda":
        assert torch.cuda.is_available(), "EPIC_TEST_DEVICE=cuda but torch sees no CUDA device"
        assert os.environ.get("TRITON_INTERPRET", "0") != "1", "on CUDA, Triton must run compiled"
    torch.zeros(1, device=DEVICE).add_(1)


# ------------------------------------------------------------------------------------------------ #
# ops                                                                                              #
# ------------------------------------------------------------------------------------------------ #

# (atol, rtol) of entropy / lse / scores, as in test_ext_ops.py (the looser of the backends' tests)
TOLS = {torch.float32: (5e-5, 1e-5), torch.float16: (5e-5, 1e-5), torch.bfloat16: (5e-5, 1e-5),
        torch.float64: (1e-10, 1e-11)}
DTYPES = list(TOLS)
# small on CPU (the Triton interpreter is slow); on CUDA also the engine's real vocabularies, which
# take the kernels' split and multi-block paths
SHAPES = [(3, 111), (5, 4097)] + ([(1, 49152), (64, 151936)] if DEVICE.type == "cuda" else [])


def make_logits(B: int, V: int, dtype) -> torch.Tensor:
    """N(0, 9) logits with -inf holes, one row with a single finite entry, one very peaked row."""
    g = torch.Generator().manual_seed(B * 100003 + V)
    x = torch.randn(B, V, generator=g, dtype=torch.float64) * 3
    x[torch.rand(B, V, generator=g) < 0.1] = float("-inf")
    x[:, 0] = 0.5                                  # every row keeps a finite entry
    if B > 1:
        x[1] = float("-inf")
        x[1, V // 2] = 2.0
    if B > 2:
        x[2] *= 20
    return x.to(dtype)


def keys(B: int, V: int):
    g = torch.Generator().manual_seed(V)
    seeds = torch.randint(0, 2**32, (B,), generator=g)
    seeds[0] = 2**32 - 1
    return seeds, torch.randint(0, 2**31, (B,), generator=g), torch.randint(0, 2**31 - 1, (B,), generator=g)


def close(name, got, want, atol, rtol):
    got = got.detach().to(CPU, torch.float64)
    want = want.detach().to(CPU, torch.float64)
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = ~((got == want) | ((got - want).abs() <= atol + rtol * want.abs()))
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} differ, e.g. got "
                           f"{got[bad][:4].tolist()} want {want[bad][:4].tolist()}")


def equal(name, got, want):
    got, want = got.detach().cpu(), want.detach().cpu()
    assert torch.equal(got, want), f"{name}: got {got.tolist()[:16]} want {want.tolist()[:16]}"


def reference_entropy(x):
    """The reference's entropy and lse in float64 (on the same rounded logits), as the accumulate dtype."""
    h, lse = R.softmax_entropy(x.to(torch.float64))
    acc = R.compute_dtype(x.dtype)
    return h.to(acc), lse.to(acc)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,V", SHAPES)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_softmax_entropy_on_device(backend, B, V, dtype):
    _usable(backend)
    x = make_logits(B, V, dtype)
    seeds, positions, streams = keys(B, V)
    atol, rtol = TOLS[dtype]
    h_want, lse_want = reference_entropy(x)
    tok_want = R.gumbel_argmax(x, seeds, streams, positions)
    xd = x.to(DEVICE)
    h, lse = ops.softmax_entropy(xd, backend=backend)
    assert h.device.type == DEVICE.type and lse.device.type == DEVICE.type
    close("entropy", h, h_want, atol, rtol)
    close("lse", lse, lse_want, atol, rtol)
    h2, lse2, tok = ops.softmax_entropy(xd, seeds=seeds.to(DEVICE), streams=streams.to(DEVICE),
                                        positions=positions.to(DEVICE), backend=backend)
    close("entropy (with sample)", h2, h_want, atol, rtol)
    close("lse (with sample)", lse2, lse_want, atol, rtol)
    equal("tokens", tok, tok_want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("B,V", SHAPES)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_gumbel_topk_prune_on_device(backend, B, V, dtype):
    _usable(backend)
    x = make_logits(B, V, dtype)
    seeds, positions, _ = keys(B, V)
    width, top_k = 2.5, 4
    want = R.gumbel_topk_prune(x, seeds, positions, width, top_k)
    got = ops.gumbel_topk_prune(x.to(DEVICE), seeds.to(DEVICE), positions.to(DEVICE), width, top_k,
                                backend=backend)
    assert got.lse.device.type == DEVICE.type
    atol, rtol = TOLS[dtype]
    for name in ("ids", "counts", "offsets", "front_ids", "topk_ids"):
        equal(name, getattr(got, name), getattr(want, name))
    for name in ("scores", "front_scores", "topk_scores", "lse"):
        close(name, getattr(got, name), getattr(want, name), atol, rtol)


def _kernel_on_device(op: str) -> bool:
    key = "CUDA" if DEVICE.type == "cuda" else "CPU"
    return _ext.available() and torch._C._dispatch_has_kernel_for_dispatch_key(f"epic_kernels::{op}", key)


def test_cpp_kernels_directly_on_device():
    """The C++ kernels of DEVICE through ``epic_kernels._ext`` (``torch.ops.epic_kernels``), bypassing
    the dispatcher: a built CUDA kernel is tested even while dispatch does not reach it."""
    if DEVICE.type == "cpu":
        assert _ext.available(), f"the C++ extension is not built: {_ext.error()}"
    if not _kernel_on_device("softmax_entropy"):
        pytest.skip(f"the C++ extension was not built with {DEVICE.type} kernels")
    for B, V in SHAPES:
        for dtype in DTYPES:
            x = make_logits(B, V, dtype)
            seeds, positions, streams = keys(B, V)
            atol, rtol = TOLS[dtype]
            h_want, lse_want = reference_entropy(x)
            h, lse, _ = softmax_entropy_impl(x.to(DEVICE), backend="cpp")      # the C++ op itself
            close(f"entropy {B}x{V} {dtype}", h, h_want, atol, rtol)
            close(f"lse {B}x{V} {dtype}", lse, lse_want, atol, rtol)
            if _kernel_on_device("softmax_entropy_sample"):
                _, _, tok = softmax_entropy_impl(x.to(DEVICE), seeds.to(DEVICE), streams.to(DEVICE),
                                                 positions.to(DEVICE), backend="cpp")
                equal(f"tokens {B}x{V} {dtype}", tok, R.gumbel_argmax(x, seeds, streams, positions))
            if _kernel_on_device("gumbel_topk_prune"):
                got = gumbel_topk_prune_impl(x.to(DEVICE), seeds.to(DEVICE), positions.to(DEVICE), 2.5, 4, "cpp")
                want = R.gumbel_topk_prune(x, seeds, positions, 2.5, 4)
                for name in ("ids", "counts", "offsets", "front_ids", "topk_ids"):
                    equal(f"prune {name} {B}x{V} {dtype}", getattr(got, name), getattr(want, name))
                for name in ("scores", "front_scores", "topk_scores", "lse"):
                    close(f"prune {name} {B}x{V} {dtype}", getattr(got, name), getattr(want, name), atol, rtol)


# ------------------------------------------------------------------------------------------------ #
# fork attention on the device                                                                     #
# ------------------------------------------------------------------------------------------------ #

FORK_TOLS = {torch.float32: (2e-6, 1e-5), torch.float64: (1e-12, 1e-12), torch.float16: (1e-5, 2.0**-10),
             torch.bfloat16: (1e-5, 2.0**-7)}


def _fork_case(dtype, seed=0, H=8, Hkv=2, D=40, L=50, T=5, rows=(3, 2, 4)):
    """Inputs of one layer call (CPU tensors) and the dense float64 answer of each row."""
    g = torch.Generator().manual_seed(seed)
    B, N = len(rows), sum(rows)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    K, V = rnd(B, Hkv, L + 7, D)[:, :, :L], rnd(B, Hkv, L + 7, D)[:, :, :L]
    valid = torch.rand(B, L, generator=g) > 0.2
    seq = torch.repeat_interleave(torch.arange(B), torch.tensor(rows))[torch.randperm(N, generator=g)]
    slot = torch.randperm(N + 2, generator=g)[:N]
    fill = torch.randint(0, T, (N,), generator=g)
    limit = torch.randint(0, L + 1, (N,), generator=g)
    q, k, v = rnd(N, H, 1, D), rnd(N, Hkv, 1, D), rnd(N, Hkv, 1, D)
    pk, pv = rnd(N + 2, Hkv, T, D), rnd(N + 2, Hkv, T, D)
    return dict(q=q, k=k, v=v, pk=pk, pv=pv, K=K, V=V, valid=valid, seq=seq, slot=slot, fill=fill, limit=limit)


def _fork_dense(c, softcap=None):
    N, H, _, D = c["q"].shape
    G = H // c["k"].shape[1]
    out = torch.empty(N, 1, H, D, dtype=torch.float64)
    for n in range(N):
        b, s, f = int(c["seq"][n]), int(c["slot"][n]), int(c["fill"][n])
        see = c["valid"][b] & (torch.arange(c["K"].shape[2]) < c["limit"][n])
        for h in range(H):
            kv = h // G
            pk, pv = c["pk"][s, kv, :f + 1].double().clone(), c["pv"][s, kv, :f + 1].double().clone()
            pk[f], pv[f] = c["k"][n, kv, 0].double(), c["v"][n, kv, 0].double()
            keys = torch.cat([c["K"][b, kv][see].double(), pk])
            vals = torch.cat([c["V"][b, kv][see].double(), pv])
            sc = keys @ c["q"][n, h, 0].double() * D ** -0.5
            out[n, 0, h] = torch.softmax(sc if softcap is None else softcap * torch.tanh(sc / softcap), 0) @ vals
    return out


def _fork_backends() -> list[str]:
    """The fork_attention backends that run on DEVICE (C++ on CPU tensors only; Triton on CUDA, or
    interpreted on CPU tensors)."""
    out = ["reference"]
    if DEVICE.type == "cpu" and _ext.available():
        out.append(CPP)
    if HAS_TRITON and (DEVICE.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        out.append("triton")
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["reference", CPP, "triton"])
def test_fork_attention_on_device(backend, dtype):
    """The op on the device against the dense float64 attention of the same inputs on the CPU; the
    pools' new entries exact. Soft-capping on the backends that have it (not C++)."""
    if backend not in _fork_backends():
        pytest.skip(f"{backend} fork_attention does not run on {DEVICE.type} tensors here")
    from epic_kernels.ops.fork_attention import fork_attention_impl
    c = _fork_case(dtype, seed=3)
    if backend == CPP and dtype not in (torch.float32, torch.float64):   # by design: half runs elsewhere
        with pytest.raises(RuntimeError, match="float32"):
            fork_attention_impl(c["q"], c["k"], c["v"], c["pk"], c["pv"], c["K"], c["V"], c["valid"], c["seq"],
                                c["slot"], c["fill"], c["limit"], None, backend, None, None)
        return
    atol, rtol = FORK_TOLS[dtype]
    for softcap in (None, 4.0) if backend != CPP else (None,):
        d = {k: (v.to(DEVICE) if k in ("q", "k", "v", "pk", "pv", "K", "V", "valid") else v) for k, v in c.items()}
        out = fork_attention_impl(d["q"], d["k"], d["v"], d["pk"], d["pv"], d["K"], d["V"], d["valid"], d["seq"],
                                  d["slot"], d["fill"], d["limit"], None, backend, None, softcap)
        assert out.device.type == DEVICE.type and out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), _fork_dense(c, softcap), atol=atol, rtol=rtol)
        want_k = c["pk"].clone()
        want_k[c["slot"], :, c["fill"]] = c["k"][:, :, 0]
        assert torch.equal(d["pk"].cpu(), want_k)


def test_fork_attention_dispatch_on_device():
    """What the engine runs on the device: Triton on CUDA (compiled), C++ on CPU tensors."""
    from epic_kernels.ops.fork_attention import fork_attention_backend
    want = "triton" if DEVICE.type == "cuda" else CPP
    assert fork_attention_backend(DEVICE, torch.float32) == want
    if DEVICE.type == "cuda":
        assert fork_attention_backend(DEVICE, torch.bfloat16) == "triton"


# ------------------------------------------------------------------------------------------------ #
# the fast engine on the device                                                                    #
# ------------------------------------------------------------------------------------------------ #


@pytest.fixture(scope="module")
def model64():
    return tiny_llama(32, seed=0).to(DEVICE)                   # float64


@torch.no_grad()
def prefill_on(model, prompts):
    """``testing.prefill`` with the inputs on the model's device: (next logits, cache, mask)."""
    device = next(model.parameters()).device
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True)
    return out.logits[:, -1, :], out.past_key_values, mask


def padded(prompts):
    L = max(map(len, prompts))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=DEVICE)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=DEVICE)
    return ids, mask


def test_sample_step_fast_equals_reference_on_device(model64):
    """Two chained steps (the second with the first's prefetch) for a few seeds, left padding."""
    prompts = random_prompts(32, [5, 9, 3, 7], seed=1)
    for seed in (0, 1, 2**32 - 9):
        tokens = {}
        for engine in ("fast", "reference"):
            logits, kv, mask = prefill_on(model64, prompts)
            kw = dict(alpha=0.6, horizon=3, rollouts=2, seed=seed, top_k=12, engine=engine)
            s1 = epic_kernels.sample_step(logits, kv, model64, attention_mask=mask, **kw)
            assert s1.next_logits.device.type == DEVICE.type
            s2 = epic_kernels.sample_step(s1.next_logits, s1.kv, model64, attention_mask=s1.attention_mask,
                                          prefetched=s1.prefetched, **kw)
            tokens[engine] = (s1.tokens.cpu(), s2.tokens.cpu(), s2.next_logits)
        (f1, f2, fl), (r1, r2, rl) = tokens["fast"], tokens["reference"]
        assert torch.equal(f1, r1) and torch.equal(f2, r2), (seed, f1, r1, f2, r2)
        close("next logits", fl, rl, 1e-9, 0)


def test_generate_fast_equals_reference_on_device(model64, monkeypatch):
    """... with the fork attention the dispatcher picks for the device (Triton on CUDA) in every layer."""
    import epic_kernels.engine.attention as att
    backends = []
    real = att.fork_attention_impl

    def spy(*a, **k):
        backends.append(a[13])
        return real(*a, **k)
    monkeypatch.setattr(att, "fork_attention_impl", spy)
    ids, mask = padded(random_prompts(32, [2, 7, 4], seed=3))
    kw = dict(attention_mask=mask, max_new_tokens=6, alpha=0.8, horizon=3, rollouts=2, seed=[4, 5, 6],
              eos_token_id=1)
    fast = epic_kernels.generate(model64, ids, engine="fast", **kw)
    assert backends and set(backends) == {"triton" if DEVICE.type == "cuda" else CPP}, set(backends)
    ref = epic_kernels.generate(model64, ids, engine="reference", **kw)
    assert fast.new_tokens == ref.new_tokens
    assert all(len(t) >= 1 for t in fast.new_tokens)


def test_generate_float32_model_on_device():
    """float32 (the dtype a GPU user runs): the fast engine decodes, tokens are valid and
    reproducible. (Token equality with the reference is asserted in float64 only: in float32 a
    row's logits may depend on its batch shape, which can flip a near-tie.)"""
    model = tiny_llama(48, seed=2, dtype=torch.float32).to(DEVICE)
    ids, mask = padded(random_prompts(48, [6, 3], seed=4))
    kw = dict(attention_mask=mask, max_new_tokens=5, alpha=0.3, horizon=2, rollouts=2, seed=[7, 8],
              engine="fast")
    a = epic_kernels.generate(model, ids, **kw)
    b = epic_kernels.generate(model, ids, **kw)
    assert a.new_tokens == b.new_tokens
    assert [len(t) for t in a.new_tokens] == [5, 5]
    assert all(0 <= t < 48 for row in a.new_tokens for t in row)
