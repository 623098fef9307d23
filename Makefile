# The two commands (see README): `make demo` runs the main job, `make test` the whole test suite.
# Both create .venv/ and install everything into it first. torch is never upgraded: an importable torch
# of $(PYTHON) is reused (GPU machines: the preinstalled CUDA build), otherwise the CPU wheel
# torch==$(TORCH_CPU_VERSION) is installed, and every later pip call is pinned to that torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_CPU_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.fastot-installed
SOURCES := $(shell find csrc -type f) CMakeLists.txt pyproject.toml

.PHONY: all venv demo test bench microbench clean

all: test

venv: $(STAMP)

$(STAMP): $(SOURCES)
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "fastot: reusing the torch installed for $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PIP) install -q "torch==$(TORCH_CPU_VERSION)"
	@$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" 2>/dev/null > $(VENV)/constraints.txt
	@echo "fastot: pinned $$(cat $(VENV)/constraints.txt)"
	$(PIP) install -q -c $(VENV)/constraints.txt "scikit-build-core>=0.10" "cmake>=3.26" ninja
	$(PIP) install -q -c $(VENV)/constraints.txt --no-build-isolation -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m fastot demo

# The suite must not go green without a part: FASTOT_REQUIRE makes `import fastot` fail when the compiled extension
# or Triton cannot run every op (GPU machines: FASTOT_REQUIRE=cpp,cuda,triton make test).
FASTOT_REQUIRE ?= cpp,triton

test: $(STAMP)
	FASTOT_REQUIRE=$(FASTOT_REQUIRE) HF_HUB_OFFLINE=1 $(PY) -m pytest python_tests -q

clean:
	rm -rf build $(VENV) fastot/_C*.so

# `make bench`: every backend against the peers (POT, geomloss, ott-jax, flash-sinkhorn on GPU), CSV + PNG +
# bench/RESULTS.md; the peers are installed into the venv first (the `bench` extra).
BENCH_STAMP := $(VENV)/.fastot-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c $(VENV)/constraints.txt --no-build-isolation -e ".[test,bench]"
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m bench.run

# The pytest-benchmark micro-suite: each backend alone, median and IQR per row.
microbench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest bench -q --benchmark-enable --benchmark-columns=median,iqr,rounds \
	  --benchmark-group-by=func --benchmark-sort=name
