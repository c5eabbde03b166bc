# One entry point for humans and CI. The virtual environments live outside the clone, keyed on
# the dependency spec, so a new clone reuses them and a change to the dependencies builds a
# fresh one. Two of them: the runtime (requirements.txt) for `make demo` and `make report`, and
# the runtime plus the test extras (peer libraries, notebooks, browser, docs) for `make test`.
PYTHON ?= python3
RUN_HASH := $(shell cat requirements.txt | sha256sum | cut -c1-16)
SPEC_HASH := $(shell cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)
RUN_VENV ?= $(HOME)/.cache/vitx/run-$(RUN_HASH)
VENV ?= $(HOME)/.cache/vitx/venv-$(SPEC_HASH)
RUN_BIN := $(RUN_VENV)/bin
BIN := $(VENV)/bin
RUN_STAMP := $(RUN_VENV)/.deps-installed
STAMP := $(VENV)/.deps-installed

# Real MNIST for tests/test_mnist.py: a folder holding MNIST/raw/*.gz (the official files), here the
# shared read-only copy beside the checkout when there is one; those tests skip without it.
export VITX_DATASETS ?= $(if $(wildcard ../shared/datasets/MNIST/raw),$(abspath ../shared/datasets))

.PHONY: venv run-venv install install-run system-deps demo report test test-fast imports docs bench clean-venv

$(RUN_STAMP): requirements.txt
	$(PYTHON) -m venv $(RUN_VENV)
	$(RUN_BIN)/pip install -q --upgrade pip setuptools wheel
	$(RUN_BIN)/pip install -q -r requirements.txt
	touch $(RUN_STAMP)

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

run-venv: $(RUN_STAMP)
venv: $(STAMP)

# Point a venv at this checkout (editable install: cheap, no dependency work).
# A leftover vitx.egg-info in the checkout would shadow the installed entry points.
install-run: $(RUN_STAMP)
	rm -rf vitx.egg-info
	$(RUN_BIN)/pip install -q --no-deps --no-build-isolation -e .

install: $(STAMP)
	rm -rf vitx.egg-info
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .

demo: install-run
	$(RUN_BIN)/vitx explain examples/fashion_mnist/*.png --method grad_rollout --out out/demo

# The HTML report of the two bundled reference models (README screenshot).
report: install-run
	$(RUN_BIN)/vitx inspect -m fashion_vit -m fashion_deit examples/fashion_mnist --out out/report

# Debian packages the suite needs and pip cannot install (Fashion-MNIST, chromium); a no-op
# when they are there (scripts/system-deps.sh says which tests skip where it cannot install).
system-deps:
	bash scripts/system-deps.sh

test: install system-deps imports docs
	$(BIN)/python -m pytest -q tests

# Import contracts (.importlinter): no import cycle at any depth, layers pointing one way.
# PYTHONPATH=. lets it read reference_models/ as the package it is here.
imports: install
	PYTHONPATH=. $(BIN)/lint-imports --no-cache

# The docs site (Sphinx + MyST, docs/): a strict build, every warning an error; the reference
# (methods, models, CLI, API) is generated from the code. Read it at docs/_build/html/index.html.
docs: install
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html -d docs/_build/doctrees

test-fast: install system-deps
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: install
	$(BIN)/python benchmarks/bench_speed.py

clean-venv:
	rm -rf $(VENV) $(RUN_VENV)
