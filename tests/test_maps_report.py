"""Offline Folium maps and `stforecast report`: nothing external, escaped text, NetCDF + PNG + MLflow, atomic."""

from __future__ import annotations

import html
import json
import re

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


def test_page_text_leaves_nothing_live_for_html_js_templates_or_jinja():
    import folium

    evil = "${alert(1)}`\\{{ 7*7 }}{% if 1 %}\u2028\u2029<b>\"'&"
    safe = maps.page_text(evil)
    assert not set(safe) & set("`${}\\\u2028\u2029<>\"'")
    assert html.unescape(safe) == evil  # what the browser shows is the original text
    # folium.Element runs its text through Jinja; raw_html does not
    assert folium.Element("{{ 7*7 }}").render() == "49"
    assert maps.raw_html("{{ 7*7 }}").render() == "{{ 7*7 }}"


def test_legends_and_layer_names_escape_data(tmp_path):
    import folium

    rng = np.random.default_rng(0)
    contours = mass_contours(kde_grid(rng.normal(0, 50, (500, 2)), crs=AEQD))
    m = maps.new_map(center=(35, 139))
    maps.add_contours(m, contours, "{{ 7*7 }} ${alert(1)}", unit_note="`note`")
    folium.LayerControl().add_to(m)
    page = maps.offline_html(m)
    assert "{{ 7*7 }}" not in page and "${alert" not in page and "`note`" not in page
    assert "<b>&#123;&#123; 7*7 &#125;&#125; &#36;&#123;alert(1)&#125;</b>" in page  # legend title, unevaluated
    assert "&#96;note&#96;" in page


def _fill_styles(page: str) -> list[dict]:
    """The style of every filled shape on a folium page (GeoJson style maps) but the basemap's land."""
    styles = re.findall(r'\{"color": "(#[0-9a-f]{6})", "fillColor": "(#[0-9a-f]{6})", "fillOpacity": ([0-9.]+)',
                        page)
    return [{"color": c, "fill": f, "opacity": float(o)} for c, f, o in styles if f != maps.LAND_STYLE["fillColor"]]


def test_next_event_and_horizon_layers_have_distinct_palettes_and_light_fills(tmp_path):
    rng = np.random.default_rng(0)
    contours = mass_contours(kde_grid(rng.normal(0, 50, (800, 2)), crs=AEQD))
    m = maps.new_map(center=(35, 139))
    maps.add_contours(m, contours, "next event", palette=maps.NEXT_EVENT_COLOURS)
    maps.add_contours(m, contours, "events in the next 7d", palette=maps.HORIZON_COLOURS)
    page = maps.offline_html(m)
    assert not set(maps.NEXT_EVENT_COLOURS) & set(maps.HORIZON_COLOURS)
    used = {s["fill"] for s in _fill_styles(page)}
    next_used, horizon_used = used & set(maps.NEXT_EVENT_COLOURS), used & set(maps.HORIZON_COLOURS)
    assert len(next_used) == 3 and len(horizon_used) == 3 and used == next_used | horizon_used
    assert all(s["opacity"] <= 0.25 and s["color"] == s["fill"] for s in _fill_styles(page))  # outline + light fill
    # each legend shows its own layer's colours
    legends = re.findall(r'class="stforecast-legend".*?</div></div>', page)
    assert len(legends) == 2
    assert next_used <= set(re.findall(r"#[0-9a-f]{6}", legends[0])) and not horizon_used & set(
        re.findall(r"#[0-9a-f]{6}", legends[0]))
    assert horizon_used <= set(re.findall(r"#[0-9a-f]{6}", legends[1]))
    # the basemap is drawn opaque below the overlays' pane, so only the light fills lie over it
    assert '"pane": "basemap"' in page


@pytest.mark.parametrize("value, tick, shown", [
    (pd.Timestamp("2016-04-14 17:10:14.848000050", tz="UTC"), 0.01, "2016-04-14 17:10:14 UTC"),  # ComCat
    (pd.Timestamp("2016-04-14 17:10:14.999999990", tz="UTC"), 0.01, "2016-04-14 17:10:15 UTC"),  # round-off below
    (pd.Timestamp("2019-03-02 21:40:37.5", tz="UTC"), 60.0, "2019-03-02 21:40 UTC"),  # crime: tie spread in minute
    (pd.Timestamp("2019-03-02 15:40:00", tz="America/Chicago"), 60.0, "2019-03-02 21:40 UTC"),
    (pd.Timestamp("2019-03-02 21:40:37.25"), None, "2019-03-02 21:40:37 UTC"),
    (4422.536433333, 1 / 30000, "4422.53643 s"),  # a 30 kHz lab clock
    (12.3456789, None, "12.346 s"),
    ("not a time", 60.0, "not a time"),
])
def test_times_are_shown_to_the_catalog_clock(value, tick, shown):
    assert maps.format_time(value, tick) == shown


def test_cell_size_is_on_the_colour_bar_label():
    from stforecast.grids import cell_size_text, grid_axes

    x, y = grid_axes((0, 0, 1230, 615), (50, 100))
    da = xr.DataArray(np.zeros((50, 100)), coords={"x": ("x", x, {"units": "km"}), "y": ("y", y, {"units": "km"})},
                      dims=("y", "x"))
    assert cell_size_text(da) == "12.3 km × 12.3 km"
    da["x"].attrs["units"] = da["y"].attrs["units"] = "m"
    assert cell_size_text(da) == "12.3 m × 12.3 m"


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
               "--lead-bins", "4", "--samples", "300", "--simulations", "30", "--steps", "10", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["observed_events_in_horizon"] > 0
    page = (out / "map.html").read_text()
    assert maps.external_references(page) == [] and "held out" in page
    # next event in purples, the horizon in oranges, both light; times to the catalog's clock (ComCat: seconds)
    fills = {s["fill"] for s in _fill_styles(page)}
    assert fills & set(maps.NEXT_EVENT_COLOURS) and fills & set(maps.HORIZON_COLOURS)
    assert all(s["opacity"] <= 0.25 for s in _fill_styles(page))
    times = re.findall(r"time: ([^<]*)<br>", page)
    recent = json.loads((out / "recent.geojson").read_text())["features"]
    times += [f["properties"]["time"] for f in recent]
    assert len(times) > 300 and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", t) for t in times)
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
    from stforecast.checkpoints import load_model

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
