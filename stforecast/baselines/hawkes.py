"""Self-exciting spatio-temporal Hawkes process, fitted by maximum likelihood.

    λ(t, s) = μ f0(s) + Σ_{t_j < t} α β e^{−β (t − t_j)} N(s; s_j, σ² I)

μ: background rate (events per time unit), f0: background spatial density (a KDE of the training locations,
or uniform over a box), α: mean number of direct offspring per event (branching ratio, < 1 for stationarity),
β: decay rate of the exponential time kernel, σ: spatial spread of offspring. The next-event density after t_n is
exact: p(τ, s) = λ(t_n + τ, s) · exp(−Λ(τ)), with Λ(τ) = μ τ + (A/β)(1 − e^{−β τ}) and
A = Σ_{j ≤ n} α β e^{−β (t_n − t_j)}. Past events further back than ``max_lag`` events are ignored (their kernel
weight is negligible for the fitted β on real catalogs; the fit reports the largest neglected weight).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from stforecast.baselines.poisson_kde import GaussianKDE2D
from stforecast.model.base import NLL, Forecaster, Histories, NextEvent, Samples


class UniformBox:
    def __init__(self, bounds):
        self.x0, self.y0, self.x1, self.y1 = bounds
        self.log_area = math.log((self.x1 - self.x0) * (self.y1 - self.y0))

    def logpdf(self, xy):
        xy = np.asarray(xy)
        inside = (xy[:, 0] >= self.x0) & (xy[:, 0] <= self.x1) & (xy[:, 1] >= self.y0) & (xy[:, 1] <= self.y1)
        return np.where(inside, -self.log_area, -np.inf)

    def sample(self, n, rng):
        return np.column_stack([rng.uniform(self.x0, self.x1, n), rng.uniform(self.y0, self.y1, n)])


def _lagged(t: np.ndarray, xy: np.ndarray, max_lag: int, marks: np.ndarray | None = None):
    """For each event i and lag l = 1..L: time gap and squared distance to event i − l (inf when absent), and
    that event's mark (0 when absent) if ``marks`` are given. Shapes (N, L)."""
    n = len(t)
    L = min(max_lag, max(n - 1, 1))
    dt = np.full((n, L), np.inf)
    d2 = np.full((n, L), np.inf)
    mj = np.zeros((n, L)) if marks is not None else None
    for lag in range(1, L + 1):  # a loop over lags (≤ L), vectorised over events
        dt[lag:, lag - 1] = t[lag:] - t[:-lag]
        d2[lag:, lag - 1] = ((xy[lag:] - xy[:-lag]) ** 2).sum(1)
        if marks is not None:
            mj[lag:, lag - 1] = marks[:-lag]
    return dt, d2, mj


class HawkesST(Forecaster):
    name = "hawkes"

    def __init__(self, background: str | tuple = "kde", max_lag: int = 200):
        self.background_spec, self.max_lag = background, max_lag
        self.context = max_lag

    # -------------------------------------------------------------------------------- likelihood
    def _triggered(self, dt, d2, alpha, beta, sigma):
        """(N,) Σ_j α β e^{−β Δt} N(Δs; 0, σ² I) over the lagged past."""
        k = alpha * beta * np.exp(-beta * dt) * np.exp(-d2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        return k.sum(1)

    def _neg_loglik(self, params, t, dt, d2, log_f0, t_start, t_end):
        mu, alpha, beta, sigma = np.exp(params)
        lam = mu * np.exp(log_f0) + self._triggered(dt, d2, alpha, beta, sigma)
        compensator = mu * (t_end - t_start) + alpha * np.sum(1 - np.exp(-beta * (t_end - t)))
        return -(np.sum(np.log(lam + 1e-300)) - compensator)

    def fit(self, t, xy, t_end: float, t_start: float | None = None, init=(None, 0.5, 1.0, None)) -> "HawkesST":
        t, xy = np.asarray(t, float), np.asarray(xy, float)
        t_start = t[0] if t_start is None else t_start
        if isinstance(self.background_spec, tuple):
            self.background = UniformBox(self.background_spec)
        else:
            self.background = GaussianKDE2D(xy)
        log_f0 = self.background.logpdf(xy)
        dt, d2, _ = _lagged(t, xy, self.max_lag)
        span = t_end - t_start
        mu0 = init[0] or 0.5 * len(t) / span
        sigma0 = init[3] or 0.1 * float(np.sqrt(xy.var(0).sum()))
        x0 = np.log([mu0, init[1], init[2], sigma0])
        res = minimize(self._neg_loglik, x0, args=(t, dt, d2, log_f0, t_start, t_end), method="L-BFGS-B",
                       bounds=[(None, None), (-10, math.log(5)), (-12, 12), (-12, 12)])
        self.mu, self.alpha, self.beta, self.sigma = np.exp(res.x)
        self.loglik, self.converged = -res.fun, bool(res.success)
        # the weight of the oldest event kept, at the fitted decay: what truncating the past can neglect
        self.max_neglected_weight = float(np.nanmax(np.where(np.isfinite(dt[:, -1]), np.exp(-self.beta * dt[:, -1]), 0)))
        return self

    @property
    def params(self) -> dict:
        return {"mu": float(self.mu), "alpha": float(self.alpha), "beta": float(self.beta), "sigma": float(self.sigma)}

    # -------------------------------------------------------------------------------- forecasts
    def fit_events(self, events, fit_end: float) -> "HawkesST":
        """The :class:`~stforecast.model.base.Forecaster` face: fit on the catalog's events before ``fit_end``."""
        past = events[events["t"] < fit_end]
        return self.fit(past["t"].to_numpy(), past[["x", "y"]].to_numpy(), fit_end)

    def state(self) -> dict:
        return {**self.params, "loglik": float(self.loglik), "converged": self.converged,
                "max_neglected_weight": self.max_neglected_weight}

    def restore(self, state: dict, events, fit_end: float) -> "HawkesST":
        past = events[events["t"] < fit_end]
        self.background = (UniformBox(self.background_spec) if isinstance(self.background_spec, tuple)
                           else GaussianKDE2D(past[["x", "y"]].to_numpy()))
        self.mu, self.alpha, self.beta, self.sigma = (state[k] for k in ("mu", "alpha", "beta", "sigma"))
        self.loglik, self.converged = state["loglik"], state["converged"]
        self.max_neglected_weight = state["max_neglected_weight"]
        return self

    def forecast(self, histories: Histories) -> "HawkesNextEvent":
        return HawkesNextEvent(self, histories.newest(self.max_lag))

    def next_event_logpdf(self, t, xy, index):
        """(temporal, spatial) log density of events ``index`` (each ≥ 1) of one stream given all earlier events:
        temporal is the density of the waiting time, spatial the density of the location given the time (they sum
        to the joint)."""
        t, xy, index = np.asarray(t, float), np.asarray(xy, float), np.asarray(index)
        dist = self.forecast(Histories.from_stream(t, xy, index, self.max_lag))
        return dist.log_terms(np.column_stack([t[index] - t[index - 1], xy[index]]))

    def sample_next(self, t, xy, index, n: int, rng: np.random.Generator) -> np.ndarray:
        """(H, n, 3) exact draws of (τ, x, y) for the event after each ``index`` of one stream."""
        index = np.atleast_1d(index)
        return self.forecast(Histories.from_stream(t, xy, index, self.max_lag)).sample(n, rng).events


class HawkesNextEvent(NextEvent):
    """The exact next-event distribution after each history: p(τ, s) = λ(t_n + τ, s) exp(−Λ(τ))."""

    def __init__(self, model: HawkesST, h: Histories):
        self.model = model
        valid = h.valid[:, ::-1]  # parents newest first
        self.parent_xy = np.where(valid[..., None], h.xy[:, ::-1], 0.0)
        age = np.where(valid, h.last_t[:, None] - h.t[:, ::-1], 0.0)
        # parent weights at the newest event's time t_n
        self.w = np.where(valid, model.alpha * model.beta * np.exp(-model.beta * age), 0.0)

    def log_terms(self, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(temporal, spatial) log densities of ``truth`` (H, 3) = (τ, x, y)."""
        m = self.model
        tau, xy = truth[:, 0], truth[:, 1:3]
        decay = np.exp(-m.beta * tau)
        A = self.w.sum(1)
        lam_t = m.mu + A * decay
        Lam = m.mu * tau + A / m.beta * (1 - decay)
        d2 = ((xy[:, None, :] - self.parent_xy) ** 2).sum(-1)
        trig = (self.w * decay[:, None] * np.exp(-d2 / (2 * m.sigma**2)) / (2 * math.pi * m.sigma**2)).sum(1)
        lam_ts = m.mu * np.exp(m.background.logpdf(xy)) + trig
        return np.log(lam_t) - Lam, np.log(lam_ts + 1e-300) - np.log(lam_t)

    def nll(self, truth: np.ndarray) -> NLL:
        lt, ls = self.log_terms(np.asarray(truth, float))
        return NLL(-np.column_stack([lt, ls]), "exact")

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        """Exact draws by superposition of the background and the decaying excitation."""
        m, w = self.model, self.w
        A = w.sum(1)[:, None]
        H = len(w)
        tau_b = rng.exponential(1 / m.mu, (H, n))
        u = rng.random((H, n))
        # P(no triggered event within τ) = exp(−(A/β)(1 − e^{−βτ})): invert where an event happens at all
        arg = 1 + m.beta * np.log(u) / np.maximum(A, 1e-300)
        tau_tr = np.where(arg > 0, -np.log(np.clip(arg, 1e-300, None)) / m.beta, np.inf)
        triggered = tau_tr < tau_b
        out = np.empty((H, n, 3))
        out[..., 0] = np.minimum(tau_b, tau_tr)
        loc = m.background.sample(H * n, rng).reshape(H, n, 2)
        # a triggered event's parent j is chosen with probability ∝ its weight (the decay factor is common)
        p = w / np.maximum(w.sum(1, keepdims=True), 1e-300)
        cum = np.cumsum(p, 1)
        pick = (rng.random((H, n, 1)) > cum[:, None, :]).sum(-1).clip(max=w.shape[1] - 1)
        parent = np.take_along_axis(self.parent_xy, pick[..., None], 1)  # (H, n, 2)
        child = parent + rng.normal(0, m.sigma, (H, n, 2))
        out[..., 1:] = np.where(triggered[..., None], child, loc)
        return Samples(out)


def simulate_hawkes(mu, alpha, beta, sigma, bounds, t_end, rng: np.random.Generator, max_events: int = 200_000):
    """Events of the process on [0, t_end) by its branching structure: background events uniform in the box,
    each event having Poisson(α) children after Exp(β) waits, displaced by N(0, σ² I). Returns (t, xy) sorted."""
    x0, y0, x1, y1 = bounds
    n0 = rng.poisson(mu * t_end)
    t = rng.uniform(0, t_end, n0)
    xy = np.column_stack([rng.uniform(x0, x1, n0), rng.uniform(y0, y1, n0)])
    all_t, all_xy = [t], [xy]
    while len(t) and sum(len(a) for a in all_t) < max_events:
        k = rng.poisson(alpha, len(t))
        parent = np.repeat(np.arange(len(t)), k)
        t = t[parent] + rng.exponential(1 / beta, len(parent))
        xy = xy[parent] + rng.normal(0, sigma, (len(parent), 2))
        keep = t < t_end
        t, xy = t[keep], xy[keep]
        all_t.append(t)
        all_xy.append(xy)
    t, xy = np.concatenate(all_t), np.concatenate(all_xy)
    order = np.argsort(t)
    return t[order], xy[order]
