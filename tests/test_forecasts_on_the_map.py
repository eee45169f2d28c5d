"""Forecasts that stay on the map (issue 20): every registered model's samples inside the catalog's region, one
sampling configuration through every command (flags that change it change the samples; the same model, day, seed
and configuration give the same forecast through forecast, report, batch, csep-eval and the MLflow model),
highest-density regions nested and on the region's grid, maps that open on the region, and the newcomer's path
(default outputs that name the model, help texts, README commands, console = JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import build_parser, main
from stforecast.sampling import Sampling

REPO = Path(__file__).resolve().parent.parent
AT = "2019-07-12"
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "rnn_hidden": 16, "steps": 30}


@pytest.fixture(scope="module")
def bounded(ridgecrest_tiny, tmp_path_factory):
    """The Ridgecrest sample and two tiny DSTPPs with the bounded location (plumbing, not quality): one plain, one
    reading and forecasting magnitudes. (catalog folder, checkpoint, checkpoint with magnitudes)"""
    from stforecast.train import TrainConfig, train

    r, _ = ridgecrest_tiny
    root = tmp_path_factory.mktemp("bounded")
    for name, extra in (("plain", {}), ("marks", {"mark_inputs": True, "mark_head": True})):
        train(TrainConfig(data=str(r.out_dir), model={**TINY, "location": "bounded", **extra}, epochs=1,
                          max_steps=4, batch_size=8, progress=False, out_dir=str(root / name)))
    return r.out_dir, root / "plain" / "best.pt", root / "marks" / "best.pt"


def forecast_table(folder, ckpt, out, *flags) -> pd.DataFrame:
    assert main(["forecast", "--data", str(folder), "--model", str(ckpt), "--at", AT, "--samples", "300",
                 "--out", str(out), *flags]) == 0
    return pd.read_parquet(out / "next_event.parquet")


# ------------------------------------------------------------------------------------ one sampling configuration
def test_sampling_flags_change_the_samples_and_are_recorded(bounded, tmp_path):
    folder, ckpt, _ = bounded
    a = forecast_table(folder, ckpt, tmp_path / "a", "--sampler", "dpm", "--steps", "3")
    b = forecast_table(folder, ckpt, tmp_path / "b", "--sampler", "dpm", "--steps", "8")
    c = forecast_table(folder, ckpt, tmp_path / "c", "--sampler", "dpm", "--steps", "3")
    d = forecast_table(folder, ckpt, tmp_path / "d", "--sampler", "ddim", "--steps", "3")
    e = forecast_table(folder, ckpt, tmp_path / "e", "--ode-tolerance", "1e-2")
    f = forecast_table(folder, ckpt, tmp_path / "f")
    cols = ["dt", "x", "y"]
    assert np.array_equal(a[cols].to_numpy(), c[cols].to_numpy())  # same configuration, same samples
    for other in (b, d, e, f):
        assert not np.allclose(a[cols].to_numpy(), other[cols].to_numpy())
    assert not np.allclose(e[cols].to_numpy(), f[cols].to_numpy())  # the ODE's tolerance is used too
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["sampling"] == Sampling("dpm", 8).to_dict()
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["sampling"] == Sampling().to_dict()


def test_one_forecast_through_every_path_is_identical(bounded, tmp_path):
    """forecast, report, a batch job and the MLflow model: the same next-event samples for the same model, time,
    seed and sampling."""
    import mlflow

    from pipelines.batch_forecast import Job, run_batch
    from pipelines.report import ReportRequest, run_report
    from stforecast.ingested import IngestedCatalog
    from stforecast.registry import load_forecaster
    from stforecast.tracking import log_trained_model, tracked_run

    folder, ckpt, _ = bounded
    sampling = ["--sampler", "dpm", "--steps", "6"]
    forecast = forecast_table(folder, ckpt, tmp_path / "f", *sampling, "--seed", "3")
    catalog = IngestedCatalog.open(folder)
    model = load_forecaster(str(ckpt), catalog, log=lambda *a: None)
    run_report(catalog, model, ReportRequest(at=AT, samples=300, horizon="6h", simulations=5, max_events=20,
                                             seed=3, sampling=Sampling("dpm", 6)), tmp_path / "r", track=False,
               log=lambda *a: None)
    report = pd.read_parquet(tmp_path / "r" / "next_event.parquet")
    (job,) = run_batch([Job("j", str(folder), str(ckpt), "6h", 5, 300, AT, max_events=20, seed=3, sampler="dpm",
                            steps=6)], tmp_path / "batch")
    assert job.status == "done", job.message
    batch = pd.read_parquet(Path(job.folder) / "next_event.parquet")
    with tracked_run("test-paths", "paths"):
        uri = log_trained_model(ckpt, model.cfg.to_dict(), registered_name=None)
    past = catalog.before(catalog.units.model_time_of(AT)).tail(model.context)
    table = pd.DataFrame({"history": 0, "t": past["t"], "x": past["x"], "y": past["y"]})
    served = mlflow.pyfunc.load_model(uri).predict(table, params={"n": 300, "seed": 3, "sampler": "dpm",
                                                                   "steps": 6})
    cols = ["dt", "x", "y"]
    for other in (report, batch, served):
        assert np.array_equal(forecast[cols].to_numpy(), other[cols].to_numpy())


def test_forecast_format_csep_and_csep_eval_write_the_same_catalogs(bounded, tmp_path):
    folder, ckpt, _ = bounded
    common = ["--magnitudes", "gutenberg-richter", "--max-events", "30"]
    assert main(["forecast", "--data", str(folder), "--model", str(ckpt), "--format", "csep", "--at", AT,
                 "--simulations", "20", "--out", str(tmp_path / "f"), *common]) == 0
    assert main(["csep-eval", "--data", str(folder), "--model", str(ckpt), "--reference", "none", "--start", AT,
                 "--days", "1", "--catalogs", "20", "--local", "--no-track", "--out", str(tmp_path / "c"),
                 *common]) == 0
    (mine,) = (tmp_path / "f").glob("*.csv")
    (theirs,) = (tmp_path / "c").glob(f"*/{AT}/*.csv")
    assert pd.read_csv(mine).equals(pd.read_csv(theirs))
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["sampling"]["sampler"] == "dpm"  # catalog forecasts: the fast sampler by default, in both
    day = json.loads(next((tmp_path / "c").glob(f"*/{AT}/day.json")).read_text())
    assert day["task"]["sampler"] == "dpm" and day["gutenberg_richter"] == summary["gutenberg_richter"]


def test_the_mlflow_model_forecasts_a_model_that_reads_and_forecasts_magnitudes(bounded):
    import mlflow

    from stforecast.ingested import IngestedCatalog
    from stforecast.tracking import log_trained_model, tracked_run
    from stforecast.checkpoints import load_model

    folder, _, ckpt = bounded
    model = load_model(ckpt)
    with tracked_run("test-marks", "marks"):
        uri = log_trained_model(ckpt, model.cfg.to_dict(), registered_name=None)
    past = IngestedCatalog.open(folder).events.head(80)
    table = pd.DataFrame({"history": np.repeat([0, 1], 40), "t": past["t"], "x": past["x"], "y": past["y"],
                          "magnitude": past["magnitude"]})
    loaded = mlflow.pyfunc.load_model(uri)
    out = loaded.predict(table, params={"n": 25, "sampler": "dpm", "steps": 4})
    assert len(out) == 50 and np.isfinite(out[["dt", "x", "y", "magnitude"]].to_numpy()).all()
    assert (out["magnitude"] >= model.scaler.statistics.mark_mc - 0.05 - 1e-9).all()
    with pytest.raises(Exception, match="magnitude"):
        loaded.predict(table.drop(columns="magnitude"), params={"n": 5})


# ----------------------------------------------------------------------------------------------- on the map
@pytest.mark.parametrize("name", ["dstpp", "etas", "hawkes", "poisson_kde"])
def test_no_sample_outside_the_region_for_every_registered_model(bounded, tmp_path, name):
    from stforecast.forecast import history_of, next_event, simulate_horizon
    from stforecast.ingested import IngestedCatalog
    from stforecast.registry import load_forecaster

    folder, ckpt, _ = bounded
    catalog = IngestedCatalog.open(folder)
    model = load_forecaster(str(ckpt) if name == "dstpp" else name, catalog, cache_root=tmp_path,
                            log=lambda *a: None).with_sampling(Sampling("dpm", 6))
    x0, y0, x1, y1 = catalog.view_box()
    past = catalog.before(catalog.units.model_time_of(AT))
    t, xy, marks = history_of(past, model.context)
    s = next_event(model, t, xy, 3000, marks=marks, seed=1)
    assert s["x"].between(x0, x1).all() and s["y"].between(y0, y1).all()
    hf = simulate_horizon(model, t, xy, t[-1] + 1.0, 40, marks=marks, max_events=60, seed=1)
    assert len(hf.events) and hf.events["x"].between(x0, x1).all() and hf.events["y"].between(y0, y1).all()
    assert hf.counts.sum() == len(hf.events)


def test_highest_density_regions_are_nested_and_on_the_regions_grid():
    import shapely

    from stforecast.density import kde_grid, mass_contours

    rng = np.random.default_rng(0)
    xy = np.r_[rng.normal([0, 0], 30, (3000, 2)), rng.normal([400, -200], 80, (1500, 2)),
               rng.standard_cauchy((500, 2)) * 200]  # heavy tails reach far past the region
    box = (-500.0, -600.0, 700.0, 500.0)
    frame = mass_contours(kde_grid(xy, shape=(90, 110), bounds=box), (0.5, 0.8, 0.95), to_crs=None)
    regions = {round(r["level"], 2): r.geometry for _, r in frame.iterrows()}
    assert regions[0.5].difference(regions[0.8]).area < 1e-6 * regions[0.5].area
    assert regions[0.8].difference(regions[0.95]).area < 1e-6 * regions[0.8].area
    x, y = shapely.get_coordinates(shapely.GeometryCollection(list(regions.values()))).T
    assert x.min() >= box[0] and x.max() <= box[2] and y.min() >= box[1] and y.max() <= box[3]


def test_regions_across_the_antimeridian_keep_continuous_longitudes():
    import shapely

    from stforecast.density import kde_grid, mass_contours

    crs = "+proj=aeqd +lat_0=-17 +lon_0=179.5 +datum=WGS84 +units=km +no_defs"  # Fiji
    xy = np.random.default_rng(1).normal([0, 0], 150, (3000, 2))
    frame = mass_contours(kde_grid(xy, bounds=(-600, -600, 600, 600), crs=crs), (0.5, 0.95), lon_center=179.5)
    lon, lat = shapely.get_coordinates(shapely.GeometryCollection(list(frame.geometry))).T
    assert 172 < lon.min() and lon.max() < 187  # 181, not -179: no polygon spans the globe
    assert np.ptp(lon) < 15


def test_a_report_map_in_a_browser_opens_on_the_region_with_every_contour_inside(bounded, tmp_path):
    """The report's map.html in headless Chromium: the view Leaflet opened with is the catalog's region, and every
    vertex of every drawn region lies inside it (read back from the page's own layers)."""
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines.report import ReportRequest, run_report
    from stforecast.ingested import IngestedCatalog
    from stforecast.registry import load_forecaster

    folder, ckpt, _ = bounded
    catalog = IngestedCatalog.open(folder)
    model = load_forecaster(str(ckpt), catalog, log=lambda *a: None)
    summary = run_report(catalog, model, ReportRequest(at=AT, samples=1000, horizon="1d", simulations=20,
                                                        max_events=60, sampling=Sampling("dpm", 6)),
                         tmp_path / "r", track=False, log=lambda *a: None)
    (s, w), (n, e) = summary["view_bounds"]
    driver = _browser()
    try:
        driver.get((tmp_path / "r" / "map.html").as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(FIND_MAP + "return true;"))
        view, vertices = driver.execute_script(FIND_MAP + READ_MAP)
    finally:
        driver.quit()
    south, west, north, east = view
    # the initial view holds the region and fits it: tight in the direction that limits the zoom (Leaflet snaps to
    # whole zoom levels, so up to twice the span there; the other direction follows the window's shape)
    assert south <= s and west <= w and north >= n and east >= e
    assert min((north - south) / (n - s), (east - west) / (e - w)) < 2.5
    assert len(vertices) > 20
    lat, lon = np.asarray(vertices).T
    assert lat.min() >= s - 1e-9 and lat.max() <= n + 1e-9 and lon.min() >= w - 1e-9 and lon.max() <= e + 1e-9


FIND_MAP = """
const m = Object.keys(window).filter(k => k.startsWith('map_')).map(k => window[k])
  .find(v => v && typeof v.getBounds === 'function');
if (!m) return null;
"""
READ_MAP = """
const b = m.getBounds();
const pts = [];
m.eachLayer(l => { if (l instanceof L.Polygon && l.options.pane !== 'basemap') l.getLatLngs().flat(3).forEach(p => pts.push([p.lat, p.lng])); });
return [[b.getSouth(), b.getWest(), b.getNorth(), b.getEast()], pts];
"""


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from .test_riskmap_browser import _chromium

    binary, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--window-size=1000,800",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


# ------------------------------------------------------------------------------------------- the newcomer's path
def test_default_outputs_name_the_model(ridgecrest_tiny, capsys):
    r, _ = ridgecrest_tiny
    for model in ("poisson_kde", "hawkes"):
        assert main(["report", "--data", str(r.out_dir), "--model", model, "--at", AT, "--horizon", "6h",
                     "--samples", "200", "--simulations", "5", "--no-track"]) == 0
    assert Path("reports/map-ridgecrest-poisson_kde/map.html").is_file()
    assert Path("reports/map-ridgecrest-hawkes/map.html").is_file()  # the first report is still there
    assert main(["report", "--data", str(r.out_dir), "--model", "hawkes", "--at", AT, "--horizon", "6h",
                 "--samples", "200", "--simulations", "5", "--no-track"]) == 0
    assert "replacing the previous report in reports/map-ridgecrest-hawkes" in capsys.readouterr().out


def test_help_texts_say_what_the_product_does(capsys):
    def help_of(command):
        with pytest.raises(SystemExit):
            build_parser(command).parse_args([command, "--help"])
        return capsys.readouterr().out

    forecast = help_of("forecast")
    assert "from a trained DSTPP" not in forecast and "fitted Gutenberg-Richter law" not in forecast
    assert "DDIM denoising steps" not in forecast and "pip install" not in forecast
    assert "--sampler" in forecast and "--ode-tolerance" in forecast
    for command in ("report", "evaluate", "csep-eval"):
        text = help_of(command)
        assert "--sampler" in text and "DDIM denoising steps" not in text


def test_every_readme_command_runs_as_written_after_make_demo():
    """Commands in the README's shell blocks call the project's tools through .venv/bin/ (a bare `python -m
    pipelines...` or `torchrun` finds no pandas on a fresh machine), except make and apt."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S)
    bare = []
    for block in blocks:
        for line in block.splitlines():
            word = line.strip().split(" ", 1)[0]
            if word in ("stforecast", "python", "python3", "torchrun", "mlflow", "pip", "pytest"):
                bare.append(line.strip())
    assert bare == []


def test_the_console_prints_what_the_summary_stores(ridgecrest_tiny, tmp_path, capsys):
    r, _ = ridgecrest_tiny
    assert main(["forecast", "--data", str(r.out_dir), "--model", "poisson_kde", "--at", AT, "--horizon", "1d",
                 "--simulations", "200", "--samples", "50", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # (the console may wrap the line)
    line = out[out.index("events in the next"):]
    h = json.loads((tmp_path / "summary.json").read_text())["horizon"]
    for key, label in (("mean", "mean"), ("median", "median"), ("p_at_least_one", "P(at least one)")):
        shown = float(re.search(rf"{re.escape(label)} ([0-9.e+-]+)", line).group(1).rstrip(","))
        assert shown == pytest.approx(h[key], rel=1e-5), (key, line)
