# The two commands of the README, and the steps they are made of.
#   make run    set up .venv if needed, then serve the fal-compatible API on 127.0.0.1:8000
#   make test   set up .venv if needed, then lint, type-check and run every test
#   make test-fast   the fast tier alone: the tests that start no process and run no model
#                    (pytest -m "not slow and not process and not model"), for the edit-test
#                    loop; make test stays the full gate. tests/pipeline is not even collected:
#                    every test there is marked model, and its modules import torch (collection
#                    took 11 s of CPU with them, 5 s without)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= A rocket flying that is about to take off
PRESET ?=
OUTPUT ?= rocket.mp4
ARGS ?=
GENERATE_ARGS ?=
# The tiny preset is for smoke runs on a CPU: a small size and few steps keep it to seconds.
ifeq ($(PRESET),tiny)
  GENERATE_ARGS += --video-size 128x64 --steps 8
endif

.PHONY: install run generate test test-fast lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install scripts/install-torch
	PYTHON=$(PYTHON) ./scripts/install $(VENV) dev
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fastsvd serve $(if $(PRESET),--preset $(PRESET)) $(ARGS)

generate: $(STAMP)
	$(BIN)/fastsvd generate "$(PROMPT)" -o $(OUTPUT) $(if $(PRESET),--preset $(PRESET)) $(GENERATE_ARGS) $(ARGS)

test: lint typecheck pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not process and not model" --ignore=tests/pipeline

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	./scripts/install-browser
	./scripts/install-nftables
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
