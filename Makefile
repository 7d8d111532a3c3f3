# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# TORCH picks the torch build. The default takes the CPU wheel of torch 2.13.0 where pip can find one
# (CI's machines keep it on disk); a GPU user names theirs, e.g.
#   make setup TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lab bench clean media

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
