# Set-up and everyday commands. `make test` creates .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test bench fixtures

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_model.py

# Needs torch==2.13.0 and video-diffusion-pytorch==0.7.0 (see tools/make_parity_fixtures.py).
fixtures:
	python tools/make_parity_fixtures.py
	python tools/make_torch_pickle_fixture.py
