# The two commands of the README: `make demo` and `make test`. Both install what they need from
# Debian packages (idempotently, non-interactively) and build what they need.
#
#   make deps    install the Debian packages below (only the missing ones)
#   make build   configure + build everything (Release, Ninja, ccache when present)
#   make test    build and run the whole test suite (ctest)
#   make demo    install and build only what the demo needs (the `moe` command), then train an MoE
#                and a dense transformer on the KJV text and write the report
#   make bench   build and run the CPU benchmark suite (docs/benchmarks.md); BENCH_ARGS to change it
#   make python-install   build the Python package and install it (venv or user site; PYTHON=...)
#
# Variables: BUILD (build folder, default build), JOBS (parallel compile jobs, default 2: each
# LibTorch translation unit takes up to 1.4 GB), CMAKE_ARGS (extra cmake arguments, e.g.
# -DCMAKE_PREFIX_PATH=... to build against another LibTorch), PYTHON_PACKAGE (ON/OFF),
# PYTHON (the interpreter of make python-install).

BUILD ?= build
JOBS ?= 2
CMAKE_ARGS ?=
# The Python package (docs/python.md) needs a Python whose torch is the LibTorch of the build; OFF
# builds without it (e.g. against a LibTorch download that has no Python).
PYTHON_PACKAGE ?= ON

# libopenblas0-pthread: libtorch only *recommends* a BLAS; without OpenBLAS fp32 GEMM falls back to
# the reference BLAS, ~25x slower. It stays the system's default libblas.so.3.
# libopenblas0-openmp: OpenBLAS on the OpenMP pool that ATen uses; the programs load it in place of
# the pthread build, so that one thread pool runs everything (include/moe/runtime.h).
# bible-kjv(-text): the demo's character-level language-modelling corpus (moe::data::prepare_kjv).
# For the tests and examples only: GoogleTest, dataset-fashion-mnist (the examples' data and
# loader tests), chromium (the report page is tested in headless Chromium).
DEMO_PACKAGES := g++ cmake ninja-build ccache libtorch-dev libopenblas0-pthread libopenblas0-openmp zlib1g-dev \
                 nlohmann-json3-dev libcli11-dev libspdlog-dev libtomlplusplus-dev bible-kjv bible-kjv-text
# The Python package (python/, docs/python.md): Debian's torch for /usr/bin/python3 (the same
# LibTorch), pybind11's headers, pytest.
PYTHON_PACKAGES := python3-torch python3-dev pybind11-dev python3-pytest python3-numpy
PACKAGES := $(DEMO_PACKAGES) googletest libgtest-dev libgmock-dev dataset-fashion-mnist chromium \
            libgloo-dev $(PYTHON_PACKAGES)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

BENCH_ARGS ?= --shapes C0,C1,C2,C3,C4,C5 --dtypes fp32 --json $(BUILD)/bench.jsonl

.PHONY: deps deps-demo deps-python configure build test demo bench python-install clean

deps: PACKAGES_NEEDED = $(PACKAGES)
deps-demo: PACKAGES_NEEDED = $(DEMO_PACKAGES)
deps-python: PACKAGES_NEEDED = $(DEMO_PACKAGES) $(PYTHON_PACKAGES)
deps deps-demo deps-python:
	@missing=$$(for p in $(PACKAGES_NEEDED); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "make deps: all packages present"; \
	fi

# Tests, examples and benchmarks are switched on explicitly: `make demo` may have configured the
# same folder without them.
configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=ON \
	  -DMOE_BUILD_EXAMPLES=ON -DMOE_BUILD_BENCHMARKS=ON -DMOE_BUILD_PYTHON=$(PYTHON_PACKAGE) $(CMAKE_ARGS)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j 2

# The demo runs only the `moe` command: a folder that `make build` or `make test` configured keeps
# its other targets (built or not); a fresh one is configured without them.
demo: deps-demo
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF \
	    -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_BENCHMARKS=OFF $(CMAKE_ARGS); \
	fi
	cmake --build $(BUILD) -j $(JOBS) --target moe_cli
	tools/demo/kjv_demo.sh $(BUILD)

bench: build
	$(BUILD)/bench/moe_bench $(BENCH_ARGS)

# The Python package into the active virtual environment, else the user site of $(PYTHON)
# (docs/python.md). The package is the folder $(BUILD)/python/moe: the extension, libmoe and the
# modules.
PYTHON ?= /usr/bin/python3
python-install: deps-python
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_PYTHON=ON \
	  -DMOE_PYTHON=$(PYTHON) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS) --target moe_python
	@site=$$($(PYTHON) -c 'import sys, site, sysconfig; venv = sys.prefix != sys.base_prefix; \
	  print(sysconfig.get_paths()["purelib"] if venv else site.getusersitepackages())'); \
	  mkdir -p "$$site" && rm -rf "$$site/moe" && cp -r $(BUILD)/python/moe "$$site/moe" && \
	  echo "moe installed in $$site/moe" && cd / && $(PYTHON) -c 'import moe; print("import moe: ok")'

clean:
	rm -rf $(BUILD)
