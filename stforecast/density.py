"""Forecast densities on a grid, and the regions holding a given share of the forecast mass as polygons.

    samples (n, 2) in the catalog's metric CRS ─kde_grid─▶ DensityGrid (ny, nx) ─mass_contours─▶ polygons (lon/lat)

Densities are estimated in the metric model CRS (km or m, azimuthal equidistant about the catalog), where a
Gaussian kernel is isotropic; only the finished polygons are projected to lon/lat. A "p contour" is the boundary
of the highest-density region holding probability p (Hyndman 1996): its density threshold comes from sorting
the grid's cell masses, not from fixed density values. Contouring is contourpy's; geometry is shapely's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DensityGrid:
    """Probability density per unit area on a regular grid of cell centres ``x`` (nx,), ``y`` (ny,):
    ``density`` (ny, nx), normalised so that the cells hold total mass 1 (the grid covers the forecast)."""

    x: np.ndarray
    y: np.ndarray
    density: np.ndarray
    crs: str | None = None  # the CRS of x and y (a proj string); None for pixel frames

    @property
    def cell_area(self) -> float:
        return float((self.x[1] - self.x[0]) * (self.y[1] - self.y[0]))

    def mass_thresholds(self, levels) -> dict[float, float]:
        """Density threshold of the highest-density region holding each probability ``level``."""
        mass = np.sort(self.density.ravel())[::-1] * self.cell_area
        cum = np.cumsum(mass)
        out = {}
        for level in levels:
            i = min(int(np.searchsorted(cum, level * cum[-1])), len(mass) - 1)
            out[float(level)] = float(mass[i] / self.cell_area)
        return out

    def mass_inside(self, threshold: float) -> float:
        return float(self.density[self.density >= threshold].sum() * self.cell_area)


def kde_grid(samples: np.ndarray, shape: tuple[int, int] = (160, 200), bounds=None, bandwidth="scott",
             crs: str | None = None, pad: float = 3.0) -> DensityGrid:
    """Gaussian KDE of ``samples`` (n, 2) on a ``shape`` = (ny, nx) grid. ``bounds`` (xmin, ymin, xmax, ymax)
    defaults to the samples' extent padded by ``pad`` kernel widths, so the grid holds nearly all the mass.
    ``bandwidth``: "scott", "silverman" or a factor (scipy's ``bw_method``)."""
    from scipy.stats import gaussian_kde

    s = np.asarray(samples, float)
    if s.ndim != 2 or s.shape[1] != 2 or len(s) < 3:
        raise ValueError(f"kde_grid needs (n >= 3, 2) samples, got shape {s.shape}")
    kde = gaussian_kde(s.T, bw_method=bandwidth)
    if bounds is None:
        width = pad * np.sqrt(np.diag(kde.covariance))
        lo, hi = s.min(0) - width, s.max(0) + width
        bounds = (lo[0], lo[1], hi[0], hi[1])
    x0, y0, x1, y1 = bounds
    ny, nx = shape
    # cell centres: the cell edges are the bounds
    x = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
    y = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
    grid = density_on_grid(s, x, y, crs, bandwidth)
    grid.density = grid.density / (grid.density.sum() * grid.cell_area)  # the mass the grid misses is spread back
    return grid


def density_on_grid(samples: np.ndarray, x: np.ndarray, y: np.ndarray, crs: str | None = None,
                    bandwidth="scott") -> DensityGrid:
    """The one KDE-on-a-grid: the Gaussian KDE of ``samples`` (n, 2) at the cell centres ``x`` (nx,), ``y``
    (ny,); mass falling outside the grid stays outside. Zero where there are too few samples (or no spread) to
    estimate a density."""
    from scipy.stats import gaussian_kde

    s = np.asarray(samples, float)
    if len(s) < 3 or np.ptp(s[:, 0]) == 0 or np.ptp(s[:, 1]) == 0:
        return DensityGrid(x, y, np.zeros((len(y), len(x))), crs)
    gx, gy = np.meshgrid(x, y)
    dens = gaussian_kde(s.T, bw_method=bandwidth)(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    return DensityGrid(x, y, dens, crs)


def mass_contours(grid: DensityGrid, levels=(0.5, 0.8, 0.95), to_crs: str | None = "EPSG:4326",
                  lon_center: float | None = None):
    """Highest-density regions as a GeoDataFrame: one row per level (``level``, ``threshold``, ``mass`` on the
    grid, ``geometry`` a (Multi)Polygon with holes), largest region first so smaller ones draw on top. Coordinates
    are projected from ``grid.crs`` to ``to_crs`` (None keeps the grid's frame, e.g. pixels); with ``lon_center``
    longitudes stay within 180° of it (:func:`stforecast.ingested.unwrap_longitudes`), so a region across the
    antimeridian is drawn where it is instead of around the globe.

    Each region is the superlevel set {density ≥ threshold} of the one grid, with thresholds falling as the level
    rises: the 50 % region lies inside the 80 % one, which lies inside the 95 % one, by construction; every
    region lies on the grid (a catalog's region grid: :meth:`stforecast.ingested.IngestedCatalog.view_box`)."""
    import contourpy
    import geopandas as gpd
    import shapely

    gen = contourpy.contour_generator(grid.x, grid.y, grid.density, fill_type=contourpy.FillType.OuterOffset)
    rows = []
    for level, threshold in sorted(grid.mass_thresholds(levels).items(), reverse=True):
        polygons = []
        points, offsets = gen.filled(threshold, np.inf)
        for pts, offs in zip(points, offsets):
            rings = [pts[a:b] for a, b in zip(offs[:-1], offs[1:])]
            polygons.append(shapely.Polygon(rings[0], rings[1:]))
        geom = shapely.make_valid(shapely.MultiPolygon(polygons)) if polygons else shapely.MultiPolygon()
        rows.append({"level": level, "threshold": threshold, "mass": grid.mass_inside(threshold), "geometry": geom})
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=grid.crs if grid.crs else None)
    if to_crs is not None and grid.crs:
        frame = frame.to_crs(to_crs)
        if lon_center is not None:
            from stforecast.ingested import unwrap_longitudes

            frame = frame.set_geometry(shapely.transform(
                frame.geometry.to_numpy(), lambda xy: np.column_stack([unwrap_longitudes(xy[:, 0], lon_center),
                                                                      xy[:, 1]])), crs=frame.crs)
        # reprojecting a region hundreds of km wide can fold its rings, and an invalid polygon answers
        # point-in-polygon wrongly
        frame = frame.set_geometry(shapely.make_valid(frame.geometry.to_numpy()), crs=frame.crs)
    return frame
