"""Shared fixtures. The real catalogs are read in place from the data root (../shared/data beside the repo)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from stforecast.config import load_settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

#: the pytest-xdist worker this process is ("gw0", ...), or "" when the suite runs in one process
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if WORKER:
    # `make test` runs the suite in one pytest process per core (pytest-xdist): each takes one core's compute
    # threads, and so do the commands it starts, instead of every process spinning a thread per core (on 2 cores,
    # 2 processes x 2 threads made the parallel suite no faster than the serial one)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS, loaded before the variables above were set

#: where the suite writes what commands would put in the checkout (processed catalogs, baseline fits, MLflow runs,
#: reports, screenshots): a temporary root, so `make test` leaves the checkout as it found it and a later
#: `make demo` is a first run. Set before any test (subprocesses inherit it). Under pytest-xdist, the main process
#: makes it and each worker takes a folder of its own in it (gw0/, gw1/, ...).
if WORKER and os.environ.get("STFORECAST_TEST_ROOT"):
    TEST_ROOT = Path(os.environ["STFORECAST_TEST_ROOT"]) / WORKER
    TEST_ROOT.mkdir(parents=True, exist_ok=True)
else:
    TEST_ROOT = Path(tempfile.mkdtemp(prefix="stforecast-tests-"))
    os.environ["STFORECAST_TEST_ROOT"] = str(TEST_ROOT)
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


def pytest_terminal_summary(terminalreporter):
    """Where to look afterwards (the main process prints it, also when workers ran the tests)."""
    where = f"{TEST_ROOT}/gw*/" if any(TEST_ROOT.glob("gw*")) else f"{TEST_ROOT}/"
    terminalreporter.write_line(f"test outputs (screenshots in test-artifacts/): {where}")


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
