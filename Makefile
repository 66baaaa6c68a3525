# kd_detect — every public command (DESIGN.md §7). `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help install test

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv/ and install the package with its dev tools (torch pinned here only)

test: $(STAMP) ## run the test suite (what CI runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)
