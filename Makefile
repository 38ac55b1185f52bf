# deepscan — `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR := build/samples

.PHONY: demo test lint audit system-deps services venv clean

# Debian packages the pipeline and the tests call: ffmpeg (video/audio decoding), espeak-ng, flite, festival (speech
# fixtures and spoofs), sox (audio checks).
system-deps:
	@bash .ci/system-deps.sh

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: system-deps $(BIN)/.installed

services:
	@bash .ci/services.sh

demo: venv
	@mkdir -p build
	@# an S3 server on loopback, a bucket of the samples (and the research clips where ../shared has them),
	@# one scan of it on the embedded default, then the scan and its rows: see .ci/demo.sh
	BIN=$(BIN) bash .ci/demo.sh $(DEMO_DIR)

test: venv services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# known vulnerabilities in the installed dependencies; skipped, with the reason, when the service is unreachable
audit: venv
	BIN=$(BIN) bash .ci/audit.sh

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
