# `make test`: create .venv unless a virtual environment is active, install the project with
# its test extras (torch pinned to 2.13.0 when no torch is installed: a CPU build here), run
# the test suite. `make demo`: the project's main job on its default input.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

ifdef VIRTUAL_ENV
PY := python
else
PY := $(VENV)/bin/python
endif

.PHONY: install test demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PY) -m pip install --quiet setuptools wheel
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_PIN)"
	# No build isolation: setup.py must see the installed torch to decide on the CUDA build.
	$(PY) -m pip install --quiet --no-build-isolation -e ".[test]"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Trains the small digits model (scikit-learn's bundled 8x8 digits, no download): 96.7%
# validation top-1 after 12 epochs, about a minute on 2 CPU cores (README, "Training");
# writes summary.csv, curves.png and checkpoints under output/train/.
demo: install
	$(PY) -m spectformer.train --model spectformer_digits --data digits

bench: install
	$(PY) -m benchmarks.spectral_gate --plot

clean:
	rm -rf build *.egg-info .pytest_cache .hypothesis
