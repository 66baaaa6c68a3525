# kd_detect — every public command (DESIGN.md §7). `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
KD      := $(VENV)/bin/kd-detect
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

EXP     ?=
ARGS    ?=
RESUME  ?=
DATASET ?= synthetic
RAW     ?=
SEEDS   ?= 5
ABLATION_SEEDS ?= 3
COUNT   ?= 20
QUICK   ?=
DEVICE  ?=

export WANDB_SILENT ?= true

.PHONY: help install lint test train data compare sweep bench clean-runs

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: EXP=name ARGS=\"--key=value ...\" RESUME=1 DATASET=name RAW=dir SEEDS=5 ABLATION_SEEDS=3 COUNT=20 QUICK=1 DEVICE=cuda"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv/ and install the package with its dev tools (torch pinned here only)

lint: $(STAMP) ## ruff + the import contracts of docs/architecture.md (lint-imports)
	$(VENV)/bin/ruff check src tests benchmarks data_prep
	$(VENV)/bin/lint-imports

test: $(STAMP) lint ## lint, then run the test suite (what CI runs)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ---------------------------------------------------------------- training
# `make train` (no EXP): RGB-only baseline and teacher when missing, then the KD student,
# then the results table. `make train EXP=x`: x's data and teachers when missing, then x.
RESUME_ARG = $(if $(RESUME),--ckpt_path=runs/$(EXP)/last.ckpt,)

train: $(STAMP) ## fit + test an experiment (EXP=name, default: the synthetic end-to-end pipeline)
ifeq ($(strip $(EXP)),)
	@$(MAKE) --no-print-directory runs/synthetic_rgb/metrics.json
	@$(MAKE) --no-print-directory train EXP=synthetic_kd
	@echo; echo "Synthetic benchmark (test split):"
	@$(PY) -m kd_detect.lab.runner table synthetic_rgb synthetic_teacher synthetic_kd
	@$(KD) plot runs/synthetic_kd
else
	@deps="$$($(PY) -m kd_detect.lab.runner deps $(EXP) $(ARGS))" || exit 1; \
	  if [ -n "$$deps" ]; then $(MAKE) --no-print-directory $$deps || exit 1; fi
	$(KD) fit --config experiments/$(EXP).yaml --trainer.default_root_dir=runs/$(EXP) \
	  --test_after_fit=true $(RESUME_ARG) $(ARGS)
endif

# A teacher checkpoint / a finished run is made by training its experiment, only when missing.
runs/%/best.ckpt:
	@$(MAKE) --no-print-directory train EXP=$* ARGS="$$($(PY) -m kd_detect.lab.runner teacher-args $(ARGS))"
runs/%/teacher_cache.h5: runs/%/best.ckpt
	$(KD) cache-teacher --ckpt $< --out $@ \
	  --data "$$($(PY) -m kd_detect.lab.runner deps $* $(ARGS) | cut -d' ' -f1)"
runs/%/metrics.json:
	@$(MAKE) --no-print-directory train EXP=$*

# ------------------------------------------------------------------- data
data/synthetic.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@

# make compare's RGB ceiling: the same world and held-out videos, 4x the training videos
data/synthetic_ceiling.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --extra-training 432

data/%.h5:
	@echo "error: $@ is missing. Create it from the public release with:" >&2; \
	 echo "    make data DATASET=$* RAW=/path/to/$*" >&2; \
	 echo "(README, section Datasets, says what to download and where to put it)" >&2; exit 1

data: $(STAMP) ## convert a dataset into data/<DATASET>.h5 (RAW=dir; synthetic needs none)
ifeq ($(DATASET),synthetic)
	$(PY) -m data_prep.synthetic --out data/synthetic.h5 $(ARGS)
else
	@test -n "$(RAW)" || { echo "error: give RAW=/path/to/the/$(DATASET)/release (see README, Datasets)" >&2; exit 1; }
	$(PY) -m data_prep.$(DATASET) --raw "$(RAW)" --out data/$(DATASET).h5 $(ARGS)
endif

JOBS ?= 2
compare: $(STAMP) data/synthetic.h5 data/synthetic_ceiling.h5 ## RGB, teacher, KD, RGB ceiling, probe over SEEDS seeds (+ ablations, baselines over ABLATION_SEEDS) -> runs/compare/report.md
	$(PY) -m kd_detect.lab.compare --seeds $(SEEDS) --ablation-seeds $(ABLATION_SEEDS) --jobs $(JOBS) $(if $(ARGS),-- $(ARGS),)

sweep: $(STAMP) ## wandb sweep over loss weights (EXP=name, COUNT=20; needs wandb login)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m kd_detect.lab.sweep $(or $(EXP),synthetic_kd) --count $(COUNT)

bench: $(STAMP) ## performance report (runs/bench/report.md, .json); QUICK=1 short, DEVICE=cuda on a GPU
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/bench.py $(if $(QUICK),--quick,) $(if $(DEVICE),--device $(DEVICE),)

clean-runs: ## delete runs/ (checkpoints, metrics, reports)
	rm -rf runs
