"""Fake (meta) kernels of the C++ testing helpers that expose the kernels' own noise path
(``_philox_randint``, ``_gumbel_noise``, ``_gumbel_from_words``; csrc/cpu/philox.cpp). Their contract
is ``epic_kernels.philox`` bit for bit (python_tests/ops/test_philox.py)."""
from __future__ import annotations

import torch


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
