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

from stforecast.density import density_on_grid


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
        g = density_on_grid(events.loc[sel, ["x", "y"]].to_numpy(), x, y, schema.get("crs_model"))
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
    g = density_on_grid(samples[["x", "y"]].to_numpy(), x, y, schema.get("crs_model"))
    unit = schema.get("spatial_unit", "")
    return _dataset({"density": (("y", "x"), g.density,
                                 {"long_name": "probability density of the next event's location",
                                  "units": f"{unit}-2"})}, x, y, schema, attrs or {})


def write_netcdf(ds, path) -> Path:
    """Write atomically (temp file, then rename)."""
    from stforecast.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp)
    return Path(path)


def _length_text(v: float, unit: str) -> str:
    if unit == "m" and v >= 1000:
        v, unit = v / 1000, "km"
    return f"{v:.3g} {unit}".strip() if v < 1000 else f"{v:.0f} {unit}".strip()


def cell_size_text(da) -> str:
    """The size of one grid cell of ``da`` in its own units, e.g. ``12.3 km × 12.3 km``."""
    unit = da["x"].attrs.get("units", "")
    dx, dy = (float(abs(da[c].values[1] - da[c].values[0])) for c in ("x", "y"))
    return f"{_length_text(dx, unit)} × {_length_text(dy, unit)}"


def _plain(text: str) -> str:
    """Text matplotlib draws as it is: a ``$`` from data would otherwise start mathtext (and may fail to parse)."""
    return str(text).replace("$", r"\$")


def _draw_basemap(ax, lon_range, lat_range) -> None:
    """Natural Earth countries (bundled) under and their borders/coastlines over the forecast, clipped to view."""
    import json

    import shapely
    from shapely.geometry import shape

    from stforecast.maps import LAND_STYLE, SEA_COLOUR, basemap_geojson

    view = shapely.box(lon_range[0], lat_range[0], lon_range[1], lat_range[1]).buffer(1.0)
    ax.set_facecolor(SEA_COLOUR)
    for feature in json.loads(basemap_geojson())["features"]:
        geom = shape(feature["geometry"]).intersection(view)
        if geom.is_empty:
            continue
        for poly in getattr(geom, "geoms", [geom]):
            if poly.geom_type != "Polygon":
                continue
            x, y = poly.exterior.xy
            ax.fill(x, y, color=LAND_STYLE["fillColor"], zorder=0, linewidth=0)
            ax.plot(x, y, color="#3a3a3a", linewidth=0.8, zorder=3)


def plot_grid(da, path, title: str = "", observed: pd.DataFrame | None = None, basemap: bool | None = None) -> Path:
    """A static PNG of a 2-D (y, x) grid (one lead time), with observed events as dots.

    Geographic grids (with 2-D ``lon``/``lat`` coordinates; ``basemap`` None = whenever they are there) are drawn
    in lon/lat over the bundled Natural Earth countries, their borders and coastlines on top, cells holding a
    negligible share (< 0.1 % of the peak) left clear; observed events use their ``lon``/``lat`` columns, or
    their model ``x``/``y`` placed through the grid's coordinates. Pixel frames keep their own ``x``/``y``.
    The colour bar says the cell size ("... per 12.3 km × 12.3 km cell")."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geographic = ("lon" in da.coords and "lat" in da.coords) if basemap is None else bool(basemap)
    label = str(da.attrs.get("long_name", da.name))
    size = cell_size_text(da)
    label = (re.sub(r"\bper (grid )?cell\b", f"per {size} cell", label) if re.search(r"\bper (grid )?cell\b", label)
             else f"{label} (cells of {size})")
    fig, ax = plt.subplots(figsize=(7, 5.5))
    values = np.asarray(da.values, float)
    if geographic:
        lon, lat = np.asarray(da["lon"].values, float), np.asarray(da["lat"].values, float)
        peak = np.nanmax(values) if np.isfinite(values).any() else 0.0
        shown = np.ma.masked_where(~(values > 1e-3 * peak), values) if peak > 0 else values
        mesh = ax.pcolormesh(lon, lat, shown, shading="nearest", cmap="magma_r", zorder=1)
        squash = np.cos(np.deg2rad(np.clip((lat.min() + lat.max()) / 2, -80, 80)))  # degrees of lon per lat, in km
        # a long thin grid gets a wider view (at least 3:4) so there is a coastline or border to place it by
        half_w, half_h = (lon.max() - lon.min()) / 2 * squash, (lat.max() - lat.min()) / 2
        half_w, half_h = max(half_w, 0.75 * half_h), max(half_h, 0.75 * half_w)
        mid_lon, mid_lat = (lon.min() + lon.max()) / 2, (lat.min() + lat.max()) / 2
        lon_range = (mid_lon - half_w / squash, mid_lon + half_w / squash)
        lat_range = (mid_lat - half_h, mid_lat + half_h)
        _draw_basemap(ax, lon_range, lat_range)
        ax.set(xlim=lon_range, ylim=lat_range, xlabel="longitude (°)", ylabel="latitude (°)")
        ax.set_aspect(1 / squash)
    else:
        mesh = ax.pcolormesh(da["x"], da["y"], values, shading="auto", cmap="magma_r")
        unit = da["x"].attrs.get("units", "")
        ax.set(xlabel=f"x ({unit})", ylabel=f"y ({unit})", aspect="equal")
    fig.colorbar(mesh, ax=ax, label=_plain(label), shrink=0.85)
    if observed is not None and len(observed):
        if not geographic:
            ox, oy = observed["x"], observed["y"]
        elif {"lon", "lat"} <= set(observed.columns):
            ox, oy = observed["lon"], observed["lat"]
        else:  # model coordinates: through the grid's own lon/lat (NaN, so not drawn, outside the grid)
            import xarray as xr

            at = {"x": xr.DataArray(observed["x"].to_numpy()), "y": xr.DataArray(observed["y"].to_numpy())}
            ox, oy = da["lon"].interp(at).values, da["lat"].interp(at).values
        ax.scatter(ox, oy, s=6, c="tab:cyan", edgecolors="k", linewidths=0.3, label="observed events", zorder=4)
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(_plain(title))
    fig.tight_layout()
    from stforecast.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
