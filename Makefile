# icvq: `make demo` runs the whole loop here; `make test` runs lint, types and the test suite.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: deps demo test lint types unit bench test-arm64 clean

deps:
	@PYTHON=$(PYTHON) tools/deps/install.sh

demo: deps
	$(PYTHON) -m tools.demo

lint: deps
	$(PYTHON) -m ruff check agent tools tests

types: deps
	$(PYTHON) -m mypy

unit: deps
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test: lint types unit

bench: deps
	$(PYTHON) -m tools.bench

# The agent end to end on an emulated arm64 Debian userland (tools/arm64/README.md): ~55 s cold, ~20 s warm.
test-arm64: deps
	$(PYTHON) -m tools.arm64 test

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info .deps-stamp
