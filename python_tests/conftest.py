"""Shared fixtures. Triton runs in its CPU interpreter when no GPU is present (set before import).

OpenMP threads wait passively: with the default spin-wait, every small 2-thread op stalls whenever
another process holds a core (measured 100-400x on these shared machines, docs/benchmarks.md).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

# python_tests/vllm needs vllm, which lives in its own environment (.venv-vllm): `make test` runs it
# there, after this suite (whose invocation also passes --ignore=python_tests/vllm).
# (a spec without an origin is python_tests/vllm itself seen as a namespace package, not vLLM)
if getattr(importlib.util.find_spec("vllm"), "origin", None) is None:
    collect_ignore = ["vllm"]

from epic_kernels.testing import prefill, random_prompts, tiny_llama  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """No test may depend on global RNG state; fix it anyway so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    """A float64 tiny Llama with a 32-token vocabulary."""
    return tiny_llama(32, seed=0)


@pytest.fixture(scope="session")
def tiny16():
    """A float64 tiny Llama with a 16-token vocabulary (cheap to enumerate)."""
    return tiny_llama(16, seed=1)


@pytest.fixture(scope="session")
def batch7(tiny):
    """Seven prompts of different lengths, prefilled with left padding."""
    prompts = random_prompts(32, [5, 9, 3, 7, 6, 4, 8], seed=1)
    logits, kv, mask = prefill(tiny, prompts)
    return prompts, logits, kv, mask


@pytest.fixture(scope="session")
def device():
    """The device the op tests put their tensors on: ``EPIC_TEST_DEVICE`` (default ``cpu``), so
    ``EPIC_TEST_DEVICE=cuda pytest python_tests/ops`` runs the same tests on a GPU (Triton compiled,
    the C++ CUDA kernels where they exist). Host-only ops (plan_rows, fork_layout, the candidate
    manager) keep CPU tensors."""
    return torch.device(os.environ.get("EPIC_TEST_DEVICE", "cpu"))
