# Two commands a newcomer needs (see README.md):
#   make demo   create .venv, install, run the main job on embedded defaults
#   make test   create .venv if needed, install with test extras, run the suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test install bench-ingest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned: any other spec pulls several GB of CUDA wheels on these machines.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/stforecast demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-ingest: $(STAMP)
	$(BIN)/python -m benchmarks.ingest

clean:
	rm -rf $(VENV) data/processed data/raw data/cache
