"""Keyed Gumbel noise at chosen vocabulary entries (``noise_at_impl``: the engine's rollout draws
under a truncated rollout policy), and the fake (meta) kernels of the C++ helpers that expose the
kernels' own noise path (``_philox_randint``, ``_gumbel_noise``, ``_gumbel_from_words``;
csrc/cpu/philox.cpp). Their contract is ``epic_kernels.philox`` bit for bit
(python_tests/ops/test_philox.py)."""
from __future__ import annotations

import torch

from .. import _ext, philox


def noise_at_impl(seeds, streams, positions, ids, backend: str = "reference") -> torch.Tensor:
    """Gumbel noise ``[N, m]`` of entries ``ids [N, m]`` of row n: key ``(seeds[n], streams[n],
    positions[n], ids[n, j])``, the values of ``philox.noise_at``. ``backend="cpp"`` on CPU tensors
    computes the words with the compiled Philox (two calls instead of ~60 tensor ops)."""
    if backend != "cpp" or ids.device.type != "cpu" or not _ext.available():
        return philox.noise_at(seeds, streams, positions, ids)
    seed = philox.stream_seed(seeds, streams.to(torch.int64)).view(-1, 1).expand_as(ids)
    offset = (positions.to(torch.int64).view(-1, 1) << 32) | ids.to(torch.int64)
    ops = _ext.ops()
    return ops._gumbel_from_words(ops._philox_randint(seed.contiguous(), offset.contiguous()))


def register_fake() -> None:
    """Called by ``_ext.load``."""

    @torch.library.register_fake("epic_kernels::_philox_randint")
    def _philox_randint_fake(seed, offset):
        torch._check(seed.shape == offset.shape, lambda: "seed and offset must have the same shape")
        return torch.empty_like(seed, dtype=torch.int64, memory_format=torch.contiguous_format)

    @torch.library.register_fake("epic_kernels::_gumbel_from_words")
    def _gumbel_from_words_fake(words):
        return torch.empty_like(words, dtype=torch.float32, memory_format=torch.contiguous_format)

    @torch.library.register_fake("epic_kernels::_gumbel_noise")
    def _gumbel_noise_fake(seeds, streams, positions, vocab):
        return seeds.new_empty((seeds.shape[0], vocab), dtype=torch.float32)
