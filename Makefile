# make train ARGS="--model cnn"   set up .venv, then accelerate launch train.py $(ARGS)
# make test                       set up .venv, lint, and run the test suite
# make compare ARGS="..."         train both models with the same settings, then the report
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test lint compare system-deps cluster

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-ci.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

train: setup
	$(BIN)/accelerate launch --quiet train.py $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

compare: setup
	PATH=$(abspath $(BIN)):$$PATH bash slurm/compare.sh $(ARGS)

# Debian packages the Fashion-MNIST and SLURM tests use (run as root).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist slurm-wlm munge

# A one-node SLURM cluster on this machine (run as root).
cluster: system-deps
	bash .ci/slurm-cluster.sh
