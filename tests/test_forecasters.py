"""Every registered model is a first-class forecaster: the same evaluation, horizon simulation, pyCSEP files and
report run on each of them through one interface, with the same output shapes and columns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluation import evaluate_catalog
from pipelines.forecasting import ForecastRequest, run_forecast
from pipelines.report import ReportRequest, write_report
from stforecast.forecast import history_of, simulate_horizon
from stforecast.ingested import IngestedCatalog
from stforecast.models.base import Forecaster, Histories
from stforecast.registry import BASELINES, load_forecaster

MODELS = ["dstpp", *BASELINES]


@pytest.fixture(scope="module")
def catalog(ridgecrest_tiny):
    r, ckpt = ridgecrest_tiny
    events = pd.read_parquet(r.out_dir / "events.parquet")
    return r.out_dir, ckpt, events, r.manifest


@pytest.fixture(scope="module")
def models(catalog, tmp_path_factory):
    folder, ckpt, events, manifest = catalog
    cache = tmp_path_factory.mktemp("baselines")
    out = {}
    for name in MODELS:
        spec = str(ckpt) if name == "dstpp" else name
        out[name] = load_forecaster(spec, IngestedCatalog.open(folder), cache_root=cache, log=lambda *a: None)
        out[name].configure(bound_repeats=1)
    out["_cache"] = cache
    return out


def test_the_registry_gives_forecasters_and_keeps_fits_as_json(catalog, models):
    folder, ckpt, events, manifest = catalog
    cache = models["_cache"]
    assert all(isinstance(models[name], Forecaster) and models[name].name == name for name in MODELS)
    assert sorted(p.name.split("-")[0] for p in cache.glob("*/*.json")) == sorted(BASELINES)
    # a cached fit restores the same model: the same exact densities
    h = Histories.from_stream(events["t"].to_numpy(), events[["x", "y"]].to_numpy(), np.array([400, 500]), 300,
                              {"magnitude": events["magnitude"].to_numpy()})
    truth = np.column_stack([np.diff(events["t"].to_numpy())[[399, 499]], events[["x", "y"]].to_numpy()[[400, 500]]])
    for name in BASELINES:
        again = load_forecaster(name, IngestedCatalog.open(folder), cache_root=cache,
                                log=lambda *a: pytest.fail("refitted"))
        assert np.allclose(again.forecast(h).nll(truth).per_event, models[name].forecast(h).nll(truth).per_event)
        saved = json.loads(next(cache.glob(f"*/{name}-*.json")).read_text())
        assert saved["catalog_input_hash"] == manifest["input_hash"] and saved["state"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_samples_the_same_shape(catalog, models, name):
    folder, ckpt, events, manifest = catalog
    model = models[name]
    index = np.array([50, 200, len(events)])
    h = Histories.from_stream(events["t"].to_numpy(), events[["x", "y"]].to_numpy(), index, model.context,
                              {"magnitude": events["magnitude"].to_numpy()})
    s = model.forecast(h).sample(7, np.random.default_rng(0))
    assert s.events.shape == (3, 7, 3) and np.isfinite(s.events).all() and (s.events[..., 0] > 0).all()
    assert set(s.marks) == set(model.mark_names) and all(v.shape == (3, 7) for v in s.marks.values())


@pytest.mark.parametrize("name", MODELS)
def test_every_model_is_evaluated_the_same_way(catalog, models, name, tmp_path):
    folder, *_ = catalog
    ev = evaluate_catalog(folder, models[name], (), "test", 15, 12, bound_repeats=1, out_dir=tmp_path,
                          log=lambda *a: None)
    expected = json.loads((tmp_path / "reliability.json").read_text())
    assert list(ev.table["model"]) == [name] and list(expected) == [name]
    reference = evaluate_catalog(folder, models["poisson_kde"], (), "test", 15, 12, out_dir=tmp_path / "ref",
                                 log=lambda *a: None)
    assert list(ev.table.columns) == list(reference.table.columns)
    row = ev.table.iloc[0]
    assert row[["nll_joint", "crps_dt", "energy_xy", "cover_xy_80"]].notna().all()
    if name == "dstpp":  # the exact ODE density is joint only; the bound beside it has the split
        assert row["nll_kind"] == "exact-ode" and row[["nll_dt", "nll_xy"]].isna().all()
        assert row[["nll_bound", "nll_bound_dt", "nll_bound_xy", "nll_ode_nfe"]].notna().all()
        assert row["nll_bound"] > row["nll_joint"] - 0.5  # the bound is above the exact value (up to MC noise)
    else:
        assert row["nll_kind"] == "exact" and row[["nll_dt", "nll_xy"]].notna().all()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_simulates_a_horizon_and_writes_pycsep_catalogs(catalog, models, name, tmp_path):
    folder, ckpt, events, manifest = catalog
    model = models[name]
    past = events.iloc[:600]
    t, xy, marks = history_of(past, model.context)
    hf = simulate_horizon(model, t, xy, t[-1] + 0.5, 20, marks=marks, max_events=40, seed=1)
    assert list(hf.events.columns[:6]) == ["simulation", "index", "t", "dt", "x", "y"]
    assert set(hf.events.columns[6:]) <= set(model.mark_names)
    assert hf.counts.shape == (20,) and hf.counts.sum() == len(hf.events)
    assert (hf.events["t"] < t[-1] + 0.5).all() and (hf.events["t"] > t[-1]).all()
    req = ForecastRequest(at="2019-07-12T00:00", fmt="csep", simulations=15, max_events=40, seed=0)
    summary = run_forecast(folder, model, req, tmp_path, log=lambda *a: None)
    files = sorted(tmp_path.glob("ridgecrest_*.csv"))
    assert len(summary["days"]) == 1
    if files:
        frame = pd.read_csv(files[0], header=None)
        assert frame.shape[1] == 7  # lon, lat, mag, time_string, depth, catalog_id, event_id


@pytest.mark.parametrize("name", MODELS)
def test_every_model_draws_a_report(catalog, models, name, tmp_path):
    folder, *_ = catalog
    req = ReportRequest(at="2019-07-12T00:00", horizon="12h", samples=300, simulations=15, max_events=40,
                        lead_bins=2)
    summary = write_report(folder, models[name], req, tmp_path, model_uri=name, log=lambda *a: None)
    assert summary["model_kind"] == name
    assert {"map.html", "forecast.nc", "forecast.png", "contours_0.geojson", "recent.geojson"} <= set(summary["files"])
    import xarray as xr

    with xr.open_dataset(tmp_path / "forecast.nc") as ds:
        assert ds["expected_count"].dims == ("lead_time", "y", "x") and ds["expected_count"].shape[0] == 2
        assert name in ds.attrs["source"].lower()


def test_report_and_batch_with_etas_from_the_command_line(catalog, tmp_path, monkeypatch):
    """`stforecast report --model etas` and a batch job with `model = "etas"`: the baseline is fitted once, kept as
    JSON, tracked in MLflow, and drawn like any model."""
    import mlflow

    from pipelines.cli import main

    folder = catalog[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("STFORECAST_BASELINE_CACHE", str(tmp_path / "fits"))
    assert main(["report", "--data", str(folder), "--model", "etas", "--at", "2019-07-12T00:00", "--horizon", "12h",
                 "--samples", "300", "--simulations", "15", "--out", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["model_kind"] == "etas" and summary["expected_events"] > 0
    assert len(list((tmp_path / "fits").glob("*/etas-*.json"))) == 1
    fits = mlflow.search_runs(experiment_names=["stforecast-baselines"])
    assert list(fits["tags.model_kind"]) == ["etas"] and "params.A" in fits.columns
    config = tmp_path / "batch.toml"
    config.write_text(f'[batch]\nout = "{tmp_path / "batch"}"\n[[jobs]]\nname = "rc-etas"\ncatalog = "{folder}"\n'
                      'model = "etas"\nhorizon = "12h"\nsimulations = 15\nsamples = 300\nat = "2019-07-12"\n')
    assert main(["batch", "--config", str(config), "--workers", "1"]) == 0
    (job,) = (tmp_path / "batch").glob("*/rc-etas")
    assert (job / "map.html").is_file() and (job / "forecast.nc").is_file()
    assert len(mlflow.search_runs(experiment_names=["stforecast-baselines"])) == 1  # the batch job reused the fit
