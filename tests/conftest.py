"""Shared fixtures. The real catalogs are read in place from the data root (../shared/data beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stforecast.config import load_settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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
