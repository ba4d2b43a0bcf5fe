# Every target creates .venv and installs the pinned versions (constraints.txt) when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever the dependency declaration, the pins or the C extensions change.
STAMP := $(VENV)/.installed
EXTRAS ?= dev,torch,keras,onednn
WORKDIR ?= workdirs/demo

.PHONY: demo test lint bench clean

# Debian packages: libjpeg headers for the optional partial-JPEG-decode extension, and the
# Fashion-MNIST files. Best effort (needs root and apt): without them the extension is skipped
# (PIL decodes everything) and the Fashion-MNIST tests skip.
APT_PACKAGES := libjpeg62-turbo-dev dataset-fashion-mnist

$(STAMP): pyproject.toml constraints.txt setup.py resnet_jax/data/_jpegcrop.c resnet_jax/data/_resize.c
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "apt-get install $$missing"; \
	    { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } || \
	      echo "warning: apt-get install $$missing failed; continuing without"; \
	  else echo "note: missing Debian packages ($$missing): install them for full speed/tests"; fi; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# The main job on an embedded real dataset (scikit-learn's digits): trains, evaluates, plots.
demo: $(STAMP)
	$(BIN)/python -m resnet_jax.main --config=configs/digits.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check resnet_jax tests configs

bench: $(STAMP)
	$(BIN)/python -m resnet_jax.bench input --json bench/results/input.json

clean:
	rm -rf $(VENV) workdirs .pytest_cache
