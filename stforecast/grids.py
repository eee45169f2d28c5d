"""Gridded forecasts as xarray datasets (CF-style, written to NetCDF) and a static PNG of the same forecast.

    simulated continuations (HorizonForecast.events) ─expected_count_grid─▶ Dataset (lead_time, y, x)
    next-event samples ─next_event_grid─▶ Dataset (y, x)

``expected_count`` is the expected number of events per cell in each lead-time bin: the mean number of simulated
events in the bin (over all simulations, including those with none) times a KDE of where they fell. The grid is
in the catalog's metric CRS (``x``/``y`` projection coordinates in km, m or pixels) with 2-D ``lon``/``lat``
auxiliary coordinates and a ``crs`` grid-mapping variable, so GIS tools place it without guessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stforecast.density import DensityGrid


def _grid_like(x: np.ndarray, y: np.ndarray, samples: np.ndarray, crs) -> DensityGrid:
    """The Gaussian KDE (Scott's rule) of ``samples`` at the fixed cell centres ``x``, ``y``; mass falling outside
    the grid stays outside. Zero where there are too few samples to estimate a density."""
    from scipy.stats import gaussian_kde

    if len(samples) < 3 or np.ptp(samples[:, 0]) == 0 or np.ptp(samples[:, 1]) == 0:
        return DensityGrid(x, y, np.zeros((len(y), len(x))), crs)
    gx, gy = np.meshgrid(x, y)
    dens = gaussian_kde(samples.T)(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    return DensityGrid(x, y, dens, crs)


def grid_axes(bounds, shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres for ``bounds`` (xmin, ymin, xmax, ymax) split into ``shape`` = (ny, nx) cells."""
    x0, y0, x1, y1 = bounds
    ny, nx = shape
    return x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx, y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny


def _dataset(data_vars: dict, x, y, schema: dict, attrs: dict, extra_coords: dict | None = None):
    import xarray as xr

    unit = schema.get("spatial_unit", "")
    coords = {"x": ("x", x, {"standard_name": "projection_x_coordinate", "units": unit, "axis": "X"}),
              "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": unit, "axis": "Y"}),
              **(extra_coords or {})}
    ds = xr.Dataset(data_vars, coords=coords)
    crs = schema.get("crs_model")
    if crs:
        from pyproj import CRS, Transformer

        gx, gy = np.meshgrid(x, y)
        lon, lat = Transformer.from_crs(crs, schema.get("crs_input") or "EPSG:4326", always_xy=True).transform(gx, gy)
        ds = ds.assign_coords(lon=(("y", "x"), lon, {"standard_name": "longitude", "units": "degrees_east"}),
                              lat=(("y", "x"), lat, {"standard_name": "latitude", "units": "degrees_north"}))
        ds["crs"] = ((), 0, {"crs_wkt": CRS.from_user_input(crs).to_wkt(), "proj4": crs})
        for name in data_vars:
            ds[name].attrs.update(grid_mapping="crs", coordinates="lat lon")
    ds.attrs.update({"Conventions": "CF-1.8", "institution": "stforecast",
                     "history": f"{pd.Timestamp.now(tz='UTC'):%Y-%m-%dT%H:%M:%SZ} created by stforecast",
                     **{k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in attrs.items()}})
    return ds


def expected_count_grid(events: pd.DataFrame, n_simulations: int, t_start: float, lead_edges, x, y, schema: dict,
                        attrs: dict | None = None):
    """``events`` with model-unit ``t, x, y`` from ``n_simulations`` continuations starting at ``t_start``;
    ``lead_edges`` (L+1,) in model units → Dataset with ``expected_count`` (lead_time, y, x) and ``events_mean``
    (lead_time,). Lead time is a CF time delta (the end of each bin)."""
    from stforecast.catalog import SECONDS_PER

    edges = np.asarray(lead_edges, float)
    lead = events["t"].to_numpy() - t_start
    cell = (x[1] - x[0]) * (y[1] - y[0])
    grids, means = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (lead >= a) & (lead < b)
        mean = sel.sum() / n_simulations
        g = _grid_like(x, y, events.loc[sel, ["x", "y"]].to_numpy(), schema.get("crs_model"))
        grids.append(mean * g.density * cell)
        means.append(mean)
    lead_time = pd.to_timedelta(edges[1:] * SECONDS_PER[schema["time_unit"]], unit="s")
    return _dataset(
        {"expected_count": (("lead_time", "y", "x"), np.stack(grids),
                            {"long_name": "expected number of events per grid cell in the lead-time bin",
                             "units": "1", "cell_area": f"{cell:g} {schema.get('spatial_unit', '')}^2"}),
         "events_mean": (("lead_time",), np.array(means),
                         {"long_name": "mean number of simulated events in the lead-time bin", "units": "1"})},
        x, y, schema, {"simulations": n_simulations, **(attrs or {})},
        {"lead_time": ("lead_time", lead_time.to_numpy(), {"long_name": "end of the lead-time bin"})})


def next_event_grid(samples: pd.DataFrame, x, y, schema: dict, attrs: dict | None = None):
    """Next-event location density per unit area (y, x) from samples with model-unit ``x, y``."""
    g = _grid_like(x, y, samples[["x", "y"]].to_numpy(), schema.get("crs_model"))
    unit = schema.get("spatial_unit", "")
    return _dataset({"density": (("y", "x"), g.density,
                                 {"long_name": "probability density of the next event's location",
                                  "units": f"{unit}-2"})}, x, y, schema, attrs or {})


def write_netcdf(ds, path) -> Path:
    """Write atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    ds.to_netcdf(tmp)
    tmp.replace(path)
    return path


def plot_grid(da, path, title: str = "", observed: pd.DataFrame | None = None) -> Path:
    """A static PNG of a 2-D (y, x) grid (one lead time), with observed events as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    mesh = ax.pcolormesh(da["x"], da["y"], da.values, shading="auto", cmap="magma_r")
    fig.colorbar(mesh, ax=ax, label=da.attrs.get("long_name", da.name))
    if observed is not None and len(observed):
        ax.scatter(observed["x"], observed["y"], s=6, c="tab:cyan", edgecolors="k", linewidths=0.3,
                   label="observed events")
        ax.legend(loc="upper right", fontsize=8)
    unit = da["x"].attrs.get("units", "")
    ax.set(xlabel=f"x ({unit})", ylabel=f"y ({unit})", title=title, aspect="equal")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
