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
TEST_JOBS ?= 2

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
	@echo "  variables: TEST_JOBS=2 EXP=name ARGS=\"--key=value ...\" RESUME=1 DATASET=name RAW=dir OUT=file SEEDS=5 ABLATION_SEEDS=3 COUNT=20 QUICK=1 DEVICE=cuda"

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv/ and install the package with its dev tools (torch pinned here only)

lint: $(STAMP) ## ruff + the import contracts of docs/architecture.md (lint-imports)
	$(VENV)/bin/ruff check src tests benchmarks data_prep experiments
	$(VENV)/bin/lint-imports

# TEST_JOBS pytest-xdist workers (default 2, the cores CI has; 0 runs the suite in this process)
test: $(STAMP) lint ## lint, then run the test suite (what CI runs)
	$(PY) -m pytest -m "not slow" $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal,) $(PYTEST_ARGS)

# ---------------------------------------------------------------- training
# `make train` (no EXP): RGB-only baseline and teacher when missing or not matching their
# experiment and data, then the KD student, then the results table. `make train EXP=x`: x's
# data and teachers when missing, teachers retrained when their run does not match (another
# config or data file: kd_detect.lab.runner says why in one line), their caches rebuilt when
# computed from another data file than x reads, then x.
RESUME_ARG = $(if $(RESUME),--ckpt_path=runs/$(EXP)/last.ckpt,)

train: $(STAMP) ## fit + test an experiment (EXP=name, default: the synthetic end-to-end pipeline)
ifeq ($(strip $(EXP)),)
	@$(PY) -m kd_detect.lab.runner current synthetic_rgb || $(MAKE) --no-print-directory train EXP=synthetic_rgb
	@$(MAKE) --no-print-directory train EXP=synthetic_kd
	@echo; echo "Synthetic benchmark (test split):"
	@$(PY) -m kd_detect.lab.runner table synthetic_rgb synthetic_teacher synthetic_kd
	@$(KD) plot runs/synthetic_kd
else
	@deps="$$($(PY) -m kd_detect.lab.runner deps $(EXP) $(ARGS))" || exit 1; \
	  data="$$($(PY) -m kd_detect.lab.runner data $(EXP) $(ARGS))" || exit 1; \
	  if [ -n "$$deps" ]; then $(MAKE) --no-print-directory $$deps CACHE_DATA="$$data" || exit 1; fi; \
	  stale="$$($(PY) -m kd_detect.lab.runner stale $(EXP) $(ARGS))" || exit 1; \
	  for t in $$stale; do $(MAKE) --no-print-directory train EXP=$$t CACHE_DATA= \
	    ARGS="$$($(PY) -m kd_detect.lab.runner teacher-args $(ARGS))" || exit 1; done; \
	  if [ -n "$$stale" ]; then $(MAKE) --no-print-directory $$deps CACHE_DATA="$$data" || exit 1; fi; \
	  caches="$$($(PY) -m kd_detect.lab.runner stale-caches $(EXP) $(ARGS))" || exit 1; \
	  for c in $$caches; do $(MAKE) --no-print-directory -W "$$(dirname $$c)/best.ckpt" $$c CACHE_DATA="$$data" || exit 1; done
	$(KD) fit --config experiments/$(EXP).yaml --trainer.default_root_dir=runs/$(EXP) \
	  --test_after_fit=true $(RESUME_ARG) $(ARGS)
endif

# A teacher checkpoint is made by training its experiment, when missing (`stale` above
# retrains one that does not match). A teacher cache holds the teacher's outputs on the
# videos of the file the student reads (CACHE_DATA, set by `train`), which may be another
# file than the teacher's experiment names; made on its own, on the teacher's file.
CACHE_DATA ?=
runs/%/best.ckpt:
	@$(MAKE) --no-print-directory train EXP=$* CACHE_DATA= ARGS="$$($(PY) -m kd_detect.lab.runner teacher-args $(ARGS))"
runs/%/teacher_cache.h5: runs/%/best.ckpt
	$(KD) cache-teacher --ckpt $< --out $@ \
	  --data "$(if $(CACHE_DATA),$(CACHE_DATA),$$($(PY) -m kd_detect.lab.runner data $* $(ARGS)))"

# ------------------------------------------------------------------- data
data/synthetic.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@

# make compare's RGB ceiling: the same world and held-out videos, 4x the training videos
data/synthetic_ceiling.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --extra-training 432

# make compare's semi-supervised rows: the ceiling's 432 extra videos, bit for bit, without labels
data/synthetic_unlabelled.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --extra-training 432 --extra-subset unlabelled

# benchmark v2 seen from 3 viewpoints (RGB's class evidence not linear; docs/results.md, "Viewpoints"),
# with its ceiling and unlabelled files: make compare ... --data.path=data/synthetic_views.h5
data/synthetic_views.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --preset views

data/synthetic_views_ceiling.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --preset views --extra-training 432

data/synthetic_views_unlabelled.h5: | $(STAMP)
	$(PY) -m data_prep.synthetic --out $@ --preset views --extra-training 432 --extra-subset unlabelled

# The converters `make data DATASET=name` can run: data_prep/<name>.py (not the private helpers,
# the synthetic file check, or add_unlabelled, which combines two feature files).
CONVERTERS := $(sort $(filter-out _% synthetic_check add_unlabelled,$(basename $(notdir $(wildcard data_prep/*.py)))))

# A missing data file: one line naming the command that makes it (a converter of that name,
# the generator for a synthetic variant, else the generic converter).
data/%.h5:
	@if [ -n "$(filter $*,$(CONVERTERS))" ]; then \
	   echo "error: $@ is missing; convert the public release with: make data DATASET=$* RAW=/path/to/$* (README, Datasets, says what to download)" >&2; \
	 elif [ -n "$(filter synthetic%,$*)" ]; then \
	   echo "error: $@ is missing; a synthetic variant is written by the generator: make data DATASET=synthetic OUT=$@ ARGS=\"--seed 1 ...\" (options: $(PY) -m data_prep.synthetic --help)" >&2; \
	 else \
	   echo "error: $@ is missing and no converter is named '$*' (converters: $(CONVERTERS)); convert your own features with: make data DATASET=generic OUT=$@ RAW=/path/to/features ARGS=\"--annotations FILE ...\" (README, Datasets)" >&2; \
	 fi; exit 1

OUT ?= data/$(DATASET).h5
data: $(STAMP) ## convert a dataset into OUT=data/<DATASET>.h5 (RAW=dir; synthetic needs none)
	@test -n "$(filter $(DATASET),$(CONVERTERS))" || { echo "error: no converter named '$(DATASET)': DATASET is one of $(CONVERTERS) (your own features: DATASET=generic)" >&2; exit 1; }
ifeq ($(DATASET),synthetic)
	$(PY) -m data_prep.synthetic --out $(OUT) $(ARGS)
else
	@test -n "$(RAW)$(filter generic,$(DATASET))" || { echo "error: give RAW=/path/to/the/$(DATASET)/release (see README, Datasets)" >&2; exit 1; }
	$(PY) -m data_prep.$(DATASET) $(if $(RAW),--raw "$(RAW)",) --out $(OUT) $(ARGS)
endif

JOBS ?= 2
compare: $(STAMP) data/synthetic.h5 data/synthetic_ceiling.h5 data/synthetic_unlabelled.h5 ## RGB, teacher, KD, RGB ceiling, probe over SEEDS seeds (+ ablations, baselines over ABLATION_SEEDS) -> runs/compare/report.md
	$(PY) -m kd_detect.lab.compare --seeds $(SEEDS) --ablation-seeds $(ABLATION_SEEDS) --jobs $(JOBS) $(if $(ARGS),-- $(ARGS),)

sweep: $(STAMP) ## wandb sweep over loss weights (EXP=name, COUNT=20; needs wandb login)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m kd_detect.lab.sweep $(or $(EXP),synthetic_kd) --count $(COUNT)

bench: $(STAMP) ## performance report (runs/bench/report.md, .json); QUICK=1 short, DEVICE=cuda on a GPU
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) benchmarks/bench.py $(if $(QUICK),--quick,) $(if $(DEVICE),--device $(DEVICE),)

clean-runs: ## delete runs/ (checkpoints, metrics, reports)
	rm -rf runs
