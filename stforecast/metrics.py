"""Sample-based scores of probabilistic forecasts (lower is better).

``samples`` are ``(H, n)`` draws for ``H`` forecasts (or ``(H, n, D)`` for locations) and ``truth`` is ``(H,)``
(or ``(H, D)``). Units are those of the inputs.
"""

from __future__ import annotations

import numpy as np


def crps_from_samples(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score per forecast: E|X − y| − ½ E|X − X'|, with the second term computed
    exactly from the sorted sample in O(n log n)."""
    x = np.sort(np.asarray(samples, dtype=float), axis=1)
    n = x.shape[1]
    term1 = np.abs(x - np.asarray(truth, dtype=float)[:, None]).mean(1)
    weights = 2 * np.arange(1, n + 1) - n - 1  # Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − n − 1) x_(i)
    term2 = (x * weights).sum(1) / (n * n)
    return term1 - term2


def energy_score(samples: np.ndarray, truth: np.ndarray, max_pairs: int = 200) -> np.ndarray:
    """Energy score per forecast: E‖X − y‖ − ½ E‖X − X'‖ (the multivariate CRPS). The second term uses the first
    ``max_pairs`` draws against all others to bound cost."""
    x = np.asarray(samples, dtype=float)
    y = np.asarray(truth, dtype=float)
    term1 = np.linalg.norm(x - y[:, None, :], axis=-1).mean(1)
    a = x[:, :max_pairs]
    term2 = np.linalg.norm(a[:, :, None, :] - a[:, None, :, :], axis=-1).mean((1, 2))
    return term1 - 0.5 * term2


def interval_coverage(samples: np.ndarray, truth: np.ndarray, levels=(0.5, 0.8, 0.95)) -> dict[float, float]:
    """Share of forecasts whose truth lies in the central ``level`` interval of its samples (H, n)."""
    x = np.asarray(samples, dtype=float)
    y = np.asarray(truth, dtype=float)
    out = {}
    for level in levels:
        lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[level] = float(np.mean((y >= lo) & (y <= hi)))
    return out


def hdr_coverage(samples: np.ndarray, truth: np.ndarray, levels=(0.5, 0.8, 0.95), bandwidth: float | None = None
                 ) -> dict[float, float]:
    """Share of forecasts whose true location lies in the highest-density region holding ``level`` of the
    forecast mass. The density of each forecast is a Gaussian KDE of its samples (H, n, 2) (Scott's rule on
    standardised coordinates); the region's threshold is the (1 − level) quantile of the density at the samples."""
    from scipy.stats import gaussian_kde

    x = np.asarray(samples, dtype=float)
    y = np.asarray(truth, dtype=float)
    hits = {level: 0 for level in levels}
    for s, t in zip(x, y):  # one KDE per forecast: H is the number of forecasts, not of events
        try:
            kde = gaussian_kde(s.T, bw_method=bandwidth)
        except (np.linalg.LinAlgError, ValueError):
            # samples on a point or a line (a collapsed forecast): a KDE needs a spread, so give it a negligible
            # one; the region is then that tiny neighbourhood, which a truth elsewhere misses, as it should
            s = s + np.random.default_rng(0).normal(0, 1e-6 * (np.abs(s).max() + 1), s.shape)
            kde = gaussian_kde(s.T, bw_method=bandwidth)
        dens_samples = kde(s.T)
        dens_truth = kde(t[:, None])[0]
        for level in levels:
            hits[level] += dens_truth >= np.quantile(dens_samples, 1 - level)
    return {level: hits[level] / len(x) for level in levels}
