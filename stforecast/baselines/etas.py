"""Space-time ETAS (Ogata 1998; Zhuang et al. 2002 form), fitted by maximum likelihood. No ETAS package is on the
registries these machines reach, so it is implemented here and checked on catalogs simulated with known parameters.

    λ(t, s) = μ f0(s) + Σ_{t_j < t} κ(m_j) g(t − t_j) f(s − s_j | m_j)
    κ(m) = A e^{α (m − Mc)}                                  productivity (expected direct aftershocks)
    g(τ) = (p − 1)/c · (1 + τ/c)^{−p}                          normalised Omori-Utsu decay (p > 1)
    f(r | m) = (q − 1)/(π σ²(m)) · (1 + r²/σ²(m))^{−q},  σ²(m) = D² e^{γ (m − Mc)}   normalised spatial kernel (q > 1)

Units are the model's (days, km). The log-likelihood on [t_start, t_end) is Σ log λ(t_i, s_i) − μ (t_end − t_start)
− Σ_j κ(m_j) (1 − (1 + (t_end − t_j)/c)^{1−p}) (the spatial integrals are taken as 1: events near the region's
edge lose a little offspring mass). The sum over the past keeps the latest ``max_lag`` events, as in
:mod:`stforecast.baselines.hawkes`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from stforecast.baselines.hawkes import UniformBox, _lagged
from stforecast.baselines.poisson_kde import GaussianKDE2D
from stforecast.model.base import NLL, Forecaster, Histories, NextEvent, Samples

NAMES = ("mu", "A", "alpha", "c", "p", "D", "q", "gamma")


def _unpack(theta):
    """Unconstrained → parameters: logs for positive ones, log(p − 1) and log(q − 1) for the exponents."""
    mu, A, alpha, c, pm1, D, qm1, gamma = theta
    return np.exp(mu), np.exp(A), alpha, np.exp(c), 1 + np.exp(pm1), np.exp(D), 1 + np.exp(qm1), gamma


class ETAS(Forecaster):
    name = "etas"
    mark_names = ("magnitude",)  # its histories carry magnitudes; its samples forecast them

    def __init__(self, mc: float, background: str | tuple = "kde", max_lag: int = 300):
        self.mc, self.background_spec, self.max_lag = mc, background, max_lag
        self.context = max_lag

    def _kernel(self, dt, r2, mj, A, alpha, c, p, D, q, gamma):
        sig2 = D**2 * np.exp(gamma * (mj - self.mc))
        with np.errstate(over="ignore", invalid="ignore"):
            k = (A * np.exp(alpha * (mj - self.mc)) * (p - 1) / c * (1 + dt / c) ** (-p)
                 * (q - 1) / (math.pi * sig2) * (1 + r2 / sig2) ** (-q))
        return np.where(np.isfinite(dt), k, 0.0)

    def _neg_loglik(self, theta, t, m, dt, r2, mj, log_f0, t_start, t_end):
        mu, A, alpha, c, p, D, q, gamma = _unpack(theta)
        lam = mu * np.exp(log_f0) + self._kernel(dt, r2, mj, A, alpha, c, p, D, q, gamma).sum(1)
        expected = A * np.exp(alpha * (m - self.mc)) * (1 - (1 + (t_end - t) / c) ** (1 - p))
        value = -(np.sum(np.log(lam + 1e-300)) - mu * (t_end - t_start) - expected.sum())
        return value if np.isfinite(value) else 1e300

    def fit(self, t, xy, m, t_end: float, t_start: float | None = None, init: dict | None = None) -> "ETAS":
        t, xy, m = np.asarray(t, float), np.asarray(xy, float), np.asarray(m, float)
        t_start = t[0] if t_start is None else t_start
        self.background = UniformBox(self.background_spec) if isinstance(self.background_spec, tuple) \
            else GaussianKDE2D(xy)
        log_f0 = self.background.logpdf(xy)
        dt, r2, mj = _lagged(t, xy, self.max_lag, marks=m)
        start = {"mu": 0.5 * len(t) / (t_end - t_start), "A": 0.2, "alpha": 1.0, "c": 0.01, "p": 1.2, "D": 1.0,
                 "q": 1.5, "gamma": 0.5, **(init or {})}
        x0 = np.array([math.log(start["mu"]), math.log(start["A"]), start["alpha"], math.log(start["c"]),
                       math.log(start["p"] - 1), math.log(start["D"]), math.log(start["q"] - 1), start["gamma"]])
        args = (t, m, dt, r2, mj, log_f0, t_start, t_end)
        res = minimize(self._neg_loglik, x0, args=args, method="L-BFGS-B",
                       bounds=[(None, None), (-12, 3), (0, 4), (-12, 3), (-6, 1.5), (-8, 6), (-6, 2), (0, 4)])
        self.theta, self.loglik, self.converged = res.x, -res.fun, bool(res.success)
        return self

    @property
    def params(self) -> dict:
        return dict(zip(NAMES, (float(v) for v in _unpack(self.theta))))

    def branching_ratio(self, b_value: float = 1.0) -> float:
        """Expected direct aftershocks per event for Gutenberg-Richter magnitudes above Mc with this b-value."""
        beta = b_value * math.log(10)
        p = self.params
        return p["A"] * beta / (beta - p["alpha"]) if beta > p["alpha"] else math.inf

    def fit_events(self, events, fit_end: float) -> "ETAS":
        """The :class:`~stforecast.model.base.Forecaster` face: fit on the catalog's events above Mc before
        ``fit_end``; the Gutenberg-Richter b of the simulated magnitudes is Aki's estimate on the same events."""
        past = events[(events["t"] < fit_end) & (events["magnitude"] >= self.mc - 1e-9)]
        m = past["magnitude"].to_numpy()
        self.b_value = aki_b_value(m, self.mc)
        return self.fit(past["t"].to_numpy(), past[["x", "y"]].to_numpy(), m, fit_end)

    def state(self) -> dict:
        return {"theta": [float(v) for v in self.theta], "params": self.params, "mc": self.mc,
                "b_value": float(getattr(self, "b_value", 1.0)), "loglik": float(self.loglik),
                "converged": self.converged}

    def restore(self, state: dict, events, fit_end: float) -> "ETAS":
        past = events[(events["t"] < fit_end) & (events["magnitude"] >= self.mc - 1e-9)]
        self.background = (UniformBox(self.background_spec) if isinstance(self.background_spec, tuple)
                           else GaussianKDE2D(past[["x", "y"]].to_numpy()))
        self.theta = np.asarray(state["theta"], dtype=float)
        self.b_value, self.loglik, self.converged = state["b_value"], state["loglik"], state["converged"]
        return self

    def forecast(self, histories: Histories) -> "ETASNextEvent":
        return ETASNextEvent(self, histories.newest(self.max_lag))

    def next_event_logpdf(self, t, xy, m, index):
        """(temporal, spatial) log density of events ``index`` of one stream given their past: the waiting time's
        density λ(t) exp(−∫λ) and the location's density given the time."""
        t, xy, index = np.asarray(t, float), np.asarray(xy, float), np.asarray(index)
        h = Histories.from_stream(t, xy, index, self.max_lag, {"magnitude": m})
        return self.forecast(h).log_terms(np.column_stack([t[index] - t[index - 1], xy[index]]))

    def sample_next(self, t, xy, m, index, n: int, rng: np.random.Generator, b_value: float | None = None,
                    iterations: int = 60) -> np.ndarray:
        """(H, n, 4) exact draws of (τ, x, y, magnitude) for the event after each ``index`` of one stream."""
        index = np.atleast_1d(index)
        h = Histories.from_stream(t, xy, index, self.max_lag, {"magnitude": m})
        s = self.forecast(h).sample(n, rng, b_value, iterations)
        return np.concatenate([s.events, s.marks["magnitude"][..., None]], -1)


class ETASNextEvent(NextEvent):
    """The exact next-event distribution after each history (its magnitudes are marks of the samples)."""

    def __init__(self, model: ETAS, h: Histories):
        if "magnitude" not in h.marks:
            raise ValueError("ETAS forecasts need the magnitudes of the history")
        self.model = model
        self.theta = _unpack(model.theta)
        self.valid = h.valid[:, ::-1]  # parents newest first
        self.parent_xy = np.where(self.valid[..., None], h.xy[:, ::-1], 0.0)
        self.parent_m = np.where(self.valid, h.marks["magnitude"][:, ::-1], model.mc)
        self.age = np.where(self.valid, h.last_t[:, None] - h.t[:, ::-1], 0.0)  # since each parent, at t_n
        mu, A, alpha, c, p, D, q, gamma = self.theta
        self.kappa = np.where(self.valid, A * np.exp(alpha * (self.parent_m - model.mc)), 0.0)

    def log_terms(self, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, A, alpha, c, p, D, q, gamma = self.theta
        tau, xy = truth[:, 0], truth[:, 1:3]
        age_now = self.age + tau[:, None]  # since each parent, at the event
        lam_t = mu + (self.kappa * (p - 1) / c * (1 + age_now / c) ** (-p)).sum(1)
        # ∫ over (t_n, t_n + τ] of the triggered rate: difference of Omori CDFs
        integral = mu * tau + (self.kappa * ((1 + self.age / c) ** (1 - p) - (1 + age_now / c) ** (1 - p))).sum(1)
        r2 = ((xy[:, None, :] - self.parent_xy) ** 2).sum(-1)
        lam_ts = mu * np.exp(self.model.background.logpdf(xy)) + self.model._kernel(
            np.where(self.valid, age_now, np.inf), r2, self.parent_m, A, alpha, c, p, D, q, gamma).sum(1)
        return np.log(lam_t) - integral, np.log(lam_ts + 1e-300) - np.log(lam_t)

    def nll(self, truth: np.ndarray) -> NLL:
        lt, ls = self.log_terms(np.asarray(truth, float))
        return NLL(-np.column_stack([lt, ls]), "exact")

    def sample(self, n: int, rng: np.random.Generator, b_value: float | None = None,
               iterations: int = 60) -> Samples:
        """Exact draws: the earliest of a background event (Exp(μ)) and a triggered one, whose waiting time solves
        Λ_trig(τ) = E, E ~ Exp(1), by bisection (no triggered event when E exceeds the parents' remaining
        productivity); a triggered event's parent is drawn ∝ its rate at that time, its offset from the power-law
        kernel of the parent's magnitude; magnitudes are Gutenberg-Richter with ``b_value`` (default: the
        fitted one, else 1)."""
        mu, A, alpha, c, p, D, q, gamma = self.theta
        b_value = b_value or getattr(self.model, "b_value", None) or 1.0
        age, kappa = self.age, self.kappa
        H = len(age)

        def cum(tau):  # (H, n) triggered expected count in (t_n, t_n + τ]
            a = age[:, None, :]
            return (kappa[:, None, :] * ((1 + a / c) ** (1 - p) - (1 + (a + tau[..., None]) / c) ** (1 - p))).sum(-1)

        remaining = (kappa * (1 + age / c) ** (1 - p)).sum(1)[:, None]  # Λ_trig(∞)
        e = rng.exponential(1.0, (H, n))
        has = e < remaining
        lo, hi = np.zeros((H, n)), np.ones((H, n))
        for _ in range(60):  # grow the bracket until Λ(hi) ≥ E where an event exists
            grow = has & (cum(hi) < e)
            if not grow.any():
                break
            hi = np.where(grow, hi * 4, hi)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = cum(mid) < e
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        tau_tr = np.where(has, (lo + hi) / 2, np.inf)
        tau_bg = rng.exponential(1 / mu, (H, n))
        triggered = tau_tr < tau_bg
        tau = np.minimum(tau_tr, tau_bg)
        # parent ∝ κ_j g(age_j + τ)
        rate = kappa[:, None, :] * (1 + (age[:, None, :] + tau[..., None]) / c) ** (-p)
        cdf = np.cumsum(rate, -1)
        u = rng.random((H, n, 1)) * cdf[..., -1:]
        pick = (u > cdf).sum(-1).clip(max=rate.shape[-1] - 1)  # (H, n) column of the parent
        parent_m = np.take_along_axis(self.parent_m, pick, 1)
        parent_xy = np.take_along_axis(self.parent_xy, pick[..., None], 1)
        sig2 = D**2 * np.exp(gamma * (parent_m - self.model.mc))
        r = np.sqrt(sig2 * ((1 - rng.random((H, n))) ** (1 / (1 - q)) - 1))
        angle = rng.uniform(0, 2 * math.pi, (H, n))
        child = parent_xy + np.stack([r * np.cos(angle), r * np.sin(angle)], -1)
        background = self.model.background.sample(H * n, rng).reshape(H, n, 2)
        out = np.empty((H, n, 3))
        out[..., 0] = tau
        out[..., 1:3] = np.where(triggered[..., None], child, background)
        magnitude = self.model.mc + rng.exponential(1 / (b_value * math.log(10)), (H, n))
        return Samples(out, {"magnitude": magnitude})


def simulate_etas(params: dict, mc: float, b_value: float, bounds, t_end: float, rng: np.random.Generator,
                  max_events: int = 500_000):
    """A catalog from the ETAS branching structure: background events uniform in the box, Gutenberg-Richter
    magnitudes, Poisson(κ(m)) direct aftershocks with Omori waiting times and power-law distances.
    Returns (t, xy, m) sorted by time."""
    mu, A, alpha, c, p, D, q, gamma = (params[k] for k in NAMES)
    beta = b_value * math.log(10)
    x0, y0, x1, y1 = bounds
    n0 = rng.poisson(mu * t_end)
    t = rng.uniform(0, t_end, n0)
    xy = np.column_stack([rng.uniform(x0, x1, n0), rng.uniform(y0, y1, n0)])
    m = mc + rng.exponential(1 / beta, n0)
    parts = [(t, xy, m)]
    while len(t) and sum(len(a[0]) for a in parts) < max_events:
        k = rng.poisson(A * np.exp(alpha * (m - mc)))
        parent = np.repeat(np.arange(len(t)), k)
        u = rng.random(len(parent))
        t = t[parent] + c * ((1 - u) ** (1 / (1 - p)) - 1)  # inverse CDF of the normalised Omori law
        sig2 = D**2 * np.exp(gamma * (m[parent] - mc))
        r = np.sqrt(sig2 * ((1 - rng.random(len(parent))) ** (1 / (1 - q)) - 1))
        angle = rng.uniform(0, 2 * math.pi, len(parent))
        xy = xy[parent] + np.column_stack([r * np.cos(angle), r * np.sin(angle)])
        m = mc + rng.exponential(1 / beta, len(parent))
        keep = t < t_end
        t, xy, m = t[keep], xy[keep], m[keep]
        parts.append((t, xy, m))
    t = np.concatenate([a[0] for a in parts])
    xy = np.concatenate([a[1] for a in parts])
    m = np.concatenate([a[2] for a in parts])
    order = np.argsort(t)
    return t[order], xy[order], m[order]


def aki_b_value(m: np.ndarray, mc: float, bin_width: float = 0.1) -> float:
    """Maximum-likelihood Gutenberg-Richter b-value (Aki 1965, with Utsu's correction for binned magnitudes)."""
    m = np.asarray(m, float)
    m = m[m >= mc]
    return math.log10(math.e) / (m.mean() - (mc - bin_width / 2))


def max_curvature_mc(m: np.ndarray, bin_width: float = 0.1, correction: float = 0.2) -> float:
    """Completeness magnitude by maximum curvature (Wiemer & Wyss 2000): the most populated magnitude bin, plus
    the usual ``correction`` (Woessner & Wiemer 2005), since the raw estimate is biased low."""
    m = np.asarray(m, float)
    bins = np.round(m / bin_width).astype(int)
    values, counts = np.unique(bins, return_counts=True)
    return round(float(values[np.argmax(counts)] * bin_width + correction), 6)
