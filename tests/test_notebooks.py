"""The analyst notebooks run headless, top to bottom, at toy sizes (STFORECAST_QUICK=1); any error fails."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["earthquakes", "crime", "spikes"])
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.setenv("STFORECAST_QUICK", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_NOTEBOOK_WORK", str(tmp_path / "work"))  # not the checkout's reports/
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    kinds = {o.get("output_type") for o in outputs}
    assert "error" not in kinds
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the overview, the forecast, the reliability diagram and the grid
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "") for o in outputs)
    assert "hawkes" in text and "expected_events" in text
    assert ("pai_day_5" in text) == (name == "crime")  # the crime field's hotspot measures, on crime only
    assert os.environ["STFORECAST_QUICK"] == "1"
