# deepscan — `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR := build/samples

.PHONY: demo test lint audit lock system-deps services venv clean

# Debian packages the pipeline and the tests call: ffmpeg (video/audio decoding), espeak-ng, flite, festival (speech
# fixtures and spoofs), sox (audio checks), chromium and chromium-driver (browser tests of the web app).
system-deps:
	@bash .ci/system-deps.sh

# invisible-watermark is the reference the watermark decoder is tested against, installed without its
# dependencies (torch, onnxruntime, opencv-python): the test loads only its numpy/OpenCV/PyWavelets module.
$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps invisible-watermark==0.2.0
	@touch $@

venv: system-deps $(BIN)/.installed

services:
	@bash .ci/services.sh

demo: venv
	@mkdir -p build
	@# an S3 server on loopback, a bucket of the samples (and the research clips where ../shared has them),
	@# one scan of it on the embedded default, then the scan and its rows: see .ci/demo.sh
	BIN=$(BIN) bash .ci/demo.sh $(DEMO_DIR)

# Two test processes (pytest-xdist): much of the suite waits on worker processes, servers and time limits
# while the rest computes, so two share 2 cores well (18 min against 30 in one, on one machine:
# benchmarks/README.md). TEST_PROCESSES=0 runs it in one; at most 6 (tests/workers/conftest.py gives each
# its own Redis databases).
TEST_PROCESSES ?= 2
test: venv services
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --max-worker-restart=0 $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The images' pinned, hash-checked dependencies (docker/requirements*.lock), resolved from pyproject.toml for
# the images' Python and platform; run after a change of dependencies. The GPU lock swaps tensorflow-cpu
# for tensorflow[and-cuda].
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
lock: $(BIN)/.installed
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -o docker/requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra gpu --no-emit-package tensorflow-cpu $(LOCK_FLAGS) \
		-o docker/requirements-gpu.lock

# known vulnerabilities in the installed dependencies; skipped, with the reason, when the service is unreachable
audit: venv
	BIN=$(BIN) bash .ci/audit.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
