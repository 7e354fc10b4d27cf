"""C++ extension ops (``torch.ops.epic_kernels.*``) vs the pure-PyTorch reference.

A missing extension is an error, not a skip: ``make test`` always builds it (by hand:
``pip install --no-build-isolation -e .``). The reference-backend counterparts of these ops run in
test_dispatch.py and the engine tests with ``backend="reference"``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension

require_extension("softmax_entropy", "softmax_entropy_sample", "gumbel_topk_prune")

OPS = _ext.ops()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (dtype, atol, rtol) of entropy / lse / scores; survivor sets, fronts, top-k ids and tokens: exact
TOLS = [(torch.float32, 5e-5, 1e-5), (torch.float16, 5e-5, 1e-5), (torch.bfloat16, 5e-5, 1e-5),
        (torch.float64, 1e-10, 1e-11)]
BATCHES = [1, 3, 33]
VOCABS = [1, 17, 111, 4097, 32000]


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed RNG; one intra-op thread (the reference's many small parallel ops crawl when another
    process holds the second core; the kernels' results do not depend on the thread count, which
    test_results_do_not_depend_on_threads_or_row_stride checks with several threads)."""
    torch.manual_seed(1234)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mismatches(name, got, want, atol=0.0, rtol=0.0, show=8) -> str:
    """'' if ``got`` matches ``want`` (infinities equal, else |got - want| <= atol + rtol |want|);
    otherwise a message listing the first ``show`` mismatches."""
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.dtype != want.dtype:
        return f"{name}: dtype {got.dtype} != {want.dtype}"
    if got.dtype.is_floating_point:
        g, w = got.double(), want.double()
        bad = ~((g == w) | ((g - w).abs() <= atol + rtol * w.abs()))
    else:
        bad = got != want
    if not bad.any():
        return ""
    rows = [f"  at {tuple(i.tolist())}: got {got[tuple(i)].item()!r} want {want[tuple(i)].item()!r}"
            for i in bad.nonzero()[:show]]
    return f"{name}: {int(bad.sum())} of {bad.numel()} differ; first:\n" + "\n".join(rows)


def make_logits(B: int, V: int, dtype: torch.dtype) -> torch.Tensor:
    """randn * 3 with -inf holes, plus hard rows cycling with the row index: all but one entry
    -inf, very large (+1e4), very small (-1e4), and a few 1e4 spikes over a -1e4 floor."""
    x = torch.randn(B, V, dtype=torch.float64) * 3
    x[torch.rand(B, V) < 0.1] = float("-inf")
    for b in range(B):
        kind = b % 5 if B > 1 else 0
        if kind == 1:
            x[b] = float("-inf")
            x[b, torch.randint(V, ())] = 2.5
        elif kind == 2:
            x[b] = torch.randn(V, dtype=torch.float64) * 3 + 1e4
        elif kind == 3:
            x[b] = torch.randn(V, dtype=torch.float64) * 3 - 1e4
        elif kind == 4:
            x[b] = -1e4
            x[b, torch.randint(V, (3,))] = 1e4 + torch.randn(3, dtype=torch.float64)
    dead = ~torch.isfinite(x).any(-1)
    x[dead, 0] = 0.0                                    # every row keeps a finite entry
    return x.to(dtype)


def make_keys(B: int):
    seeds = torch.randint(0, 2**32, (B,), dtype=torch.int64)
    seeds[0] = 2**32 - 1                                # high bit of the seed set
    return seeds, torch.randint(0, 2**31, (B,), dtype=torch.int64)


def exact_entropy(x: torch.Tensor):
    """``reference.softmax_entropy`` on float64 row-max-shifted logits, cast to the accumulate dtype.

    The reference evaluates ``H = lse - sum p x``, which cancels catastrophically in float32 when
    |logits| ~ 1e4 (absolute error ~ulp(1e4) = 1e-3); the kernel's ``log s - t / s`` does not. The
    shift keeps the reference's formula and makes it exact enough to compare against.
    """
    x64 = x.to(torch.float64)
    top = x64.max(-1, keepdim=True).values
    ent, lse = R.softmax_entropy(x64 - top)
    acc = R.compute_dtype(x.dtype)
    return ent.to(acc), (lse + top.squeeze(-1)).to(acc)


# ------------------------------------------------------------------------------------------------ #
# Philox                                                                                           #
# ------------------------------------------------------------------------------------------------ #


def test_philox_words_bit_identical():
    seeds = torch.tensor([0, 1, 1234, 2**31, 2**32 - 1, (1 << 32) | 5, (7 << 32) | 2**31,
                          ((2**31 - 1) << 32) | (2**32 - 1), 2**63 - 1])
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([torch.tensor([0, 1, 2**32 - 1, 2**32, (2**31 - 1) << 32, 2**63 - 1]),
                         torch.randint(0, 2**62, (250,), generator=gen)])
    s, o = torch.broadcast_tensors(seeds[:, None], offsets[None, :])
    got = OPS._philox_randint(s.contiguous(), o.contiguous())
    assert not (msg := mismatches("words", got, philox.randint(s, o))), msg


def test_gumbel_noise_exhaustive_over_uniforms():
    """Noise depends on a word only through its top 23 bits: every one of the 2^23 values gives the
    reference's float32 noise exactly (the kernels' SIMD logs vs torch.log in float64)."""
    words = (torch.arange(2**23, dtype=torch.int64) << 9) | 0x1A5
    assert not (msg := mismatches("noise", OPS._gumbel_from_words(words), philox.gumbel(words))), msg


def test_gumbel_noise_bit_identical():
    B, V = 6, 3000
    seeds, positions = make_keys(B)
    streams = torch.tensor([0, 1, 2, 2**31 - 1, 7, 0])
    got = OPS._gumbel_noise(seeds, streams, positions, V)
    assert not (msg := mismatches("noise", got, philox.noise(seeds, streams, positions, V))), msg


# ------------------------------------------------------------------------------------------------ #
# softmax_entropy, softmax_entropy_sample                                                          #
# ------------------------------------------------------------------------------------------------ #


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("B", BATCHES)
def test_softmax_entropy_sample_matches_reference(B, V, dtype, atol, rtol):
    x = make_logits(B, V, dtype)
    seeds, positions = make_keys(B)
    streams = torch.randint(0, 2**31 - 1, (B,), dtype=torch.int64)
    streams[0] = 0
    ent_want, lse_want = exact_entropy(x)
    ent, lse = OPS.softmax_entropy(x)
    ent2, lse2, tokens = OPS.softmax_entropy_sample(x, seeds, streams, positions)
    for name, got, want in [("entropy", ent, ent_want), ("lse", lse, lse_want),
                            ("sample entropy", ent2, ent_want), ("sample lse", lse2, lse_want)]:
        assert not (msg := mismatches(name, got, want, atol, rtol)), msg
    # against the reference itself: lse everywhere; entropy on rows of moderate logits (on rows
    # near +-1e4 the float32 reference is off by up to several nats, see exact_entropy)
    ent_ref, lse_ref = R.softmax_entropy(x)
    assert not (msg := mismatches("lse vs reference", lse, lse_ref, atol, rtol)), msg
    moderate = x.to(torch.float64).abs().masked_fill(~torch.isfinite(x), 0).amax(-1) < 100
    msg = mismatches("entropy vs reference", ent[moderate], ent_ref[moderate], atol, rtol)
    assert not msg, msg
    want = R.gumbel_argmax(x, seeds, streams, positions)
    assert not (msg := mismatches("tokens", tokens, want)), msg


@pytest.mark.parametrize("dtype,atol,rtol", [TOLS[0], TOLS[3]])
def test_rows_whose_maximum_keeps_rising(dtype, atol, rtol):
    """Rows where every 1024-entry block raises the running maximum by a little, by about 50
    (lanes rescaled) or by about 100 (block redone relative to its own maximum), and falling rows."""
    v = torch.arange(40000, dtype=torch.float64)
    x = torch.stack([v * 0.001, v * 0.05, v * 0.1, -v * 0.1, (v * 0.05).flip(0), torch.sin(v) * 30])
    x = x.to(dtype)
    ent, lse = OPS.softmax_entropy(x)
    ent_want, lse_want = exact_entropy(x)
    assert not (msg := mismatches("entropy", ent, ent_want, atol, rtol)), msg
    assert not (msg := mismatches("lse", lse, lse_want, atol, rtol)), msg


def test_one_hot_rows_are_exact():
    x = torch.full((4, 1000), float("-inf"))
    x[torch.arange(4), torch.tensor([0, 17, 500, 999])] = torch.tensor([1e4, -1e4, 0.0, 3.0])
    ent, lse = OPS.softmax_entropy(x)
    assert ent.abs().max() < 1e-30
    assert torch.equal(lse, torch.tensor([1e4, -1e4, 0.0, 3.0]))
    _, _, tokens = OPS.softmax_entropy_sample(x, torch.arange(4), torch.zeros(4, dtype=torch.long),
                                              torch.arange(4))
    assert tokens.tolist() == [0, 17, 500, 999]


# ------------------------------------------------------------------------------------------------ #
# softmax_entropy_sample with streams [N, S]: S samples per row from one softmax pass              #
# ------------------------------------------------------------------------------------------------ #


def make_tie_rows(x: torch.Tensor, seeds, streams, positions, rows) -> None:
    """Make each of ``rows`` a row whose Gumbel-max for stream column ``row % S`` is an exact tie:
    three entries set to ``-G_v`` (so ``x_v + G_v = 0`` exactly, in float32 and float64: negation is
    exact and ``-G + G = 0``), every other finite entry at most -17 (``x + G < 0``; -inf holes kept)."""
    V, S = x.shape[1], streams.shape[1]
    for b in rows:
        k = b % S
        g = OPS._gumbel_noise(seeds[b:b + 1], streams[b:b + 1, k], positions[b:b + 1], V)[0]
        ids = torch.tensor([V // 3, V // 7 + 1, V - 1]).unique()
        finite = torch.isfinite(x[b])
        x[b] = torch.where(finite, torch.full_like(x[b], -20.0), x[b])
        x[b, ids] = (-g[ids]).to(x.dtype)


@pytest.mark.parametrize("S", [1, 2, 3, 4])
@pytest.mark.parametrize("V", [17, 4097, 40000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_stream_equals_one_stream_calls(dtype, V, S):
    """streams [N, S] gives tokens [N, S] whose column k is bit for bit the call with streams[:, k]
    (and the reference's token), entropy / lse bit for bit the one-stream call's, for any thread
    count: rows with -inf holes, one finite entry, +-1e4 offsets (make_logits), constant rows (every
    entry ties for the block maximum), and rows with an exact three-way tie of x + G."""
    B = 12
    x = make_logits(B, V, dtype)
    seeds, positions = make_keys(B)
    streams = torch.randint(0, 2**31, (B, S), dtype=torch.int64)
    streams[0] = torch.arange(S)                     # step stream 0 and rollout streams 1..
    streams[1, 0] = 2**31 - 1
    x[5] = 1.5                                       # constant row
    if V > 17:
        make_tie_rows(x, seeds, streams, positions, rows=[6, 7, 8, 9])
    ones = [OPS.softmax_entropy_sample(x, seeds, streams[:, k].contiguous(), positions) for k in range(S)]
    want = torch.stack([o[2] for o in ones], 1)
    ref = torch.stack([R.gumbel_argmax(x, seeds, streams[:, k], positions) for k in range(S)], 1)
    assert not (msg := mismatches("one-stream calls vs reference", want, ref)), msg
    if V > 17:
        for b in (6, 7, 8, 9):                       # the tie went to the lowest of the three ids
            assert want[b, b % S].item() == min(V // 3, V // 7 + 1)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ent, lse, tokens = OPS.softmax_entropy_sample(x, seeds, streams, positions)
            assert tokens.shape == (B, S) and tokens.dtype == torch.int64
            assert not (msg := mismatches(f"tokens, {t} threads", tokens, want)), msg
            assert torch.equal(ent, ones[0][0]) and torch.equal(lse, ones[0][1])
    finally:
        torch.set_num_threads(threads)


def test_multi_stream_half_types_layouts_and_key_dtypes():
    """float16 / bfloat16 logits; streams as the engine builds them (an expanded, stride-0 view),
    transposed (non-contiguous), int32; a one-column [N, 1] gives [N, 1]; N = 0."""
    B, V, K = 7, 20000, 2
    seeds, positions = make_keys(B)
    for dtype in (torch.float16, torch.bfloat16):
        x = make_logits(B, V, dtype)
        for streams in ((1 + torch.arange(K)).expand(B, K), torch.randint(0, 99, (K, B)).t(),
                        torch.randint(0, 99, (B, 3), dtype=torch.int32)):
            ent, lse, tokens = OPS.softmax_entropy_sample(x, seeds, streams, positions)
            for k in range(streams.shape[1]):
                e1, l1, t1 = OPS.softmax_entropy_sample(x, seeds, streams[:, k].long().contiguous(), positions)
                assert torch.equal(tokens[:, k], t1) and torch.equal(ent, e1) and torch.equal(lse, l1)
        _, _, one = OPS.softmax_entropy_sample(x, seeds, seeds.view(-1, 1) % 7, positions)
        assert one.shape == (B, 1)
        assert torch.equal(one[:, 0], OPS.softmax_entropy_sample(x, seeds, seeds % 7, positions)[2])
    ent, lse, tokens = OPS.softmax_entropy_sample(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long),
                                                  torch.zeros(0, 3, dtype=torch.long),
                                                  torch.zeros(0, dtype=torch.long))
    assert ent.shape == (0,) and tokens.shape == (0, 3)


def test_multi_stream_typed_wrapper():
    """_ext.softmax_entropy_sample: an int, [N] and [N, S] streams."""
    x = make_logits(4, 3000, torch.float32)
    seeds, positions = make_keys(4)
    streams = 1 + torch.arange(2).expand(4, 2)
    _, _, two = _ext.softmax_entropy_sample(x, seeds, streams, positions)
    assert two.shape == (4, 2)
    assert torch.equal(two[:, 0], _ext.softmax_entropy_sample(x, seeds, 1, positions)[2])
    assert torch.equal(two[:, 1], _ext.softmax_entropy_sample(x, seeds, torch.full((4,), 2), positions)[2])


def test_softmax_kernel_bodies_of_every_width(tmp_path):
    """csrc/tests/softmax_widths.cpp: the kernel's 4-, 8- and 16-float bodies (baseline, AVX2,
    AVX-512: only one runs in the extension on a given CPU) against a brute-force Gumbel-max, and
    the AVX2 / AVX-512 statistics bit for bit; each body the CPU supports is run."""
    import shutil
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert cxx is not None, "no C++ compiler (the extension build needs one too)"
    exe = tmp_path / "softmax_widths"
    subprocess.run([cxx, "-O2", "-std=c++20", "-ffp-contract=fast", "-Wno-psabi",
                    os.path.join(ROOT, "csrc", "tests", "softmax_widths.cpp"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), "1000"], capture_output=True, text=True)
    assert out.returncode == 0 and " 0 mismatches" in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize("streams,match", [
    (torch.zeros(3, 2, dtype=torch.long), r"streams must have shape \(2,\) or \(2, S\), got \[3, 2\]"),
    (torch.zeros(2, 0, dtype=torch.long), r"needs S >= 1"),
    (torch.zeros(2, 2, 1, dtype=torch.long), r"streams must have shape \(2,\) or \(2, S\)"),
    (torch.zeros(2, 2), r"streams must be an integer tensor, got Float"),
    (torch.zeros(2, 2, dtype=torch.bool), r"streams must be an integer tensor, got Bool"),
    (torch.tensor([[0, 1], [2, 2**31]]), r"streams\[3\] = 2147483648 is outside \[0, 2147483648\)"),
    (torch.tensor([[0, -1], [2, 3]]), r"streams\[1\] = -1 is outside"),
])
def test_multi_stream_bad_streams_raise(streams, match):
    zeros = torch.zeros(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match=match):
        OPS.softmax_entropy_sample(torch.zeros(2, 3), zeros, streams, zeros)


# ------------------------------------------------------------------------------------------------ #
# gumbel_topk_prune                                                                                #
# ------------------------------------------------------------------------------------------------ #


def check_prune(got: R.PruneResult, want: R.PruneResult, atol, rtol):
    """Every field equal (integers exactly, floats to tolerance); ids / fronts / top-k exactly."""
    for name in R.PruneResult._fields:
        g, w = getattr(got, name), getattr(want, name)
        floating = g.dtype.is_floating_point
        msg = mismatches(name, g, w, atol if floating else 0.0, rtol if floating else 0.0)
        assert not msg, msg


@pytest.mark.parametrize("dtype,atol,rtol", TOLS)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("B", BATCHES)
def test_gumbel_topk_prune_matches_reference(B, V, dtype, atol, rtol):
    x = make_logits(B, V, dtype)
    seeds, positions = make_keys(B)
    width = torch.rand(B, dtype=torch.float64) * 0.8 * math.log(max(V, 2))
    width[0] = 0.0
    top_k = 5 if V > 17 else 20                         # 20 > V: padding with -1 / -inf
    got = _ext.gumbel_topk_prune(x, seeds, positions, width, top_k)
    want = R.gumbel_topk_prune(x, seeds, positions, width.to(R.compute_dtype(dtype)), top_k)
    check_prune(got, want, atol, rtol)


def test_gumbel_topk_prune_scalar_width_and_wide_window():
    x = make_logits(3, 4097, torch.float32)
    seeds, positions = make_keys(3)
    got = _ext.gumbel_topk_prune(x, seeds, positions, float("inf"), 3)     # every finite entry
    want = R.gumbel_topk_prune(x, seeds, positions, float("inf"), 3)
    check_prune(got, want, 5e-5, 1e-5)
    assert torch.equal(got.counts, torch.isfinite(x).sum(-1))


# ------------------------------------------------------------------------------------------------ #
# Layout, threads, errors, loading                                                                 #
# ------------------------------------------------------------------------------------------------ #


def test_results_do_not_depend_on_threads_or_row_stride():
    big = make_logits(8, 40000, torch.float32)
    x = big[:, :33000]                                  # row stride 40000, last dim contiguous
    seeds, positions = make_keys(8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (OPS.softmax_entropy_sample(x, seeds, seeds * 0, positions),
               _ext.gumbel_topk_prune(x, seeds, positions, 3.0, 4))
        torch.set_num_threads(2)
        many = (OPS.softmax_entropy_sample(x.contiguous(), seeds, seeds * 0, positions),
                _ext.gumbel_topk_prune(x, seeds, positions, 3.0, 4))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip([*one[0], *one[1]], [*many[0], *many[1]]):
        assert torch.equal(a, b)


def test_strided_last_dim_and_one_value_width():
    x = make_logits(5, 300, torch.float32)
    xt = x.t().contiguous().t()                         # stride (1, 5): last dim not contiguous
    seeds, positions = make_keys(5)
    for a, b in zip(OPS.softmax_entropy_sample(xt, seeds, seeds * 0, positions),
                    OPS.softmax_entropy_sample(x, seeds, seeds * 0, positions)):
        assert torch.equal(a, b)
    got = OPS.gumbel_topk_prune(xt, seeds, positions, torch.tensor(2.5, dtype=torch.float64), 3)
    want = OPS.gumbel_topk_prune(x, seeds, positions, torch.full((5,), 2.5), 3)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call,match", [
    (lambda: OPS.softmax_entropy(torch.zeros(3)), "shape"),
    (lambda: OPS.softmax_entropy(torch.zeros(2, 3, dtype=torch.int32)), "float16"),
    (lambda: OPS.softmax_entropy(torch.zeros(2, 0)), "at least one column"),
    (lambda: OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long),
                                        torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "seeds"),
    (lambda: OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.tensor([0, 2**32]),
                                        torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), "outside"),
    (lambda: OPS.softmax_entropy_sample(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, dtype=torch.long),
                                        torch.zeros(2, dtype=torch.long)), "integer"),
    (lambda: OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.tensor([0, -1]), torch.zeros(2), 1), "positions"),
    (lambda: OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.zeros(2, dtype=torch.long), torch.zeros(2), 0), "top_k"),
    (lambda: OPS.gumbel_topk_prune(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                   torch.zeros(2, dtype=torch.long), torch.zeros(3), 1), "width"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_import_does_not_load_extension():
    code = "import sys, epic_kernels; assert 'epic_kernels._C' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ops_error_names_the_build_command(monkeypatch):
    monkeypatch.setattr(_ext, "_state", {"loaded": True, "module": None, "error": ImportError("gone")})
    assert not _ext.available()
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        _ext.ops()


# ------------------------------------------------------------------------------------------------ #
# opcheck: schemas, fake kernels, dispatcher registrations                                         #
# ------------------------------------------------------------------------------------------------ #


def _small_args():
    x = make_logits(3, 37, torch.float32)
    seeds, positions = make_keys(3)
    streams = torch.tensor([0, 1, 5])
    return x, seeds, streams, positions


def test_opcheck_softmax_ops():
    x, seeds, streams, positions = _small_args()
    torch.library.opcheck(OPS.softmax_entropy.default, (x,))
    torch.library.opcheck(OPS.softmax_entropy_sample.default, (x, seeds, streams, positions))
    for S in (1, 2, 4):                                  # streams [N, S] -> tokens [N, S]
        result = torch.library.opcheck(OPS.softmax_entropy_sample.default,
                                       (x, seeds, 1 + torch.arange(3 * S).view(3, S), positions))
        assert all(v == "SUCCESS" for v in result.values()), result
    torch.library.opcheck(OPS._gumbel_noise.default, (seeds, streams, positions, 19))
    torch.library.opcheck(OPS._philox_randint.default, (seeds, positions << 32))
    torch.library.opcheck(OPS._gumbel_from_words.default, (seeds,))


def test_opcheck_gumbel_topk_prune():
    """ids / scores have a data-dependent length: the fake kernel allocates them with
    ``get_ctx().new_dynamic_size()`` (an unbacked symbol, as torch.nonzero does). opcheck runs its
    fake-tensor and AOT checks with a ShapeEnv, so every default test applies and must pass."""
    x, seeds, _, positions = _small_args()
    width = torch.full((3,), 2.0)
    result = torch.library.opcheck(OPS.gumbel_topk_prune.default, (x, seeds, positions, width, 4))
    assert set(result) == {"test_schema", "test_autograd_registration", "test_faketensor",
                           "test_aot_dispatch_dynamic"}
    assert all(v == "SUCCESS" for v in result.values()), result
