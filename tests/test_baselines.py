"""Baselines recover known parameters from catalogs the project simulates, and their densities are proper."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from stforecast.baselines import HawkesST, PoissonKDE, simulate_hawkes
from stforecast.baselines.kernels import UniformBox
from stforecast.models.base import Histories

BOX = (0.0, 0.0, 20.0, 20.0)
TRUE = {"mu": 0.5, "alpha": 0.6, "beta": 2.0, "sigma": 0.4}


@pytest.fixture(scope="module")
def catalog():
    return simulate_hawkes(**TRUE, bounds=BOX, t_end=3000.0, rng=np.random.default_rng(11))


def test_hawkes_mle_recovers_the_simulated_parameters(catalog):
    t, xy = catalog
    model = HawkesST(background=BOX, max_lag=100).fit(t, xy, t_end=3000.0, t_start=0.0)
    p = model.params
    assert model.converged
    assert p["mu"] == pytest.approx(TRUE["mu"], rel=0.15)
    assert p["alpha"] == pytest.approx(TRUE["alpha"], rel=0.15)
    assert p["beta"] == pytest.approx(TRUE["beta"], rel=0.25)
    assert p["sigma"] == pytest.approx(TRUE["sigma"], rel=0.1)
    # the past it conditions on: the lag where 1 % of an event's offspring is left, at the fitted decay
    assert model.cutoff == pytest.approx(math.log(100) / TRUE["beta"], rel=0.25)
    assert model.mass_beyond_cutoff == pytest.approx(0.01, rel=0.1) and model.cap_binds == 0.0


def test_hawkes_next_event_density_integrates_to_one_and_sampling_agrees(catalog):
    t, xy = catalog
    model = HawkesST(background=BOX, max_lag=100)
    model.background = UniformBox(BOX)  # true parameters, no fit: the density and sampler are checked alone
    model.mu, model.alpha, model.beta, model.sigma = TRUE["mu"], TRUE["alpha"], TRUE["beta"], TRUE["sigma"]
    i = 500
    # temporal density of the waiting time integrates to 1 (the process never stops: μ > 0)
    def p_tau(tau):
        tt = np.r_[t[:i], t[i - 1] + tau]
        xx = np.r_[xy[:i], xy[i - 1:i]]
        return math.exp(model.next_event_logpdf(tt, xx, np.array([i]))[0][0])
    total, _ = integrate.quad(p_tau, 0, 60, limit=200)
    assert total == pytest.approx(1.0, abs=1e-3)
    # the sampler's waiting times follow that density: compare means
    history = Histories.from_stream(t, xy, np.array([i]), model.context)
    draws = model.forecast(history).sample(20_000, np.random.default_rng(0)).events
    mean_tau, _ = integrate.quad(lambda s: s * p_tau(s), 0, 60, limit=200)
    assert draws[0, :, 0].mean() == pytest.approx(mean_tau, rel=0.03)


def test_poisson_kde_rate_and_density():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 1000, 4000))
    xy = rng.normal([3.0, -2.0], [1.0, 2.0], (4000, 2))
    m = PoissonKDE().fit(t, xy, t_end=1000.0, t_start=0.0)
    assert m.rate == pytest.approx(4.0)
    lt, ls = m.next_event_logpdf(t, xy, np.arange(1, 4000))
    assert np.all(np.isfinite(lt)) and np.all(np.isfinite(ls))
    # the KDE integrates to 1 over the plane (grid check) and is close to the true Gaussian density at its centre
    gx, gy = np.meshgrid(np.linspace(-4, 10, 141), np.linspace(-12, 8, 201))
    dens = np.exp(m.space.logpdf(np.column_stack([gx.ravel(), gy.ravel()])))
    assert dens.sum() * 0.1 * 0.1 == pytest.approx(1.0, abs=0.02)
    centre = float(np.exp(m.space.logpdf(np.array([[3.0, -2.0]])))[0])
    assert centre == pytest.approx(1 / (2 * math.pi * 1.0 * 2.0), rel=0.15)
    s = m.forecast(Histories.from_stream(t, xy, np.array([10, 20]), m.context)).sample(5000, rng).events
    assert s.shape == (2, 5000, 3) and s[..., 0].mean() == pytest.approx(0.25, rel=0.05)


def test_hawkes_beats_poisson_on_clustered_data(catalog):
    t, xy = catalog
    split = np.searchsorted(t, 2000.0)
    h = HawkesST(background=BOX, max_lag=100).fit(t[:split], xy[:split], t_end=2000.0, t_start=0.0)
    p = PoissonKDE().fit(t[:split], xy[:split], t_end=2000.0, t_start=0.0)
    idx = np.arange(split, len(t))
    h_ll = sum(h.next_event_logpdf(t, xy, idx)).mean()
    p_ll = sum(p.next_event_logpdf(t, xy, idx)).mean()
    assert h_ll > p_ll + 0.5  # nats per event on held-out time


# ---------------------------------------------------------------------------------------------------- ETAS
ETAS_TRUE = {"mu": 0.3, "A": 0.25, "alpha": 1.0, "c": 0.02, "p": 1.3, "D": 1.5, "q": 1.8, "gamma": 0.6}
ETAS_BOX = (0.0, 0.0, 200.0, 200.0)


@pytest.fixture(scope="module")
def etas_catalog():
    from stforecast.baselines.etas_simulation import simulate_etas

    return simulate_etas(ETAS_TRUE, 3.0, 1.0, ETAS_BOX, 10_000.0, np.random.default_rng(5))


def test_etas_mle_recovers_the_simulated_parameters(etas_catalog):
    from stforecast.baselines.etas import ETAS

    t, xy, m = etas_catalog
    fit = ETAS(3.0, background=ETAS_BOX, max_lag=150).fit(t, xy, m, t_end=10_000.0, t_start=0.0)
    p = fit.params
    assert fit.converged
    assert p["mu"] == pytest.approx(ETAS_TRUE["mu"], rel=0.15)
    assert p["A"] == pytest.approx(ETAS_TRUE["A"], rel=0.3)
    assert p["alpha"] == pytest.approx(ETAS_TRUE["alpha"], abs=0.15)
    assert p["p"] == pytest.approx(ETAS_TRUE["p"], abs=0.15)
    assert ETAS_TRUE["c"] / 2 < p["c"] < ETAS_TRUE["c"] * 2
    assert p["D"] == pytest.approx(ETAS_TRUE["D"], rel=0.2)
    assert p["q"] == pytest.approx(ETAS_TRUE["q"], abs=0.25)
    assert p["gamma"] == pytest.approx(ETAS_TRUE["gamma"], abs=0.2)
    true_ratio = ETAS_TRUE["A"] * np.log(10) / (np.log(10) - ETAS_TRUE["alpha"])
    assert fit.branching_ratio() == pytest.approx(true_ratio, rel=0.2)


def test_etas_next_event_density_integrates_to_one(etas_catalog):
    from stforecast.baselines.etas import ETAS
    from stforecast.baselines.etas_kernel import _unpack

    t, xy, m = etas_catalog
    model = ETAS(3.0, background=ETAS_BOX, max_lag=150)
    model.background = UniformBox(ETAS_BOX)
    th = ETAS_TRUE
    model.theta = np.array([np.log(th["mu"]), np.log(th["A"]), th["alpha"], np.log(th["c"]), np.log(th["p"] - 1),
                            np.log(th["D"]), np.log(th["q"] - 1), th["gamma"]])
    assert np.allclose(_unpack(model.theta), [th[k] for k in ("mu", "A", "alpha", "c", "p", "D", "q", "gamma")])
    i = 800

    def p_tau(tau):
        tt = np.r_[t[:i], t[i - 1] + tau]
        return math.exp(model.next_event_logpdf(tt, np.r_[xy[:i], xy[i - 1:i]], np.r_[m[:i], 3.0], np.array([i]))[0][0])

    total = sum(integrate.quad(p_tau, a, b, limit=400)[0] for a, b in ((0, 0.1), (0.1, 5), (5, 200)))
    assert total == pytest.approx(1.0, abs=2e-3)


def test_etas_sampler_agrees_with_its_density(etas_catalog):
    from stforecast.baselines.etas import ETAS
    from stforecast.models.marks import aki_b_value

    t, xy, m = etas_catalog
    assert aki_b_value(m, 3.0, bin_width=0.0) == pytest.approx(1.0, rel=0.05)  # simulated with b = 1
    model = ETAS(3.0, background=ETAS_BOX, max_lag=150)
    model.background = UniformBox(ETAS_BOX)
    th = ETAS_TRUE
    model.theta = np.array([np.log(th["mu"]), np.log(th["A"]), th["alpha"], np.log(th["c"]), np.log(th["p"] - 1),
                            np.log(th["D"]), np.log(th["q"] - 1), th["gamma"]])
    i = int(np.argmax(m[:-1])) + 1  # right after the largest event: a strongly triggered moment

    def p_tau(tau):
        tt = np.r_[t[:i], t[i - 1] + tau]
        return math.exp(model.next_event_logpdf(tt, np.r_[xy[:i], xy[i - 1:i]], np.r_[m[:i], 3.0], np.array([i]))[0][0])

    cuts = (0, 0.01, 0.1, 1, 10, 300)
    mean_tau = sum(integrate.quad(lambda s: s * p_tau(s), a, b, limit=400)[0] for a, b in zip(cuts[:-1], cuts[1:]))
    history = Histories.from_stream(t, xy, np.array([i]), model.context, {"magnitude": m})
    draws = model.forecast(history).sample(20_000, np.random.default_rng(1))
    assert draws.events.shape == (1, 20_000, 3) and draws.marks["magnitude"].shape == (1, 20_000)
    assert draws.events[0, :, 0].mean() == pytest.approx(mean_tau, rel=0.05)
    # most of these next events are aftershocks near the big event
    near = np.hypot(*(draws.events[0, :, 1:3] - xy[i - 1]).T) < 20
    assert near.mean() > 0.5 and (draws.marks["magnitude"] >= 3.0).all()
