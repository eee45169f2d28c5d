"""Space-time ETAS (Ogata 1998; Zhuang et al. 2002 form), fitted by maximum likelihood. No ETAS package is on the
registries these machines reach, so it is implemented here and checked on catalogs simulated with known parameters.

    λ(t, s) = μ f0(s) + Σ_{j ∈ P(t)} κ(m_j) g(t − t_j) f(s − s_j | m_j)
    κ(m) = A e^{α (m − Mc)}                                  productivity (expected direct aftershocks)
    g(τ) = (p − 1)/c · (1 + τ/c)^{−p}                          normalised Omori-Utsu decay (p > 1)

**Spatial kernels (Ogata 1998's comparison), chosen on validation.** σ²(m) = D² e^{γ (m − Mc)}:

* ``"power-law"``: f(r | m) = (q − 1)/(π σ²(m)) · (1 + r²/σ²(m))^{−q}, its own magnitude scaling γ;
* ``"power-law-alpha"``: the same with the spatial scale tied to the productivity exponent, γ = α;
* ``"gaussian"``: f(r | m) = exp(−r²/(2 σ²(m))) / (2π σ²(m)) with γ = α (Ogata's magnitude-scaled variance).

:meth:`ETAS.fit` fits each of ``variants`` on the training events and keeps the one with the lowest next-event
NLL (nats/event, joint) on the validation events it is given (events in [t_end, val_end); never the test period);
the chosen variant and every variant's validation score are in :meth:`ETAS.state` (the fit cache's JSON) and
:meth:`ETAS.describe`. Without validation events only the first variant is fitted.

The power laws' q is bounded to (1, 3] (as q grows the power law tends to the Gaussian, which is a variant of its
own: the choice is then between heavy and light tails).

**Which past counts (the time cut-off).** The parents P(t) of the interval after the newest event t_n are the past
events whose Omori kernel still matters at t_n: age t_n − t_j ≤ T, where T leaves ε = ``cutoff_mass`` (1 %) of an
event's offspring beyond it, (1 + T/c)^{1−p} = ε; plus a hard safety cap of the newest ``max_lag`` events (3,000,
also the model's ``context``: the histories the evaluation builds, 1,000 × 3,000 arrays ≈ 100 MB). With the
Omori decay of real catalogs T is astronomically long (p = 1.25 gives ≈ 10^6 days; on Japan the fit goes to
p ≈ 1, T = ∞), so there **the cap is what binds**: ETAS conditions on the newest 3,000 events (about three years
of the Japan catalog); ``cap_binds`` in the state is the share of training events where it did. Parents are fixed
over the waiting interval, so the next-event density and the sampler are exact for this conditioning.

**Fit.** Maximum likelihood with the analytic gradient, vectorised over (event, parent) pairs (no loop over
events): log λ at each training event sums over that event's parents by the rule above (the same past its
next-event density reads), and the compensator charges every event's whole offspring mass until ``t_end``,
κ_j (1 − (1 + (t_end − t_j)/c)^{1−p}), the spatial integrals taken as 1 (events near the region's edge lose a
little offspring mass): it is the full-past ETAS likelihood with the rate's sum cut to the window (a lower bound of it),
so where the cap binds the fit still pays for the offspring it cannot see; the charged mass the windows leave out is
reported (``mass_left_out``: 7.5 % on Japan). On Japan the fitted p sits at its bound (p − 1 = e^{−6}) all the
same: the catalog's long-range clustering (Mc 2.5 while it is complete only well above M4, a background that
changes over the decades) is absorbed as a 1/τ memory. Per variant: a pilot on the newest 50
events per history; the fit with the generous window (the cap alone); then, where T from that fit drops any
pair, a refit with T. For speed the fit's sums leave out pairs farther apart than where the parent's spatial kernel
(at the pilot's parameters) is below 1e-5 of its peak; the exact log-likelihood with every pair is computed after
the fit (``loglik``), and if the two differ by more than 1e-3 nats/event the radius is widened and the fit
repeated (``pruning_gap``). Densities, validation scores and forecasts always use every parent of the window.
On Japan (17,237 training events, 4,976 validation events, 2 CPU cores) the three variants and their validation
scores take about 90 s, about 4.7 M (event, parent) pairs each (≈ 1 GB peak memory).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from stforecast.baselines.hawkes import (CELL_BLOCK, PILOT_LAG, PRUNE_DENSITY, PRUNE_TOLERANCE, UniformBox, dot,
                                         needed_length, pair_blocks, parent_until, pick_columns, recent,
                                         stream_pairs, window_starts)
from stforecast.baselines.poisson_kde import GaussianKDE2D
from stforecast.model.base import (MAX_RATE, NLL, Forecaster, Histories, NextEvent, Samples, SimulatedChunk,
                                   check_number, chunk_within)

NAMES = ("mu", "A", "alpha", "c", "p", "D", "q", "gamma")
VARIANTS = ("power-law", "power-law-alpha", "gaussian")
#: free entries of the unconstrained 8-vector per variant (γ is tied to α outside "power-law"; no q for "gaussian")
FREE = {"power-law": (0, 1, 2, 3, 4, 5, 6, 7), "power-law-alpha": (0, 1, 2, 3, 4, 5, 6), "gaussian": (0, 1, 2, 3, 4, 5)}
BOUNDS = [(None, None), (-12, 3), (0, 4), (-12, 3), (-6, 1.5), (-8, 6), (-6, math.log(2)), (0, 4)]
#: the sampler's first window, as a fraction of the mean background wait 1/μ (:meth:`ETASNextEvent.sample`)
FIRST_WINDOW = 1e-4
#: fit diagnostics kept in the state (module docstring)
INFO = ("mass_beyond_cutoff", "mass_left_out", "omori_lag_1pct", "cap_binds", "pruning_gap", "pairs")


def _unpack(theta):
    """Unconstrained → parameters: logs for positive ones, log(p − 1) and log(q − 1) for the exponents."""
    mu, A, alpha, c, pm1, D, qm1, gamma = theta
    return np.exp(mu), np.exp(A), alpha, np.exp(c), 1 + np.exp(pm1), np.exp(D), 1 + np.exp(qm1), gamma


def _tied(theta, variant: str) -> np.ndarray:
    theta = np.array(theta, dtype=float)
    if variant != "power-law":
        theta[7] = theta[2]  # γ = α
    return theta


def omori_cutoff(c: float, p: float, mass: float) -> float:
    """T with (1 + T/c)^{1−p} = mass: the lag beyond which a fraction ``mass`` of the offspring is left (inf for
    mass 0, or when T overflows)."""
    if mass <= 0:
        return math.inf
    log_ratio = math.log(1 / mass) / (p - 1)
    return math.inf if log_ratio > 700 else c * math.expm1(log_ratio)


def log_spatial(r2, log_sig2, q, variant: str):
    """log f(r | m) of the variant's spatial kernel, its derivative in log σ²(m), and log(1 + r²/σ²) (power laws;
    None for the Gaussian)."""
    u = r2 * np.exp(-log_sig2)
    if variant == "gaussian":
        return -math.log(2 * math.pi) - log_sig2 - u / 2, u / 2 - 1, None
    l2 = np.log1p(u)
    return math.log((q - 1) / math.pi) - log_sig2 - q * l2, q * u / (1 + u) - 1, l2


class ETAS(Forecaster):
    name = "etas"
    forecast_marks = ("magnitude",)  # Gutenberg-Richter, b fitted (or the sampling's magnitude_b)
    b_value = 1.0  # Gutenberg-Richter b of the training events above Mc (Aki), set by the fit
    mark_names = ("magnitude",)  # its histories carry magnitudes; its samples forecast them

    def __init__(self, mc: float, background: str | tuple = "kde", max_lag: int = 3000,
                 variants: tuple = VARIANTS, cutoff_mass: float = 0.01):
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown ETAS variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        self.mc, self.background_spec, self.max_lag = mc, background, max_lag
        self.variants, self.cutoff_mass = tuple(variants), cutoff_mass
        self.context = max_lag
        self.variant, self.cutoff = self.variants[0], math.inf
        self.validation, self.selected_on, self.summary = {}, "none", {}

    # -------------------------------------------------------------------------------- likelihood
    def _pairs(self, data, cap, horizon, radius2=None):
        """(event, parent) pairs under the cut-off rule, leaving out those farther apart than ``radius2`` (per
        parent) when given; with the parents' compensator spans."""
        t = data["t"]
        i, j, r2 = stream_pairs(t, data["xy"], cap, horizon, radius2)
        return {"i": i, "dt": t[i] - t[j], "r2": r2, "dm": data["dm"][j]}

    @staticmethod
    def _objective(x, variant, pairs, data):
        """Negative log-likelihood and its gradient in the variant's free entries of the unconstrained vector."""
        theta = np.zeros(8)
        theta[list(FREE[variant])] = x
        theta = _tied(theta, variant)
        mu, A, alpha, c, p, D, q, gamma = _unpack(theta)
        dt, r2, dm, i = pairs["dt"], pairs["r2"], pairs["dm"], pairs["i"]
        f0, n, period = data["f0"], data["n"], data["period"]
        l1 = np.log1p(dt / c)
        log_sig2 = 2 * math.log(D) + gamma * dm
        log_f, dlf, l2 = log_spatial(r2, log_sig2, q, variant)
        k = np.exp(math.log(A) + alpha * dm + math.log((p - 1) / c) - p * l1 + log_f)
        lam = mu * f0 + np.bincount(i, k, minlength=n) + 1e-300
        # compensator: κ_j G(t_end − t_j), G the Omori CDF: each event's whole offspring mass until t_end
        kappa = A * np.exp(alpha * data["dm_all"])
        span = data["span"]
        log1_span = np.log1p(span / c)
        surv = np.exp((1 - p) * log1_span)
        comp = kappa * (1 - surv)
        ll = np.log(lam).sum() - mu * period - comp.sum()
        if not np.isfinite(ll):
            return 1e300, np.zeros(len(x))
        w = k / lam[i]
        wdm = w * dm
        grad = np.array([
            (mu * f0 / lam).sum() - mu * period,
            w.sum() - comp.sum(),
            wdm.sum() - dot(comp, data["dm_all"]),
            p * dot(w, dt / (c + dt)) - w.sum() + (p - 1) * dot(kappa, span / c * np.exp(-p * log1_span)),
            w.sum() - (p - 1) * dot(w, l1) - (p - 1) * dot(kappa, log1_span * surv),
            2 * dot(w, dlf),
            0.0 if variant == "gaussian" else w.sum() - (q - 1) * dot(w, l2),
            dot(wdm, dlf),
        ])
        if variant != "power-law":
            grad[2] += grad[7]
        return -ll, -grad[list(FREE[variant])]

    def _optimise(self, theta, variant, pairs, data):
        free = list(FREE[variant])
        res = minimize(self._objective, _tied(theta, variant)[free], args=(variant, pairs, data), jac=True,
                       method="L-BFGS-B", bounds=[BOUNDS[k] for k in free])
        out = np.array(theta, dtype=float)
        out[free] = res.x
        return _tied(out, variant), -float(res.fun), bool(res.success)

    def _exact_loglik(self, theta, variant, data, horizon) -> float:
        """The log-likelihood with every pair of the window (no pruning), summed in blocks."""
        mu, A, alpha, c, p, D, q, gamma = _unpack(theta)
        t, xy, dm, n = data["t"], data["xy"], data["dm_all"], data["n"]
        trig = np.zeros(n)
        for i, j in pair_blocks(window_starts(t, self.max_lag, horizon)):
            d = dm[j]
            log_f, _, _ = log_spatial(((xy[i] - xy[j]) ** 2).sum(1), 2 * math.log(D) + gamma * d, q, variant)
            trig += np.bincount(i, np.exp(math.log(A) + alpha * d + math.log((p - 1) / c)
                                          - p * np.log1p((t[i] - t[j]) / c) + log_f), minlength=n)
        comp = A * np.exp(alpha * dm) * (1 - (1 + data["span"] / c) ** (1 - p))
        return float(np.log(mu * data["f0"] + trig + 1e-300).sum() - mu * data["period"] - comp.sum())

    def _fit_variant(self, variant, data, start) -> dict:
        began = time.perf_counter()
        theta, _, _ = self._optimise(start, variant, self._pairs(data, min(PILOT_LAG, self.max_lag), math.inf), data)
        _, _, _, _, _, D, q, gamma = _unpack(theta)
        rho2 = 2 * math.log(1 / PRUNE_DENSITY) if variant == "gaussian" else PRUNE_DENSITY ** (-1 / q) - 1
        sig2 = D**2 * np.exp(gamma * data["dm_all"])  # the pilot's spatial scales
        horizon, gap = math.inf, math.nan  # the generous window: the cap alone
        for _ in range(3):
            pairs = self._pairs(data, self.max_lag, horizon, rho2 * sig2)
            theta, loglik, converged = self._optimise(theta, variant, pairs, data)
            mu, A, alpha, c, p, D, q, gamma = _unpack(theta)
            cutoff = omori_cutoff(c, p, self.cutoff_mass)
            t = data["t"]
            if cutoff < horizon and np.any(window_starts(t, self.max_lag, cutoff)
                                           != window_starts(t, self.max_lag, horizon)):
                horizon = cutoff  # the fitted kernel fades within the window: refit with its cut-off
                pairs = self._pairs(data, self.max_lag, horizon, rho2 * sig2)
                theta, loglik, converged = self._optimise(theta, variant, pairs, data)
            exact = self._exact_loglik(theta, variant, data, horizon)
            gap = (exact - loglik) / data["n"]
            if gap <= PRUNE_TOLERANCE:
                break
            rho2 *= 16  # the pruned pairs mattered: widen the radius four-fold and refit
        mu, A, alpha, c, p, D, q, gamma = _unpack(theta)
        lo = window_starts(data["t"], data["n"], horizon)
        # the share of the offspring mass the fit charged whose rate the windows leave out (cut-off and cap)
        kappa = A * np.exp(alpha * data["dm_all"])
        until = parent_until(data["t"], self.max_lag, horizon, data["t_end"]) - data["t"]
        charged = kappa * (1 - (1 + data["span"] / c) ** (1 - p))
        windowed = kappa * (1 - (1 + until / c) ** (1 - p))
        return {"variant": variant, "theta": theta, "loglik": exact, "converged": converged,
                "cutoff": horizon, "mass_beyond_cutoff": float((1 + horizon / c) ** (1 - p)),
                "mass_left_out": float(1 - windowed.sum() / charged.sum()),
                "omori_lag_1pct": omori_cutoff(c, p, self.cutoff_mass),
                "cap_binds": float(np.mean(np.arange(data["n"]) - lo > self.max_lag)),
                "pruning_gap": float(gap), "pairs": int(len(pairs["i"])), "fit_seconds": time.perf_counter() - began}

    def _adopt(self, fit: dict) -> None:
        self.variant, self.theta, self.cutoff = fit["variant"], np.asarray(fit["theta"], float), fit["cutoff"]
        self.loglik, self.converged = fit["loglik"], fit["converged"]
        self.fit_info = {k: fit[k] for k in INFO}

    def fit(self, t, xy, m, t_end: float, t_start: float | None = None, init: dict | None = None,
            val_end: float | None = None) -> "ETAS":
        """Fit on the events before ``t_end``; where the (time-sorted) events continue into [t_end, val_end), fit
        every variant and keep the one with the best next-event NLL on those validation events."""
        t, xy, m = np.asarray(t, float), np.asarray(xy, float), np.asarray(m, float)
        train = t < t_end
        tt, xyt, mt = t[train], xy[train], m[train]
        t_start = tt[0] if t_start is None else t_start
        self.background = UniformBox(self.background_spec) if isinstance(self.background_spec, tuple) \
            else GaussianKDE2D(xyt)
        data = {"t": tt, "xy": xyt, "dm_all": mt - self.mc, "dm": mt - self.mc, "n": len(tt), "t_end": t_end,
                "period": t_end - t_start, "span": t_end - tt, "f0": np.exp(self.background.logpdf(xyt))}
        s = {"mu": 0.5 * len(tt) / (t_end - t_start), "A": 0.2, "alpha": 1.0, "c": 0.01, "p": 1.2, "D": 1.0,
             "q": 1.5, "gamma": 0.5, **(init or {})}
        start = np.array([math.log(s["mu"]), math.log(s["A"]), s["alpha"], math.log(s["c"]), math.log(s["p"] - 1),
                          math.log(s["D"]), math.log(s["q"] - 1), s["gamma"]])
        val = np.flatnonzero(~train & (t < (val_end if val_end is not None else -math.inf)))
        val = val[val >= 1]
        select = len(val) > 0 and len(self.variants) > 1
        fits, self.validation, self.summary = {}, {}, {}
        for variant in self.variants if select else self.variants[:1]:
            fits[variant] = self._fit_variant(variant, data, start)
            self._adopt(fits[variant])
            if len(val):
                self.validation[variant] = self.mean_nll(t, xy, m, val)
            self.summary[variant] = {"train_loglik": fits[variant]["loglik"],
                                     "fit_seconds": round(fits[variant]["fit_seconds"], 2),
                                     **({"validation_nll": self.validation[variant]} if len(val) else {})}
        best = min(self.validation, key=self.validation.get) if select else self.variants[0]
        self._adopt(fits[best])
        self.selected_on = f"validation ({len(val)} events)" if select else "none"
        return self

    def mean_nll(self, t, xy, m, index, block: int = 500) -> float:
        """Mean next-event NLL (nats/event, joint) of events ``index`` of one stream given their pasts."""
        total = 0.0
        for a in range(0, len(index), block):
            lt, ls = self.next_event_logpdf(t, xy, m, index[a:a + block])
            total -= float((lt + ls).sum())
        return total / len(index)

    @property
    def params(self) -> dict:
        values = dict(zip(NAMES, (float(v) for v in _unpack(self.theta))))
        if self.variant == "gaussian":
            del values["q"]
        return values

    def branching_ratio(self, b_value: float = 1.0) -> float:
        """Expected direct aftershocks per event for Gutenberg-Richter magnitudes above Mc with this b-value."""
        beta = b_value * math.log(10)
        p = self.params
        return p["A"] * beta / (beta - p["alpha"]) if beta > p["alpha"] else math.inf

    def fit_events(self, events, fit_end: float, val_end: float | None = None) -> "ETAS":
        """The :class:`~stforecast.model.base.Forecaster` face: fit on the catalog's events above Mc before
        ``fit_end``, choosing the spatial kernel on its events in [fit_end, val_end) where given; the
        Gutenberg-Richter b of the simulated magnitudes is Aki's estimate on the training events."""
        stream = events[(events["t"] < (fit_end if val_end is None else val_end))
                        & (events["magnitude"] >= self.mc - 1e-9)]
        self.b_value = aki_b_value(stream.loc[stream["t"] < fit_end, "magnitude"].to_numpy(), self.mc)
        return self.fit(stream["t"].to_numpy(), stream[["x", "y"]].to_numpy(), stream["magnitude"].to_numpy(),
                        fit_end, val_end=val_end)

    def state(self) -> dict:
        return {"variant": self.variant, "theta": [float(v) for v in self.theta], "params": self.params,
                "mc": self.mc, "b_value": float(self.b_value), "loglik": float(self.loglik),
                "converged": self.converged, "cutoff": None if math.isinf(self.cutoff) else float(self.cutoff),
                "cutoff_mass": self.cutoff_mass, "max_lag": self.max_lag, "selected_on": self.selected_on,
                "validation_nll": dict(self.validation), "variants": self.summary,
                **{k: (None if math.isinf(v) else float(v)) for k, v in getattr(self, "fit_info", {}).items()}}

    @staticmethod
    def check_state(state: dict) -> None:
        """Raise a ValueError naming the field unless ``state`` is what :meth:`state` writes: a known variant, the
        unconstrained parameters finite and inside the fit's bounds, a b-value and cut-off the fit could give."""
        if state.get("variant") not in VARIANTS:
            raise ValueError(f"field 'variant' must be one of {list(VARIANTS)}, not {state.get('variant')!r}")
        theta = state.get("theta")
        if not isinstance(theta, list) or len(theta) != len(NAMES):
            raise ValueError(f"field 'theta' must be a list of {len(NAMES)} numbers, not {theta!r}")
        for i, (lo, hi) in enumerate(BOUNDS):  # log μ is free in the fit: bounded here by the largest sane rate
            check_number({f"theta[{i}]": theta[i]}, f"theta[{i}]", -700.0 if lo is None else lo - 1e-9,
                         math.log(MAX_RATE) if hi is None else hi + 1e-9)
        check_number(state, "mc", -3, 10)
        check_number(state, "b_value", 1e-3, 10)
        check_number(state, "cutoff", 0, optional=True)
        check_number(state, "loglik", finite=False)
        if not isinstance(state.get("converged"), bool):
            raise ValueError(f"field 'converged' must be true or false, not {state.get('converged')!r}")
        for key in ("selected_on", "variants"):
            if key not in state:
                raise ValueError(f"field {key!r} is missing")
        scores = state.get("validation_nll")
        if not isinstance(scores, dict):
            raise ValueError(f"field 'validation_nll' must be a table, not {scores!r}")
        for variant in scores:
            check_number(scores, variant, finite=False)

    def restore(self, state: dict, events, fit_end: float) -> "ETAS":
        past = events[(events["t"] < fit_end) & (events["magnitude"] >= self.mc - 1e-9)]
        self.background = (UniformBox(self.background_spec) if isinstance(self.background_spec, tuple)
                           else GaussianKDE2D(past[["x", "y"]].to_numpy()))
        self.variant, self.theta = state["variant"], np.asarray(state["theta"], dtype=float)
        self.cutoff = math.inf if state["cutoff"] is None else float(state["cutoff"])
        self.b_value, self.loglik, self.converged = state["b_value"], state["loglik"], state["converged"]
        self.selected_on, self.validation = state["selected_on"], dict(state["validation_nll"])
        self.summary = state["variants"]
        self.fit_info = {k: state[k] for k in INFO if k in state}
        return self

    def describe(self) -> str:
        scores = ", ".join(f"{v} {s:.3f}" for v, s in self.validation.items())
        chosen = (f"chosen on validation NLL/event: {scores}" if len(self.validation) > 1
                  else f"validation NLL/event {scores}" if scores else "not selected: no validation events")
        cut = f"newest {self.max_lag} events" + ("" if math.isinf(self.cutoff) else f" within {self.cutoff:.4g}")
        return f"etas ({self.variant} spatial kernel, {chosen}; conditions on the {cut})"

    @property
    def sampling_b(self) -> float:
        """The b-value of simulated magnitudes (Gutenberg-Richter above ``mc``): the sampling's ``magnitude_b``,
        else the fit's Aki estimate. (ETAS samples exactly: the sampler settings do not apply.)"""
        return float(self.sampling.magnitude_b or self.b_value)

    def forecast(self, histories: Histories) -> "ETASNextEvent":
        return ETASNextEvent(self, histories)

    def next_event_logpdf(self, t, xy, m, index):
        """(temporal, spatial) log density of events ``index`` of one stream given their past: the waiting time's
        density λ(t) exp(−∫λ) and the location's density given the time."""
        t, xy, index = np.asarray(t, float), np.asarray(xy, float), np.asarray(index)
        h = Histories.from_stream(t, xy, index, needed_length(t, index, self.max_lag, self.cutoff),
                                  {"magnitude": m})
        return self.forecast(h).log_terms(np.column_stack([t[index] - t[index - 1], xy[index]]))

    def sample_next(self, t, xy, m, index, n: int, rng: np.random.Generator,
                    b_value: float | None = None) -> np.ndarray:
        """(H, n, 4) exact draws of (τ, x, y, magnitude) for the event after each ``index`` of one stream."""
        t, index = np.asarray(t, float), np.atleast_1d(index)
        h = Histories.from_stream(t, xy, index, needed_length(t, index, self.max_lag, self.cutoff),
                                  {"magnitude": m})
        s = self.forecast(h).sample(n, rng, b_value)
        return np.concatenate([s.events, s.marks["magnitude"][..., None]], -1)

    def simulate_catalogs(self, t, xy, marks, t_end: float, n: int, rng: np.random.Generator, *,
                          t_start: float | None = None, chunk: int = 2000, max_events: int = 5000,
                          max_history: int | None = None, progress: bool = False, b_value: float | None = None,
                          m_max: float = 9.5):
        """``n`` simulated catalogs of the events in [t_start, t_end) (CSEP-style catalog forecasts: thousands per
        window) from the ETAS branching process, vectorised over the catalogs of a chunk and the events of a
        generation. It is :meth:`Forecaster.simulate_catalogs` for ETAS (what
        :func:`stforecast.forecast.simulate_horizon` calls); the generic version draws one next event per catalog
        and step (:meth:`ETASNextEvent.sample`), far slower.

        ``t`` (L,), ``xy`` (L, 2), ``marks`` {"magnitude": (L,)} (or the (L,) magnitudes): the observed history,
        time-sorted, every event at or before ``t_start`` (default: its newest event); events below the Mc the
        model was fitted on are dropped. Its parents are those the next-event density reads after its newest event: the cut-off
        rule (:func:`recent`), the newest ``max_history`` (default ``max_lag``) within ``cutoff``. The history is
        everything known up to ``t_start``: nothing is simulated between its newest event and ``t_start``.

        * Generation 0: each catalog gets Poisson(μ (t_end − t_start) + Σ_j Λ_j) events, each a background event
          (uniform time, location from ``background.sample``) with probability ∝ μ (t_end − t_start), else an
          offspring of observed parent j ∝ Λ_j = κ_j (S(a0_j) − S(a1_j)), S(a) = (1 + a/c)^{1−p}, with
          a0_j = t_start − t_j and a1_j = min(t_end − t_j, cutoff) its ages at the window's ends: its time from the
          Omori law truncated to those ages (closed-form inverse), its location from the variant's spatial kernel
          around the parent, σ²(m_j) = D² e^{γ (m_j − Mc)}.
        * Generation g + 1: every event i of generation g triggers Poisson(κ(m_i) (1 − S(min(t_end − t_i, cutoff))))
          offspring in the rest of the window, drawn the same way; the loop (one pass per generation, none per
          catalog or event) ends when a generation is empty.
        * Magnitudes: Gutenberg-Richter above Mc with ``b_value`` (default: the fitted one, else 1), truncated at
          ``m_max``.

        Every event triggers over ages up to ``cutoff`` (the whole window when it is infinite, as on real
        catalogs). Unlike the generic lock-step sampler, simulated events do not push the oldest observed parents
        out at the ``max_history`` cap: the two sample the same process when the cut-off is infinite and the observed
        parents plus a catalog's events stay within the cap.

        A catalog whose events would pass ``max_events`` keeps ``max_events`` of them, stops triggering and is
        flagged ``capped`` (its count is a lower bound): an explosive fit costs at most ``chunk × max_events``
        events per chunk (about 40 bytes each) however large its expected offspring. Memory is bounded by the
        chunk, not by ``n``.

        Returns a generator (the simulation runs as it is consumed) of one
        :class:`~stforecast.model.base.SimulatedChunk` per ``chunk`` catalogs: ``first`` its first catalog id,
        ``counts`` (c,) int64 events per catalog, ``capped`` (c,) bool, and ``events`` a DataFrame with columns
        ``simulation`` (int64, the global catalog id ``first`` .. ``first + c − 1``), ``t``, ``x``, ``y``,
        ``magnitude`` (model units), sorted by (simulation, t); catalogs without events have no rows. Stream the
        chunks to a file and keep the counts: ``for c in model.simulate_catalogs(...): c.events.to_csv(...)``.
        ``progress``: a tqdm bar over the catalogs.
        """
        t, xy = np.asarray(t, float), np.asarray(xy, float).reshape(-1, 2)
        m = np.asarray(marks["magnitude"] if isinstance(marks, dict) else marks, float)
        if len(m) != len(t):
            raise ValueError(f"ETAS catalogs need the history's magnitudes: {len(m)} for {len(t)} events")
        t_start = float(t[-1]) if t_start is None else float(t_start)
        above = m >= self.mc - 1e-9  # the parents are the events above the Mc it was fitted on
        t, xy, m = t[above], xy[above], m[above]
        t_end, n = float(t_end), int(n)
        if not t_end > t_start:
            raise ValueError(f"the window needs t_end > t_start, not [{t_start}, {t_end})")
        if len(t) and t[-1] > t_start:
            raise ValueError(f"the history must end by t_start={t_start} (its newest event is at {t[-1]})")
        if n < 0 or chunk < 1 or max_events < 1:
            raise ValueError("n must be ≥ 0, chunk and max_events ≥ 1")
        if not m_max > self.mc:
            raise ValueError(f"m_max={m_max} must exceed Mc={self.mc}")
        b_value = float(b_value or self.sampling_b)
        parents = self._window_parents(t, xy, m, t_start, t_end, int(max_history or self.max_lag))
        chunks = _catalog_chunks(self, parents, t_start, t_end, n, rng, b_value, m_max, int(chunk), int(max_events),
                                 progress)
        return chunks if self.support is None else (chunk_within(c, self.support) for c in chunks)

    def _window_parents(self, t, xy, m, t_start: float, t_end: float, cap: int) -> dict:
        """The observed parents of the window [t_start, t_end) (the cut-off rule at the history's newest event):
        locations, log σ², and each one's expected offspring in the window with its ages at the window's ends."""
        mu, A, alpha, c, p, D, q, gamma = _unpack(_tied(self.theta, self.variant))
        L = min(len(t), cap)
        if L == 0:
            pm, pxy, a0 = np.empty(0), np.empty((0, 2)), np.empty(0)
        else:
            h = Histories(t[None, -L:], xy[None, -L:], {"magnitude": m[None, -L:]})
            valid, parent_xy, marks, age = recent(h, cap, self.cutoff)
            keep = valid[0]
            pm, pxy = marks["magnitude"][0][keep], parent_xy[0][keep]
            a0 = age[0][keep] + (t_start - t[-1])
        a1 = np.minimum(a0 + (t_end - t_start), self.cutoff)
        width = np.maximum(a1 - a0, 0.0)
        drop = -np.expm1((1 - p) * np.log1p(width / (c + a0)))  # 1 − S(a1) / S(a0)
        mass = A * np.exp(alpha * (pm - self.mc)) * np.exp((1 - p) * np.log1p(a0 / c)) * drop
        return {"xy": pxy, "log_sig2": 2 * math.log(D) + gamma * (pm - self.mc), "a0": a0, "a1": a1,
                "drop": drop, "mass": mass}


class ETASNextEvent(NextEvent):
    """The exact next-event distribution after each history (its parents: the model's cut-off rule; its
    magnitudes are marks of the samples)."""

    def __init__(self, model: ETAS, h: Histories):
        if "magnitude" not in h.marks:
            raise ValueError("ETAS forecasts need the magnitudes of the history")
        self.model = model
        self.theta = _unpack(_tied(model.theta, model.variant))
        self.valid, self.parent_xy, marks, self.age = recent(h, model.max_lag, model.cutoff)
        self.parent_m = np.where(self.valid, marks["magnitude"], model.mc)
        mu, A, alpha, c, p, D, q, gamma = self.theta
        self.kappa = np.where(self.valid, A * np.exp(alpha * (self.parent_m - model.mc)), 0.0)
        self.log_sig2 = 2 * math.log(D) + gamma * (self.parent_m - model.mc)

    def log_terms(self, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, A, alpha, c, p, D, q, gamma = self.theta
        tau, xy = truth[:, 0], truth[:, 1:3]
        H, W = self.age.shape
        lam_t, integral, trig = np.empty(H), np.empty(H), np.empty(H)
        step = max(1, CELL_BLOCK // W)
        for a in range(0, H, step):
            b = slice(a, a + step)
            age, kappa = self.age[b], self.kappa[b]
            rate = kappa * (p - 1) / c * np.exp(-p * np.log1p((age + tau[b, None]) / c))  # κ g at the event
            lam_t[b] = mu + rate.sum(1)
            # ∫ over (t_n, t_n + τ] of the triggered rate: κ (S(age) − S(age + τ)), S(a) = (1 + a/c)^{1−p}
            surv = np.exp((1 - p) * np.log1p(age / c))
            integral[b] = mu * tau[b] - (kappa * surv * np.expm1((1 - p) * np.log1p(tau[b, None] / (c + age)))).sum(1)
            r2 = ((xy[b, None, :] - self.parent_xy[b]) ** 2).sum(-1)
            log_f, _, _ = log_spatial(r2, self.log_sig2[b], q, self.model.variant)
            trig[b] = (rate * np.exp(log_f)).sum(1)
        lam_ts = mu * np.exp(self.model.background.logpdf(xy)) + trig
        return np.log(lam_t) - integral, np.log(lam_ts + 1e-300) - np.log(lam_t)

    def nll(self, truth: np.ndarray) -> NLL:
        lt, ls = self.log_terms(np.asarray(truth, float))
        return NLL(-np.column_stack([lt, ls]), "exact")

    def mark_nll(self, marks: dict) -> dict:
        """{"magnitude": (H,)}: −log of ETAS's magnitude law, Gutenberg-Richter with the fitted b above Mc (scored
        like DSTPP's head: from half a 0.1 bin below Mc)."""
        if "magnitude" not in marks:
            return {}
        return {"magnitude": -gutenberg_richter_log_prob(marks["magnitude"], self.model.mc, self.model.b_value)}

    def sample(self, n: int, rng: np.random.Generator, b_value: float | None = None) -> Samples:
        """Exact draws. The triggered part after t_n is a Poisson process (the superposition of each parent's
        remaining offspring) that competes with a background event at τ_bg ~ Exp(μ). It is drawn window by window,
        (0, τ_1], (τ_1, 2τ_1], (2τ_1, 4τ_1], ... (independent counts of a Poisson process): in a window each
        unresolved draw gets Poisson(Σ_j M_j) offspring, M_j = κ_j (S(age_j + lo) − S(age_j + hi)) the window's mass
        of parent j, S(a) = (1 + a/c)^{1−p}; each from parent j ∝ M_j at a time from its Omori law within the window
        (closed-form inverse). A draw is resolved by its first offspring, or by its background event once τ_bg
        falls in the window, whichever is earlier; work grows with the windows and the offspring drawn before the
        first, not with the remaining offspring mass (which for p near 1 is huge and nearly all far in the future).
        The winner's location is the parent's kernel draw or the background density's; magnitudes are
        Gutenberg-Richter with ``b_value`` (default: the fitted one, else 1)."""
        mu, A, alpha, c, p, D, q, gamma = self.theta
        b_value = b_value or self.model.sampling_b
        H, W = self.age.shape
        tau = rng.exponential(1 / mu, (H, n))  # the background event; replaced by an earlier offspring
        parent = np.full((H, n), -1, dtype=np.int64)
        open_ = np.ones((H, n), dtype=bool)
        lo, hi = 0.0, FIRST_WINDOW / mu
        while open_.any():
            rows = np.flatnonzero(open_.any(1))
            age = self.age[rows]
            drop = -np.expm1((1 - p) * np.log1p((hi - lo) / (c + age + lo)))  # 1 − S(age + hi) / S(age + lo)
            mass = self.kappa[rows] * np.exp((1 - p) * np.log1p((age + lo) / c)) * drop  # (rows, W)
            counts = rng.poisson(mass.sum(1)[:, None] * open_[rows])  # (rows, n) offspring in the window
            cell = np.repeat(np.arange(counts.size), counts.ravel())
            if len(cell):
                row = cell // n
                j = pick_columns(mass, rng.random(len(cell)), rows=row)
                base = c + age[row, j] + lo
                with np.errstate(over="ignore"):
                    t = lo + base * np.expm1(np.log1p(-rng.random(len(cell)) * drop[row, j]) / (1 - p))
                order = np.lexsort((t, cell))
                first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
                h, k = rows[row[first]], cell[first] % n
                earlier = t[first] < tau[h, k]
                tau[h[earlier], k[earlier]] = t[first][earlier]
                parent[h[earlier], k[earlier]] = j[first][earlier]
                open_[h, k] = False
            open_ &= tau > hi  # a background event inside this window wins unless an offspring came first
            lo, hi = hi, 2 * hi
        triggered = parent >= 0
        parent = np.maximum(parent, 0)
        parent_xy = np.take_along_axis(self.parent_xy, parent[..., None], 1)
        sig = np.exp(0.5 * np.take_along_axis(self.log_sig2, parent, 1))
        if self.model.variant == "gaussian":
            offset = sig[..., None] * rng.normal(size=(H, n, 2))
        else:
            r = sig * np.sqrt((1 - rng.random((H, n))) ** (1 / (1 - q)) - 1)
            angle = rng.uniform(0, 2 * math.pi, (H, n))
            offset = np.stack([r * np.cos(angle), r * np.sin(angle)], -1)
        background = self.model.background.sample(H * n, rng).reshape(H, n, 2)
        out = np.empty((H, n, 3))
        out[..., 0] = tau
        out[..., 1:3] = np.where(triggered[..., None], parent_xy + offset, background)
        magnitude = self.model.mc + rng.exponential(1 / (b_value * math.log(10)), (H, n))
        return Samples(out, {"magnitude": magnitude})


# ------------------------------------------------------------------------------ many catalogs of one window
def _kernel_offsets(log_sig2: np.ndarray, q: float, variant: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) displacements from the variant's spatial kernel with scales σ² = exp(``log_sig2``)."""
    n = len(log_sig2)
    sig = np.exp(0.5 * log_sig2)
    if variant == "gaussian":
        return sig[:, None] * rng.normal(size=(n, 2))
    with np.errstate(over="ignore"):
        r = sig * np.sqrt((1 - rng.random(n)) ** (1 / (1 - q)) - 1)  # P(R > r) = (1 + r²/σ²)^{1−q}
    angle = rng.uniform(0, 2 * math.pi, n)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle)])


def _gr_magnitudes(n: int, mc: float, b_value: float, m_max: float, rng: np.random.Generator) -> np.ndarray:
    """Gutenberg-Richter magnitudes above ``mc`` truncated at ``m_max`` (inverse CDF)."""
    beta = b_value * math.log(10)
    return mc - np.log1p(-rng.random(n) * -np.expm1(-beta * (m_max - mc))) / beta


def _fit_in_room(cat: np.ndarray, k: np.ndarray, room: np.ndarray) -> np.ndarray:
    """``k`` offspring counts of events grouped by catalog (``cat`` sorted), cut so that no catalog gets more than
    its ``room``: earlier events of a catalog fill it first."""
    before = np.cumsum(k) - k
    starts = np.r_[0, np.flatnonzero(np.diff(cat)) + 1] if len(cat) else np.zeros(0, np.int64)
    within = before - np.repeat(before[starts], np.diff(np.r_[starts, len(cat)]))
    return np.clip(room[cat] - within, 0, k)


def _catalog_chunks(model: ETAS, parents: dict, t_start: float, t_end: float, n_catalogs: int,
                    rng: np.random.Generator, b_value: float, m_max: float, chunk: int, max_events: int,
                    progress: bool):
    """The generator behind :meth:`ETAS.simulate_catalogs`: one :class:`SimulatedChunk` per ``chunk`` catalogs."""
    mu, A, alpha, c, p, D, q, gamma = _unpack(_tied(model.theta, model.variant))
    mc, variant, cutoff = model.mc, model.variant, model.cutoff
    last = np.nextafter(t_end, -math.inf)  # the latest time inside [t_start, t_end)
    # a Poisson mean this far above max_events overflows the room all the same: cap it (numpy refuses huge means)
    lam_cap = 10.0 * max_events + 1000.0
    cum = np.cumsum(np.r_[mu * (t_end - t_start), parents["mass"]])
    total, cum = cum[-1], cum / cum[-1]
    W = len(parents["mass"])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_catalogs, desc="ETAS catalogs", unit="catalog")
    try:
        for first in range(0, n_catalogs, chunk):
            n = min(chunk, n_catalogs - first)
            drawn = rng.poisson(min(total, lam_cap), n)
            capped = drawn > max_events
            counts = np.minimum(drawn, max_events)
            # generation 0: background events and the observed parents' offspring (grouped by catalog)
            cat = np.repeat(np.arange(n), counts)
            source = np.minimum(np.searchsorted(cum, rng.random(len(cat)), side="right"), W)  # 0: background
            tt, xy = np.empty(len(cat)), np.empty((len(cat), 2))
            bg = source == 0
            tt[bg] = rng.uniform(t_start, t_end, int(bg.sum()))
            xy[bg] = model.background.sample(int(bg.sum()), rng)
            j = source[~bg] - 1
            a0 = parents["a0"][j]
            with np.errstate(over="ignore"):
                age = a0 + (c + a0) * np.expm1(np.log1p(-rng.random(len(j)) * parents["drop"][j]) / (1 - p))
            tt[~bg] = t_start + np.minimum(age, parents["a1"][j]) - a0
            xy[~bg] = parents["xy"][j] + _kernel_offsets(parents["log_sig2"][j], q, variant, rng)
            mm = _gr_magnitudes(len(cat), mc, b_value, m_max, rng)
            parts = []
            while len(cat):
                tt = np.minimum(tt, last)
                parts.append((cat, tt, xy, mm))
                live = ~capped[cat]  # a capped catalog's events trigger no more
                cat, tt, xy, mm = cat[live], tt[live], xy[live], mm[live]
                a1 = np.minimum(t_end - tt, cutoff)
                drop = -np.expm1((1 - p) * np.log1p(a1 / c))  # 1 − S(a1): the offspring share left in the window
                k = rng.poisson(np.minimum(A * np.exp(alpha * (mm - mc)) * drop, lam_cap))
                kept = _fit_in_room(cat, k, max_events - counts)
                capped[cat[kept < k]] = True
                parent = np.repeat(np.arange(len(cat)), kept)
                with np.errstate(over="ignore"):
                    age = c * np.expm1(np.log1p(-rng.random(len(parent)) * drop[parent]) / (1 - p))
                new_t = tt[parent] + np.minimum(age, a1[parent])
                new_xy = xy[parent] + _kernel_offsets(2 * math.log(D) + gamma * (mm[parent] - mc), q, variant, rng)
                cat, tt, xy = cat[parent], new_t, new_xy
                mm = _gr_magnitudes(len(cat), mc, b_value, m_max, rng)
                counts += np.bincount(cat, minlength=n)
            if parts:
                cat, tt, xy, mm = (np.concatenate(a) for a in zip(*parts))
            else:
                cat, tt, xy, mm = np.empty(0, np.int64), np.empty(0), np.empty((0, 2)), np.empty(0)
            order = np.lexsort((tt, cat))
            events = pd.DataFrame({"simulation": cat[order].astype(np.int64) + first, "t": tt[order],
                                   "x": xy[order, 0], "y": xy[order, 1], "magnitude": mm[order]})
            if bar is not None:
                bar.update(n)
            yield SimulatedChunk(events, first, counts, capped)
    finally:
        if bar is not None:
            bar.close()

def simulate_etas(params: dict, mc: float, b_value: float, bounds, t_end: float, rng: np.random.Generator,
                  max_events: int = 500_000, variant: str = "power-law"):
    """A catalog from the ETAS branching structure: background events uniform in the box, Gutenberg-Richter
    magnitudes, Poisson(κ(m)) direct aftershocks with Omori waiting times and the ``variant``'s spatial kernel
    (``params`` needs ``q`` only for the power laws and ``gamma`` only for ``"power-law"``; otherwise γ = α).
    The process has no cut-off: every event keeps triggering. Returns (t, xy, m) sorted by time."""
    mu, A, alpha, c, p, D = (params[k] for k in NAMES[:6])
    q = params.get("q")
    gamma = params["gamma"] if variant == "power-law" else alpha
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
        if variant == "gaussian":
            offset = np.sqrt(sig2)[:, None] * rng.normal(size=(len(parent), 2))
        else:
            r = np.sqrt(sig2 * ((1 - rng.random(len(parent))) ** (1 / (1 - q)) - 1))
            angle = rng.uniform(0, 2 * math.pi, len(parent))
            offset = np.column_stack([r * np.cos(angle), r * np.sin(angle)])
        xy = xy[parent] + offset
        m = mc + rng.exponential(1 / beta, len(parent))
        keep = t < t_end
        t, xy, m = t[keep], xy[keep], m[keep]
        parts.append((t, xy, m))
    t = np.concatenate([a[0] for a in parts])
    xy = np.concatenate([a[1] for a in parts])
    m = np.concatenate([a[2] for a in parts])
    order = np.argsort(t)
    return t[order], xy[order], m[order]


def gutenberg_richter_log_prob(m: np.ndarray, mc: float, b: float) -> np.ndarray:
    """log of the Gutenberg-Richter density β e^{−β (m − lo)}, β = b ln 10, lo = Mc − 0.05 (half a 0.1 reporting
    bin below Mc; DSTPP's magnitude head is scored from the same point)."""
    beta = b * math.log(10)
    return math.log(beta) - beta * np.maximum(np.asarray(m, float) - (mc - 0.05), 0)


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
