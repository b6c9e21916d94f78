# edgeflower: `make run` (install, then `flwr run .` on the default config) and `make test` (install, then all tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeflower-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# Flower must never install packages or phone home at run time; its home stays inside the project.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_HOME := $(CURDIR)/.flwr
export EDGEFLOWER_RUN_ROOT := $(CURDIR)
export PATH := $(CURDIR)/$(BIN):$(PATH)

NUM_SUPERNODES ?= 4
# RUN_CONFIG reaches `flwr run --run-config` through the environment, so its quotes survive exactly as written
# (`make run RUN_CONFIG='mode="split"'` and `make run RUN_CONFIG="model=\"resnet18\""` both work).
RUN_CONFIG ?=
export RUN_CONFIG

.PHONY: install data run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch exactly as the machine provides it (from local disk; any other request downloads gigabytes)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  echo "Fashion-MNIST missing: installing Debian's dataset-fashion-mnist"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  if command -v apt-get >/dev/null && ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist); then :; \
	  else echo "error: could not install dataset-fashion-mnist. Install it (apt-get install dataset-fashion-mnist)"; \
	       echo "       or set EDGEFLOWER_DATA to a directory holding the four Fashion-MNIST *-ubyte.gz files."; \
	       [ -n "$$EDGEFLOWER_DATA" ] || exit 1; fi; \
	fi

run: install data
	$(BIN)/python -m edgeflower.flwrctl run-sim . --home $(FLWR_HOME) --num-supernodes $(NUM_SUPERNODES) \
	  --stream --run-config "$$RUN_CONFIG"

test: install data
	$(BIN)/python -m pytest -q -ra --durations=15 -n 3 --dist loadgroup --no-loadscope-reorder

lint: install
	$(BIN)/ruff check edgeflower tests benchmarks
	$(BIN)/ruff format --check edgeflower tests benchmarks

bench: install data
	@for b in $$(ls benchmarks/*.py | xargs -n1 basename | sed 's/\.py$$//' | grep -v -e '^common$$' -e '^_'); do \
	  echo "== benchmark $$b"; $(BIN)/python -m benchmarks.$$b --out results || exit 1; done

clean:
	rm -rf .flwr runs .pytest_cache results/*.quick.*
