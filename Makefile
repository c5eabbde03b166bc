# One entry point for humans and CI. The virtual environment lives outside the clone,
# keyed on the dependency spec (requirements*.txt), so a new clone reuses it and a change to the
# dependencies builds a fresh one.
PYTHON ?= python3
SPEC_HASH := $(shell cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)
VENV ?= $(HOME)/.cache/vitx/venv-$(SPEC_HASH)
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-installed

# Real MNIST for tests/test_mnist.py: a folder holding MNIST/raw/*.gz (the official files), here the
# shared read-only copy beside the checkout when there is one; those tests skip without it.
export VITX_DATASETS ?= $(if $(wildcard ../shared/datasets/MNIST/raw),$(abspath ../shared/datasets))

.PHONY: venv install system-deps demo report test test-fast imports bench clean-venv

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

venv: $(STAMP)

# Point the shared venv at this checkout (editable install: cheap, no dependency work).
# A leftover vitx.egg-info in the checkout would shadow the installed entry points.
install: $(STAMP)
	rm -rf vitx.egg-info
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .

demo: install
	$(BIN)/vitx explain examples/fashion_mnist/*.png --method grad_rollout --out out/demo

# The HTML report of the two bundled reference models (README screenshot).
report: install
	$(BIN)/vitx inspect -m fashion_vit -m fashion_deit examples/fashion_mnist --out out/report

# Debian packages the suite needs and pip cannot install (Fashion-MNIST, chromium); a no-op
# when they are there (scripts/system-deps.sh says which tests skip where it cannot install).
system-deps:
	bash scripts/system-deps.sh

test: install system-deps imports
	$(BIN)/python -m pytest -q tests

# Import contracts (.importlinter): no import cycle at any depth, layers pointing one way.
# PYTHONPATH=. lets it read plugins/ and reference_models/ as the packages they are here.
imports: install
	PYTHONPATH=. $(BIN)/lint-imports --no-cache

test-fast: install system-deps
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	$(BIN)/python benchmarks/bench_speed.py

clean-venv:
	rm -rf $(VENV)
