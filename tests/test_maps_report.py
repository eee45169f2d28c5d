"""Offline Folium maps and `stforecast report`: nothing external, escaped text, NetCDF + PNG + MLflow, atomic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stforecast import maps
from stforecast.density import kde_grid, mass_contours

AEQD = "+proj=aeqd +lat_0=35 +lon_0=139 +datum=WGS84 +units=km +no_defs"


def test_offline_map_inlines_leaflet_escapes_text_and_references_nothing_external(tmp_path):
    import folium

    rng = np.random.default_rng(0)
    contours = mass_contours(kde_grid(rng.normal(0, 50, (3000, 2)), crs=AEQD))
    m = maps.new_map(center=(35, 139))
    maps.add_contours(m, contours, "next event")
    ev = pd.DataFrame({"lat": [35.1, 35.2], "lon": [139.1, 139.3], "magnitude": [4.5, 5.0],
                       "time": ["2020-01-01", "<script>alert('x')</script>"]})
    maps.add_events(m, ev, "observed")
    folium.LayerControl().add_to(m)
    page = maps.save_offline(m, tmp_path / "map.html").read_text()
    assert maps.external_references(page) == []
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "L.map(" in page and "leaflet-container" in page  # Leaflet's JS and CSS are inline
    assert page.count("80% region") == 1
    # the checker does catch what the default folium page loads
    assert maps.external_references(folium.Map().get_root().render())


def test_online_tiles_are_opt_in():
    m = maps.new_map(center=(35, 139), online_tiles=True)
    page = maps.offline_html(m)
    assert any("{z}" in ref for ref in maps.external_references(page))
    with pytest.raises(RuntimeError, match="external"):
        maps.save_offline(m, "/nonexistent/never-written.html")


def test_pixel_frame_map_has_no_basemap(tmp_path):
    rng = np.random.default_rng(1)
    contours = mass_contours(kde_grid(rng.normal(300, 40, (2000, 2))), to_crs=None)
    m = maps.new_map("pixel", bounds=[[0, 0], [600, 800]])
    maps.add_contours(m, contours, "next spike")
    page = maps.save_offline(m, tmp_path / "px.html").read_text()
    assert "L.CRS.Simple" in page and "Natural Earth" not in page


@pytest.fixture
def ridgecrest_model(ridgecrest_tiny):
    return ridgecrest_tiny


def test_report_writes_map_netcdf_png_and_tracks_them(ridgecrest_model, tmp_path, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    r, ckpt = ridgecrest_model
    out = tmp_path / "report"
    rc = main(["report", "--data", str(r.out_dir), "--model", str(ckpt), "--at", "2019-07-12", "--horizon", "24h",
               "--lead-bins", "4", "--samples", "300", "--simulations", "30", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["observed_events_in_horizon"] > 0
    page = (out / "map.html").read_text()
    assert maps.external_references(page) == [] and "held out" in page
    ds = xr.open_dataset(out / "forecast.nc")
    assert ds["expected_count"].dims == ("lead_time", "y", "x") and ds.sizes["lead_time"] == 4
    assert ds.attrs["catalog"] == "ridgecrest" and "lat" in ds.coords
    # expected counts on the grid never exceed the simulated mean (mass can only fall outside the grid)
    assert float(ds["expected_count"].sum()) <= summary["expected_events"] + 1e-6
    ds.close()
    assert (out / "forecast.png").stat().st_size > 10_000
    import mlflow

    runs = mlflow.search_runs(experiment_names=["stforecast-reports"])
    assert len(runs) == 1 and runs["tags.model_uri"].iloc[0] == str(ckpt)
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["run_id"].iloc[0])}
    assert {"map.html", "forecast.nc", "forecast.png", "summary.json"} <= arts


def test_a_failed_report_leaves_the_previous_one_intact(ridgecrest_model, tmp_path, monkeypatch):
    from pipelines.report import ReportRequest, run_report
    from stforecast.train import load_model

    r, ckpt = ridgecrest_model
    out = tmp_path / "report"
    model = load_model(ckpt)
    req = ReportRequest(at="2019-07-12", horizon="12h", samples=200, simulations=10, lead_bins=2)
    run_report(r.out_dir, model, req, out, track=False, log=lambda *a: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("stforecast.grids.plot_grid", broken)
    with pytest.raises(OSError, match="disk full"):
        run_report(r.out_dir, model, ReportRequest(at="2019-07-13", horizon="12h", samples=200, simulations=10,
                                                   lead_bins=2), out, track=False, log=lambda *a: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left behind
