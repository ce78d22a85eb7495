# Two commands: `make run` (clone -> results) and `make test`. Everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PROFILE ?= workflow/profiles/local
PYTEST_ARGS ?=

.PHONY: help setup data run test test-fast repro dag install-profile mlflow-ui lock clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup:  ## create .venv and install everything (idempotent; ~15 min the first time, mmcv compiles)
	@bash scripts/setup_env.sh

data: setup  ## dvc pull the sample data into data/
	@bash scripts/pull_data.sh

run: setup data  ## run the whole pipeline on the sample with the local Snakemake profile
	snakemake --profile $(PROFILE)
	@# record what Snakemake built in dvc.lock, so that `dvc repro` finds nothing to do; --no-relink leaves the
	@# outputs as Snakemake wrote them (a relink re-copies them from the cache with new mtimes, after which
	@# `snakemake -n` wanted to rerun jobs and a `snakemake --touch` pass, ~15 s, had to follow)
	dvc commit -f -q --no-relink
	@echo
	@echo "Results: $(CURDIR)/results/   (report: results/report/index.html when the report stage is built)"
	@echo "MLflow:  $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}   ->  make mlflow-ui"

test: setup data  ## run the test suite (real sample data; slow tests included)
	python -m pytest $(PYTEST_ARGS)

test-fast: setup data  ## the test suite without slow-marked tests
	python -m pytest -m "not slow" $(PYTEST_ARGS)

repro: setup data  ## the same pipeline through DVC
	dvc repro

dag:  ## draw the rule graph to results/dag.svg
	@mkdir -p results && snakemake --rulegraph | dot -Tsvg > results/dag.svg && echo results/dag.svg

install-profile:  ## link the SLURM profile so that `snakemake --profile slurm` works
	@d="$${XDG_CONFIG_HOME:-$(HOME)/.config}/snakemake"; mkdir -p "$$d"; \
	if [ -e "$$d/slurm" ] && [ ! -L "$$d/slurm" ]; then echo "$$d/slurm exists and is not a link; move it away" >&2; exit 1; fi; \
	ln -sfn $(CURDIR)/workflow/profiles/slurm "$$d/slurm" && echo "linked $$d/slurm -> workflow/profiles/slurm"

mlflow-ui:  ## browse the runs (http://127.0.0.1:5000)
	mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} --host 127.0.0.1 --port 5000

lock:  ## rewrite requirements/constraints.txt from .venv and regenerate envs/
	@{ head -4 requirements/constraints.txt; pip freeze --exclude-editable | grep -v -E '^(mmcv|longtail)=='; } > requirements/constraints.txt.new
	@mv requirements/constraints.txt.new requirements/constraints.txt && python scripts/make_envs.py && echo "lock updated"

clean:  ## remove results and the MLflow store (keeps .venv and data)
	rm -rf results mlflow.db mlartifacts .snakemake
