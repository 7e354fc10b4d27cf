"""Counter-based randomness shared by every backend: Philox4x32-10 and the two keyed noise streams.

Every random number in epic_kernels is a pure function of a key; nothing is drawn from a stateful
generator. The words are those of Triton's ``tl.randint(seed, offset)``: Philox4x32 with ten rounds,
key ``(seed_lo, seed_hi)`` and counter ``(offset_lo, offset_hi, 0, 0)``, first output word.

Key layout (docs/algorithm.md, "3. Keyed randomness")::

    triton seed   = (stream << 32) | seed_b       seed_b: per-sequence seed in [0, 2**32)
    triton offset = (position << 32) | vocab_id    position: token position in its own sequence

    stream = 0          step noise     (sequence seed, position, vocabulary entry)
    stream = 1 + r      rollout noise  (sequence seed, rollout r, position, vocabulary entry)

Mapping to uniforms and Gumbel noise (identical in every backend)::

    u = ((word >> 9) + 0.5) * 2**-23       in (0, 1), exact in float32, never 0 or 1
    g = float32(-log(-log(float64(u))))    the logs in float64, then rounded once to float32

Computing the two logs in float64 and rounding once makes the float32 noise the correctly rounded
value in every backend (C++ ``std::log``, Triton, PyTorch's vectorized log), except when the float64
result lies within a few float64 ulps of a float32 rounding boundary (probability ~1e-8 per value).
So the backends draw the same noise, not merely noise within tolerance.

All integer arithmetic below uses int64 tensors that hold uint32 values, because PyTorch has no
full uint32 multiply; the 64-bit products wrap, which leaves their bits those of the unsigned product.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
STEP_STREAM = 0
MAX_SEED = 2**32          # per-sequence seeds live in [0, MAX_SEED)
MAX_POSITION = 2**31      # positions live in [0, MAX_POSITION)
MAX_ROLLOUTS = 2**31 - 2  # stream 1 + r must stay below 2**31


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product ``a * b`` (a: constant, b: uint32 in int64).

    The int64 product wraps modulo 2**64, so its bits are exactly those of the unsigned product.
    """
    p = a * b
    return (p >> 32) & MASK32, p & MASK32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 with ``rounds`` rounds. Every argument is an int64 tensor holding uint32 values."""
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def randint(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The uint32 word of ``tl.randint(seed, offset)``, returned as int64 in [0, 2**32).

    ``seed`` and ``offset`` are int64 tensors (non-negative) that broadcast against each other.
    """
    seed, offset = torch.broadcast_tensors(seed.to(torch.int64), offset.to(torch.int64))
    zero = torch.zeros_like(offset)
    word, _, _, _ = philox4x32(offset & MASK32, offset >> 32, zero, zero, seed & MASK32, seed >> 32)
    return word


def uniform(word: torch.Tensor) -> torch.Tensor:
    """Map uint32 words (held in int64) to float32 uniforms in (0, 1): ``((w >> 9) + 0.5) * 2**-23``."""
    return ((word >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def gumbel(word: torch.Tensor) -> torch.Tensor:
    """Map uint32 words to float32 standard Gumbel noise ``-log(-log(u))`` (logs in float64)."""
    return (-torch.log(-torch.log(uniform(word).to(torch.float64)))).to(torch.float32)


def stream_seed(seeds: torch.Tensor, stream) -> torch.Tensor:
    """The 64-bit Triton seed of ``stream`` (0 = step noise, 1 + r = rollout r) for sequence seeds."""
    return (torch.as_tensor(stream, dtype=torch.int64) << 32) | seeds.to(torch.int64)


def noise(seeds: torch.Tensor, stream, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel noise ``[N, vocab]`` of row n: key ``(seeds[n], stream[n], positions[n], v)``.

    Parameters
    ----------
    seeds : int64 tensor [N], per-sequence seeds in [0, 2**32).
    stream : int or int64 tensor [N], 0 for step noise, 1 + r for rollout r.
    positions : int64 tensor [N], the position of the token being sampled in its own sequence.
    vocab : int, number of vocabulary entries V.
    """
    vocab_ids = torch.arange(vocab, dtype=torch.int64, device=seeds.device).expand(len(seeds), vocab)
    return noise_at(seeds, stream, positions, vocab_ids)


def noise_at(seeds: torch.Tensor, stream, positions: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Gumbel noise of the entries ``vocab_ids [N, m]`` only (same values as ``noise`` there)."""
    seed = stream_seed(seeds, torch.as_tensor(stream, dtype=torch.int64).view(-1)).view(-1, 1)
    offset = (positions.to(torch.int64).view(-1, 1) << 32) | vocab_ids.to(torch.int64)
    return gumbel(randint(seed, offset))
