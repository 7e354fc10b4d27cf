"""Optional dependencies. ``pip install epic_kernels`` pulls torch and transformers only; the rest
comes with an extra (setup.py ``extras_require``):

* ``plot``: matplotlib, for ``epic-generate --plot``;
* ``gguf``: gguf and accelerate, which transformers needs to load a ``.gguf`` model (the embedded
  SmolLM2 is one);
* ``experiments``: everything ``experiments/`` and ``benchmarks/`` use (plots, Self-BLEU, GGUF).

Each optional module is looked up only where it is used, and a missing one raises
``MissingDependency`` naming the extra that installs it.
"""
from __future__ import annotations

import importlib
import importlib.util


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def check_installed(*modules: str, extra: str, purpose: str) -> None:
    """Raise ``MissingDependency`` unless every one of ``modules`` is installed (found, not imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):         # a parent package missing, or a broken entry
            found = False
        if not found:
            missing.append(name.split(".")[0])
    if missing:
        raise MissingDependency(f"{purpose} needs {' and '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not installed: "
                                f"pip install 'epic_kernels[{extra}]'")


def require(module: str, extra: str, purpose: str):
    """Import and return ``module``; if it is not installed, raise ``MissingDependency`` naming ``extra``."""
    check_installed(module, extra=extra, purpose=purpose)
    return importlib.import_module(module)
