"""Options, fixtures and machine info of the benchmark suites.

``--device`` (default ``$EPIC_TEST_DEVICE`` or ``cpu``) puts every kernel's tensors there; host
bookkeeping ops (row planner, manager) always run on the CPU. ``--threads`` sets torch's intra-op
threads for the kernel suites (default 1, the figure the docs quote); the model suites use
``--model-threads`` (default 2). ``--quick`` runs only the tests marked ``quick``, with tiny model
runs of one round each (the CI smoke set: a test of the code, not a measurement). Every result carries ``extra_info``: ``table`` (the docs table it feeds),
``case`` (the row), ``impl`` (the column) and, for model runs, measured figures beside the time.
The JSON's ``machine_info`` gains the CPU model, the C++ kernels' ISA body, threads, the OpenMP
wait policy, the git revision and load averages (``machine_extra``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from experiments import common as C  # noqa: E402  (first: OMP_WAIT_POLICY=PASSIVE before torch loads)

import pytest  # noqa: E402
import torch  # noqa: E402

_LOAD0 = C.loadavg()


def pytest_addoption(parser):
    g = parser.getgroup("epic benchmarks")
    g.addoption("--device", default=os.environ.get("EPIC_TEST_DEVICE", "cpu"), help="cpu or cuda")
    g.addoption("--quick", action="store_true", help="only the quick (CI smoke) set")
    g.addoption("--threads", type=int, default=1, help="torch threads for the kernel suites")
    g.addoption("--model-threads", type=int, default=2, help="torch threads for the model suites")


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: CI smoke subset")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick"):
        keep = [i for i in items if i.get_closest_marker("quick")]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def isa_body() -> str:
    from epic_kernels import _ext

    if not _ext.available():
        return "none (extension not built)"
    try:
        return torch.ops.epic_kernels._cpu_isa()
    except (AttributeError, RuntimeError):
        return "unknown (extension without _cpu_isa)"


def machine_extra(config=None) -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return dict(cpu_model=cpu_model(), isa_body=isa_body(), cpus=os.cpu_count(),
                threads=config.getoption("--threads") if config else torch.get_num_threads(),
                model_threads=config.getoption("--model-threads") if config else None,
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), git=C.git_revision(), torch=torch.__version__,
                device=config.getoption("--device") if config else "cpu", gpu=gpu, loadavg_start=_LOAD0,
                quick=bool(config.getoption("--quick")) if config else False)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["epic"] = machine_extra(config)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["machine_info"].setdefault("epic", {})["loadavg_end"] = C.loadavg()
    for b in output_json["benchmarks"]:      # the statistics stay; every round's raw time (MBs) goes
        b["stats"].pop("data", None)


def pytest_report_header(config):
    m = machine_extra(config)
    return (f"epic benchmarks: {m['cpu_model']}, ISA body {m['isa_body']}, {m['cpus']} cpus, threads "
            f"{m['threads']} (models {m['model_threads']}), OMP_WAIT_POLICY={m['omp_wait_policy']}, "
            f"git {m['git']}, device {m['device']}, load {m['loadavg_start']}")


@pytest.fixture(scope="session")
def device(request):
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda without a CUDA device")
    return dev


@pytest.fixture(scope="session")
def quick(request):
    return bool(request.config.getoption("--quick"))


def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield torch.get_num_threads()
    torch.set_num_threads(old)


@pytest.fixture
def threads(request):
    """Kernel suites: ``--threads`` for the test, restored after."""
    yield from _torch_threads(request.config.getoption("--threads"))


@pytest.fixture
def model_threads(request):
    """Model suites: ``--model-threads`` for the test, restored after."""
    yield from _torch_threads(request.config.getoption("--model-threads"))


@pytest.fixture(scope="session")
def embedded():
    """``(model, tokenizer)``: the embedded SmolLM2 (skips when it is not installed)."""
    try:
        C.setup_torch()
        model, tok, _ = C.load(None)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"embedded model unavailable: {exc}")
    torch.set_grad_enabled(False)
    return model, tok


def sync(device):
    """A callable that waits for the device (CUDA timing), or nothing on CPU."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def tag(benchmark, table: str, case: str, impl: str, **extra):
    benchmark.group = f"{table} {case}"
    benchmark.extra_info.update(table=table, case=case, impl=impl, **extra)
