"""pyCSEP catalog forecasts: the file writers (model magnitudes, streaming, atomicity) and pyCSEP's N, S, M and
PL tests on a small synthetic region whose "observed" catalogs come from the forecast's own process (the tests
mostly pass) or from one with ten times the events (the number test fails). pyCSEP is part of the `dev` extra:
in CI (CI set) a missing pyCSEP fails these tests instead of skipping them. Nothing may touch the network."""

from __future__ import annotations

import json
import os
import socket

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from stforecast.csep import (  # noqa: E402
    COLUMNS, CatalogForecastWriter, calibration_plot, catalog_forecast_frame, run_csep_tests,
    summary_markdown, summary_table, write_catalog_forecast,
)
from stforecast.models.marks import sample_gutenberg_richter  # noqa: E402

START = pd.Timestamp("2020-03-01", tz="UTC")
END = START + pd.Timedelta(days=1)
BBOX = (0.0, 0.0, 3.0, 2.0)  # six 1° cells
WEIGHTS = np.array([0.45, 0.2, 0.1, 0.1, 0.1, 0.05])  # the process's share of events per cell
MC, B = 3.0, 1.0
N_CATALOGS = 200


def simulate(rng: np.random.Generator, n_catalogs: int, mean: float, weights=WEIGHTS) -> pd.DataFrame:
    """Catalogs of the synthetic process: Poisson counts, cells by weights, uniform times, G–R magnitudes."""
    counts = rng.poisson(mean, n_catalogs)
    n = int(counts.sum())
    cell = rng.choice(len(weights), size=n, p=weights)
    return pd.DataFrame({
        "simulation": np.repeat(np.arange(n_catalogs), counts),
        "time": START + pd.to_timedelta(rng.uniform(0, 86_400, n), unit="s"),
        "lon": cell % 3 + rng.uniform(0.05, 0.95, n), "lat": cell // 3 + rng.uniform(0.05, 0.95, n),
        "magnitude": np.round(sample_gutenberg_richter(n, MC, B, rng), 2),
    })


def observe(rng, mean: float, weights=WEIGHTS) -> pd.DataFrame:
    return simulate(rng, 1, mean, weights).drop(columns="simulation")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach another machine (a map tile, a dataset) fails the test."""
    real = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def pycsep():
    try:
        import csep
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs the `csep` extra (through `dev`): a skip there would hide a broken install
        pytest.skip("pyCSEP is not installed: pip install -e '.[csep]'")
    return csep


@pytest.fixture(scope="module")
def forecast(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forecast")
    sims = simulate(np.random.default_rng(1), N_CATALOGS, mean=8.0)
    path = write_catalog_forecast(catalog_forecast_frame(sims, MC, B), folder, "synthetic", START,
                                  n_catalogs=N_CATALOGS)
    return path, sims


@pytest.fixture(scope="module")
def days(pycsep, forecast):
    """Twelve observed days from the forecast's own process, three with ten times its events, and two whose
    events fall mostly in the cell the forecast deems least likely."""
    path, _ = forecast
    rng = np.random.default_rng(7)
    good = [run_csep_tests(path, N_CATALOGS, observe(rng, 8.0), START, END, MC, BBOX, dh=1.0) for _ in range(12)]
    bad = [run_csep_tests(path, N_CATALOGS, observe(rng, 80.0), START, END, MC, BBOX, dh=1.0) for _ in range(3)]
    elsewhere = [run_csep_tests(path, N_CATALOGS, observe(rng, 8.0, WEIGHTS[::-1]), START, END, MC, BBOX, dh=1.0)
                 for _ in range(2)]
    return good, bad, elsewhere


# ---------------------------------------------------------------------------------------------------- the writers
def test_model_magnitudes_are_written_and_missing_ones_are_refused(forecast):
    _, sims = forecast
    frame = catalog_forecast_frame(sims, MC, B)
    assert list(frame.columns) == COLUMNS and len(frame) == len(sims)
    ordered = sims.sort_values(["simulation", "time"], kind="stable")
    np.testing.assert_array_equal(frame["mag"].to_numpy(), ordered["magnitude"].to_numpy())
    gr = catalog_forecast_frame(sims, MC, B, magnitudes="gutenberg-richter")
    assert not np.allclose(gr["mag"], frame["mag"])  # G–R draws, not the model's
    assert (gr["mag"] >= MC).all() and gr[COLUMNS[:2]].equals(frame[COLUMNS[:2]])
    with pytest.raises(ValueError, match="forecasts no magnitudes.*gutenberg-richter"):
        catalog_forecast_frame(sims.drop(columns="magnitude"), MC, B)
    with pytest.raises(ValueError, match="forecasts no magnitudes"):
        catalog_forecast_frame(sims.assign(magnitude=np.where(sims.index == 3, np.nan, sims["magnitude"])), MC, B)
    with pytest.raises(ValueError, match="magnitudes must be one of"):
        catalog_forecast_frame(sims, MC, B, magnitudes="ETAS")
    empty = catalog_forecast_frame(sims.iloc[:0].drop(columns="magnitude"), MC, B, magnitudes="gutenberg-richter")
    assert empty.empty and list(empty.columns) == COLUMNS


@pytest.mark.parametrize("magnitudes", ["model", "gutenberg-richter"])
def test_streamed_chunks_equal_the_one_shot_file(forecast, tmp_path, magnitudes):
    _, sims = forecast
    (tmp_path / "one").mkdir()
    (tmp_path / "chunks").mkdir()
    one = write_catalog_forecast(catalog_forecast_frame(sims, MC, B, seed=3, magnitudes=magnitudes),
                                 tmp_path / "one", "synthetic", START, n_catalogs=N_CATALOGS + 5)
    with CatalogForecastWriter(tmp_path / "chunks", "synthetic", START, n_catalogs=N_CATALOGS + 5,
                               magnitudes=magnitudes, mc=MC, b=B, seed=3) as writer:
        assert not writer.path.exists()  # only the temp file until the block ends
        for lo in range(0, N_CATALOGS, 64):  # chunks of simulations, shuffled within (the writer sorts)
            chunk = sims[(sims["simulation"] >= lo) & (sims["simulation"] < lo + 64)].sample(frac=1, random_state=0)
            writer.add(chunk)
    assert writer.path.name == one.name == "synthetic_2020-03-01T00-00-00-000000.csv"
    assert writer.path.read_bytes() == one.read_bytes()
    assert writer.n_events == len(sims) and sorted(p.name for p in (tmp_path / "chunks").iterdir()) == [one.name]
    rows = pd.read_csv(one)
    assert rows["event_id"].iloc[:-1].tolist() == list(range(len(sims)))
    last = rows.iloc[-1]  # the empty last catalog, listed explicitly for pyCSEP
    assert last["catalog_id"] == N_CATALOGS + 4 and last[["lon", "lat", "mag", "time_string"]].isna().all()


def test_the_writer_leaves_nothing_on_error(forecast, tmp_path):
    _, sims = forecast
    with pytest.raises(RuntimeError, match="simulation failed"):
        with CatalogForecastWriter(tmp_path, "synthetic", START) as writer:
            writer.add(sims[sims["simulation"] < 10])
            raise RuntimeError("simulation failed")
    with pytest.raises(ValueError, match="must not decrease"):
        with CatalogForecastWriter(tmp_path, "synthetic", START) as writer:
            writer.add(sims[sims["simulation"] >= 10])
            writer.add(sims[sims["simulation"] < 10])
    with pytest.raises(ValueError, match="forecasts no magnitudes"):
        with CatalogForecastWriter(tmp_path, "synthetic", START) as writer:
            writer.add(sims.drop(columns="magnitude"))
    with pytest.raises(ValueError, match="not below n_catalogs"):
        with CatalogForecastWriter(tmp_path, "synthetic", START, n_catalogs=10) as writer:
            writer.add(sims)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="with-block"):
        CatalogForecastWriter(tmp_path, "synthetic", START).add(sims)


# ----------------------------------------------------------------------------------------------- pyCSEP's tests
def test_consistent_days_mostly_pass_and_wrong_ones_fail(days):
    good, bad, elsewhere = days
    for test in ("number", "spatial", "magnitude", "pseudolikelihood"):
        entries = [d[f"{test}_test"] for d in good]
        assert all(e["passed"] is not None for e in entries), test
        assert np.mean([e["passed"] for e in entries]) >= 0.75, (test, [e["score"] for e in entries])
    for day in bad:
        number = day["number_test"]
        assert number["observed"] == day["observed_events"] > 40
        assert number["quantile"][0] == 0.0 and number["passed"] is False  # P(N >= n_obs) = 0
    for day in elsewhere:  # the right number of events in the wrong places
        assert day["spatial_test"]["passed"] is False and day["pseudolikelihood_test"]["passed"] is False
    for day in good + bad + elsewhere:
        json.dumps(day, allow_nan=False)  # JSON-safe: no NaN, no inf, no numpy types
        assert day["mean_forecast_events"] == pytest.approx(8.0, abs=1.0)
        assert 0 <= day["magnitude_test"]["quantile"] <= 1 and len(day["pseudolikelihood_test"]["quantiles"]) == 2


def test_plots_for_all_four_tests_offline(pycsep, forecast, tmp_path, offline):
    path, _ = forecast
    day = run_csep_tests(path, N_CATALOGS, observe(np.random.default_rng(3), 8.0), START, END, MC, BBOX, dh=1.0,
                         out_dir=tmp_path)
    for test in ("number", "spatial", "magnitude", "pseudolikelihood"):
        png = tmp_path / day[f"{test}_test"]["plot"]
        assert png.name == f"csep_{test}_test_2020-03-01.png" and png.stat().st_size > 5_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(day[f"{t}_test"]["plot"] for t in
                                                                ("number", "spatial", "magnitude", "pseudolikelihood"))


def test_empty_trailing_catalogs_count_and_a_day_without_events_is_not_scored(pycsep, tmp_path):
    # catalogs 0 and 2 have one event each; 1 has only events outside the test (before the day, below Mc, outside
    # the region); 3 and 4 are empty, and the file does not list them
    hour = pd.Timedelta(hours=1)
    sims = pd.DataFrame({"simulation": [0, 1, 1, 1, 2], "time": [START + hour, START - hour, START + hour,
                                                               START + hour, START + hour],
                         "lon": [0.5, 0.5, 0.5, 5.5, 0.5], "lat": 0.5, "magnitude": [3.5, 3.5, 2.9, 3.5, 3.5]})
    path = write_catalog_forecast(catalog_forecast_frame(sims, MC, B), tmp_path, "tiny", START)
    one = sims.drop(columns="simulation").iloc[:1]
    day = run_csep_tests(path, 5, one, START, END, MC, BBOX, dh=1.0)
    assert day["mean_forecast_events"] == pytest.approx(2 / 5)  # not 2 / 3, as pyCSEP alone would read it
    assert day["number_test"]["quantile"] == pytest.approx([2 / 5, 1.0])
    quiet = run_csep_tests(path, 5, one.iloc[:0], START, END, MC, BBOX, dh=1.0)
    assert quiet["observed_events"] == 0 and quiet["number_test"]["quantile"] == pytest.approx([1.0, 3 / 5])
    for test in ("spatial", "magnitude", "pseudolikelihood"):
        assert quiet[f"{test}_test"]["passed"] is None and quiet[f"{test}_test"]["score"] is None
    json.dumps(quiet, allow_nan=False)
    with pytest.raises(ValueError, match="more than n_catalogs"):
        run_csep_tests(path, 2, one, START, END, MC, BBOX, dh=1.0)


def test_calibration_plot_and_summary_table(days, tmp_path):
    good, bad, _ = days
    out = calibration_plot(good, "number", tmp_path / "plots" / "calibration_number.png", label="synthetic")
    assert out["days"] == 12 and 0 <= out["p_value"] <= 1 and 0.3 < out["band"] < 0.4  # KS 95 % for n = 12
    png = tmp_path / "plots" / "calibration_number.png"
    assert out["path"] == str(png) and png.stat().st_size > 10_000
    assert calibration_plot([{"csep": d} for d in good], "spatial_test", tmp_path / "s.png")["days"] == 12
    with pytest.raises(ValueError, match="no day has a magnitude test"):
        calibration_plot([{"start": "2020-03-01"}], "magnitude", tmp_path / "m.png")
    table = summary_table({"consistent": good, "ten-times": bad})
    assert table[["model", "test"]].values.tolist() == [
        [m, t] for m in ("consistent", "ten-times") for t in ("number", "spatial", "magnitude", "pseudolikelihood")]
    row = table.set_index(["model", "test"])
    assert row.loc[("ten-times", "number"), "passed_share"] == 0.0
    assert row.loc[("consistent", "number"), "passed_share"] >= 0.75
    assert (row["days_scored"] == row["days"]).all() and row["mean_quantile_score"].between(0, 1).all()
    scores = [d["number_test"]["quantile"][1] for d in good]
    assert row.loc[("consistent", "number"), "mean_quantile_score"] == pytest.approx(np.mean(scores))
    md = summary_markdown(table)
    assert md.splitlines()[0].startswith("| model | test | days") and len(md.splitlines()) == 10
