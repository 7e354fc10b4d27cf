"""Shared Triton pieces: the lazy ``triton`` import, keyed Gumbel noise, launch checks.

``import epic_kernels.triton_kernels`` must work without triton installed, so the import is guarded
here and every kernel module takes ``triton`` / ``tl`` from this file. Without triton, ``triton.jit``
is a stand-in that returns a function raising a clear error, and the wrappers call
``require_triton()`` before doing anything.

Noise (identical to ``epic_kernels.philox``; docs/algorithm.md, "3. Keyed randomness"; docs/kernels.md, "Noise")::

    word = tl.randint(key, offset)            key = (stream << 32) | seed,  offset = (position << 32) | v
    u    = ((word >> 9) + 0.5) * 2**-23       word is uint32, so >> is a logical shift; u exact in fp32
    g    = float32(-log(-log(float64(u))))    the logs in float64, one rounding to float32
"""
from __future__ import annotations

from typing import NamedTuple

import torch

try:  # pragma: no branch
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
    HAS_TRITON = False

    class _MissingTriton:
        """Stand-in so kernel definitions still parse; calling a kernel raises."""

        constexpr = object

        @staticmethod
        def jit(fn=None, **kwargs):
            def wrap(f):
                def missing(*args, **kw):
                    require_triton()
                return missing
            return wrap(fn) if fn is not None else wrap

    triton = tl = _MissingTriton()

TWO_POW_M23 = 2.0**-23


class Launch(NamedTuple):
    """One compiled variant a wrapper can launch: the kernel, example arguments (CPU tensors of the
    launch's dtypes; integers at representative values, which Triton specializes on: ``== 1`` and
    divisibility by 16) and the constexprs plus ``num_warps``. Each module's ``compile_space()``
    lists its variants; tools/compile_report.py compiles them."""

    kernel: object
    args: tuple
    kwargs: dict


def launch_key(kernel, args, kwargs) -> tuple:
    """What identifies a compiled variant in a launch: kernel name, the tensor arguments' dtypes and
    the constexprs / num_warps (the launch tests compare recorded launches with compile_space())."""
    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", repr(kernel))
    dtypes = tuple(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
    meta = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    return name, dtypes, meta


def require_triton() -> None:
    """Raise a clear error when triton is not installed."""
    if not HAS_TRITON:
        raise RuntimeError("epic_kernels.triton_kernels needs the `triton` package (pip install triton); "
                           "use the reference or C++ backend instead")


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was built under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel, *tensors: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter takes CPU (or CUDA) tensors."""
    require_triton()
    if is_interpreted(kernel):
        return
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(f"Triton kernels need CUDA tensors, got a {t.device.type} tensor; to run them "
                             "on CPU set TRITON_INTERPRET=1 before importing epic_kernels.triton_kernels")


def check_logits(logits: torch.Tensor) -> None:
    """The kernels' own input check: a float ``[N, V]`` tensor with ``V >= 1`` (N = 0 is fine: empty
    outputs, as on every backend; the ops' validators check values first)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits must be a [N, V] tensor")
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if logits.shape[1] == 0:
        raise ValueError(f"logits must have at least one column, got {tuple(logits.shape)}")
    if logits.shape[1] >= 2**31:
        raise ValueError("vocabulary too large for int32 ids")


def noise_keys(seeds: torch.Tensor, streams, positions: torch.Tensor, batch: int, device):
    """Per-row Philox key ``(stream << 32) | seed`` and offset base ``position << 32`` (int64 [batch])."""
    seeds = _as_row_ints(seeds, "seeds", batch, device)
    positions = _as_row_ints(positions, "positions", batch, device)
    if streams is None:
        streams = torch.zeros(batch, dtype=torch.int64, device=device)
    elif isinstance(streams, int):
        streams = torch.full((batch,), streams, dtype=torch.int64, device=device)
    else:
        streams = _as_row_ints(streams, "streams", batch, device)
    if (seeds < 0).any() or (seeds >= 2**32).any():
        raise ValueError("seeds must lie in [0, 2**32)")
    if (positions < 0).any() or (positions >= 2**31).any():
        raise ValueError("positions must lie in [0, 2**31)")
    if (streams < 0).any() or (streams >= 2**31).any():
        raise ValueError("streams must lie in [0, 2**31)")
    return ((streams << 32) | seeds).contiguous(), (positions << 32).contiguous()


def _as_row_ints(x, name: str, batch: int, device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor [{batch}]")
    if x.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}], got {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.int64)


@triton.jit
def _uniform_gumbel(word):
    """float32 Gumbel noise of uint32 Philox words: logs in float64, one rounding to float32."""
    u = ((word >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23: exact in float32
    return (-tl.log(-tl.log(u.to(tl.float64)))).to(tl.float32)


@triton.jit
def gumbel_noise(key, offsets):
    """Gumbel noise of entries ``offsets`` (int64) under the scalar Philox ``key`` (int64)."""
    return _uniform_gumbel(tl.randint(key, offsets))


@triton.jit
def _philox_noise_kernel(key_ptr, offset_ptr, word_ptr, noise_ptr, n, BLOCK: tl.constexpr):
    """Test hook: words and noise of row r's offsets ``offset_ptr[r, :n]`` under key ``key_ptr[r]``."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    key = tl.load(key_ptr + row)
    offsets = tl.load(offset_ptr + row * n + cols, mask=mask, other=0)
    word = tl.randint(key, offsets)
    tl.store(word_ptr + row * n + cols, word.to(tl.int64), mask=mask)
    tl.store(noise_ptr + row * n + cols, _uniform_gumbel(word), mask=mask)


def philox_noise_triton(keys: torch.Tensor, offsets: torch.Tensor):
    """Words (int64 holding uint32) and float32 Gumbel noise for ``keys [R]`` x ``offsets [R, n]``.

    Test hook that checks the kernels' Philox against ``epic_kernels.philox.randint`` / ``gumbel``.
    """
    require_triton()
    check_device(_philox_noise_kernel, keys, offsets)
    keys, offsets = keys.to(torch.int64).contiguous(), offsets.to(torch.int64).contiguous()
    R, n = offsets.shape
    words = torch.empty(R, n, dtype=torch.int64, device=offsets.device)
    noise = torch.empty(R, n, dtype=torch.float32, device=offsets.device)
    BLOCK = min(1024, triton.next_power_of_2(max(n, 1)))
    _philox_noise_kernel[(R, triton.cdiv(n, BLOCK))](keys, offsets, words, noise, n, BLOCK=BLOCK)
    return words, noise


def compile_space() -> list:
    """The test hook's variant at its largest block (``philox_noise_triton``: BLOCK = min(1024, n))."""
    i64, f32 = torch.empty(1, dtype=torch.int64), torch.empty(1, dtype=torch.float32)
    return [Launch(_philox_noise_kernel, (i64, i64, i64, f32, 4096), dict(BLOCK=1024))]
