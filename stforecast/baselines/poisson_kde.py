"""Homogeneous Poisson process in time × a fixed spatial kernel density: the "no memory" baseline.

Next event after time t_n: waiting time τ ~ Exp(λ) and location ~ f (Gaussian KDE of the training locations,
bandwidth by Scott's rule on standardised coordinates). log p(τ, s) = log λ − λ τ + log f(s).
"""

from __future__ import annotations

import numpy as np


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


class PoissonKDE:
    def fit(self, t: np.ndarray, xy: np.ndarray, t_end: float, t_start: float | None = None) -> "PoissonKDE":
        t = np.asarray(t, dtype=float)
        t_start = t[0] if t_start is None else t_start
        self.rate = len(t) / (t_end - t_start)
        self.space = GaussianKDE2D(xy)
        return self

    def next_event_logpdf(self, t: np.ndarray, xy: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(temporal, spatial) log density of events ``index`` (each ≥ 1) given their past."""
        index = np.asarray(index)
        tau = t[index] - t[index - 1]
        return np.log(self.rate) - self.rate * tau, self.space.logpdf(xy[index])

    def sample_next(self, t, xy, index, n: int, rng: np.random.Generator) -> np.ndarray:
        """(H, n, 3) draws of (τ, x, y) for the event after each ``index``."""
        h = len(np.atleast_1d(index))
        tau = rng.exponential(1 / self.rate, (h, n))
        loc = self.space.sample(h * n, rng).reshape(h, n, 2)
        return np.concatenate([tau[..., None], loc], -1)
