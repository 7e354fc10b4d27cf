"""Loading llama.cpp (``llama-cpp-python``'s low-level ctypes API) once per process.

The Makefile builds ``llama-cpp-python`` from its sdist with portable x86-64-v3 kernels
(``GGML_NATIVE=OFF`` with AVX, AVX2, FMA, F16C and BMI2): the library then runs on any x86-64 CPU
that has those instructions (Intel Haswell, 2013, and AMD Excavator / Zen or later), whatever
machine built it. On a CPU without them the library would die of an illegal instruction inside
the first model call, so ``load`` refuses first, naming the missing flags and the fix.
"""
from __future__ import annotations

import ctypes
import platform
import threading

from ..extras import check_installed

# what the Makefile's build of llama.cpp was compiled for (GGML_AVX / AVX2 / FMA / F16C / BMI2)
REQUIRED_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
BUILD_FIX = ("rebuild llama-cpp-python for this CPU: CMAKE_ARGS='-DGGML_NATIVE=ON' pip install --force-reinstall "
             "--no-cache-dir --no-binary llama-cpp-python llama-cpp-python==0.3.36")

_lock = threading.Lock()
_lib = None
_log_callback = None                 # kept alive: llama.cpp holds the pointer


def missing_cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The instruction-set flags the portable build needs that this CPU lacks (``/proc/cpuinfo``;
    none on a machine that is not x86-64 Linux, where the build is the user's own)."""
    if cpuinfo is None:
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            return []
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [f for f in REQUIRED_FLAGS if f not in flags]


def load():
    """The ``llama_cpp.llama_cpp`` module, its backend initialised and its logging limited to errors.
    Raises ``MissingDependency`` when llama-cpp-python is not installed and ``RuntimeError`` on a CPU
    the build cannot run on."""
    global _lib, _log_callback
    with _lock:
        if _lib is not None:
            return _lib
        check_installed("llama_cpp", extra="llama", purpose="the llama.cpp engine")
        missing = missing_cpu_flags()
        if missing:
            raise RuntimeError(f"this CPU lacks {', '.join(missing)}, which the portable llama.cpp build "
                               f"(x86-64-v3 kernels) needs; {BUILD_FIX}")
        import llama_cpp.llama_cpp as lib

        @lib.llama_log_callback
        def _log(level, text, user_data):            # errors only (level 4 = GGML_LOG_LEVEL_ERROR)
            if level == 4:
                import sys
                sys.stderr.write(text.decode("utf-8", "replace"))

        _log_callback = _log
        lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _lib = lib
        return lib


__all__ = ["load", "missing_cpu_flags", "REQUIRED_FLAGS", "BUILD_FIX"]
