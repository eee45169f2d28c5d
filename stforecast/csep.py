"""Catalog forecasts in the seismology convention (pyCSEP's catalog-based forecast CSV).

A horizon forecast's simulations become "stochastic event sets": one synthetic catalog per simulation, rows
``lon, lat, mag, time_string, depth, catalog_id, event_id``. DSTPP does not model magnitudes yet, so each event's
magnitude is drawn from a Gutenberg–Richter law fitted to the training catalog (b by Aki's maximum likelihood
above the completeness magnitude Mc): independent of time and place, which is what the ETAS literature assumes
too. Depth is not in the ingested catalogs; a constant is written (pyCSEP's number and spatial tests ignore it).

pyCSEP's reader takes the forecast's start time from the file name (``NAME_YYYY-MM-DDTHH-MM-SS-ffffff.csv``),
lists only catalogs that have events (an id that is skipped is an empty catalog), and needs the number of
catalogs from the caller: :func:`write_catalog_forecast` names the file that way and returns that number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["lon", "lat", "mag", "time_string", "depth", "catalog_id", "event_id"]


def gutenberg_richter(n: int, mc: float, b: float, rng: np.random.Generator, m_max: float = 9.5) -> np.ndarray:
    """``n`` magnitudes in [mc, m_max) with log10 N(≥m) ∝ −b m (truncated at ``m_max``: an untruncated law
    occasionally draws impossible magnitudes), by inverting the truncated exponential CDF."""
    beta = b * np.log(10)
    u = rng.uniform(size=n)
    return mc - np.log1p(-u * (1 - np.exp(-beta * (m_max - mc)))) / beta


def catalog_forecast_frame(events: pd.DataFrame, mc: float, b: float, seed: int = 0, depth_km: float = 10.0,
                           m_max: float = 9.5) -> pd.DataFrame:
    """Simulated events with ``simulation``, ``time`` (UTC), ``lon``, ``lat`` → pyCSEP rows, sorted by catalog."""
    rng = np.random.default_rng(seed)
    ev = events.sort_values(["simulation", "time"], kind="stable")
    times = pd.DatetimeIndex(ev["time"]).tz_convert("UTC").tz_localize(None)
    return pd.DataFrame({
        "lon": ev["lon"].to_numpy().round(5), "lat": ev["lat"].to_numpy().round(5),  # ~1 m
        "mag": np.round(gutenberg_richter(len(ev), mc, b, rng, m_max), 2),
        "time_string": times.strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "depth": depth_km, "catalog_id": ev["simulation"].to_numpy().astype(int),
        "event_id": np.arange(len(ev)),
    }, columns=COLUMNS)


def forecast_file_name(name: str, start: pd.Timestamp) -> str:
    start = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start)
    return f"{name.replace('_', '-')}_{start.strftime('%Y-%m-%dT%H-%M-%S-%f')}.csv"


def write_catalog_forecast(frame: pd.DataFrame, folder, name: str, start) -> Path:
    """Write the rows atomically under the pyCSEP file-name convention; returns the path."""
    from stforecast.io.remote import atomic_write_text

    path = Path(folder) / forecast_file_name(name, start)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def run_csep_tests(forecast_path, n_catalogs: int, observed: pd.DataFrame, start, end, mc: float,
                   bbox: tuple[float, float, float, float], dh: float = 0.1, out_dir=None) -> dict:
    """pyCSEP's catalog-based number and spatial tests of a forecast file against the observed events
    (``time``, ``lon``, ``lat``, ``magnitude``) in [start, end), on a ``dh``-degree grid over ``bbox``
    (min lon, min lat, max lon, max lat). Needs the ``csep`` extra. Plots are drawn without map downloads."""
    import csep
    from csep.core import catalog_evaluations, regions
    from csep.utils import time_utils

    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    lon0, lat0, lon1, lat1 = bbox
    origins = np.array([(x, y) for x in np.arange(lon0, lon1, dh) for y in np.arange(lat0, lat1, dh)])
    mags = np.arange(mc, 9.05, 0.1)
    region = regions.CartesianGrid2D.from_origins(origins, dh=dh, magnitudes=mags)
    forecast = csep.load_catalog_forecast(
        str(forecast_path), start_time=start.to_pydatetime(), end_time=end.to_pydatetime(), region=region,
        type="csep-csv", n_cat=n_catalogs, filters=[f"magnitude >= {mc}"], apply_filters=True)
    obs = observed[(observed["time"] >= start) & (observed["time"] < end)]
    rows = [(i, time_utils.datetime_to_utc_epoch(t.to_pydatetime()), la, lo, 10.0, m)
            for i, (t, lo, la, m) in enumerate(zip(obs["time"], obs["lon"], obs["lat"], obs["magnitude"]))]
    catalog = csep.catalogs.CSEPCatalog(data=rows, region=region, name="observed")
    catalog = catalog.filter_spatial(region)
    number = catalog_evaluations.number_test(forecast, catalog, verbose=False)
    spatial = catalog_evaluations.spatial_test(forecast, catalog, verbose=False)
    result = {"observed_events": int(catalog.event_count),
              "number_test": {"quantile": [float(q) for q in np.atleast_1d(number.quantile)],
                              "observed": float(number.observed_statistic)},
              "spatial_test": {"quantile": float(np.atleast_1d(spatial.quantile)[0]),
                               "observed": float(spatial.observed_statistic)}}
    if out_dir is not None:
        import matplotlib

        matplotlib.use("Agg")
        from csep.utils import plots

        for res, fname in ((number, "csep_number_test.png"), (spatial, "csep_spatial_test.png")):
            ax = plots.plot_distribution_test(res, show=False)
            ax.figure.savefig(Path(out_dir) / fname, dpi=100)
    return result
