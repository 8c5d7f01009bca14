# Set-up and everyday commands. `make test` creates .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The PyTorch original, for benchmarks/bench.py's reference columns only.
REF_VENV := .venv-reference

.PHONY: setup demo demo-latent demo-fvd test test-fast lint docs config-docs bench profile fixtures

# PYTHONWARNINGS: setuptools warns at every editable install of a flat layout that a
# folder named like the package shadows it; here that folder is the package.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Train the built-in demo (resumes if interrupted), then sample from its EMA weights.
demo: setup
	$(PY) train.py --config configs/config.yaml --resume_step -1
	$(PY) sample.py --config configs/config.yaml --load-ema-params --batch-size 9 \
	  --sampler heun --steps 20 --output-path results/demo/samples-final

# The latent demo: the small video autoencoder on the digits (configs/vae_digits.yaml),
# then a model on its latents at 64 x 64, 17 frames, then samples (each step resumes).
demo-latent: setup
	$(PY) -m video_diffusion train-vae --config configs/vae_digits.yaml --resume_step -1
	$(PY) train.py --config configs/demo_latent.yaml --resume_step -1
	$(PY) sample.py --config configs/demo_latent.yaml --load-ema-params --batch-size 9 \
	  --sampler euler --steps 20 --output-path results/demo-latent/samples-final

# FVD of the demo model with two samplers against 256 held-out videos (docs/results.md).
demo-fvd: setup
	for run in "heun 20" "euler 50"; do set -- $$run; \
	  $(PY) -m video_diffusion eval --config configs/config.yaml --load-ema-params \
	    --num-videos 256 --batch-size 32 --sampler $$1 --steps $$2 || exit 1; done

# Two workers (pytest-xdist; a test file stays on one worker, so its fixtures are
# built once): XLA compiles one program per core.
TEST_WORKERS ?= 2

# The fast subset first (a quick verdict), then the rest, sharing one XLA
# compilation cache (tests/conftest.py makes one per session otherwise).
test: setup
	@export VIDEO_DIFFUSION_TEST_CACHE="$$(mktemp -d)"; \
	trap 'rm -rf "$$VIDEO_DIFFUSION_TEST_CACHE"' EXIT; \
	set -x; \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow" && \
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m slow

# Everyday subset: everything but the tests marked slow (end-to-end runs, subprocesses).
test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# ruff lint and format check (configured in pyproject.toml).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The docs site (mkdocs.yml, docs/) into site/; a broken link, a missing page or
# a docstring mkdocstrings cannot render fails the build (CI runs it).
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Rewrite the config key table of docs/configuration.md from the schema
# (tests/test_docs.py fails while it is out of date).
config-docs: setup
	$(PY) tools/update_config_docs.py

$(REF_VENV)/.installed:
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install --quiet torch==2.13.0 einops==0.8.2 einops-exts==0.0.4 \
	  rotary-embedding-torch==0.9.1 tqdm==4.70.1 numpy==2.4.6 pillow==13.0.0
	$(REF_VENV)/bin/python -m pip install --quiet --no-deps video-diffusion-pytorch==0.7.0
	touch $@

# Ours against the PyTorch original, alternating in one run (see benchmarks/bench.py);
# the original's best setting needs jemalloc (apt-get install libjemalloc2).
bench: setup $(REF_VENV)/.installed
	$(PY) benchmarks/bench.py

# Per-operation time of the train step (docs/performance.md).
profile: setup
	$(PY) benchmarks/profile_step.py

# Needs torch==2.13.0 and video-diffusion-pytorch==0.7.0 (see tools/make_parity_fixtures.py).
fixtures:
	python tools/make_parity_fixtures.py
	python tools/make_torch_pickle_fixture.py
