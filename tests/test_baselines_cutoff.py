"""ETAS and Hawkes condition on the past their kernels still weigh (a time cut-off, not a fixed count of events),
fit the same likelihood they are scored with, choose ETAS's spatial kernel on validation events, and keep all of it
through the JSON fit cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from stforecast.baselines.etas import ETAS
from stforecast.baselines.etas_kernel import _tied, omori_cutoff
from stforecast.baselines.etas_simulation import simulate_etas
from stforecast.baselines.hawkes import HawkesST, UniformBox, simulate_hawkes
from stforecast.models.base import Histories
from stforecast.models.marks import max_curvature_mc

BOX = (0.0, 0.0, 20.0, 20.0)
HAWKES = {"mu": 5.0, "alpha": 0.6, "beta": 0.5, "sigma": 0.4}  # ~120 events within the 1 % lag ln(100)/β ≈ 9.2
ETAS_BOX = (0.0, 0.0, 200.0, 200.0)
ETAS_TRUE = {"mu": 0.3, "A": 0.25, "alpha": 1.0, "c": 0.02, "p": 1.3, "D": 1.5, "q": 1.8, "gamma": 0.6}


def _hawkes(params, cutoff, max_lag):
    model = HawkesST(background=BOX, max_lag=max_lag)
    model.background = UniformBox(BOX)
    model.mu, model.alpha, model.beta, model.sigma = (params[k] for k in ("mu", "alpha", "beta", "sigma"))
    model.cutoff = cutoff
    return model


def _etas(params, variant, cutoff, max_lag):
    model = ETAS(3.0, background=ETAS_BOX, max_lag=max_lag)
    model.background = UniformBox(ETAS_BOX)
    q = params.get("q", 2.0)
    model.variant, model.cutoff = variant, cutoff
    model.theta = _tied([math.log(params["mu"]), math.log(params["A"]), params["alpha"], math.log(params["c"]),
                         math.log(params["p"] - 1), math.log(params["D"]), math.log(q - 1),
                         params.get("gamma", params["alpha"])], variant)
    return model


@pytest.fixture(scope="module")
def hawkes_catalog():
    return simulate_hawkes(**HAWKES, bounds=BOX, t_end=300.0, rng=np.random.default_rng(3))


def test_hawkes_time_cutoff_matches_the_whole_past_and_a_fixed_count_does_not(hawkes_catalog):
    t, xy = hawkes_catalog
    index = np.arange(1000, len(t))
    T = math.log(100) / HAWKES["beta"]

    def mean_loglik(model):
        return float(sum(model.next_event_logpdf(t, xy, index)).mean())

    whole = mean_loglik(_hawkes(HAWKES, math.inf, len(t)))
    cut = mean_loglik(_hawkes(HAWKES, T, 3000))
    short = mean_loglik(_hawkes(HAWKES, math.inf, 10))  # the newest 10 events: well inside T here
    assert abs(cut - whole) < 0.01  # nats per event
    assert whole - short > 0.1
    # the cut-off binds (a window of T holds far more than 10 events) but not the cap
    counts = index - np.searchsorted(t, t[index - 1] - T)
    assert np.median(counts) > 50 and counts.max() < 3000


def test_hawkes_forecasts_drop_parents_older_than_the_cutoff():
    model = _hawkes(HAWKES, math.log(100) / HAWKES["beta"], 3000)  # T ≈ 9.2
    h = Histories(np.array([[0.0, 5.0, 20.0]]), np.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]]))
    dist = model.forecast(h)
    assert dist.w.shape == (1, 1)  # only the newest event (age 0) is within T; ages 15 and 20 are not
    wide = _hawkes(HAWKES, 30.0, 3000).forecast(h)
    assert wide.w.shape == (1, 3) and np.all(wide.w > 0)
    # the density and the sampler read the same parents (their agreement: tests/test_baselines.py)
    assert _hawkes(HAWKES, 30.0, 2).forecast(h).w.shape == (1, 2)  # the cap: the newest 2


@pytest.mark.parametrize("variant", ["power-law", "gaussian"])
def test_the_fit_reads_the_same_past_as_the_next_event_densities_it_is_scored_with(variant):
    """With a binding cut-off, the fit's log-likelihood is the first event's background term plus the sum of the
    next-event log densities the evaluation uses, less the offspring mass the fit charges beyond each event's
    window (the fit charges every event's whole offspring mass until t_end; forecasts stop a parent's rate at the
    cut-off): fitting and forecasting condition on the same past, and what the cut-off leaves out is ≤ 1 %."""
    from stforecast.baselines.etas_kernel import FREE
    from stforecast.baselines.kernels import parent_until

    params = {**ETAS_TRUE, "p": 2.0, "c": 0.05}  # T = c (100^{1/(p−1)} − 1) ≈ 5: the cut-off binds
    t, xy, m = simulate_etas(params, 3.0, 1.0, ETAS_BOX, 2000.0, np.random.default_rng(5), variant=variant)
    T = omori_cutoff(params["c"], params["p"], 0.01)
    assert T == pytest.approx(4.95)
    model = _etas(params, variant, T, 3000)
    t_end = t[-1]
    data = {"t": t, "xy": xy, "dm_all": m - 3.0, "dm": m - 3.0, "n": len(t), "t_end": t_end, "period": t_end - t[0],
            "span": t_end - t, "f0": np.exp(model.background.logpdf(xy)), "parent": np.ones(len(t))}  # all trigger
    fit_loglik = -model._objective(model.theta[list(FREE[variant])], variant, model._pairs(data, 3000, T), data)[0]
    lt, ls = model.next_event_logpdf(t, xy, m, np.arange(1, len(t)))
    kappa = params["A"] * np.exp(params["alpha"] * (m - 3.0))
    survival = lambda lag: (1 + lag / params["c"]) ** (1 - params["p"])  # noqa: E731
    charged = kappa * (1 - survival(t_end - t))
    left_out = kappa * (survival(parent_until(t, 3000, T, t_end) - t) - survival(t_end - t))
    assert fit_loglik == pytest.approx(math.log(params["mu"] * data["f0"][0]) + float((lt + ls).sum())
                                       - left_out.sum(), rel=1e-10)
    assert 0 < left_out.sum() <= 0.01 * charged.sum()
    # and the cut-off matters: without it the same sum differs
    lt0, ls0 = _etas(params, variant, math.inf, 3000).next_event_logpdf(t, xy, m, np.arange(1, len(t)))
    assert abs(float((lt0 + ls0).sum() - (lt + ls).sum())) > 1.0


def test_etas_time_cutoff_matches_the_whole_past_and_a_fixed_count_does_not():
    params = {**ETAS_TRUE, "p": 2.0, "c": 0.05, "mu": 3.0}
    t, xy, m = simulate_etas(params, 3.0, 1.0, ETAS_BOX, 600.0, np.random.default_rng(8))
    index = np.arange(500, len(t))
    T = omori_cutoff(params["c"], params["p"], 0.01)

    def mean_loglik(model):
        return float(sum(model.next_event_logpdf(t, xy, m, index)).mean())

    whole = mean_loglik(_etas(params, "power-law", math.inf, len(t)))
    cut = mean_loglik(_etas(params, "power-law", T, 3000))
    short = mean_loglik(_etas(params, "power-law", math.inf, 2))
    assert abs(cut - whole) < 0.01
    assert whole - short > 0.05


@pytest.mark.parametrize("variant, params, seed", [
    ("gaussian", {"mu": 0.3, "A": 0.25, "alpha": 1.0, "c": 0.05, "p": 2.0, "D": 1.5}, 101),
    ("power-law", {"mu": 0.3, "A": 0.2, "alpha": 1.3, "c": 0.05, "p": 2.0, "D": 1.0, "q": 1.5, "gamma": 0.3}, 201),
])
def test_etas_picks_the_generating_spatial_kernel_on_validation_events(variant, params, seed):
    """Ogata's magnitude-scaled Gaussian, or a heavy-tailed power law whose spatial scale grows more slowly with
    magnitude than productivity (γ ≠ α): the variant with the best validation NLL is the one that made the data."""
    t, xy, m = simulate_etas(params, 3.0, 1.0, ETAS_BOX, 8000.0, np.random.default_rng(seed), variant=variant)
    model = ETAS(3.0).fit(t, xy, m, t_end=6000.0, t_start=0.0, val_end=8000.0)  # background: a KDE
    assert set(model.validation) == {"power-law", "power-law-alpha", "gaussian"}
    assert model.variant == variant == min(model.validation, key=model.validation.get)
    assert min(v for k, v in model.validation.items() if k != variant) > model.validation[variant] + 0.01
    assert model.params["D"] == pytest.approx(params["D"], rel=0.2)
    if variant == "gaussian":
        assert "q" not in model.params and model.params["gamma"] == model.params["alpha"]  # γ = α (Ogata)
    else:
        assert model.params["q"] == pytest.approx(params["q"], abs=0.2)
    assert variant in model.describe()
    # only the validation events were scored: the fit saw nothing at or after val_end
    assert model.selected_on == f"validation ({int(((t >= 6000) & (t < 8000)).sum())} events)"


def _frame(t, xy, m, split):
    return pd.DataFrame({"t": t, "x": xy[:, 0], "y": xy[:, 1], "magnitude": m, "split": split})


def test_fits_round_trip_through_the_json_cache_and_the_registry_never_hands_over_test_events(monkeypatch):
    from stforecast import registry

    gaussian = {"mu": 0.3, "A": 0.25, "alpha": 1.0, "c": 0.05, "p": 2.0, "D": 1.5}  # not the default variant
    t, xy, m = simulate_etas(gaussian, 3.0, 1.0, ETAS_BOX, 5000.0, np.random.default_rng(4), variant="gaussian")
    split = np.where(t < 3000, "train", np.where(t < 4000, "val", "test"))
    events = _frame(t, xy, m, split)
    events.loc[events["split"] == "test", "x"] = np.nan  # any test event that reached a fit would break it
    monkeypatch.setitem(registry.BASELINES, "etas", lambda mc: ETAS(mc, max_lag=500))
    monkeypatch.setitem(registry.BASELINES, "hawkes", lambda mc: HawkesST(max_lag=500))
    index = np.arange(len(t) - 200, len(t) - 100)
    truth = np.column_stack([t[index] - t[index - 1], xy[index]])
    fits = {}
    for name in ("etas", "hawkes"):
        fits[name] = fitted = registry.fit_baseline(name, events, 3000.0, 3.0)
        state = json.loads(json.dumps(fitted.state()))  # what the cache keeps: plain JSON
        again = registry.BASELINES[name](3.0).restore(state, events[events["t"] < 3000.0], 3000.0)
        assert again.describe() == fitted.describe() and again.cutoff == fitted.cutoff
        assert again.state() == fitted.state() and json.loads(json.dumps(again.state())) == state
        h = Histories.from_stream(t, xy, index, again.context, {"magnitude": m})
        assert np.allclose(again.forecast(h).nll(truth).per_event, fitted.forecast(h).nll(truth).per_event)
    assert fits["hawkes"].state()["cutoff"] is not None  # Hawkes: a finite lag, kept as a number
    etas = fits["etas"]
    assert etas.selected_on == f"validation ({int((split == 'val').sum())} events)"
    kernels = {"power-law", "power-law-alpha", "gaussian"}  # each with every event a parent, and (issue 22)
    # with parents from the training magnitudes' maximum-curvature completeness (+ 0.2) only
    estimate = max_curvature_mc(m[t < 3000.0])
    assert estimate > 3.0 and set(etas.state()["validation_nll"]) == kernels | {
        f"{k} / parents from M{estimate:g}" for k in kernels}
    best = min(etas.validation, key=etas.validation.get)
    assert best == etas.choice_name(etas.variant, etas.parent_mc) and etas.state()["variant"] == "gaussian"
    assert "gaussian spatial kernel" in etas.describe()


def test_etas_chooses_a_parent_threshold_on_validation_and_small_events_trigger_nothing():
    """Issue 22: a catalog where only events of M ≥ 3.6 trigger (all of M ≥ 3 are targets). Offered the thresholds
    3.0 (every event a parent) and 3.6, the fit keeps 3.6 by its validation NLL and recovers the productivity; its
    forecasts ignore parents below the threshold; the choice survives the JSON state."""
    params = {"mu": 0.3, "A": 0.6, "alpha": 1.2, "c": 0.05, "p": 1.8, "D": 1.0, "q": 1.5, "gamma": 0.5}
    t, xy, m = simulate_etas(params, 3.0, 1.0, ETAS_BOX, 8000.0, np.random.default_rng(17), parent_mc=3.6)
    model = ETAS(3.0, background=ETAS_BOX, variants=("power-law",), parent_mcs=(3.0, 3.6)).fit(
        t, xy, m, t_end=6000.0, t_start=0.0, val_end=8000.0)
    assert set(model.validation) == {"power-law", "power-law / parents from M3.6"}
    assert model.parent_mc == 3.6 and model.validation["power-law / parents from M3.6"] < model.validation["power-law"]
    assert model.validation["power-law"] - model.validation["power-law / parents from M3.6"] > 0.05
    for name, tolerance in (("A", 0.2), ("alpha", 0.2), ("p", 0.2), ("mu", 0.1)):
        assert model.params[name] == pytest.approx(params[name], abs=tolerance * max(1.0, params[name]))
    assert "parents M >= 3.6" in model.describe()  # (MLflow param names allow no ">=")
    # the newest event's magnitude: below the threshold it triggers nothing, above it it does
    i = 2000

    def rate(newest_m: float) -> float:
        m2 = m.copy()
        m2[i - 1] = newest_m
        h = Histories.from_stream(t, xy, np.array([i]), model.context, {"magnitude": m2})
        return float(model.forecast(h).kappa.sum())

    assert rate(3.1) == rate(3.5) < rate(3.7) < rate(5.0)
    ETAS.check_state(json.loads(json.dumps(model.state())))
    back = ETAS(3.0, background=ETAS_BOX).restore(model.state(), _frame(t, xy, m, np.where(t < 6000, "train", "val")),
                                                  6000.0)
    assert back.parent_mc == 3.6
