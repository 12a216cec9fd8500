# make train ARGS="--model cnn"   set up .venv, then python train.py $(ARGS); its exit code
# make train PROCESSES=4 ARGS=... the same with `accelerate launch` over 4 GPUs of this machine
# make test                       set up .venv, lint, and run the test suite
# make test-fast                  the tests that start no process, for the inner loop (about 30 s)
# make setup TORCH=cu126          the environment of locks/cu126.txt, once make lock made it
# make lock [TORCH=...]           re-resolve locks/$(TORCH).txt from pyproject.toml
# make compare ARGS="..."         train both models with the same settings, then the report
# make gpu-check OUT=dir [DRY=1]  every GPU path in timed stages (bench/gpu_check.py); DRY=1: CPU
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# The torch build: cu130 (PyPI's torch, NVIDIA driver >= 580), cu128 or cu126 (driver >= 525),
# cpu. Each has its own lock, locks/$(TORCH).txt; docs/install.md says which driver needs which.
TORCH ?= cu130
LOCK = locks/$(TORCH).txt
TORCH_INDEX = $(if $(filter cu130,$(TORCH)),,--extra-index-url https://download.pytorch.org/whl/$(TORCH))
# uv resolves the locks; it is locked itself (locks/uv.txt) and lives outside the project's venv.
UV_VENV = .venv-lock
UV = $(UV_VENV)/bin/uv
LOCK_ARGS ?=
PROCESSES ?= 1
# One process needs no launcher: train.py's exit code (0, 1, 2, 75) reaches the shell as is.
# More: every setting Accelerate would otherwise warn about is given (train.py's
# --mixed-precision still wins); its exit code is then 0 or 1.
ifeq ($(PROCESSES),1)
LAUNCH = $(BIN)/python
else
LAUNCH = $(BIN)/accelerate launch --multi_gpu --num_processes $(PROCESSES) --num_machines 1 \
	--mixed_precision no --dynamo_backend no
endif

.PHONY: setup train test test-fast lint lock compare system-deps cluster gpu-check

setup: $(VENV)/.project-$(TORCH)

# A new lock (or another TORCH) makes a new venv, so nothing outside the lock stays installed.
$(VENV)/.installed-$(TORCH): $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on --require-hashes --no-deps $(TORCH_INDEX) -r $(LOCK)
	echo $(LOCK) > $(VENV)/lock-file
	touch $@

# The project itself, editable; an edit of pyproject.toml reinstalls it, not the environment.
$(VENV)/.project-$(TORCH): $(VENV)/.installed-$(TORCH) pyproject.toml
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# A build without a lock is not resolved on the fly: `make setup` installs only what a lock names,
# so it stops before .venv is touched and says how to make one.
LOCKED = $(filter-out uv,$(basename $(notdir $(wildcard locks/*.txt))))
NO_LOCK = error: there is no lock for TORCH=$* ($@), and make setup installs only what a lock \
	names (exact versions, sha256-checked); nothing was installed or removed. Resolve it with \
	`make lock TORCH=$*` on a machine that reaches \
	$(if $(filter cu130,$*),PyPI,download.pytorch.org/whl/$*), check it with \
	`make test TORCH=$*` and commit $@$(if $(LOCKED),; or use a lock that exists: \
	$(addprefix TORCH=,$(LOCKED))). $(if $(filter cu130,$(filter-out $*,$(LOCKED))),Without \
	a GPU the default TORCH=cu130 trains on the CPU too (its CUDA libraries, about 5.9 GB, \
	unused). )docs/install.md lists the builds and the drivers they need.
locks/%.txt:
	@echo '$(NO_LOCK)' >&2
	@exit 2

# Keeps the versions already in the lock unless pyproject.toml rules them out; to move to the
# newest releases: make lock LOCK_ARGS=--upgrade
lock: $(UV)
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes $(if $(filter cu130,$(TORCH)),,--torch-backend $(TORCH)) \
		--custom-compile-command "make lock TORCH=$(TORCH)" --quiet $(LOCK_ARGS) -o $(LOCK)

$(UV): locks/uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q --require-hashes --no-deps -r locks/uv.txt
	touch $@

train: setup
	$(LAUNCH) train.py $(ARGS)

# shellcheck is a Debian package (make system-deps); -x follows the scripts' `source` lines.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	shellcheck -x slurm/*.sh slurm/submit .ci/*.sh .ci/run

# The suite in TEST_WORKERS pytest-xdist workers, each test file in one worker (its module
# fixtures built once); most tests wait on a one-thread train.py, so two workers fill two cores.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The inner loop: every test that starts no process (tests/conftest.py marks each one that does
# slow, and under CIFAR_FAST_TIER=1 one that starts a process all the same fails), with fewer
# Hypothesis examples; `make test` and CI run everything.
test-fast: setup
	CIFAR_FAST_TIER=1 CIFAR_HYPOTHESIS_EXAMPLES=8 $(BIN)/python -m pytest -q -p no:cacheprovider \
		-m "not slow and not slurm" $(PYTEST_ARGS)

compare: setup
	PATH=$(abspath $(BIN)):$$PATH bash slurm/compare.sh $(ARGS)

# The GPU check runs from the checkout with the python at hand, installing nothing: .venv's where
# there is one, else $(PYTHON) (a GPU machine's own torch).
OUT ?= gpu-check
DRY ?=
CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(CHECK_PYTHON) bench/gpu_check.py --out $(OUT) $(if $(filter 1,$(DRY)),--dry)

# Debian packages the Fashion-MNIST and SLURM tests and the shell lint use (run as root).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist slurm-wlm munge \
		shellcheck

# A one-node SLURM cluster on this machine (run as root).
cluster: system-deps
	bash .ci/slurm-cluster.sh
