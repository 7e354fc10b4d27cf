"""Which implementation runs an op: Triton (CUDA tensors), C++ (CPU tensors), or the reference.

``EPIC_KERNELS_BACKEND=reference|cpu|triton`` (or an explicit ``backend=`` argument) forces one; a
forced backend that cannot run is an error, never a silent fallback. Unforced, a CUDA tensor goes
to Triton, a CPU tensor to the C++ extension, and when neither is available the reference runs
with a one-time warning. ``TRITON_INTERPRET=1`` lets the forced Triton path run on CPU tensors.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from .. import _ext

BACKENDS = ("reference", "cpu", "triton")
_warned: set[str] = set()


def _triton_ok(device: torch.device) -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"Triton needs CUDA tensors (got {device.type}; TRITON_INTERPRET=1 runs it on the CPU)"


def _cpu_ok(device: torch.device) -> tuple[bool, str]:
    if not _ext.available():
        return False, f"the C++ extension is not built ({_ext.error()}); {_ext.BUILD_HINT}"
    if device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
            "epic_kernels::softmax_entropy", "CUDA"):
        return False, "the C++ extension was built without CUDA kernels"
    return True, ""


def choose(device: torch.device, backend: str | None = None) -> str:
    """The backend for tensors on ``device``: ``backend`` or $EPIC_KERNELS_BACKEND if set, else auto."""
    forced = backend or os.environ.get("EPIC_KERNELS_BACKEND") or None
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"unknown backend {forced!r}; choose one of {', '.join(BACKENDS)}")
        if forced == "reference":
            return forced
        ok, why = (_cpu_ok if forced == "cpu" else _triton_ok)(device)
        if not ok:
            raise RuntimeError(f"backend {forced!r} was requested but cannot run: {why}")
        if forced == "cpu" and device.type == "cuda":
            raise RuntimeError("backend 'cpu' was requested for CUDA tensors")
        return forced
    if device.type == "cuda" and _triton_ok(device)[0]:
        return "triton"
    if device.type == "cpu" and _cpu_ok(device)[0]:
        return "cpu"
    key = device.type
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"epic_kernels: no fast kernels for {device.type} tensors "
                      f"({_cpu_ok(device)[1] if device.type == 'cpu' else 'triton unavailable'}); "
                      "using the pure-PyTorch reference", RuntimeWarning, stacklevel=3)
    return "reference"
