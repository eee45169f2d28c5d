"""Homogeneous Poisson process in time × a fixed spatial kernel density: the "no memory" baseline.

Next event after time t_n: waiting time τ ~ Exp(λ) and location ~ f (Gaussian KDE of the training locations,
bandwidth by Scott's rule on standardised coordinates). log p(τ, s) = log λ − λ τ + log f(s).
"""

from __future__ import annotations

import numpy as np

from stforecast.models.base import MAX_RATE, NLL, Forecaster, Histories, NextEvent, Samples, check_number


class GaussianKDE2D:
    """A 2-D Gaussian kernel density on standardised coordinates (log density in the input units)."""

    def __init__(self, xy: np.ndarray, bandwidth: float | None = None):
        from sklearn.neighbors import KernelDensity

        xy = np.asarray(xy, dtype=float)
        self.mean, self.scale = xy.mean(0), xy.std(0) + 1e-12
        z = (xy - self.mean) / self.scale
        n = len(z)
        self.bandwidth = bandwidth or n ** (-1 / 6)  # Scott's rule for d = 2
        self.kde = KernelDensity(bandwidth=self.bandwidth).fit(z)
        self._z = z

    def logpdf(self, xy: np.ndarray) -> np.ndarray:
        z = (np.asarray(xy, dtype=float) - self.mean) / self.scale
        return self.kde.score_samples(z) - np.log(self.scale).sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.integers(0, len(self._z), n)
        z = self._z[idx] + rng.normal(0, self.bandwidth, (n, 2))
        return z * self.scale + self.mean


class PoissonKDE(Forecaster):
    name = "poisson_kde"
    context = 1  # no memory: only the newest event's time matters

    def fit(self, t: np.ndarray, xy: np.ndarray, t_end: float, t_start: float | None = None) -> "PoissonKDE":
        t = np.asarray(t, dtype=float)
        t_start = t[0] if t_start is None else t_start
        self.rate = len(t) / (t_end - t_start)
        self.space = GaussianKDE2D(xy)
        return self

    def fit_events(self, events, fit_end: float) -> "PoissonKDE":
        """The :class:`~stforecast.models.base.Forecaster` face: fit on the catalog's events before ``fit_end``."""
        past = events[events["t"] < fit_end]
        return self.fit(past["t"].to_numpy(), past[["x", "y"]].to_numpy(), fit_end)

    def state(self) -> dict:
        return {"rate": float(self.rate)}

    @staticmethod
    def check_state(state: dict) -> None:
        """Raise a ValueError naming the field unless ``state`` is what :meth:`state` writes."""
        check_number(state, "rate", 1e-300, MAX_RATE)

    def restore(self, state: dict, events, fit_end: float) -> "PoissonKDE":
        self.fit_events(events, fit_end)  # the KDE is the training locations themselves: cheap to rebuild
        self.rate = state["rate"]
        return self

    def forecast(self, histories: Histories) -> "PoissonNextEvent":
        return PoissonNextEvent(self, len(histories))

    def next_event_logpdf(self, t: np.ndarray, xy: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(temporal, spatial) log density of events ``index`` (each ≥ 1) given their past."""
        index = np.asarray(index)
        return PoissonNextEvent(self, len(index)).log_terms(np.column_stack([t[index] - t[index - 1], xy[index]]))


class PoissonNextEvent(NextEvent):
    def __init__(self, model: PoissonKDE, histories: int):
        self.model, self.H = model, histories

    def log_terms(self, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rate = self.model.rate
        return np.log(rate) - rate * truth[:, 0], self.model.space.logpdf(truth[:, 1:3])

    def nll(self, truth: np.ndarray) -> NLL:
        lt, ls = self.log_terms(np.asarray(truth, float))
        return NLL(-np.column_stack([lt, ls]), "exact")

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        tau = rng.exponential(1 / self.model.rate, (self.H, n))
        loc = self.model.space.sample(self.H * n, rng).reshape(self.H, n, 2)
        return Samples(np.concatenate([tau[..., None], loc], -1))
