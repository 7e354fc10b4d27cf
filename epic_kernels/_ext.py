"""Lazy loader of the compiled extension ``epic_kernels._C`` (C++ CPU and CUDA kernels).

``import epic_kernels`` never imports ``_C``: the first call of :func:`load` does, which registers
``torch.ops.epic_kernels.*`` (schemas in ``csrc/ops.cpp``) and then each op module's fake (meta)
kernel (``epic_kernels/ops/<op>.py``, ``register_fake``), so the ops also trace under
``torch.compile`` / FakeTensor. The result, the module or the ImportError, is cached. Each op's
contract, validator and dispatch live in its own file under ``epic_kernels/ops/``; build the
extension with ``pip install --no-build-isolation -e .`` from the repository root.
"""
from __future__ import annotations

import importlib
import threading

import torch

BUILD_HINT = ("build it from the repository root with `pip install --no-build-isolation -e .` "
              "(needs a C++20 compiler, g++ >= 10; CUDA kernels are added when torch and the toolkit have CUDA)")

# the modules whose register_fake() runs once the extension is loaded
FAKE_MODULES = ("softmax_entropy", "gumbel_topk_prune", "fork_attention", "plan_rows", "fork_layout",
                "fork_slots", "topk_support", "philox")

_lock = threading.Lock()
_state: dict = {"loaded": False, "module": None, "error": None}
_ops_cache: dict = {}


def load():
    """Import ``epic_kernels._C`` once; return the module, or ``None`` if it is not built/loadable."""
    if not _state["loaded"]:
        with _lock:
            if not _state["loaded"]:
                try:
                    module = importlib.import_module("epic_kernels._C")
                    for name in FAKE_MODULES:
                        importlib.import_module(f"epic_kernels.ops.{name}").register_fake()
                    _state["module"] = module
                except (ImportError, OSError) as exc:   # not built, or built against another torch
                    _state["error"] = exc
                _state["loaded"] = True
    return _state["module"]


def available() -> bool:
    """True when the compiled extension can be loaded (loads it)."""
    return load() is not None


def error() -> BaseException | None:
    """Why the extension could not be loaded (``None`` if it loaded or was never tried)."""
    return _state["error"]


def ops():
    """``torch.ops.epic_kernels``, loading the extension first; RuntimeError if it is not built."""
    if load() is None:
        raise RuntimeError(f"the epic_kernels C++ extension is not available ({_state['error']}); "
                           f"{BUILD_HINT}")
    return torch.ops.epic_kernels


def op(name: str):
    """``torch.ops.epic_kernels.<name>.default``, or None when the loaded extension predates that op
    (RuntimeError when the extension is not built, as ``ops``)."""
    if name not in _ops_cache:
        _ops_cache[name] = getattr(ops(), name).default if hasattr(ops(), name) else None
    return _ops_cache[name]


def has_kernel(name: str, device_type: str) -> bool:
    """True when the loaded extension registered a kernel of op ``name`` for ``device_type``."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"epic_kernels::{name}", key)


def has_class(name: str) -> bool:
    """True when the loaded extension registered ``torch.classes.epic_kernels.<name>``."""
    try:
        getattr(torch.classes.epic_kernels, name)
    except (RuntimeError, AttributeError):
        return False
    return True


__all__ = ["load", "available", "error", "ops", "op", "has_kernel", "has_class", "BUILD_HINT"]
