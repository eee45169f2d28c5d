"""Density grids and highest-density contours: the mass inside a p contour is p."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from stforecast.density import DensityGrid, kde_grid, mass_contours

AEQD = "+proj=aeqd +lat_0=35 +lon_0=139 +datum=WGS84 +units=km +no_defs"


def gaussian_grid(sx=30.0, sy=15.0, n=400):
    x = np.linspace(-6 * sx, 6 * sx, n)
    y = np.linspace(-6 * sy, 6 * sy, n)
    gx, gy = np.meshgrid(x, y)
    dens = np.exp(-0.5 * ((gx / sx) ** 2 + (gy / sy) ** 2)) / (2 * np.pi * sx * sy)
    return DensityGrid(x, y, dens, None)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_thresholds_of_an_exact_gaussian_enclose_the_analytic_ellipse(level):
    grid = gaussian_grid()
    t = grid.mass_thresholds([level])[level]
    # the p-HDR of a 2-D Gaussian is the ellipse of squared Mahalanobis radius −2 log(1 − p)
    r2 = -2 * np.log(1 - level)
    assert t == pytest.approx(np.exp(-r2 / 2) / (2 * np.pi * 30 * 15), rel=0.02)
    assert grid.mass_inside(t) == pytest.approx(level, abs=0.005)


def test_mass_inside_the_80_percent_contour_of_a_known_gaussian(tmp_path):
    rng = np.random.default_rng(0)
    cov = np.array([[900.0, 300.0], [300.0, 400.0]])  # km², correlated
    samples = rng.multivariate_normal([0, 0], cov, 8_000)  # the KDE widens the regions a little: +0.014 at 95 %
    grid = kde_grid(samples, crs=AEQD)
    contours = mass_contours(grid, levels=(0.5, 0.8, 0.95), to_crs=None)
    assert list(contours["level"]) == [0.95, 0.8, 0.5]
    fresh = rng.multivariate_normal([0, 0], cov, 50_000)
    for _, row in contours.iterrows():
        inside = shapely.contains_xy(row.geometry, fresh[:, 0], fresh[:, 1]).mean()
        assert inside == pytest.approx(row.level, abs=0.02), row.level
    # projected to lon/lat, the 80 % region is around the projection centre and keeps its area
    ll = mass_contours(grid, levels=(0.8,))
    assert str(ll.crs) == "EPSG:4326"
    c = ll.geometry.iloc[0].centroid
    assert abs(c.x - 139) < 0.2 and abs(c.y - 35) < 0.2
    area_km2 = ll.to_crs(AEQD).area.iloc[0]
    assert area_km2 == pytest.approx(contours.set_index("level").geometry[0.8].area, rel=0.01)


def test_contours_of_a_bimodal_forecast_are_two_polygons_and_rings_have_holes():
    rng = np.random.default_rng(1)
    a = rng.normal([-100, 0], 10, (2000, 2))
    b = rng.normal([100, 0], 10, (2000, 2))
    contours = mass_contours(kde_grid(np.vstack([a, b])), levels=(0.5,), to_crs=None)
    geom = contours.geometry.iloc[0]
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    angle = rng.uniform(0, 2 * np.pi, 3000)
    ring = 60 * np.column_stack([np.cos(angle), np.sin(angle)]) + rng.normal(0, 5, (3000, 2))
    g = mass_contours(kde_grid(ring), levels=(0.8,), to_crs=None).geometry.iloc[0]
    polys = list(getattr(g, "geoms", [g]))
    assert any(len(p.interiors) == 1 for p in polys)  # the empty middle is a hole
    assert not g.contains(shapely.Point(0, 0))


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="samples"):
        kde_grid(np.zeros((2, 2)))
