"""xarray forecast grids: expected counts add up, CF coordinates and CRS are present, NetCDF round-trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stforecast.grids import expected_count_grid, grid_axes, next_event_grid, plot_grid, write_netcdf

SCHEMA = {"time_unit": "days", "spatial_unit": "km", "crs_input": "EPSG:4326",
          "crs_model": "+proj=aeqd +lat_0=35 +lon_0=139 +datum=WGS84 +units=km +no_defs"}


def simulated(m=50, seed=0):
    """m simulations from t = 10: a Poisson number of events per day for 3 days, located around (0, 0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sim in range(m):
        for day, rate in enumerate([6.0, 3.0, 1.0]):
            k = rng.poisson(rate)
            rows += [(sim, 10 + day + rng.uniform(), *rng.normal(0, 40, 2)) for _ in range(k)]
    return pd.DataFrame(rows, columns=["simulation", "t", "x", "y"])


def test_expected_counts_sum_to_the_mean_simulated_count_per_lead_bin(tmp_path):
    ev = simulated()
    x, y = grid_axes((-400, -400, 400, 400), shape=(80, 100))
    ds = expected_count_grid(ev, 50, 10.0, [0, 1, 2, 3], x, y, SCHEMA, {"model": "test"})
    assert ds["expected_count"].dims == ("lead_time", "y", "x") and ds.sizes["lead_time"] == 3
    per_bin = ds["expected_count"].sum(("y", "x")).values
    observed = np.histogram(ev["t"] - 10, [0, 1, 2, 3])[0] / 50
    assert np.allclose(per_bin, observed, rtol=0.01)  # the grid covers > 99 % of each bin's KDE mass
    assert np.allclose(ds["events_mean"], observed)
    assert list(pd.to_timedelta(ds["lead_time"].values)) == [pd.Timedelta(days=d) for d in (1, 2, 3)]
    # geographic coordinates and the grid mapping are there, and the centre is the projection centre
    assert ds["lon"].dims == ("y", "x") and ds["expected_count"].attrs["grid_mapping"] == "crs"
    assert float(ds["lon"].interp(x=0, y=0)) == pytest.approx(139, abs=0.01)
    path = write_netcdf(ds, tmp_path / "forecast.nc")
    back = xr.open_dataset(path)
    assert np.allclose(back["expected_count"], ds["expected_count"]) and "crs_wkt" in back["crs"].attrs
    assert back.attrs["Conventions"] == "CF-1.8" and back.attrs["model"] == "test"
    back.close()
    png = plot_grid(ds["expected_count"].isel(lead_time=0), tmp_path / "f.png", "day 1", ev.head(20))
    assert png.stat().st_size > 10_000


def test_next_event_density_integrates_to_one_on_a_covering_grid():
    rng = np.random.default_rng(1)
    samples = pd.DataFrame(rng.normal([50, -20], [30, 10], (2000, 2)), columns=["x", "y"])
    x, y = grid_axes((-150, -120, 250, 80), shape=(100, 200))
    ds = next_event_grid(samples, x, y, SCHEMA)
    cell = (x[1] - x[0]) * (y[1] - y[0])
    assert float(ds["density"].sum()) * cell == pytest.approx(1.0, abs=0.01)
    assert ds["density"].attrs["units"] == "km-2"


def test_a_pixel_frame_has_no_geographic_coordinates():
    schema = {"time_unit": "seconds", "spatial_unit": "pixel", "crs_input": None, "crs_model": None}
    ev = simulated().assign(x=lambda f: f.x + 300, y=lambda f: f.y + 200)
    x, y = grid_axes((0, 0, 600, 400), shape=(40, 60))
    ds = expected_count_grid(ev, 50, 10.0, [0, 3], x, y, schema)
    assert "lon" not in ds.coords and "crs" not in ds and ds["x"].attrs["units"] == "pixel"
