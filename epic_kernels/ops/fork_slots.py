"""``fork_slots``: the KV-path fork of the engine's slot pool (``runtime.SlotPool.copy_slots``).

Contract (both backends, exactly)::

    fork_slots(storage [..., S, H, T, D], src [n], dst [n], length, src_start, dst_start) -> None

For every i, slot ``dst[i]``'s tokens ``dst_start .. dst_start + length - 1`` become slot
``src[i]``'s tokens ``src_start .. src_start + length - 1``, in every leading index (every layer's
keys and values at once), in place. ``storage`` contiguous; ``src``, ``dst`` int64 CPU ``[n]`` with
values in ``[0, S)``; the ``dst`` are distinct and none is a ``src`` (forks go to fresh paths), so
the result does not depend on the order of the copies.

Backends (``ops.dispatch``): ``reference`` (``fork_slots_reference``, one indexed assignment) and
``cpp`` (``torch.ops.epic_kernels.fork_slots``, csrc/cpu/fork_slots.cpp: one ``memcpy`` per
(leading index, path, head), where torch's indexed copy computes an offset per element).
"""
from __future__ import annotations

import torch

from .. import _ext
from .dispatch import choose, resolve

OP = "fork_slots"


def check_fork_slots(storage, src, dst, length, src_start, dst_start) -> None:
    """The op's validator (``ValueError``)."""
    if not isinstance(storage, torch.Tensor) or storage.dim() < 4:
        raise ValueError("fork_slots: storage must be a tensor of shape (..., S, H, T, D)")
    for name, t in (("src", src), ("dst", dst)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.device.type != "cpu" or t.dim() != 1:
            raise ValueError(f"fork_slots: {name} must be a 1-D int64 CPU tensor")
    if len(src) != len(dst):
        raise ValueError(f"fork_slots: src and dst must have the same length, got {len(src)} and {len(dst)}")
    S, T = storage.shape[-4], storage.shape[-2]
    for name, v in (("length", length), ("src_start", src_start), ("dst_start", dst_start)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"fork_slots: {name} must be an int >= 0, got {v!r}")
    if src_start + length > T or dst_start + length > T:
        raise ValueError(f"fork_slots: token ranges [{src_start}, {src_start + length}) and "
                         f"[{dst_start}, {dst_start + length}) must lie in [0, {T})")
    ids = torch.cat([src, dst])
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= S):
        raise ValueError(f"fork_slots: slot ids must lie in [0, {S})")
    if len(set(dst.tolist())) != len(dst) or set(dst.tolist()) & set(src.tolist()):
        raise ValueError("fork_slots: dst slots must be distinct and none may be a src slot")


def fork_slots_reference(storage, src, dst, length: int, src_start: int = 0, dst_start: int = 0) -> None:
    """The specification."""
    if len(dst) and length:
        storage[..., dst, :, dst_start:dst_start + length, :] = storage[..., src, :, src_start:src_start + length, :]


def fork_slots_impl(storage, src, dst, length: int, src_start: int = 0, dst_start: int = 0,
                    backend: str = "reference") -> None:
    """No validation (the engine's hot loop; the C++ op checks its inputs, RuntimeError)."""
    backend = resolve(backend, storage.device, OP)
    if backend == "cpp":
        _ext.op(OP)(storage, src, dst, int(length), int(src_start), int(dst_start))
    else:
        fork_slots_reference(storage, src, dst, length, src_start, dst_start)


def fork_slots(storage: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, length: int, src_start: int = 0,
               dst_start: int = 0, *, backend: str | None = None) -> None:
    """Validated ``fork_slots`` (see the module docstring)."""
    check_fork_slots(storage, src, dst, length, src_start, dst_start)
    fork_slots_impl(storage, src, dst, length, src_start, dst_start, choose(storage.device, backend, OP))


def register_fake() -> None:
    """Shape/dtype-only kernel of the C++ op (called by ``_ext.load``): it returns nothing."""

    @torch.library.register_fake("epic_kernels::fork_slots")
    def _fork_slots_fake(storage, src, dst, length, src_start, dst_start):
        torch._check(storage.dim() >= 4, lambda: f"storage must be (..., S, H, T, D), got {tuple(storage.shape)}")
        torch._check(src.shape == dst.shape, lambda: "src and dst must have the same shape")
        return None


__all__ = ["fork_slots", "fork_slots_impl", "fork_slots_reference", "check_fork_slots", "register_fake"]
