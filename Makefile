# Two commands a newcomer needs (see README.md):
#   make demo   create .venv, install, run the main job on embedded defaults
#   make test   create .venv if needed, install with test extras, run the suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install browser bench-ingest bench-train bench-sample clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned: any other spec pulls several GB of CUDA wheels on these machines.
# .installed-all: the product (model, tracking, maps); .installed-dev: that plus the test tools.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$*]"
	touch $@

.PRECIOUS: $(VENV)/.installed-%

install: $(VENV)/.installed-all

demo: $(VENV)/.installed-all
	$(BIN)/stforecast demo

# The risk-map test drives a real headless browser: Debian's chromium and chromedriver (Playwright's own browser
# download does not work on these machines). Installed once if missing (needs root or sudo and the apt mirrors).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }; }

# one pytest process per core, at most 4 (pytest-xdist; tests/conftest.py gives each one compute thread)
test: $(VENV)/.installed-dev browser
	SE_OFFLINE=true $(BIN)/python -m pytest -q -n auto --maxprocesses 4

# Benchmarks need the product extras: a .venv made by `make test` (dev = all + test tools) already has them. Each
# benchmark ingests the catalog it reads (data/processed/dstpp_japan) on its first run.
BENCH_ENV := $(if $(wildcard $(VENV)/.installed-dev),$(VENV)/.installed-dev,$(VENV)/.installed-all)

bench-ingest: $(BENCH_ENV)
	$(BIN)/python -m benchmarks.ingest

bench-train: $(BENCH_ENV)
	$(BIN)/python -m benchmarks.train_speed

bench-sample: $(BENCH_ENV)
	$(BIN)/python -m benchmarks.sample_speed

clean:
	rm -rf $(VENV) data/processed data/raw data/cache runs mlruns
