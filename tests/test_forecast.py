"""Next-event and horizon forecasts: ids stay straight, every draw sees its own newest event, caps are reported."""

from __future__ import annotations

import numpy as np
import pytest

from stforecast.forecast import next_event, simulate_horizon
from stforecast.models.base import Forecaster, Histories, NextEvent, Samples


class Echo(Forecaster):
    """A stand-in model that makes errors visible: the next event's x is (last x) + 1, its y is the simulation's
    own starting mark carried forward, and its waiting time is random (so simulations end at different times)."""

    context = 128

    def __init__(self):
        self.calls, self.seen = [], []

    def forecast(self, histories: Histories) -> NextEvent:
        self.calls.append(len(histories))
        self.seen.append(histories.xy[:, :, 0].copy())
        last = histories.xy[:, -1]

        class Draws(NextEvent):
            def sample(self, n, rng):
                dt = rng.random((len(last), n)) * 2.0 + 0.05
                x = np.repeat(last[:, :1] + 1, n, 1)
                y = np.repeat(last[:, 1:2], n, 1)
                return Samples(np.stack([dt, x, y], -1))

            def nll(self, truth):
                raise AssertionError("simulation never asks for a likelihood")

        return Draws()


def test_horizon_ids_stay_straight_and_each_draw_sees_its_newest_event():
    model = Echo()
    t_hist = np.array([0.0, 1.0, 2.0])
    xy_hist = np.array([[0.0, 7.0], [1.0, 7.0], [2.0, 7.0]])
    fc = simulate_horizon(model, t_hist, xy_hist, t_end=12.0, m=50, max_events=100, seed=3)
    ev = fc.events
    assert len(set(model.calls)) > 1  # simulations retired at different steps
    for sim, g in ev.groupby("simulation"):
        g = g.sort_values("index")
        # x counts up from the last observed x: every draw conditioned on this simulation's newest event
        assert g["x"].tolist() == [3.0 + k for k in range(len(g))]
        assert (g["y"] == 7.0).all()
        assert np.allclose(np.diff(np.r_[2.0, g["t"].to_numpy()]), g["dt"].to_numpy())
        assert (g["t"] < 12.0).all() and g["index"].tolist() == list(range(len(g)))
    assert (fc.counts == np.bincount(ev["simulation"], minlength=50)).all()
    assert fc.counts.std() > 0 and not fc.capped.any()


def test_cap_is_enforced_and_warned():
    model = Echo()
    with pytest.warns(RuntimeWarning, match="hit max_events=5"):
        fc = simulate_horizon(model, [0.0], [[0.0, 1.0]], t_end=1e9, m=8, max_events=5)
    assert fc.capped.all() and (fc.counts == 5).all()


def test_history_window_is_the_most_recent_events():
    spy = Echo()
    t = np.arange(10.0)
    xy = np.column_stack([np.arange(10.0), np.zeros(10)])
    simulate_horizon(spy, t, xy, t_end=10.5, m=3, max_history=4, seed=0)
    assert spy.seen[0][0].tolist() == [6.0, 7.0, 8.0, 9.0]
    out = next_event(spy, t, xy, n=5, max_history=4)
    assert spy.seen[-1][0].tolist() == [6.0, 7.0, 8.0, 9.0] and len(out) == 5 and (out["x"] == 10.0).all()


def test_horizon_with_a_real_model_runs():
    from tests.test_model import model as tiny_model

    m = tiny_model()
    fc = simulate_horizon(m, np.array([0.0, 0.5, 1.2]), np.array([[0.0, 0.0], [5.0, 3.0], [-2.0, 1.0]]),
                          t_end=3.0, m=6, max_events=50)
    assert len(fc.counts) == 6 and (fc.events["t"] < 3.0).all() and (fc.events["dt"] > 0).all()
