# Every target creates .venv and installs the pinned versions (constraints.txt) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever the dependency declaration or the pins change.
STAMP := $(VENV)/.installed
EXTRAS ?= dev,torch
FASHION_MNIST := /usr/share/datasets/fashion-mnist
WORKDIR ?= workdirs/demo

.PHONY: demo test lint bench fashion-mnist clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# The main job on an embedded real dataset (scikit-learn's digits): trains, evaluates, plots.
demo: $(STAMP)
	$(BIN)/python -m resnet_jax.main --config=configs/digits.py --workdir=$(WORKDIR)

# Debian's Fashion-MNIST files (real data, offline). Best effort: tests that need them skip.
fashion-mnist:
	@test -d $(FASHION_MNIST) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ; } || \
	  echo "note: $(FASHION_MNIST) missing (apt-get install dataset-fashion-mnist); its tests skip"

test: $(STAMP) fashion-mnist
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check resnet_jax tests configs

bench: $(STAMP)
	$(BIN)/python -m resnet_jax.bench input --json bench/results/input.json

clean:
	rm -rf $(VENV) workdirs .pytest_cache
