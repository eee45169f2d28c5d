"""Catalog forecasts in the seismology convention (pyCSEP's catalog-based forecast CSV).

A horizon forecast's simulations become "stochastic event sets": one synthetic catalog per simulation, rows
``lon, lat, mag, time_string, depth, catalog_id, event_id``. DSTPP does not model magnitudes yet, so each event's
magnitude is drawn from a Gutenberg–Richter law fitted to the training catalog (b by Aki's maximum likelihood
above the completeness magnitude Mc, estimated by maximum curvature): independent of time and place, as ETAS
assumes too. Depth is not in the ingested catalogs; a constant is written (pyCSEP's number and spatial tests ignore it).

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
    from stforecast.io.atomic import atomic_write_text

    path = Path(folder) / forecast_file_name(name, start)
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def run_csep_tests(forecast_path, n_catalogs: int, observed: pd.DataFrame, start, end, mc: float,
                   bbox: tuple[float, float, float, float], dh: float | None = None, out_dir=None) -> dict:
    """pyCSEP's catalog-based number and spatial tests of a forecast file against the observed events
    (``time``, ``lon``, ``lat``, ``magnitude``) in [start, end), on a ``dh``-degree grid over ``bbox``
    (min lon, min lat, max lon, max lat); the default ``dh`` is the finest of 0.1°, 0.2°, 0.25°, 0.5°, 1° with at
most 20,000 cells. Needs the ``csep`` extra. Plots are drawn without map downloads."""
    import csep
    from csep.core import catalog_evaluations, regions
    from csep.utils import time_utils

    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    lon0, lat0, lon1, lat1 = bbox
    if dh is None:
        dh = next((d for d in (0.1, 0.2, 0.25, 0.5) if (lon1 - lon0) * (lat1 - lat0) / d**2 <= 20_000), 1.0)
    origins = np.array([(x, y) for x in np.arange(lon0, lon1, dh) for y in np.arange(lat0, lat1, dh)])
    mags = np.arange(mc, 9.05, 0.1)
    region = regions.CartesianGrid2D.from_origins(origins, dh=dh, magnitudes=mags)
    forecast = csep.load_catalog_forecast(
        str(forecast_path), start_time=start.to_pydatetime(), end_time=end.to_pydatetime(), region=region,
        type="ascii", n_cat=n_catalogs, filters=[f"magnitude >= {mc}"], apply_filters=True,
        filter_spatial=True)
    obs = observed[(observed["time"] >= start) & (observed["time"] < end)]
    rows = [(i, time_utils.datetime_to_utc_epoch(t.to_pydatetime()), la, lo, 10.0, m)
            for i, (t, lo, la, m) in enumerate(zip(obs["time"], obs["lon"], obs["lat"], obs["magnitude"]))]
    catalog = csep.catalogs.CSEPCatalog(data=rows, region=region, name="observed")
    catalog = catalog.filter_spatial(region).filter(f"magnitude >= {mc}")
    number = catalog_evaluations.number_test(forecast, catalog, verbose=False)
    spatial = catalog_evaluations.spatial_test(forecast, catalog, verbose=False)
    def finite(v):
        return float(v) if np.isfinite(v) else None  # JSON has no NaN

    result = {"grid_degrees": dh, "magnitude_min": mc, "observed_events": int(catalog.event_count),
              "number_test": {"quantile": [finite(q) for q in np.atleast_1d(number.quantile)],
                              "observed": finite(number.observed_statistic)},
              "spatial_test": {"quantile": finite(np.atleast_1d(spatial.quantile)[0]),
                               "observed": finite(spatial.observed_statistic)}}
    if result["spatial_test"]["observed"] is None:
        result["spatial_test"]["note"] = ("undefined: observed events fall in cells where no simulated event fell; "
                                          "simulate more catalogs or use a coarser grid")
    if out_dir is not None:
        import matplotlib

        matplotlib.use("Agg")
        from csep.utils import plots

        day = f"{start:%Y-%m-%d}"
        for res, plot, kind in ((number, plots.plot_number_test, "number"), (spatial, plots.plot_spatial_test, "spatial")):
            ax = plot(res, show=False)
            ax.figure.savefig(Path(out_dir) / f"csep_{kind}_test_{day}.png", dpi=100)
            result[f"{kind}_test"]["plot"] = f"csep_{kind}_test_{day}.png"
    return result
