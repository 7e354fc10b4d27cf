"""Philox words, uniforms and Gumbel noise: bit-identical to Triton, keyed, batch-independent."""
import math

import torch

from epic_kernels import philox
import os
import subprocess
import sys
import pytest
from epic_kernels import _ext, philox, reference as R
from epic_kernels.testing import require_extension
import importlib
import importlib.util
import textwrap
import warnings
import epic_kernels  # noqa: E402
from epic_kernels import philox, reference as R  # noqa: E402
import _cases_cpp as C  # noqa: E402
import _cases_triton as TR  # noqa: E402
from _cases_cpp import cpp_env  # noqa: E402,F401  (fixture)
from _cases_triton import triton_env  # noqa: E402,F401  (fixture)


def _grid():
    seeds = [0, 1, 1234, 2**32 - 1, (1 << 32) | 5, (7 << 32) | 2**31, ((2**31 - 1) << 32) | (2**32 - 1)]
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([torch.tensor([0, 1, 2**32 - 1, 2**32, (2**31 - 1) << 32]),
                         torch.randint(0, 2**62, (251,), generator=gen)])
    return seeds, offsets


def test_words_equal_triton_randint():
    import triton
    import triton.language as tl

    @triton.jit
    def _randint_kernel(out_ptr, seed, off_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(out_ptr + offs, tl.randint(seed, tl.load(off_ptr + offs)))

    seeds, offsets = _grid()
    n = triton.next_power_of_2(len(offsets))
    offsets = torch.cat([offsets, offsets[: n - len(offsets)]])
    for seed in seeds:
        out = torch.empty(n, dtype=torch.int32, device="cuda" if torch.cuda.is_available() else "cpu")
        _randint_kernel[(1,)](out, seed, offsets.to(out.device), N=n)
        ours = philox.randint(torch.tensor(seed), offsets)
        theirs = out.cpu().to(torch.int64) & philox.MASK32
        bad = (ours != theirs).nonzero().flatten()
        assert len(bad) == 0, f"seed {seed}: first mismatches at offsets {offsets[bad[:5]].tolist()}"


def test_known_answer():
    """Philox4x32-10 known-answer vector (Random123 kat_vectors: ctr 0, key 0)."""
    zero = torch.zeros(1, dtype=torch.int64)
    words = philox.philox4x32(zero, zero, zero, zero, zero, zero)
    assert [int(w) for w in words] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_uniform_open_interval_and_exact():
    words = torch.tensor([0, 511, 512, 2**32 - 1], dtype=torch.int64)
    u = philox.uniform(words)
    assert u.dtype == torch.float32
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    assert u.tolist() == [2.0**-24, 2.0**-24, 3 * 2.0**-24, 1 - 2.0**-24]


def test_gumbel_moments():
    g = philox.noise(torch.tensor([7]), 0, torch.tensor([3]), 200_000)[0].double()
    assert torch.isfinite(g).all()
    assert abs(float(g.mean()) - 0.5772156649) < 0.01          # Euler-Mascheroni
    assert abs(float(g.var()) - math.pi**2 / 6) < 0.03


def test_noise_is_keyed_not_batched():
    """A row's noise depends only on its own key: not on batch size, row order or vocabulary size."""
    seeds, pos = torch.tensor([5, 9, 5]), torch.tensor([10, 10, 11])
    full = philox.noise(seeds, 0, pos, 100)
    for i in range(3):
        alone = philox.noise(seeds[i:i + 1], 0, pos[i:i + 1], 100)
        assert torch.equal(alone[0], full[i])
    assert torch.equal(philox.noise(seeds, 0, pos, 40), full[:, :40])
    assert not torch.equal(full[0], full[2])                   # position is part of the key
    assert not torch.equal(full[0], full[1])                   # seed is part of the key
    rollout = philox.noise(seeds, 1, pos, 100)
    assert not torch.equal(rollout, full)                       # streams are kept apart
    assert not torch.equal(philox.noise(seeds, 2, pos, 100), rollout)


# ---------------------------------------------------------------------------------------------- #
# C++ (backend "cpp")                                                                            #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("cpp_env")
def test_philox_words_bit_identical():
    seeds = torch.tensor([0, 1, 1234, 2**31, 2**32 - 1, (1 << 32) | 5, (7 << 32) | 2**31,
                          ((2**31 - 1) << 32) | (2**32 - 1), 2**63 - 1])
    gen = torch.Generator().manual_seed(0)
    offsets = torch.cat([torch.tensor([0, 1, 2**32 - 1, 2**32, (2**31 - 1) << 32, 2**63 - 1]),
                         torch.randint(0, 2**62, (250,), generator=gen)])
    s, o = torch.broadcast_tensors(seeds[:, None], offsets[None, :])
    got = C.OPS._philox_randint(s.contiguous(), o.contiguous())
    assert not (msg := C.mismatches("words", got, philox.randint(s, o))), msg


@pytest.mark.usefixtures("cpp_env")
def test_gumbel_noise_exhaustive_over_uniforms():
    """Noise depends on a word only through its top 23 bits: every one of the 2^23 values gives the
    reference's float32 noise exactly (the kernels' SIMD logs vs torch.log in float64)."""
    words = (torch.arange(2**23, dtype=torch.int64) << 9) | 0x1A5
    assert not (msg := C.mismatches("noise", C.OPS._gumbel_from_words(words), philox.gumbel(words))), msg


@pytest.mark.usefixtures("cpp_env")
def test_gumbel_noise_bit_identical():
    B, V = 6, 3000
    seeds, positions = C.make_keys(B)
    streams = torch.tensor([0, 1, 2, 2**31 - 1, 7, 0])
    got = C.OPS._gumbel_noise(seeds, streams, positions, V)
    assert not (msg := C.mismatches("noise", got, philox.noise(seeds, streams, positions, V))), msg


# ---------------------------------------------------------------------------------------------- #
# Triton (backend "triton"; the CPU interpreter without a GPU)                                   #
# ---------------------------------------------------------------------------------------------- #


@pytest.mark.usefixtures("triton_env")
@pytest.mark.parametrize("device", TR.DEVICES)
def test_philox_words_and_noise_match_reference(device):
    from epic_kernels.triton_kernels.common import philox_noise_triton
    TR._ops()
    k = torch.tensor([0, 1, 2**32 - 1, (5 << 32) | 12345, ((2**31 - 1) << 32) | (2**32 - 1)])
    off = torch.randint(0, 2**62, (k.numel(), 300), dtype=torch.int64)
    off[:, :4] = torch.tensor([0, 2**32 - 1, 2**32, ((2**31 - 1) << 32) | (2**32 - 1)])
    words, noise = philox_noise_triton(k.to(device), off.to(device))
    want = philox.randint(k[:, None], off)
    assert not (msg := TR.mismatches("words", words, want)), msg
    assert not (msg := TR.mismatches("gumbel", noise, philox.gumbel(want))), msg
