"""Shared fixtures. The real catalogs are read in place from the data root (../shared/data beside the repo)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from stforecast.config import load_settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

#: where the suite writes what commands would put in the checkout (processed catalogs, baseline fits, MLflow runs,
#: reports, screenshots): a temporary root, so `make test` leaves the checkout as it found it and a later
#: `make demo` is a first run. Set before any test (subprocesses inherit it).
TEST_ROOT = Path(tempfile.mkdtemp(prefix="stforecast-tests-"))
for _key, _value in {"STFORECAST_PROCESSED_DIR": TEST_ROOT / "processed",
                     "STFORECAST_BASELINE_CACHE": TEST_ROOT / "baselines",
                     "MLFLOW_TRACKING_URI": f"sqlite:///{TEST_ROOT / 'mlruns' / 'mlflow.db'}",
                     "STFORECAST_ARTIFACT_ROOT": TEST_ROOT / "mlruns" / "artifacts"}.items():
    os.environ[_key] = str(_value)
#: screenshots and other files a person may want to look at after a run
ARTIFACTS = TEST_ROOT / "test-artifacts"


@pytest.fixture(scope="session", autouse=True)
def outside_the_checkout():
    """Run every test from a working folder under :data:`TEST_ROOT`: commands' default outputs (``reports/...``,
    ``runs/...``) land there, not in the checkout."""
    work = TEST_ROOT / "work"
    work.mkdir(parents=True, exist_ok=True)
    before = os.getcwd()
    os.chdir(work)
    yield
    os.chdir(before)
    print(f"\ntest outputs (screenshots in test-artifacts/): {TEST_ROOT}")


@pytest.fixture(autouse=True)
def restored_sys_path():
    """Loading an MLflow pyfunc model puts its shipped code folder on ``sys.path``; processes started later (Dask
    workers) would import stforecast from that copy, whose repository files are missing. Each test gets the path
    it started with back."""
    before = list(sys.path)
    yield
    sys.path[:] = before


@pytest.fixture(scope="session")
def settings():
    s = load_settings()
    if not s.data_root.exists():
        pytest.fail(f"data root {s.data_root} is missing: clone with ../shared beside the repo "
                    "or set STFORECAST_DATA_ROOT")
    return s


@pytest.fixture(scope="session")
def data_root(settings) -> Path:
    return settings.data_root


@pytest.fixture
def out_root(tmp_path) -> Path:
    return tmp_path / "processed"


@pytest.fixture(scope="session")
def ridgecrest_tiny(settings, tmp_path_factory):
    """The Ridgecrest sample ingested once, and a tiny DSTPP trained on it for a few steps: (folder, checkpoint).
    For tests of the plumbing around a model (forecast files, maps, batch, browser), not of its quality."""
    from pipelines.ingest import run_ingest
    from stforecast.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("ridgecrest-tiny")
    r = run_ingest(settings.catalog("ridgecrest"), settings, out_root=tmp / "p", progress=False)
    cfg = TrainConfig(data=str(r.out_dir), model={"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                                  "rnn_hidden": 16, "steps": 30, "location": "bounded"},
                      epochs=2, max_steps=40,
                      batch_size=8, progress=False, out_dir=str(tmp / "run"))
    train(cfg)
    return r, tmp / "run" / "best.pt"
