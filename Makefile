# deepscan — `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_VIDEOS := $(wildcard ../shared/data/videos/*.mp4)
DEMO_DIR := build/samples

.PHONY: demo test lint system-deps services venv clean

# Debian packages the pipeline and the tests call: ffmpeg (video/audio decoding), espeak-ng, flite, festival (speech
# fixtures and spoofs), sox (audio checks), chromium and chromium-driver (browser tests of the web app).
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
	$(BIN)/deepscan samples $(DEMO_DIR) > /dev/null
	@echo "Analysing $(DEMO_DIR) $(if $(SHARED_VIDEOS),and ../shared/data/videos,) on the embedded default (SQLite: deepscan.db)"
	@# exit status 1 means some inputs had no verdict: the samples include broken files on purpose
	$(BIN)/deepscan detect $(DEMO_DIR) $(SHARED_VIDEOS) --format table || [ $$? -eq 1 ]

test: venv services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
