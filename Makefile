# Set up from nothing and run things. Every target is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_DIR ?= data
# On machines without internet the datasets come from the local mirror beside the project.
SHARED_DATASETS := ../shared/datasets
MIRROR := $(if $(wildcard $(SHARED_DATASETS)/trec/train.csv),--mirror $(SHARED_DATASETS),)

.PHONY: setup data demo test bench clean

setup: $(STAMP)

# torch first, pinned: anything that lets pip choose another torch downloads a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

data: setup $(DATA_DIR)/trec/train.csv

$(DATA_DIR)/trec/train.csv:
	$(BIN)/python launch.py data fetch trec --data-dir $(DATA_DIR) $(MIRROR)

demo: data
	$(BIN)/python launch.py run --config configs/trec_tiny.yaml --data-dir $(DATA_DIR) --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .cache mlruns mlartifacts mlflow.db
