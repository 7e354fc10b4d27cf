"""Which implementation runs an op: one policy for every compiled op and the candidate manager.

Backends: ``"reference"`` (pure PyTorch: the specification, in the op's own file), ``"cpp"`` (the
compiled extension ``epic_kernels._C``: its CPU kernels for CPU tensors, its CUDA kernels for CUDA
tensors when it was built with CUDA) and ``"triton"``. ``"cpu"`` is accepted as an alias of
``"cpp"`` (the name this backend had before the extension's CUDA kernels were reachable); ``choose``
always answers ``"cpp"``.

Where each op is implemented (``IMPLEMENTED``; the first that can run wins when nothing is forced)::

    op                  CUDA tensors          CPU tensors
    softmax_entropy     triton, cpp           cpp            (triton on CPU: forced, TRITON_INTERPRET=1)
    gumbel_topk_prune   triton, cpp           cpp            (triton on CPU: forced, TRITON_INTERPRET=1)
    fork_attention      triton                cpp            (triton: any float dtype; cpp: float32 / float64)
    plan_rows           -                     cpp            (host bookkeeping: CPU tensors)
    fork_layout         -                     cpp            (host bookkeeping: CPU tensors)
    topk_support        -                     cpp            (float32 / float64; CUDA: torch.topk, the reference)
    candidate_manager   cpp                   cpp            (host-side; copies its inputs to the CPU)

Unforced: the first listed backend that can run; when none can, the reference, with one
``RuntimeWarning`` per device type and reason. An op with no kernel for a device (``-``) runs the
reference there by design, without a warning.

Forced (``backend=``, else ``$EPIC_KERNELS_BACKEND_<OP>`` for that op alone, e.g.
``EPIC_KERNELS_BACKEND_FORK_ATTENTION=triton``, else ``$EPIC_KERNELS_BACKEND`` for every op):
``"reference"`` runs the reference. A backend listed for the op and device must run, or
``RuntimeError`` says why (not built, not installed, built without CUDA, Triton on CPU tensors
without ``TRITON_INTERPRET=1``). A backend that does not implement the op on that device (Triton
for plan_rows, fork_layout and the manager; C++ for fork_attention on CUDA) leaves that op to its
unforced choice: forcing Triton on a GPU runs Triton's three ops and C++ / the reference for the rest.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from .. import _ext

BACKENDS = ("reference", "cpp", "triton")
ALIASES = {"cpu": "cpp"}
OPS = ("softmax_entropy", "gumbel_topk_prune", "fork_attention", "plan_rows", "fork_layout",
       "fork_slots", "topk_support", "candidate_manager")

# op -> device type -> backends implementing it (unforced preference order: AUTO; forced: IMPLEMENTED)
_ROW_OPS = {"cuda": ("triton", "cpp"), "cpu": ("cpp", "triton")}
IMPLEMENTED = {
    "softmax_entropy": _ROW_OPS,
    "gumbel_topk_prune": _ROW_OPS,
    "fork_attention": {"cuda": ("triton",), "cpu": ("cpp", "triton")},
    "plan_rows": {"cpu": ("cpp",)},
    "fork_layout": {"cpu": ("cpp",)},
    "fork_slots": {"cpu": ("cpp",)},
    "topk_support": {"cpu": ("cpp",)},
    "candidate_manager": {"cpu": ("cpp",), "cuda": ("cpp",)},
}
AUTO = {op: {dev: tuple(b for b in backends if not (b == "triton" and dev != "cuda"))
             for dev, backends in table.items()} for op, table in IMPLEMENTED.items()}

_warned: set = set()
_triton: list = []          # cached: is triton importable (find_spec searches sys.path on every call;
                            # choose runs several times per step: docs/kernels.md, "Dispatch")


def _triton_installed() -> bool:
    if not _triton:
        _triton.append(importlib.util.find_spec("triton") is not None)
    return _triton[0]


def _device(device) -> torch.device:
    if isinstance(device, torch.Tensor):
        return device.device
    return device if isinstance(device, torch.device) else torch.device(device)


def op_variable(op: str) -> str:
    """The environment variable that forces a backend for ``op`` alone."""
    return f"EPIC_KERNELS_BACKEND_{op.upper()}"


def forced(backend: str | None = None, op: str | None = None) -> str | None:
    """The forced backend (``backend``, else ``$EPIC_KERNELS_BACKEND_<OP>`` when ``op`` is given,
    else ``$EPIC_KERNELS_BACKEND``), normalized; None if unforced."""
    name = backend or (op and os.environ.get(op_variable(op))) or os.environ.get("EPIC_KERNELS_BACKEND") or None
    if name is None:
        return None
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} "
                         f"('cpu' is an alias of 'cpp')")
    return name


def why_not(name: str, device: torch.device, op: str) -> str:
    """'' when backend ``name`` can run ``op`` on ``device`` now, else the reason it cannot."""
    if name == "reference":
        return ""
    if name == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
            return ""
        return f"Triton needs CUDA tensors (got {device.type}; TRITON_INTERPRET=1 runs it on the CPU)"
    if not _ext.available():
        return f"the C++ extension is not built ({_ext.error()}); {_ext.BUILD_HINT}"
    if op == "candidate_manager":
        return "" if _ext.has_class("CandidateManager") else \
            f"the loaded extension has no CandidateManager (built before it); rebuild it: {_ext.BUILD_HINT}"
    names = ("softmax_entropy", "softmax_entropy_sample") if op == "softmax_entropy" else (op,)
    for n in names:
        if _ext.op(n) is None:
            return f"the loaded extension has no {n} op (built before it); rebuild it: {_ext.BUILD_HINT}"
        if not _ext.has_kernel(n, device.type):
            return (f"the C++ extension has no {device.type} kernel of {n}"
                    + (" (built without CUDA)" if device.type == "cuda" else ""))
    return ""


def choose(device, backend: str | None = None, op: str | None = None) -> str:
    """The backend that runs ``op`` (default ``"softmax_entropy"``: the row ops) for tensors on
    ``device`` (a device, a device string or a tensor): ``"reference"``, ``"cpp"`` or ``"triton"``.
    ``backend`` (else ``$EPIC_KERNELS_BACKEND``) forces one; see the module docstring."""
    op = op or "softmax_entropy"
    if op not in IMPLEMENTED:
        raise ValueError(f"unknown op {op!r}; one of {', '.join(OPS)}")
    device = _device(device)
    name = forced(backend, op)
    if name == "reference":
        return name
    if name is not None and name in IMPLEMENTED[op].get(device.type, ()):
        why = why_not(name, device, op)
        if why:
            raise RuntimeError(f"backend {name!r} was requested for {op} on {device.type} tensors "
                               f"but cannot run: {why}")
        return name
    # unforced, or forced to a backend without this op on this device: the op's own choice
    candidates = AUTO[op].get(device.type, ())
    reasons = []
    for b in candidates:
        why = why_not(b, device, op)
        if not why:
            return b
        reasons.append(f"{b}: {why}")
    if candidates:
        key = (device.type, tuple(reasons))
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"epic_kernels: no fast kernel of {op} for {device.type} tensors "
                          f"({'; '.join(reasons)}); using the pure-PyTorch reference", RuntimeWarning,
                          stacklevel=3)
    return "reference"


def resolve(backend: str, device, op: str) -> str:
    """``backend`` if ``op`` has it for ``device``, else ``choose(device, backend, op)``: lets an
    ``*_impl`` take the backend its caller chose for the step (e.g. ``"triton"`` for plan_rows)."""
    if backend == "reference":
        return backend
    if backend in IMPLEMENTED[op].get(_device(device).type, ()):
        return backend
    return choose(device, backend, op)


__all__ = ["BACKENDS", "ALIASES", "OPS", "IMPLEMENTED", "AUTO", "choose", "forced", "op_variable", "resolve",
           "why_not"]
