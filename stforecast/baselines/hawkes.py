"""Self-exciting spatio-temporal Hawkes process, fitted by maximum likelihood.

    λ(t, s) = μ f0(s) + Σ_{j ∈ P(t)} α β e^{−β (t − t_j)} N(s; s_j, σ² I)

μ: background rate (events per time unit), f0: background spatial density (a KDE of the training locations,
or uniform over a box), α: mean number of direct offspring per event (branching ratio, < 1 for stationarity),
β: decay rate of the exponential time kernel, σ: spatial spread of offspring.

**Which past counts (the time cut-off).** The parents P(t) of the interval after the newest event t_n are the past
events whose kernel still matters at t_n: age t_n − t_j ≤ T, with T = ln(1/ε)/β the lag beyond which an event's
remaining offspring mass e^{−βT} is ε = ``cutoff_mass`` (1 %); plus a hard safety cap of the newest ``max_lag``
events (3,000, which is also the model's ``context``: the histories the evaluation builds). The cap binds only where
more than ``max_lag`` events fall within T of t_n (the fit reports the share of training events where it did:
``cap_binds``; 0 on Japan (T ≈ 5.5 days) and W-maze (T ≈ 0.23 s), 0.97 on Chicago, where β fits to 0.0013/hour,
T ≈ 150 days ≈ 6,000 events). Parents are fixed over the waiting interval, so the next-event density after t_n is
exact: p(τ, s) = λ(t_n + τ, s) · exp(−Λ(τ)), with Λ(τ) = μ τ + (A/β)(1 − e^{−β τ}) and
A = Σ_{j ∈ P} α β e^{−β (t_n − t_j)}; ``cutoff_mass=0`` conditions on the whole past (up to the cap). Sampling
is exact (closed-form waiting time; the parent ∝ its weight) and costs O(histories × (draws + parents)).

**Fit.** Maximum likelihood with the analytic gradient, vectorised over (event, parent) pairs (no loop over
events): log λ at each training event sums over that event's parents by the rule above (the same past its
next-event density reads), and the compensator charges every event's whole offspring mass until ``t_end``
(α (1 − e^{−β (t_end − t_j)})), so truncating the past can never make long memory look cheap; the charged mass
the windows then leave out is reported (``mass_left_out``). T depends on β, so the fit runs in steps: a pilot on the
newest 50 events per history, a fit with a generous window 2 T(pilot) (widened if the fitted T outgrows it), then
fits with T from the previous fit until T covers the 1 % lag of the fitted β (``mass_beyond_cutoff`` ≤ ε). For
speed the fit's sums leave out pairs farther apart than where the Gaussian offspring kernel (at the pilot's σ)
is below 1e-5 of its peak; the exact log-likelihood with every pair is computed after the fit (``loglik``), and
if the two differ by more than 1e-3 nats/event the radius is widened and the fit repeated (``pruning_gap``).
Densities and forecasts always use every parent of the window.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

from stforecast.baselines.kernels import (CELL_BLOCK, PILOT_LAG, PRUNE_DENSITY, PRUNE_TOLERANCE, UniformBox,
                                         cutoff_lag, dot, needed_length, pair_blocks, parent_until, pick_columns,
                                         recent, stream_pairs, window_starts)
from stforecast.baselines.poisson_kde import GaussianKDE2D
from stforecast.models.base import MAX_RATE, NLL, Forecaster, Histories, NextEvent, Samples, check_number

#: the fit's bounds on log α, log β and log σ (log μ is free)
LOG_BOUNDS = {"alpha": (-10, math.log(5)), "beta": (-12, 12), "sigma": (-12, 12)}


class HawkesST(Forecaster):
    name = "hawkes"

    def __init__(self, background: str | tuple = "kde", max_lag: int = 3000, cutoff_mass: float = 0.01):
        self.background_spec, self.max_lag, self.cutoff_mass = background, max_lag, cutoff_mass
        self.context = max_lag
        self.cutoff = math.inf

    # -------------------------------------------------------------------------------- likelihood
    def _pairs(self, t, xy, cap, horizon, t_end, radius2=None):
        i, j, d2 = stream_pairs(t, xy, cap, horizon, radius2)
        return {"i": i, "dt": t[i] - t[j], "d2": d2, "span": t_end - t}

    @staticmethod
    def _objective(x, pairs, f0, n, period):
        """Negative log-likelihood and its gradient in (log μ, log α, log β, log σ)."""
        mu, alpha, beta, sigma = np.exp(x)
        dt, d2, i, span = pairs["dt"], pairs["d2"], pairs["i"], pairs["span"]
        k = alpha * beta / (2 * math.pi * sigma**2) * np.exp(-beta * dt - d2 / (2 * sigma**2))
        lam = mu * f0 + np.bincount(i, k, minlength=n) + 1e-300
        decay = np.exp(-beta * span)
        ll = np.log(lam).sum() - mu * period - alpha * (1 - decay).sum()
        w = k / lam[i]
        grad = np.array([(mu * f0 / lam).sum() - mu * period,
                         w.sum() - alpha * (1 - decay).sum(),
                         w.sum() - beta * dot(w, dt) - alpha * beta * dot(span, decay),
                         -2 * w.sum() + dot(w, d2) / sigma**2])
        return -ll, -grad

    def _optimise(self, x0, pairs, f0, n, period):
        res = minimize(self._objective, x0, args=(pairs, f0, n, period), jac=True, method="L-BFGS-B",
                       bounds=[(None, None), *LOG_BOUNDS.values()])
        return res

    def fit(self, t, xy, t_end: float, t_start: float | None = None, init=(None, 0.5, 1.0, None)) -> "HawkesST":
        t, xy = np.asarray(t, float), np.asarray(xy, float)
        t_start = t[0] if t_start is None else t_start
        if isinstance(self.background_spec, tuple):
            self.background = UniformBox(self.background_spec)
        else:
            self.background = GaussianKDE2D(xy)
        f0 = np.exp(self.background.logpdf(xy))
        n, period = len(t), t_end - t_start
        mu0 = init[0] or 0.5 * n / period
        sigma0 = init[3] or 0.1 * float(np.sqrt(xy.var(0).sum()))
        x = np.log([mu0, init[1], init[2], sigma0])
        # pilot on a short window, a generous window around its cut-off, then the fitted cut-off (module docstring)
        res = self._optimise(x, self._pairs(t, xy, min(PILOT_LAG, self.max_lag), math.inf, t_end), f0, n, period)
        radius2 = 2 * math.log(1 / PRUNE_DENSITY) * math.exp(2 * res.x[3])  # kernel at 1e-5 of its peak (pilot σ)
        generous = 2 * cutoff_lag(math.exp(res.x[2]), self.cutoff_mass)
        for _ in range(4):
            res = self._optimise(res.x, self._pairs(t, xy, self.max_lag, generous, t_end, radius2), f0, n, period)
            if cutoff_lag(math.exp(res.x[2]), self.cutoff_mass) <= generous:
                break
            generous *= 4  # the fitted kernel outlasts the window: widen it
        self.cutoff = cutoff_lag(math.exp(res.x[2]), self.cutoff_mass)
        for _ in range(4):
            res = self._optimise(res.x, self._pairs(t, xy, self.max_lag, self.cutoff, t_end, radius2), f0, n, period)
            self.loglik = self._exact_loglik(np.exp(res.x), t, xy, f0, period, t_end)
            self.pruning_gap = (self.loglik + float(res.fun)) / n
            if self.pruning_gap > PRUNE_TOLERANCE:
                radius2 *= 16  # the pairs left out mattered: widen the radius four-fold and refit
            elif cutoff_lag(math.exp(res.x[2]), self.cutoff_mass) > self.cutoff * 1.01:
                self.cutoff = cutoff_lag(math.exp(res.x[2]), self.cutoff_mass)  # decays slower than T assumed
            else:
                break
        self.mu, self.alpha, self.beta, self.sigma = np.exp(res.x)
        self.converged = bool(res.success)
        self.mass_beyond_cutoff = float(math.exp(-self.beta * self.cutoff))
        lo = window_starts(t, len(t), self.cutoff)
        self.cap_binds = float(np.mean(np.arange(n) - lo > self.max_lag))
        # the share of the offspring mass the fit charged whose rate the windows leave out (cut-off and cap)
        charged = 1 - np.exp(-self.beta * (t_end - t))
        until = parent_until(t, self.max_lag, self.cutoff, t_end) - t
        self.mass_left_out = float(1 - (1 - np.exp(-self.beta * until)).sum() / charged.sum())
        return self

    def _exact_loglik(self, params, t, xy, f0, period, t_end) -> float:
        """The log-likelihood with every pair of the window (none left out), summed in blocks."""
        mu, alpha, beta, sigma = params
        trig = np.zeros(len(t))
        for i, j in pair_blocks(window_starts(t, self.max_lag, self.cutoff)):
            d2 = ((xy[i] - xy[j]) ** 2).sum(1)
            trig += np.bincount(i, np.exp(-beta * (t[i] - t[j]) - d2 / (2 * sigma**2)), minlength=len(t))
        trig *= alpha * beta / (2 * math.pi * sigma**2)
        compensator = mu * period + alpha * (1 - np.exp(-beta * (t_end - t))).sum()
        return float(np.log(mu * f0 + trig + 1e-300).sum() - compensator)

    @property
    def params(self) -> dict:
        return {"mu": float(self.mu), "alpha": float(self.alpha), "beta": float(self.beta), "sigma": float(self.sigma)}

    # -------------------------------------------------------------------------------- forecasts
    def fit_events(self, events, fit_end: float) -> "HawkesST":
        """The :class:`~stforecast.models.base.Forecaster` face: fit on the catalog's events before ``fit_end``."""
        past = events[events["t"] < fit_end]
        return self.fit(past["t"].to_numpy(), past[["x", "y"]].to_numpy(), fit_end)

    def state(self) -> dict:
        return {**self.params, "loglik": float(self.loglik), "converged": self.converged,
                "cutoff": None if math.isinf(self.cutoff) else float(self.cutoff),
                "cutoff_mass": self.cutoff_mass, "mass_beyond_cutoff": self.mass_beyond_cutoff,
                "max_lag": self.max_lag, "cap_binds": self.cap_binds, "pruning_gap": self.pruning_gap,
                "mass_left_out": self.mass_left_out}

    @staticmethod
    def check_state(state: dict) -> None:
        """Raise a ValueError naming the field unless ``state`` is what :meth:`state` writes (parameters finite and
        inside the fit's bounds)."""
        check_number(state, "mu", 1e-300, MAX_RATE)
        for key, (lo, hi) in LOG_BOUNDS.items():
            check_number(state, key, math.exp(lo) * (1 - 1e-9), math.exp(hi) * (1 + 1e-9))
        check_number(state, "cutoff", 0, optional=True)
        check_number(state, "loglik", finite=False)
        for key in ("mass_beyond_cutoff", "cap_binds", "mass_left_out"):  # shares (rounding may dip below 0)
            check_number(state, key, -1e-9, 1)
        check_number(state, "pruning_gap", finite=False)
        if not isinstance(state.get("converged"), bool):
            raise ValueError(f"field 'converged' must be true or false, not {state.get('converged')!r}")

    def restore(self, state: dict, events, fit_end: float) -> "HawkesST":
        past = events[events["t"] < fit_end]
        self.background = (UniformBox(self.background_spec) if isinstance(self.background_spec, tuple)
                           else GaussianKDE2D(past[["x", "y"]].to_numpy()))
        self.mu, self.alpha, self.beta, self.sigma = (state[k] for k in ("mu", "alpha", "beta", "sigma"))
        self.loglik, self.converged = state["loglik"], state["converged"]
        self.cutoff = math.inf if state["cutoff"] is None else state["cutoff"]
        self.mass_beyond_cutoff, self.cap_binds = state["mass_beyond_cutoff"], state["cap_binds"]
        self.pruning_gap, self.mass_left_out = state["pruning_gap"], state["mass_left_out"]
        return self

    def describe(self) -> str:
        cut = "the whole past" if math.isinf(self.cutoff) else f"events within {self.cutoff:.4g} time units"
        return f"hawkes (conditions on {cut}, at most {self.max_lag})"

    def forecast(self, histories: Histories) -> "HawkesNextEvent":
        return HawkesNextEvent(self, histories)

    def next_event_logpdf(self, t, xy, index):
        """(temporal, spatial) log density of events ``index`` (each ≥ 1) of one stream given all earlier events:
        temporal is the density of the waiting time, spatial the density of the location given the time (they sum
        to the joint)."""
        t, xy, index = np.asarray(t, float), np.asarray(xy, float), np.asarray(index)
        h = Histories.from_stream(t, xy, index, needed_length(t, index, self.max_lag, self.cutoff))
        return self.forecast(h).log_terms(np.column_stack([t[index] - t[index - 1], xy[index]]))


class HawkesNextEvent(NextEvent):
    """The exact next-event distribution after each history: p(τ, s) = λ(t_n + τ, s) exp(−Λ(τ)), its parents
    the history's events within the model's cut-off (module docstring)."""

    def __init__(self, model: HawkesST, h: Histories):
        self.model = model
        valid, self.parent_xy, _, age = recent(h, model.max_lag, model.cutoff)
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
        trig = np.empty(len(tau))
        step = max(1, CELL_BLOCK // self.w.shape[1])
        for a in range(0, len(tau), step):
            b = slice(a, a + step)
            d2 = ((xy[b, None, :] - self.parent_xy[b]) ** 2).sum(-1)
            trig[b] = (self.w[b] * np.exp(-d2 / (2 * m.sigma**2))).sum(1)
        trig *= decay / (2 * math.pi * m.sigma**2)
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
        pick = pick_columns(w, rng.random((H, n)))
        parent = np.take_along_axis(self.parent_xy, pick[..., None], 1)  # (H, n, 2)
        child = parent + rng.normal(0, m.sigma, (H, n, 2))
        out[..., 1:] = np.where(triggered[..., None], child, loc)
        return Samples(out)


def simulate_hawkes(mu, alpha, beta, sigma, bounds, t_end, rng: np.random.Generator, max_events: int = 200_000):
    """Events of the process on [0, t_end) by its branching structure: background events uniform in the box,
    each event having Poisson(α) children after Exp(β) waits, displaced by N(0, σ² I). Returns (t, xy) sorted.
    (The process without a cut-off: every event keeps triggering for ever.)"""
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
