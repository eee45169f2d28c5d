"""Hit rate and predictive accuracy index (PAI): the crime field's own measures of a forecast.

A patrol can cover a small share of a city. Each forecast ranks the cells of a fixed grid (150 m by default); the
top 1 % or 5 % of the study area are the forecast's hotspots. Over a period (a day, a week) the **hit rate** is the
share of the period's events that fall in them and the **PAI** is the hit rate divided by that area share (1 = no
better than chance; Chainey et al. 2008). Periods are pooled: hits and events are summed over them first.

Every model is scored the same way, from what every :class:`~stforecast.models.base.Forecaster` offers: at each
period's start, ``samples`` draws of the next event's location given the whole past, counted on the grid and
smoothed by a Gaussian of ``blur_cells`` cells (:data:`BLUR_CELLS`). The study area is the cells holding at least
one training event (where events are recorded at all: not the lake, not outside the city); events elsewhere count
as misses.

    grid = HotspotGrid.for_catalog(catalog)            # 150 m cells over the catalog's region, its study area
    table = hotspot_scores(catalog, models, "test")   # one row per model: hit_day_1, pai_day_1, ... hit_week_5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stforecast.catalog import SECONDS_PER
from stforecast.models.base import MARK_COLUMNS, Histories

#: area shares the hotspots cover, and the periods a forecast is scored over (hours)
SHARES = (0.01, 0.05)
PERIOD_HOURS = {"day": 24.0, "week": 168.0}
CELL_M = 150.0
#: the Gaussian that turns a forecast's location samples into a surface, in cells (2 x 150 m: the few-hundred-metre
#: bandwidths of crime hotspot maps)
BLUR_CELLS = 2.0


@dataclass
class HotspotGrid:
    """Square cells of side ``cell`` (model units) from (``x0``, ``y0``): ``nx`` by ``ny``; ``study`` (ny * nx,)
    True on the cells of the study area."""

    x0: float
    y0: float
    cell: float
    nx: int
    ny: int
    study: np.ndarray

    @classmethod
    def for_catalog(cls, catalog, cell_m: float = CELL_M) -> "HotspotGrid":
        unit = catalog.units.spatial_unit
        if unit not in ("m", "km"):
            raise ValueError(f"{catalog.name}: hotspot grids need a metric catalog (m or km), not {unit!r}")
        cell = cell_m if unit == "m" else cell_m / 1000.0
        box = catalog.region
        nx, ny = max(1, math.ceil((box.x1 - box.x0) / cell)), max(1, math.ceil((box.y1 - box.y0) / cell))
        grid = cls(box.x0, box.y0, cell, nx, ny, np.zeros(nx * ny, dtype=bool))
        train = catalog.events
        train = train[train["split"] == "train"] if "split" in train else train
        index = grid.index(train[["x", "y"]].to_numpy())
        grid.study[index[index >= 0]] = True
        return grid

    def index(self, xy: np.ndarray) -> np.ndarray:
        """Flat cell index of each location (..., 2); -1 outside the grid."""
        ix = np.floor((xy[..., 0] - self.x0) / self.cell)
        iy = np.floor((xy[..., 1] - self.y0) / self.cell)
        # a point on the grid's far edge (the region's, when its width is a whole number of cells) is in its last cell
        ix = np.where((ix == self.nx) & (xy[..., 0] <= self.x0 + self.nx * self.cell), self.nx - 1, ix)
        iy = np.where((iy == self.ny) & (xy[..., 1] <= self.y0 + self.ny * self.cell), self.ny - 1, iy)
        inside = (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        return np.where(inside, iy * self.nx + ix, -1).astype(np.int64)

    def counts(self, xy: np.ndarray) -> np.ndarray:
        """(C,) how many of the locations (n, 2) fall in each cell."""
        index = self.index(np.asarray(xy, float))
        return np.bincount(index[index >= 0], minlength=self.nx * self.ny).astype(float)


def hit_rate_pai(scores: np.ndarray, counts: np.ndarray, study: np.ndarray, shares=SHARES) -> dict:
    """Pooled hit rate and PAI per area share. ``scores`` (P, C) each period's forecast per cell (higher = more
    likely), ``counts`` (P, C) the events of each period per cell, ``study`` (C,) the study area. Ties in a score are
    broken by cell order, the same for every model. Returns {share: (hit rate, PAI)}; NaN without events."""
    cells = np.flatnonzero(study)
    total = float(np.asarray(counts).sum())
    out = {}
    for share in shares:
        k = max(1, math.ceil(share * len(cells)))
        hits = 0.0
        for score, count in zip(scores, counts):
            top = cells[np.argsort(-score[cells], kind="stable")[:k]]
            hits += float(count[top].sum())
        rate = hits / total if total else math.nan
        out[share] = (rate, rate / (k / len(cells)) if total else math.nan)
    return out


def period_starts(catalog, split: str, hours: float, max_periods: int) -> np.ndarray:
    """Starts (model time) of the whole periods of ``hours`` inside ``split``, counted in elapsed hours from the
    model time origin (the local midnight the catalog starts at: in the other half of the year, with daylight
    saving time, days start at 01:00 local), at most ``max_periods`` of them, evenly spread."""
    per_hour = 3600.0 / SECONDS_PER[catalog.units.time_unit]
    length = hours * per_hour
    lo, hi = catalog.split_start(split), catalog.split_end(split)
    first = math.ceil(lo / length - 1e-9) * length
    starts = np.arange(first, hi - length + 1e-9, length)
    if len(starts) > max_periods:
        starts = starts[np.unique(np.linspace(0, len(starts) - 1, max_periods).round().astype(int))]
    return starts


def hotspot_scores(catalog, models: dict, split: str = "test", cell_m: float = CELL_M, max_periods: int = 60,
                   samples: int = 500, seed: int = 0, blur_cells: float = BLUR_CELLS) -> pd.DataFrame:
    """One row per model (name → Forecaster): ``hit_{period}_{pct}`` and ``pai_{period}_{pct}`` for each period of
    :data:`PERIOD_HOURS` and share of :data:`SHARES`, with ``hotspot_days`` / ``hotspot_weeks`` (periods scored)
    and ``hotspot_cell`` (m). See the module docstring for the protocol."""
    from scipy.ndimage import gaussian_filter

    catalog.require_continuous("hit rate and PAI")
    grid = HotspotGrid.for_catalog(catalog, cell_m)
    events = catalog.events
    t, xy = events["t"].to_numpy(), events[["x", "y"]].to_numpy()
    marks = {c: events[c].to_numpy() for c in MARK_COLUMNS if c in events}
    per_hour = 3600.0 / SECONDS_PER[catalog.units.time_unit]
    rows = {name: {"model": name} for name in models}
    for period, hours in PERIOD_HOURS.items():
        starts = period_starts(catalog, split, hours, max_periods)
        index = np.searchsorted(t, starts)
        starts, index = starts[index >= 1], index[index >= 1]  # a forecast needs a past
        ends = np.searchsorted(t, starts + hours * per_hour)
        counts = np.stack([grid.counts(xy[a:b]) for a, b in zip(index, ends)]) if len(starts) else np.zeros((0, 1))
        for name, model in models.items():
            if len(starts) == 0:
                result = {s: (math.nan, math.nan) for s in SHARES}
            else:
                h = Histories.from_stream(t, xy, index, model.context, marks)
                drawn = model.forecast(h).sample(samples, np.random.default_rng(seed)).events[..., 1:3]
                scores = np.stack([gaussian_filter(grid.counts(d).reshape(grid.ny, grid.nx), blur_cells).ravel()
                                   for d in drawn])
                result = hit_rate_pai(scores, counts, grid.study)
            for share, (rate, pai) in result.items():
                pct = round(share * 100)
                rows[name][f"hit_{period}_{pct}"], rows[name][f"pai_{period}_{pct}"] = rate, pai
            rows[name][f"hotspot_{period}s"] = len(starts)
    for row in rows.values():
        row["hotspot_cell"] = cell_m
    return pd.DataFrame(list(rows.values()))
