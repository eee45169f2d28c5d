"""Hit rate and PAI (the crime field's measures of a hotspot forecast): the arithmetic on cases worked by hand, and
the whole protocol on a catalog whose events sit on known hotspots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from stforecast.hotspots import HotspotGrid, hit_rate_pai, hotspot_scores, period_starts
from stforecast.models.base import Forecaster, NextEvent, Samples
from stforecast.region import Region


def test_hit_rate_and_pai_by_hand():
    study = np.ones(100, dtype=bool)
    study[90:] = False  # 90 cells of study area: 1 % is 1 cell, 5 % is 5 cells
    counts = np.zeros((2, 100))
    counts[0, 3], counts[0, 7] = 2, 1  # period 0: 2 events in cell 3, 1 in cell 7
    counts[1, 95] = 1  # period 1: one event outside the study area: always a miss
    scores = np.zeros((2, 100))
    scores[0, 3], scores[0, 7], scores[0, 50] = 5.0, 1.0, 3.0
    scores[1, 95] = 9.0  # a score outside the study area is never a hotspot
    out = hit_rate_pai(scores, counts, study)
    assert out[0.01] == pytest.approx((2 / 4, (2 / 4) / (1 / 90)))  # the top cell (3) holds 2 of the 4 events
    assert out[0.05] == pytest.approx((3 / 4, (3 / 4) / (5 / 90)))  # cells 3, 50, 7 and two ties: 3 of 4
    assert all(math.isnan(v) for v in hit_rate_pai(scores, np.zeros_like(counts), study)[0.01])


class FakeCatalog:
    """What hotspot_scores reads of an IngestedCatalog: hours and metres, a train and a test split."""

    name = "fake"

    def __init__(self, events):
        self.events = events
        self.units = type("U", (), {"time_unit": "hours", "spatial_unit": "m"})()
        self.region = Region.of((0.0, 0.0, 3000.0, 3000.0))

    def split_start(self, split):
        return {"train": 0.0, "test": 24.0 * 70}[split]

    def split_end(self, split):
        return {"train": 24.0 * 70, "test": 24.0 * 140}[split]

    def require_continuous(self, what):
        pass


class Spot(NextEvent):
    def __init__(self, size, centre):
        self.size, self.centre = size, np.asarray(centre, float)

    def sample(self, n, rng):
        xy = self.centre + rng.normal(0, 30.0, (self.size, n, 2))
        return Samples(np.concatenate([np.ones((self.size, n, 1)), xy], -1))

    def nll(self, truth):
        raise NotImplementedError


class Fixed(Forecaster):
    """Always forecasts the next event around one place."""

    def __init__(self, centre):
        self.centre = centre

    def forecast(self, histories):
        return Spot(len(histories), self.centre)


def test_a_model_that_knows_the_hotspot_scores_high_and_one_that_does_not_scores_zero():
    rng = np.random.default_rng(0)
    n = 4000
    t = np.sort(rng.uniform(0, 24.0 * 140, n))
    hot = rng.random(n) < 0.8  # 80 % of events in one 150 m cell, the rest anywhere
    xy = np.where(hot[:, None], rng.uniform(1500, 1650, (n, 2)), rng.uniform(0, 3000, (n, 2)))
    events = pd.DataFrame({"t": t, "x": xy[:, 0], "y": xy[:, 1],
                           "split": np.where(t < 24.0 * 70, "train", "test")})
    catalog = FakeCatalog(events)
    grid = HotspotGrid.for_catalog(catalog)
    assert (grid.nx, grid.ny) == (20, 20)  # 3 km / 150 m
    train = events[events.split == "train"]
    had_event = {(int(y // 150), int(x // 150)) for x, y in zip(train.x, train.y)}
    assert set(zip(*np.unravel_index(np.flatnonzero(grid.study), (20, 20)))) == had_event  # the study area
    k = math.ceil(0.01 * grid.study.sum())
    table = hotspot_scores(catalog, {"knows": Fixed([1575, 1575]), "wrong": Fixed([300, 300])}, "test",
                           max_periods=10, samples=300).set_index("model")
    assert table.loc["knows", "hotspot_days"] == 10 and table.loc["knows", "hotspot_weeks"] == 10
    # the hotspot cell holds ~80 % of the events (+ the uniform rest's share of the top k cells at 1 %)
    assert table.loc["knows", "hit_day_1"] == pytest.approx(0.8, abs=0.06)
    assert table.loc["knows", "pai_day_1"] == pytest.approx(table.loc["knows", "hit_day_1"] / (k / grid.study.sum()))
    assert table.loc["wrong", "hit_week_5"] < 0.1 < 0.8 < table.loc["knows", "hit_week_5"]


def test_periods_are_whole_days_of_the_split_evenly_spread():
    catalog = FakeCatalog(pd.DataFrame({"t": [0.0], "x": [0.0], "y": [0.0]}))
    days = period_starts(catalog, "test", 24.0, 1000)
    assert days[0] == 24.0 * 70 and days[-1] == 24.0 * 139 and len(days) == 70
    few = period_starts(catalog, "test", 24.0, 5)
    assert len(few) == 5 and few[0] == days[0] and few[-1] == days[-1] and set(few) <= set(days)
    assert len(period_starts(catalog, "test", 168.0, 1000)) == 10  # whole weeks only


def test_a_point_on_the_far_edge_of_the_region_is_in_the_last_cell():
    grid = HotspotGrid(0.0, 0.0, 150.0, 20, 20, np.ones(400, dtype=bool))
    assert list(grid.index(np.array([[3000.0, 3000.0], [0.0, 0.0], [3000.1, 10.0], [-0.1, 10.0]]))) == [399, 0, -1, -1]
