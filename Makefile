# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH picks the torch build. The default takes the CPU wheel of torch 2.13.0 where pip can find one
# (CI's machines keep it on disk); a GPU user names theirs, e.g.
#   make setup TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-browser lint lab bench clean media

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,cluster]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (samplernn-lab)" >/dev/null
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

# The browser tests (tests/test_browser.py, marker `browser`, left out of `make test`): JupyterLab running
# 03_listen and a batch's index.html, in Debian's chromium driven by playwright (which downloads no browser).
# Installs chromium through apt where it is missing (as root, or through sudo) and the pinned driver
# (the `browser` extra of pyproject.toml) into .venv.
PLAYWRIGHT ?= playwright==1.65.2
SUDO := $(if $(filter 0,$(shell id -u)),,$(shell command -v sudo))
test-browser: setup
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	$(PY) -m pip install --quiet '$(PLAYWRIGHT)'
	$(PY) -m pytest -q -m browser tests/test_browser.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: setup
	$(VENV)/bin/samplernn-lab demo --out runs/demo

lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

bench: setup
	$(PY) benchmarks/bench_sample.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_batch.py

media: setup
	$(PY) media/make_media.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
