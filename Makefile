# Set-up and go: each target creates .venv and installs what it needs on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REAL := $(VENV)/.installed-real

.PHONY: demo test test-slow perf lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(REAL): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,real]'
	touch $(REAL)

demo: $(REAL)
	$(VENV)/bin/seqedit demo

test: $(STAMP)
	$(PY) -m pytest -q -rs --durations=15

test-slow: $(REAL)
	$(PY) -m pytest -q -m slow

perf: $(STAMP)
	$(PY) -m benchmark.perf tpatcher

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
