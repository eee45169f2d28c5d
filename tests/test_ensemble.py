"""The ensemble forecaster: exact mixture likelihood, maximum-likelihood weights, sampling by member."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import expon, norm

from stforecast.models.base import NLL, Forecaster, Histories, NextEvent, Samples
from stforecast.models.ensemble import Ensemble, fit_weights, mixture_nll


class Gaussian(NextEvent):
    """A toy next event: dt ~ Exp(rate), (x, y) ~ N(centre, 1): its exact density is known."""

    def __init__(self, size, rate, centre):
        self.size, self.rate, self.centre = size, rate, np.asarray(centre, float)

    def sample(self, n, rng):
        dt = rng.exponential(1 / self.rate, (self.size, n, 1))
        xy = self.centre + rng.normal(size=(self.size, n, 2))
        return Samples(np.concatenate([dt, xy], -1), {"magnitude": np.full((self.size, n), self.rate)})

    def log_density(self, truth):
        return expon.logpdf(truth[:, 0], scale=1 / self.rate) + norm.logpdf(truth[:, 1:3] - self.centre).sum(1)

    def nll(self, truth):
        lt = expon.logpdf(truth[:, 0], scale=1 / self.rate)
        return NLL(np.column_stack([-lt, -(self.log_density(truth) - lt)]), "exact")


class Toy(Forecaster):
    def __init__(self, name, rate, centre):
        self.name, self.rate, self.centre = name, rate, centre
        self.forecast_marks = ("magnitude",)
        self.calibrated = 0

    def forecast(self, histories):
        return Gaussian(len(histories), self.rate, self.centre)

    def calibrate(self, histories, truth):
        self.calibrated += 1


def histories(H):
    return Histories(np.zeros((H, 1)), np.zeros((H, 1, 2)))


def draws(rng, n, rate, centre):
    return np.column_stack([rng.exponential(1 / rate, n), centre + rng.normal(size=(n, 2))])


def test_the_nll_is_the_exact_mixture_density():
    a, b = Toy("a", 1.0, [0, 0]), Toy("b", 3.0, [4, 0])
    ens = Ensemble({"a": a, "b": b}, {"a": 0.3, "b": 0.7})
    truth = draws(np.random.default_rng(0), 50, 2.0, [2, 0])
    nll = ens.forecast(histories(50)).nll(truth)
    density = 0.3 * np.exp(Gaussian(50, 1.0, [0, 0]).log_density(truth)) \
        + 0.7 * np.exp(Gaussian(50, 3.0, [4, 0]).log_density(truth))
    assert nll.kind == "exact" and np.allclose(nll.joint_per_event, -np.log(density))
    assert np.isnan(nll.row()["nll_dt"]) and nll.row()["nll_joint"] == pytest.approx(-np.log(density).mean())


def test_weights_fitted_on_validation_recover_the_mixture_and_beat_every_member():
    rng = np.random.default_rng(1)
    a, b = Toy("a", 1.0, [0, 0]), Toy("b", 3.0, [3, 0])
    pick_a = rng.random(4000) < 0.25
    truth = np.where(pick_a[:, None], draws(rng, 4000, 1.0, [0, 0]), draws(rng, 4000, 3.0, [3, 0]))
    ens = Ensemble({"a": a, "b": b})
    ens.calibrate(histories(4000), truth)
    assert a.calibrated == b.calibrated == 1  # the members calibrate too
    assert ens.weights["a"] == pytest.approx(0.25, abs=0.03) and sum(ens.weights.values()) == pytest.approx(1)
    assert ens.validation["ensemble"] < min(ens.validation["a"], ens.validation["b"])
    assert "maximum likelihood on 4,000 validation events" in ens.describe()


def test_em_reaches_the_optimum_of_the_concave_likelihood():
    rng = np.random.default_rng(2)
    joint = rng.gamma(2.0, 1.0, (3, 300))
    w = fit_weights(joint)

    def loglik(v):
        return -mixture_nll(joint, v).sum()

    for _ in range(200):  # no point of the simplex does better
        other = rng.dirichlet(np.ones(3))
        assert loglik(w) >= loglik(other) - 1e-6
    assert fit_weights(np.vstack([joint[0], joint[0] + 50.0])) == pytest.approx([1.0, 0.0], abs=1e-6)


def test_a_member_with_zero_density_everywhere_is_dropped_and_all_zero_is_an_error():
    joint = np.vstack([np.ones(10), np.full(10, np.inf)])
    assert fit_weights(joint) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="zero density"):
        fit_weights(np.full((2, 5), np.inf))
    with pytest.raises(ValueError, match="at least two members"):
        Ensemble({"a": Toy("a", 1.0, [0, 0])})


def test_samples_come_from_the_members_in_proportion_to_the_weights():
    ens = Ensemble({"a": Toy("a", 1.0, [-50, 0]), "b": Toy("b", 2.0, [50, 0])}, {"a": 0.2, "b": 0.8})
    s = ens.forecast(histories(30)).sample(500, np.random.default_rng(3))
    assert s.events.shape == (30, 500, 3) and not np.isnan(s.events).any()
    from_a = s.events[..., 1] < 0
    assert from_a.mean() == pytest.approx(0.2, abs=0.02)
    # each draw keeps its member's marks (here the rate) beside its own location
    assert np.all(s.marks["magnitude"][from_a] == 1.0) and np.all(s.marks["magnitude"][~from_a] == 2.0)


def test_an_ensemble_on_the_command_line_is_fitted_on_validation_and_reported(ridgecrest_tiny, tmp_path, monkeypatch):
    import json

    from pipelines.cli import main
    from pipelines.common import model_label
    from stforecast.registry import ENSEMBLE_VALIDATION_EVENTS, load_forecaster

    r, ckpt = ridgecrest_tiny
    monkeypatch.setenv("STFORECAST_BASELINE_CACHE", str(tmp_path / "fits"))
    model = load_forecaster("ensemble:poisson_kde+hawkes", r.catalog, log=lambda *a: None)
    assert model.name == "ensemble" and set(model.weights) == {"poisson_kde", "hawkes"}
    n_val = min(ENSEMBLE_VALIDATION_EVENTS, int((r.catalog.sequence_frame("val")["is_target"]).sum()))
    assert 0 < model.fitted_on <= n_val and sum(model.weights.values()) == pytest.approx(1)
    assert model.validation["ensemble"] <= min(model.validation["poisson_kde"], model.validation["hawkes"]) + 1e-6
    assert model_label(f"ensemble:{ckpt}+etas") == "ensemble-dstpp-run-etas"
    from pipelines.batch_forecast import model_identity

    # a batch job with an ensemble reruns when a member's checkpoint changes
    assert model_identity(f"ensemble:{ckpt}+etas") == f"ensemble:{model_identity(str(ckpt))}+etas"
    assert model_identity(str(ckpt)).startswith("sha256:")
    assert main(["report", "--data", str(r.out_dir), "--model", "ensemble:poisson_kde+hawkes", "--at", "2019-07-12",
                 "--horizon", "6h", "--samples", "200", "--simulations", "5", "--no-track",
                 "--out", str(tmp_path / "rep")]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["model_kind"] == "ensemble" and summary["expected_events"] > 0
    assert (tmp_path / "rep" / "map.html").is_file()


@pytest.mark.parametrize("spec", ["ensemble:etas", "ensemble:etas+", "ensemble:etas+ensemble:hawkes+poisson_kde"])
def test_a_malformed_ensemble_is_one_clear_error(ridgecrest_tiny, spec, tmp_path, capfd):
    from pipelines.cli import main

    r, _ = ridgecrest_tiny
    assert main(["report", "--data", str(r.out_dir), "--model", spec, "--at", "2019-07-12", "--horizon", "6h",
                 "--no-track", "--out", str(tmp_path / "rep")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two or more models joined by '+'" in err[0] and not (tmp_path / "rep").exists()


class Plain(Toy):
    """A member that forecasts no mark (as Poisson x KDE and Hawkes)."""

    def __init__(self, name, rate, centre):
        super().__init__(name, rate, centre)
        self.forecast_marks = ()

    def forecast(self, histories):
        dist = Gaussian(len(histories), self.rate, self.centre)
        dist.sample = lambda n, rng, inner=dist.sample: Samples(inner(n, rng).events, {})
        return dist


def test_draws_carry_the_marks_every_member_forecasts_and_simulation_needs_them_all():
    reader = Toy("reader", 1.0, [0, 0])
    reader.mark_names = ("magnitude",)  # reads magnitudes from its history, as ETAS
    ens = Ensemble({"reader": reader, "plain": Plain("plain", 2.0, [5, 0])}, {"reader": 0.5, "plain": 0.5})
    assert ens.forecast_marks == ()
    keys = {tuple(ens.forecast(histories(3)).sample(4, np.random.default_rng(i)).marks) for i in range(20)}
    assert keys == {()}  # the same keys whoever drew
    with pytest.raises(ValueError, match=r"cannot simulate catalogs: its members read \['magnitude'\].*\['plain'\]"):
        next(ens.simulate_catalogs(np.array([0.0]), np.zeros((1, 2)), {"magnitude": np.array([3.0])}, 1.0, 2,
                                   np.random.default_rng(0)))


def test_events_a_member_cannot_score_are_left_out_of_the_fit_and_a_weightless_member_is_not_read():
    joint = np.array([[1.0, 2.0, np.nan, 1.5], [3.0, -np.inf, 2.0, 1.0]])
    w = fit_weights(joint)  # fitted on events 0 and 3 only
    assert w == pytest.approx(fit_weights(joint[:, [0, 3]]))
    assert mixture_nll(np.array([[1.0, 2.0], [np.nan, np.nan]]), np.array([1.0, 0.0])) == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError, match="at least one validation event"):
        fit_weights(np.array([[np.nan], [1.0]]))
