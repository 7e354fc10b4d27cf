"""softmax_entropy (+ keyed samples), every backend side by side: the C++ kernels
(``torch.ops.epic_kernels.softmax_entropy[_sample]``) and the Triton kernels against the reference.
The reference backend itself, and all backends through ``ops.softmax_entropy``, are in test_dispatch.py."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import pytest
import torch
from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension
import importlib
import importlib.util
import textwrap
import warnings
import epic_kernels  # noqa: E402
from epic_kernels import philox, reference as R  # noqa: E402
from epic_kernels.ops.softmax_entropy import softmax_entropy_impl  # noqa: E402
import _cases_cpp as C  # noqa: E402
from _cases_cpp import cpp_env  # noqa: E402,F401  (fixture)
import _cases_triton as TR  # noqa: E402
from _cases_triton import triton_env  # noqa: E402,F401  (fixture)


# ---------------------------------------------------------------------------------------------- #
# C++ (backend "cpp")                                                                            #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("dtype,atol,rtol", C.TOLS)
@pytest.mark.parametrize("V", C.VOCABS)
@pytest.mark.parametrize("B", C.BATCHES)
def test_softmax_entropy_sample_matches_reference(B, V, dtype, atol, rtol):
    x = C.make_logits(B, V, dtype)
    seeds, positions = C.make_keys(B)
    streams = torch.randint(0, 2**31 - 1, (B,), dtype=torch.int64)
    streams[0] = 0
    ent_want, lse_want = C.exact_entropy(x)
    ent, lse = C.OPS.softmax_entropy(x)
    ent2, lse2, tokens = C.OPS.softmax_entropy_sample(x, seeds, streams, positions)
    for name, got, want in [("entropy", ent, ent_want), ("lse", lse, lse_want),
                            ("sample entropy", ent2, ent_want), ("sample lse", lse2, lse_want)]:
        assert not (msg := C.mismatches(name, got, want, atol, rtol)), msg
    # against the reference itself: lse everywhere; entropy on rows of moderate logits (on rows
    # near +-1e4 the float32 reference is off by up to several nats, see C.exact_entropy)
    ent_ref, lse_ref = R.softmax_entropy(x)
    assert not (msg := C.mismatches("lse vs reference", lse, lse_ref, atol, rtol)), msg
    moderate = x.to(torch.float64).abs().masked_fill(~torch.isfinite(x), 0).amax(-1) < 100
    msg = C.mismatches("entropy vs reference", ent[moderate], ent_ref[moderate], atol, rtol)
    assert not msg, msg
    want = R.gumbel_argmax(x, seeds, streams, positions)
    assert not (msg := C.mismatches("tokens", tokens, want)), msg


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("dtype,atol,rtol", [C.TOLS[0], C.TOLS[3]])
def test_rows_whose_maximum_keeps_rising(dtype, atol, rtol):
    """Rows where every 1024-entry block raises the running maximum by a little, by about 50
    (lanes rescaled) or by about 100 (block redone relative to its own maximum), and falling rows."""
    v = torch.arange(40000, dtype=torch.float64)
    x = torch.stack([v * 0.001, v * 0.05, v * 0.1, -v * 0.1, (v * 0.05).flip(0), torch.sin(v) * 30])
    x = x.to(dtype)
    ent, lse = C.OPS.softmax_entropy(x)
    ent_want, lse_want = C.exact_entropy(x)
    assert not (msg := C.mismatches("entropy", ent, ent_want, atol, rtol)), msg
    assert not (msg := C.mismatches("lse", lse, lse_want, atol, rtol)), msg


@pytest.mark.usefixtures("cpp_env")
def test_one_hot_rows_are_exact():
    x = torch.full((4, 1000), float("-inf"))
    x[torch.arange(4), torch.tensor([0, 17, 500, 999])] = torch.tensor([1e4, -1e4, 0.0, 3.0])
    ent, lse = C.OPS.softmax_entropy(x)
    assert ent.abs().max() < 1e-30
    assert torch.equal(lse, torch.tensor([1e4, -1e4, 0.0, 3.0]))
    _, _, tokens = C.OPS.softmax_entropy_sample(x, torch.arange(4), torch.zeros(4, dtype=torch.long),
                                              torch.arange(4))
    assert tokens.tolist() == [0, 17, 500, 999]


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("S", [1, 2, 3, 4])
@pytest.mark.parametrize("V", [17, 4097, 40000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_stream_equals_one_stream_calls(dtype, V, S):
    """streams [N, S] gives tokens [N, S] whose column k is bit for bit the call with streams[:, k]
    (and the reference's token), entropy / lse bit for bit the one-stream call's, for any thread
    count: rows with -inf holes, one finite entry, +-1e4 offsets (C.make_logits), constant rows (every
    entry ties for the block maximum), and rows with an exact three-way tie of x + G."""
    B = 12
    x = C.make_logits(B, V, dtype)
    seeds, positions = C.make_keys(B)
    streams = torch.randint(0, 2**31, (B, S), dtype=torch.int64)
    streams[0] = torch.arange(S)                     # step stream 0 and rollout streams 1..
    streams[1, 0] = 2**31 - 1
    x[5] = 1.5                                       # constant row
    if V > 17:
        C.make_tie_rows(x, seeds, streams, positions, rows=[6, 7, 8, 9])
    ones = [C.OPS.softmax_entropy_sample(x, seeds, streams[:, k].contiguous(), positions) for k in range(S)]
    want = torch.stack([o[2] for o in ones], 1)
    ref = torch.stack([R.gumbel_argmax(x, seeds, streams[:, k], positions) for k in range(S)], 1)
    assert not (msg := C.mismatches("one-stream calls vs reference", want, ref)), msg
    if V > 17:
        for b in (6, 7, 8, 9):                       # the tie went to the lowest of the three ids
            assert want[b, b % S].item() == min(V // 3, V // 7 + 1)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            ent, lse, tokens = C.OPS.softmax_entropy_sample(x, seeds, streams, positions)
            assert tokens.shape == (B, S) and tokens.dtype == torch.int64
            assert not (msg := C.mismatches(f"tokens, {t} threads", tokens, want)), msg
            assert torch.equal(ent, ones[0][0]) and torch.equal(lse, ones[0][1])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("cpp_env")
def test_multi_stream_half_types_layouts_and_key_dtypes():
    """float16 / bfloat16 logits; streams as the engine builds them (an expanded, stride-0 view),
    transposed (non-contiguous), int32; a one-column [N, 1] gives [N, 1]; N = 0."""
    B, V, K = 7, 20000, 2
    seeds, positions = C.make_keys(B)
    for dtype in (torch.float16, torch.bfloat16):
        x = C.make_logits(B, V, dtype)
        for streams in ((1 + torch.arange(K)).expand(B, K), torch.randint(0, 99, (K, B)).t(),
                        torch.randint(0, 99, (B, 3), dtype=torch.int32)):
            ent, lse, tokens = C.OPS.softmax_entropy_sample(x, seeds, streams, positions)
            for k in range(streams.shape[1]):
                e1, l1, t1 = C.OPS.softmax_entropy_sample(x, seeds, streams[:, k].long().contiguous(), positions)
                assert torch.equal(tokens[:, k], t1) and torch.equal(ent, e1) and torch.equal(lse, l1)
        _, _, one = C.OPS.softmax_entropy_sample(x, seeds, seeds.view(-1, 1) % 7, positions)
        assert one.shape == (B, 1)
        assert torch.equal(one[:, 0], C.OPS.softmax_entropy_sample(x, seeds, seeds % 7, positions)[2])
    ent, lse, tokens = C.OPS.softmax_entropy_sample(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long),
                                                  torch.zeros(0, 3, dtype=torch.long),
                                                  torch.zeros(0, dtype=torch.long))
    assert ent.shape == (0,) and tokens.shape == (0, 3)


@pytest.mark.usefixtures("cpp_env")
def test_multi_stream_typed_wrapper():
    """softmax_entropy_impl(..., "cpp"), the C++ op's caller: an int, [N] and [N, S] streams."""
    x = C.make_logits(4, 3000, torch.float32)
    seeds, positions = C.make_keys(4)
    streams = 1 + torch.arange(2).expand(4, 2)
    _, _, two = softmax_entropy_impl(x, seeds, streams, positions, "cpp")
    assert two.shape == (4, 2)
    assert torch.equal(two[:, 0], softmax_entropy_impl(x, seeds, 1, positions, "cpp")[2])
    assert torch.equal(two[:, 1], softmax_entropy_impl(x, seeds, torch.full((4,), 2), positions, "cpp")[2])


@pytest.mark.usefixtures("cpp_env")
def test_softmax_kernel_bodies_of_every_width(tmp_path):
    """csrc/tests/softmax_widths.cpp: the kernel's 4-, 8- and 16-float bodies (baseline, AVX2,
    AVX-512: only one runs in the extension on a given CPU) against a brute-force Gumbel-max, and
    the AVX2 / AVX-512 statistics bit for bit; each body the CPU supports is run."""
    import shutil
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert cxx is not None, "no C++ compiler (the extension build needs one too)"
    exe = tmp_path / "softmax_widths"
    subprocess.run([cxx, "-O2", "-std=c++20", "-ffp-contract=fast", "-Wno-psabi",
                    os.path.join(C.ROOT, "csrc", "tests", "softmax_widths.cpp"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), "1000"], capture_output=True, text=True)
    assert out.returncode == 0 and " 0 mismatches" in out.stdout, out.stdout[-3000:]


@pytest.mark.usefixtures("cpp_env")
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
        C.OPS.softmax_entropy_sample(torch.zeros(2, 3), zeros, streams, zeros)


@pytest.mark.usefixtures("cpp_env")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_bad_values_give_a_non_finite_lse_and_the_public_op_names_them(dtype):
    """The public op on CPU checks NaN / +inf / dead rows from the kernel's lse (no scan first): every
    row holding one must get a non-finite lse, wherever it sits (alone in the last block or piece,
    at a block start, with huge or tiny neighbours), and the others must not."""
    from epic_kernels.ops import softmax_entropy

    g = torch.Generator().manual_seed(5)
    for V in (1, 5, 17, 1023, 1024, 1025, 2049, 16384, 16385, 49152):
        for pos in sorted({0, 15, 16, V // 3, 1023, 1024, 16383, 16384, V - 1} & set(range(V))):
            for val, what in ((float("nan"), "NaN"), (float("inf"), r"\+inf")):
                for scale in (1.0, 30.0, 1e4):
                    x = (torch.randn(3, V, generator=g) * scale).clamp(-6e4, 6e4).to(dtype)
                    x[1, pos] = val
                    for streams in (None, 1 + torch.arange(6).view(3, 2)):
                        args = () if streams is None else (torch.arange(3), streams, torch.arange(3))
                        lse = (C.OPS.softmax_entropy(x) if streams is None
                               else C.OPS.softmax_entropy_sample(x, *args))[1]
                        assert not torch.isfinite(lse[1]) and torch.isfinite(lse[[0, 2]]).all(), (V, pos, val, scale)
                    with pytest.raises(ValueError, match=what):
                        softmax_entropy(x, backend="cpp")
        x = torch.randn(3, V, generator=g).to(dtype)
        x[1] = float("-inf")
        assert not torch.isfinite(C.OPS.softmax_entropy(x)[1][1])
        with pytest.raises(ValueError, match="no finite entry"):
            softmax_entropy(x, backend="cpp")
        x[1, V // 2] = float("nan")                   # NaN among -inf only
        assert not torch.isfinite(C.OPS.softmax_entropy(x)[1][1])
        with pytest.raises(ValueError, match="NaN"):
            softmax_entropy(x, backend="cpp")


@pytest.mark.usefixtures("cpp_env")
def test_opcheck_softmax_ops():
    x, seeds, streams, positions = C._small_args()
    torch.library.opcheck(C.OPS.softmax_entropy.default, (x,))
    torch.library.opcheck(C.OPS.softmax_entropy_sample.default, (x, seeds, streams, positions))
    for S in (1, 2, 4):                                  # streams [N, S] -> tokens [N, S]
        result = torch.library.opcheck(C.OPS.softmax_entropy_sample.default,
                                       (x, seeds, 1 + torch.arange(3 * S).view(3, S), positions))
        assert all(v == "SUCCESS" for v in result.values()), result
    torch.library.opcheck(C.OPS._gumbel_noise.default, (seeds, streams, positions, 19))
    torch.library.opcheck(C.OPS._philox_randint.default, (seeds, positions << 32))
    torch.library.opcheck(C.OPS._gumbel_from_words.default, (seeds,))


# ---------------------------------------------------------------------------------------------- #
# Triton (backend "triton"; the CPU interpreter without a GPU)                                   #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("B", [1, 3, 33])
@pytest.mark.parametrize("V", [1, 17, 111, 4097])
@pytest.mark.parametrize("num_chunks", [1, 3], ids=["single", "split"])
def test_softmax_entropy_float32(device, B, V, num_chunks):
    if B * V > 100_000 and num_chunks > 1:
        V = 1025          # the split path at 33 x 4097 is too slow in the interpreter; same logic, smaller V
    TR._check_entropy(device, B, V, torch.float32, 2e-5, 2e-6, num_chunks)


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", TR.TOLS)
@pytest.mark.parametrize("B, V", [(3, 111), (33, 17), (1, 4097)])
@pytest.mark.parametrize("num_chunks", [1, 5], ids=["single", "split"])
def test_softmax_entropy_dtypes(device, dtype, atol, rtol, B, V, num_chunks):
    TR._check_entropy(device, B, V, dtype, atol, rtol, num_chunks)


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", [TR.TOLS[0], TR.TOLS[2]])
def test_softmax_entropy_vocab_32000_heuristic(device, dtype, atol, rtol):
    TR._check_entropy(device, 2, 32000, dtype, atol, rtol, None, kind="plain")


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
@pytest.mark.parametrize("dtype, atol, rtol", TR.TOLS)
def test_softmax_entropy_vs_reference_directly(device, dtype, atol, rtol):
    """Ordinary logits: the reference itself (no float64 oracle) within the dtype's tolerance."""
    tk = TR._ops()
    x = TR.make_logits(5, 300, dtype, kind="plain")
    x[0, 1:] = float("-inf")
    ent, lse, _ = tk.softmax_entropy_triton(x.to(device), num_chunks=2)
    ent_ref, lse_ref = R.softmax_entropy(x)
    assert not (msg := TR.mismatches("lse", lse, lse_ref, atol, rtol)), msg
    assert not (msg := TR.mismatches("entropy", ent, ent_ref, 4 * atol, rtol)), msg


@pytest.mark.usefixtures("triton_env")
def test_plan_chunks_splits_small_batches_only():
    from epic_kernels.triton_kernels.softmax_entropy import plan_chunks
    cpu = torch.device("cpu")
    assert plan_chunks(1, 128256, cpu, False)[0] > 1
    assert plan_chunks(64, 128256, cpu, False)[0] == 1
    assert plan_chunks(1, 17, cpu, False)[0] == 1
    C, chunk, block = plan_chunks(1, 4097, cpu, True, num_chunks=3)
    assert C == 3 and chunk % block == 0 and C * chunk >= 4097 > (C - 1) * chunk
