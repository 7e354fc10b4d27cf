"""fork_attention, every backend side by side: the fused C++ op (``torch.ops.epic_kernels.fork_attention``)
and the Triton kernels (``triton_kernels.fork_attention``) against the reference
(``ops.fork_attention.fork_attention_reference``, the specification) and a dense float64 attention;
the engine's glue (``engine.attention.ForkBatch`` / ``fork_attention``) on each backend.

A missing extension is an error (``make test`` builds it). The C++ kernel is CPU-only: its cases
run on CPU tensors; ``test_reference_on_device`` runs the reference on ``EPIC_TEST_DEVICE``. The
Triton cases (``test_triton_*``) run on ``_cases_triton.DEVICES``: CUDA compiled where there is a GPU,
CPU tensors under ``TRITON_INTERPRET=1`` (conftest sets it without CUDA).
"""
from __future__ import annotations

import types

import pytest
import torch

from epic_kernels import _ext
from epic_kernels.engine import attention as A
from epic_kernels.engine.runtime import SlotPool
from epic_kernels.core import Prefix
from epic_kernels.ops import fork_attention as fork_attention_op
from epic_kernels.ops.fork_attention import fork_attention_reference
from epic_kernels.testing import require_extension

import _cases_triton as TR  # noqa: E402  (sets TRITON_INTERPRET=1 without CUDA)

require_extension("fork_attention")

OPS = _ext.ops()
TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (the torch path's many small parallel ops crawl when another process holds
    the second core); test_results_do_not_depend_on_threads uses two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Case:
    """One layer call: B left-padded prefixes read from a bigger buffer (non-contiguous along L),
    ``rows[b]`` rows for sequence b in shuffled order, each with its own slot (random old contents,
    as after earlier depths) and a fill in [0, slot_len)."""

    def __init__(self, rows, *, H=9, Hkv=3, D=64, L=40, slot_len=5, dtype=torch.float32, limit=False,
                 seed=0, layout="cache", holes=False, empty_prefix=False):
        g = torch.Generator().manual_seed(seed)
        B, N = len(rows), sum(rows)
        self.H, self.Hkv, self.D, self.dtype = H, Hkv, D, dtype

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

        if layout == "cache":            # PrefixCache.view: [B, Hkv, capacity, D][:, :, :L]
            self.K = randn(B, Hkv, L + 13, D)[:, :, :L]
            self.V = randn(B, Hkv, L + 13, D)[:, :, :L]
        else:                            # [B, L, Hkv, D] transposed: L is the slowest-but-one dim
            self.K = randn(B, L, Hkv, D).transpose(1, 2)
            self.V = randn(B, L, Hkv, D).transpose(1, 2)
        mask = torch.ones(B, L, dtype=torch.int64)
        for b in range(B):               # left padding of 0..L/2 tokens
            mask[b, : int(torch.randint(0, L // 2 + 1, (), generator=g))] = 0
        if holes:                        # arbitrary masked positions, not only left padding
            mask[torch.rand(B, L, generator=g) < 0.2] = 0
        self.mask = mask
        self.seq = torch.repeat_interleave(torch.arange(B), torch.tensor(rows))[torch.randperm(N, generator=g)]
        slots = N + 3
        self.slot = torch.randperm(slots, generator=g)[:N]
        self.fill = torch.randint(0, slot_len, (N,), generator=g)
        self.limit = torch.randint(0, L + 1, (N,), generator=g) if limit else None
        if empty_prefix:                 # a row that sees no prefix position at all
            if self.limit is None:
                self.limit = torch.full((N,), L, dtype=torch.int64)
            self.limit[0] = 0
        self.q = randn(N, H, 1, D)
        self.k = randn(N, Hkv, 1, D)
        self.v = randn(N, Hkv, 1, D)
        self.pool_k0 = randn(slots, Hkv, slot_len, D)
        self.pool_v0 = randn(slots, Hkv, slot_len, D)
        self.scale = D ** -0.5

    def view(self):
        return Prefix([(self.K, self.V)], self.mask, self.mask.sum(-1), torch.zeros(len(self.mask), dtype=torch.int64))

    def pool(self):
        pool = SlotPool(1, self.Hkv, self.D, self.pool_k0.shape[2], self.dtype)
        pool.keys[0] = self.pool_k0.clone()
        pool.values[0] = self.pool_v0.clone()
        return pool

    def run(self, backend=None):
        """The engine's glue (``ForkBatch.build`` + the attention-interface function) on a fresh
        pool, on ``backend`` (None: the policy's choice): ``(out, pool, fork_batch)``."""
        pool = self.pool()
        fb = A.ForkBatch.build(self.view(), pool, self.seq, self.slot, self.fill, self.dtype, self.limit, backend)
        A._local.batch = fb
        try:
            out, _ = A.fork_attention(types.SimpleNamespace(layer_idx=0), self.q, self.k, self.v,
                                      scaling=self.scale)
        finally:
            A._local.batch = None
        return out, pool, fb

    def op(self, **override):
        """The op called directly; returns ``(out, pool_k, pool_v)``."""
        args = dict(query=self.q, key=self.k, value=self.v, pool_k=self.pool_k0.clone(),
                    pool_v=self.pool_v0.clone(), prefix_k=self.K, prefix_v=self.V,
                    prefix_valid=self.mask.bool(), seq=self.seq, slot=self.slot, fill=self.fill,
                    row_limit=self.limit, scale=self.scale)
        args.update(override)
        out = OPS.fork_attention(*args.values())
        return out, args["pool_k"], args["pool_v"]

    def dense(self, softcap=None):
        """Float64 softmax attention of each row over the keys it may see, gathered explicitly
        (``softcap``: scores ``c tanh(s / c)``, Gemma2's soft-capping)."""
        G = self.H // self.Hkv
        L = self.K.shape[2]
        out = torch.empty(len(self.seq), 1, self.H, self.D, dtype=torch.float64)
        for n in range(len(self.seq)):
            b, s, f = int(self.seq[n]), int(self.slot[n]), int(self.fill[n])
            see = self.mask[b].bool().clone()
            if self.limit is not None:
                see &= torch.arange(L) < self.limit[n]
            for h in range(self.H):
                kv = h // G
                pk, pv = self.pool_k0[s, kv, : f + 1].double().clone(), self.pool_v0[s, kv, : f + 1].double().clone()
                pk[f], pv[f] = self.k[n, kv, 0].double(), self.v[n, kv, 0].double()
                keys = torch.cat([self.K[b, kv][see].double(), pk])
                vals = torch.cat([self.V[b, kv][see].double(), pv])
                sc = keys @ self.q[n, h, 0].double() * self.scale
                p = torch.softmax(sc if softcap is None else softcap * torch.tanh(sc / softcap), 0)
                out[n, 0, h] = p @ vals
        return out


def close(got, want, dtype):
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])


# ------------------------------------------------------------------------------------------------ #
# The op against the torch path and the dense reference                                            #
# ------------------------------------------------------------------------------------------------ #

ROWS = [[1], [8], [3, 1, 5], [2, 7, 1, 4]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4)])
@pytest.mark.parametrize("rows", ROWS, ids=lambda r: "rows" + "-".join(map(str, r)))
@pytest.mark.parametrize("limit", [False, True])
def test_matches_torch_path(dtype, heads, rows, limit):
    H, Hkv = heads
    case = Case(rows, H=H, Hkv=Hkv, dtype=dtype, limit=limit, seed=len(rows) * 10 + H)
    got, pool, fb = case.run()
    assert fb.backend == "cpp", "the C++ op should run on CPU tensors"
    want, pool_t, fb_t = case.run("reference")
    assert fb_t.backend == "reference" and fb_t.aux is not None
    assert got.shape == want.shape == (sum(rows), 1, H, case.D) and got.dtype == dtype
    close(got, want, dtype)
    close(got, case.dense(), dtype)
    # the rows' new keys / values land in the pool exactly as the torch path writes them
    assert torch.equal(pool.keys[0], pool_t.keys[0]) and torch.equal(pool.values[0], pool_t.values[0])
    assert not torch.equal(pool.keys[0], case.pool_k0)


@pytest.mark.parametrize("D", [8, 20, 48, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_dims(D, dtype):
    """head_dim 64 / 128 (compile-time fast paths), 48 (runtime fast path), 8 and 20 (plain loops)."""
    case = Case([3, 2], D=D, dtype=dtype, L=70, seed=D)
    close(case.op()[0], case.dense(), dtype)


@pytest.mark.parametrize("L", [1, 63, 64, 65, 200, 300])
def test_prefix_lengths_and_blocks(L):
    """Block boundaries (64 keys per online-softmax block) with holes in the mask and row limits."""
    case = Case([4, 3], L=L, holes=True, limit=True, seed=L)
    close(case.op()[0], case.dense(), torch.float32)


def test_long_slot():
    """Slots longer than one block of keys."""
    case = Case([2, 2], slot_len=70, L=30, seed=3)
    case.fill[:] = torch.tensor([69, 64, 0, 63])
    close(case.op()[0], case.dense(), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_that_see_no_prefix(dtype):
    """A row limited to 0 prefix positions attends to its slot only (the torch path clamps its
    running max so that such a row gives no NaN either)."""
    case = Case([3, 2], limit=True, empty_prefix=True, dtype=dtype, seed=5)
    got = case.op()[0]
    close(got, case.dense(), dtype)
    close(case.run("reference")[0], case.dense(), dtype)


def test_other_prefix_layouts():
    """Prefix tensors laid out [B, L, Hkv, D] (transposed view) are read in place too."""
    case = Case([2, 3], layout="bthd", seed=11)
    assert not case.K.is_contiguous()
    close(case.op()[0], case.dense(), torch.float32)


def test_valid_mask_dtypes():
    case = Case([2, 3], holes=True, seed=12)
    want = case.op()[0]
    for valid in (case.mask, case.mask.to(torch.uint8), case.mask.to(torch.int32), case.mask.t().contiguous().t()):
        assert torch.equal(case.op(prefix_valid=valid)[0], want)


def test_results_do_not_depend_on_threads():
    """Large enough to run in parallel; rows are split over tasks differently for each thread count."""
    case = Case([17, 23], L=300, seed=13)
    outs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        outs.append(case.op()[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_reference_backend_selects_the_torch_path(monkeypatch):
    case = Case([2, 1])
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "reference")
    out, _, fb = case.run()
    assert fb.backend == "reference"
    close(out, case.dense(), torch.float32)
    for name in ("cpu", "cpp"):
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", name)
        assert case.run()[2].backend == "cpp"
    if TR.INTERPRET:                                            # interpreted on CPU tensors (conftest)
        monkeypatch.setenv("EPIC_KERNELS_BACKEND", "triton")
        out, _, fb = case.run()
        assert fb.backend == "triton"
        close(out, case.dense(), torch.float32)


def test_dtype_without_kernel_runs_the_reference(monkeypatch):
    """The C++ kernel takes float32 / float64: bfloat16 runs the reference (one warning), and a
    forced ``cpp`` is an error naming the dtype."""
    import importlib

    from epic_kernels.ops.fork_attention import fork_attention_backend
    FA = importlib.import_module("epic_kernels.ops.fork_attention")   # the package re-exports the function
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setattr(FA, "_warned", set())      # the warning is once per process: another test may have had it
    with pytest.warns(RuntimeWarning, match="float32 / float64"):
        assert fork_attention_backend(torch.device("cpu"), torch.bfloat16) == "reference"
    with pytest.raises(RuntimeError, match="backend 'cpp' was requested for fork_attention"):
        fork_attention_backend(torch.device("cpu"), torch.bfloat16, "cpp")
    assert fork_attention_backend(torch.device("cpu"), torch.float32) == "cpp"


def test_typed_wrapper():
    """``ops.fork_attention`` (validated, explicit arguments) on both backends."""
    case = Case([2, 2])
    for backend, same in (("cpp", True), ("reference", False), (None, True)):
        pk, pv = case.pool_k0.clone(), case.pool_v0.clone()
        out = fork_attention_op(case.q, case.k, case.v, pk, pv, case.K, case.V, case.mask, case.seq, case.slot,
                                case.fill, backend=backend)
        if same:
            assert torch.equal(out, case.op()[0])
        close(out, case.dense(), torch.float32)
        assert torch.equal(pk, case.op()[1])


def test_validator_errors():
    """The op's validator: ValueError naming the argument, whatever the backend."""
    c = Case([2, 3], L=20)
    base = dict(query=c.q, key=c.k, value=c.v, pool_k=c.pool_k0.clone(), pool_v=c.pool_v0.clone(),
                prefix_k=c.K, prefix_v=c.V, prefix_valid=c.mask, seq=c.seq, slot=c.slot, fill=c.fill)
    for override, match in [(dict(key=c.k.double()), "key must have query's dtype"),
                            (dict(query=c.q[:, :, 0]), "query must be a 4-D floating tensor"),
                            (dict(key=c.k[:-1]), "key must have shape"),
                            (dict(prefix_k=c.K.transpose(2, 3).contiguous().transpose(2, 3)), "contiguous head_dim"),
                            (dict(prefix_valid=c.mask.float()), "prefix_valid must be a bool or integer"),
                            (dict(seq=torch.full((5,), 7)), r"seq values must lie in \[0, 2\)"),
                            (dict(fill=torch.full((5,), 5)), r"fill values must lie in \[0, 5\)")]:
        for backend in ("reference", "cpp"):
            with pytest.raises(ValueError, match=match):
                fork_attention_op(**{**base, **override}, backend=backend)


def test_reference_on_device(device):
    """The reference (the path for CUDA tensors) on ``EPIC_TEST_DEVICE``, against the dense attention;
    the rows' bookkeeping (seq, slot, fill) may stay on the host."""
    case = Case([3, 1, 2], limit=True, holes=True, seed=21)
    pk, pv = case.pool_k0.clone().to(device), case.pool_v0.clone().to(device)
    out = fork_attention_op(*(t.to(device) for t in (case.q, case.k, case.v)), pk, pv, case.K.to(device),
                            case.V.to(device), case.mask.to(device), case.seq, case.slot, case.fill, case.limit,
                            backend="reference")
    assert out.device.type == device.type
    close(out.cpu(), case.dense(), torch.float32)
    assert torch.equal(pk.cpu(), case.op()[1])


# ------------------------------------------------------------------------------------------------ #
# opcheck and errors                                                                               #
# ------------------------------------------------------------------------------------------------ #


@pytest.mark.parametrize("limit", [False, True])
def test_opcheck(limit):
    case = Case([2, 3], L=20, limit=limit)
    args = (case.q, case.k, case.v, case.pool_k0.clone(), case.pool_v0.clone(), case.K, case.V,
            case.mask.bool(), case.seq, case.slot, case.fill, case.limit, case.scale)
    result = torch.library.opcheck(OPS.fork_attention.default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _bad(case, match, **override):
    with pytest.raises(RuntimeError, match=match):
        case.op(**override)


def test_bad_inputs():
    c = Case([2, 3], L=20)
    N = len(c.seq)
    _bad(c, "query must be float32 or float64", query=c.q.half())
    _bad(c, r"query must have shape \(N, H, 1, D\)", query=c.q[:, :, 0])
    _bad(c, "key must have the dtype of query", key=c.k.double())
    _bad(c, "value must have the dtype of query", value=c.v.double())
    _bad(c, r"key must have shape \(N, Hkv, 1, D\)", key=c.k[:-1])
    _bad(c, "must be a multiple of the", key=c.k[:, :2].contiguous(), value=c.v[:, :2].contiguous())
    _bad(c, r"value must have shape \(N, Hkv, 1, D\)", value=c.v[:, :, :, :8].contiguous())
    _bad(c, r"pool_k must have shape \(slots, Hkv, slot_len, D\)", pool_k=c.pool_k0[:, :2].clone())
    _bad(c, "pool_v must have the dtype of query", pool_v=c.pool_v0.double())
    _bad(c, "pool_k must have a contiguous last dimension",
         pool_k=c.pool_k0.transpose(2, 3).contiguous().transpose(2, 3))
    _bad(c, "pool_v must have the shape of pool_k", pool_v=c.pool_v0[:-1].clone())
    _bad(c, r"prefix_k must have shape \(B, Hkv, L, D\)", prefix_k=c.K[:, :2])
    _bad(c, "prefix_v must have the shape of prefix_k", prefix_v=c.V[:, :, :-1])
    _bad(c, "prefix_k must have a contiguous last dimension .*never copied",
         prefix_k=c.K.transpose(2, 3).contiguous().transpose(2, 3))
    _bad(c, "prefix_v must have the dtype of query", prefix_v=c.V.double())
    _bad(c, r"prefix_valid must have shape \(B, L\)", prefix_valid=c.mask[:, :-1])
    _bad(c, "prefix_valid must be a bool or integer tensor", prefix_valid=c.mask.float())
    _bad(c, r"seq must have shape \(5,\)", seq=c.seq[:-1])
    _bad(c, "seq must be an integer tensor", seq=c.seq.float())
    _bad(c, r"seq\[0\] = 7 is outside \[0, 2\)", seq=torch.full((N,), 7))
    _bad(c, r"slot\[1\] = -1 is outside \[0, 8\)", slot=torch.tensor([0, -1, 2, 3, 4]))
    _bad(c, r"fill\[0\] = 5 is outside \[0, 5\)", fill=torch.full((N,), 5))
    _bad(c, "row_limit must be an integer tensor", row_limit=torch.ones(N))
    _bad(c, r"row_limit must have shape \(5,\)", row_limit=torch.ones(N + 1, dtype=torch.int64))


def test_empty_call():
    c = Case([2, 3], L=20)
    e = torch.empty(0, dtype=torch.int64)
    out, pk, _ = c.op(query=c.q[:0], key=c.k[:0], value=c.v[:0], seq=e, slot=e, fill=e)
    assert out.shape == (0, 1, c.H, c.D) and torch.equal(pk, c.pool_k0)
    for backend in ("cpp", "reference"):       # the validated op: empty output on both backends
        pk = c.pool_k0.clone()
        out = fork_attention_op(c.q[:0], c.k[:0], c.v[:0], pk, c.pool_v0.clone(), c.K, c.V, c.mask, e, e, e,
                                backend=backend)
        assert out.shape == (0, 1, c.H, c.D) and torch.equal(pk, c.pool_k0)


# ------------------------------------------------------------------------------------------------ #
# Triton (python_tests/ops/_cases_triton.py: interpreted on CPU tensors, compiled on CUDA)         #
# ------------------------------------------------------------------------------------------------ #

# against the float64 dense attention of the same (rounded) inputs: float32 / float64 to their
# accumulation, half precision to one unit in the last place of the output dtype
TRITON_TOL = {torch.float32: dict(atol=2e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12),
              torch.float16: dict(atol=1e-5, rtol=2.0**-10), torch.bfloat16: dict(atol=1e-5, rtol=2.0**-7)}
HALF = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float32, torch.float64] + HALF


def triton_op(case, device, softcap=None, num_chunks=None, **override):
    """``fork_attention_triton`` on ``device`` (bookkeeping left on the host, as the engine does);
    returns ``(out, pool_k, pool_v)`` on the CPU."""
    tk = TR._ops()
    args = dict(query=case.q, key=case.k, value=case.v, pool_k=case.pool_k0.clone(), pool_v=case.pool_v0.clone(),
                prefix_k=case.K, prefix_v=case.V, prefix_valid=case.mask.bool())
    args.update({k: v for k, v in override.items() if k in args})
    dev = {k: v.to(device) for k, v in args.items()}
    out = tk.fork_attention_triton(*dev.values(), override.get("seq", case.seq), override.get("slot", case.slot),
                                   override.get("fill", case.fill), override.get("row_limit", case.limit),
                                   case.scale, softcap, num_chunks=num_chunks)
    assert out.device.type == torch.device(device).type and out.dtype == case.dtype
    return out.cpu(), dev["pool_k"].cpu(), dev["pool_v"].cpu()


def triton_close(got, case, softcap=None):
    torch.testing.assert_close(got.double(), case.dense(softcap), **TRITON_TOL[case.dtype])


def same_pool_writes(case, pk, pv):
    """The rows' keys / values land in the pool exactly where (and as) the reference writes them."""
    want_k, want_v = case.op()[1:] if case.dtype in CPP_DTYPES else _reference_pools(case)
    assert torch.equal(pk, want_k) and torch.equal(pv, want_v)


def _reference_pools(case):
    pk, pv = case.pool_k0.clone(), case.pool_v0.clone()
    fork_attention_op(case.q, case.k, case.v, pk, pv, case.K, case.V, case.mask, case.seq, case.slot, case.fill,
                      case.limit, backend="reference")
    return pk, pv


CPP_DTYPES = (torch.float32, torch.float64)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("heads", [(4, 4), (9, 3), (8, 2)], ids=["gqa1", "gqa3", "gqa4"])
def test_triton_matches_dense(device, dtype, heads):
    """Three left-padded sequences with holes and per-row limits, odd head_dim 20, GQA 1 / 3 / 4."""
    H, Hkv = heads
    case = Case([3, 1, 5], H=H, Hkv=Hkv, D=20, dtype=dtype, limit=True, holes=True, seed=H * 7 + Hkv)
    out, pk, pv = triton_op(case, device)
    triton_close(out, case)
    same_pool_writes(case, pk, pv)
    if dtype in CPP_DTYPES:                        # and the reference (the specification) itself
        close(out, fork_attention_op(case.q, case.k, case.v, case.pool_k0.clone(), case.pool_v0.clone(), case.K,
                                     case.V, case.mask, case.seq, case.slot, case.fill, case.limit,
                                     backend="reference"), dtype)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("D, dtype", [(8, torch.float32), (64, torch.float32), (100, torch.float32),
                                      (128, torch.float32), (256, torch.float32), (128, torch.float64),
                                      (128, torch.bfloat16), (256, torch.float16)], ids=str)
def test_triton_head_dims(device, D, dtype):
    """Every head-dim block (64 / 128 / 256), masked tails (8, 100)."""
    case = Case([2, 2], H=4, Hkv=2, D=D, L=70, dtype=dtype, seed=D)
    triton_close(triton_op(case, device)[0], case)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("L, num_chunks", [(1, None), (63, 2), (64, 1), (65, 2), (300, 3), (300, 7), (300, None)])
def test_triton_prefix_chunks(device, L, num_chunks):
    """Chunk boundaries (the partial / merge passes) and block boundaries, holes, row limits."""
    case = Case([4, 3], H=4, Hkv=2, D=16, L=L, holes=True, limit=True, seed=L)
    triton_close(triton_op(case, device, num_chunks=num_chunks)[0], case)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_long_prefix_few_rows(device, dtype):
    """A 4,096-token prefix read by two rows: the prefix split over chunks so a few rows fill the GPU."""
    case = Case([2], H=4, Hkv=2, D=16, L=4096, slot_len=3, dtype=dtype, limit=True, seed=4)
    case.limit[0] = 4096
    triton_close(triton_op(case, device)[0], case)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("rows, dtype", [([1], torch.float32), ([40, 7], torch.float32), ([512], torch.float16)],
                         ids=str)
def test_triton_many_rows(device, rows, dtype):
    """1-512 rows (tiny heads): tiles of 16 (float32) and 64 (half) query vectors, several per sequence."""
    case = Case(rows, H=2, Hkv=1, D=8, L=24, slot_len=4, dtype=dtype, limit=True, seed=len(rows) + sum(rows))
    out, pk, pv = triton_op(case, device)
    triton_close(out, case)
    same_pool_writes(case, pk, pv)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_triton_softcap(device, dtype):
    """Soft-capping ``c tanh(s / c)`` (Gemma2), scores from well inside to far beyond c (both branches
    of the kernel's tanh), against the float64 dense attention and the reference."""
    case = Case([3, 2], H=4, Hkv=2, D=32, dtype=dtype, limit=True, seed=9)
    case.q = (case.q.double() * 4).to(dtype)
    for cap in (0.7, 5.0, 50.0):
        out = triton_op(case, device, softcap=cap)[0]
        triton_close(out, case, cap)
        if dtype in CPP_DTYPES:
            want = fork_attention_reference(case.q, case.k, case.v, case.pool_k0.clone(), case.pool_v0.clone(), case.K,
                                            case.V, case.mask, case.seq, case.slot, case.fill, case.limit, case.scale,
                                            softcap=cap)
            close(out, want, dtype)


@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_triton_empty_prefixes(device, dtype):
    """Rows limited to 0 prefix positions attend to their slot alone; so do all rows of a call whose
    limits are all 0, and of a prefix of length 0."""
    case = Case([3, 2], limit=True, empty_prefix=True, dtype=dtype, seed=5)
    triton_close(triton_op(case, device)[0], case)
    case.limit[:] = 0
    triton_close(triton_op(case, device)[0], case)
    empty = Case([2, 1], L=6, dtype=dtype, seed=6)
    empty.K, empty.V, empty.mask = empty.K[:, :, :0], empty.V[:, :, :0], empty.mask[:, :0]
    triton_close(triton_op(empty, device, num_chunks=2)[0], empty)


@pytest.mark.parametrize("device", TR.DEVICES)
def test_triton_layouts_and_strides(device):
    """A transposed [B, L, Hkv, D] prefix, a query with a strided head_dim (copied), integer masks."""
    case = Case([2, 3], layout="bthd", holes=True, seed=11)
    want = triton_op(case, device)[0]
    triton_close(want, case)
    q_strided = torch.empty(*case.q.shape[:-1], 2 * case.D, dtype=case.dtype)[..., ::2].copy_(case.q)
    assert torch.equal(triton_op(case, device, query=q_strided)[0], want)
    for valid in (case.mask, case.mask.to(torch.uint8), case.mask.t().contiguous().t()):
        assert torch.equal(triton_op(case, device, prefix_valid=valid)[0], want)


@pytest.mark.parametrize("device", TR.DEVICES)
def test_triton_empty_call(device):
    c = Case([2, 3], L=20)
    e = torch.empty(0, dtype=torch.int64)
    out, pk, _ = triton_op(c, device, query=c.q[:0], key=c.k[:0], value=c.v[:0], seq=e, slot=e, fill=e,
                           row_limit=None)
    assert out.shape == (0, 1, c.H, c.D) and torch.equal(pk, c.pool_k0)


@pytest.mark.skipif(not TR.INTERPRET, reason="CPU tensors through the interpreted kernels; on CUDA the same glue "
                                             "runs in python_tests/engine/test_fork_triton.py and gpu/test_cuda.py")
def test_triton_through_the_engine_glue(monkeypatch):
    """``ForkBatch`` picks Triton when forced for fork attention alone (EPIC_KERNELS_BACKEND_FORK_ATTENTION),
    and the validated op takes ``backend="triton"``; soft-capped layers stay on Triton."""
    TR._ops()
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.setenv("EPIC_KERNELS_BACKEND_FORK_ATTENTION", "triton")
    case = Case([3, 2], limit=True, seed=14)
    out, pool, fb = case.run()
    assert fb.backend == "triton" and fb.aux is None
    triton_close(out, case)
    same_pool_writes(case, pool.keys[0], pool.values[0])
    pk = case.pool_k0.clone()
    got = fork_attention_op(case.q, case.k, case.v, pk, case.pool_v0.clone(), case.K, case.V, case.mask, case.seq,
                            case.slot, case.fill, case.limit, backend="triton")
    triton_close(got, case)
    pool = case.pool()
    fb = A.ForkBatch.build(case.view(), pool, case.seq, case.slot, case.fill, case.dtype, case.limit)
    A._local.batch = fb
    try:
        capped, _ = A.fork_attention(types.SimpleNamespace(layer_idx=0), case.q, case.k, case.v, scaling=case.scale,
                                     softcap=3.0)
    finally:
        A._local.batch = None
    assert fb.aux is None                          # Triton soft-caps itself: no reference fallback was built
    triton_close(capped, case, 3.0)


def test_triton_head_dims_it_does_not_take(monkeypatch):
    """head_dim > 256 (float64: > 128) runs the reference with one warning, or raises when forced."""
    import importlib
    FA = importlib.import_module("epic_kernels.ops.fork_attention")
    TR._ops()
    monkeypatch.setattr(FA, "_warned", set())
    monkeypatch.delenv("EPIC_KERNELS_BACKEND", raising=False)
    monkeypatch.delenv("EPIC_KERNELS_BACKEND_FORK_ATTENTION", raising=False)
    for D, dtype in ((264, torch.float32), (136, torch.float64)):
        case = Case([1, 1], H=2, Hkv=1, D=D, L=5, dtype=dtype, seed=D)
        args = (case.q, case.k, case.v, case.pool_k0.clone(), case.pool_v0.clone(), case.K, case.V, case.mask,
                case.seq, case.slot, case.fill)
        with pytest.warns(RuntimeWarning, match="takes head_dim <= 256"):
            out = FA.fork_attention_impl(*args, None, case.scale, "triton")
        close(out, case.dense(), dtype)
        with pytest.raises(ValueError, match="head_dim <= 256"):
            TR._ops().fork_attention_triton(*args)
    monkeypatch.setenv("EPIC_KERNELS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested for fork_attention but"):
        FA.fork_attention_impl(*args, None, case.scale, "triton")


def test_triton_plan_is_reused_per_model_call():
    """The row plan (host work + one copy) is built once for the tensors a model call passes to every
    layer, and rebuilt when one of them changes in place."""
    from epic_kernels.triton_kernels import fork_attention as tfa
    case = Case([3, 2], limit=True, seed=15)
    args = (case.seq, case.slot, case.fill, case.limit, 2, case.K.shape[2], 3, case.D, case.dtype, torch.device("cpu"))
    plan = tfa._plan(*args)
    assert tfa._plan(*args) is plan
    case.fill[0] = (case.fill[0] + 1) % 5
    again = tfa._plan(*args)
    assert again is not plan and int(again.fill[0]) == int(case.fill[0])
    assert tfa._plan(case.seq.clone(), *args[1:]) is not again
