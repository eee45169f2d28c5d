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

**Which events trigger (the parent threshold, issue 22).** Every event above ``mc`` is a target, but a catalog
whose nominal Mc sits below its real completeness (Japan: nominal 2.5, magnitudes peaking at 4.3) records only some
of the small events' offspring, so their productivity is not what κ(m) extrapolates. ``parent_mcs`` are the
thresholds tried: only events of magnitude ≥ the threshold are parents (their productivity is fitted, and they
alone trigger in forecasts and simulations), while the background and the triggered rate still predict every
event above ``mc``, so every model is scored on the same targets. By default (``"estimate"``) :meth:`fit_events`
offers ``mc`` and the training magnitudes' completeness by maximum curvature plus 0.2
(:func:`~stforecast.models.marks.max_curvature_mc`), and the threshold is chosen on validation with the spatial
kernel.

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
from scipy.optimize import minimize

from stforecast.baselines.etas_kernel import (BOUNDS, FREE, INFO, NAMES, VARIANTS, _tied, _unpack, log_spatial,
                                             omori_cutoff)
from stforecast.baselines.etas_simulation import ETASNextEvent, _catalog_chunks
from stforecast.baselines.kernels import (PILOT_LAG, PRUNE_DENSITY, PRUNE_TOLERANCE, UniformBox, dot, needed_length,
                                          pair_blocks, parent_until, recent, stream_pairs, window_starts)
from stforecast.baselines.poisson_kde import GaussianKDE2D
from stforecast.models.base import MAX_RATE, Forecaster, Histories, check_number, chunk_within
from stforecast.models.marks import aki_b_value, max_curvature_mc

class ETAS(Forecaster):
    name = "etas"
    forecast_marks = ("magnitude",)  # Gutenberg-Richter, b fitted (or the sampling's magnitude_b)
    b_value = 1.0  # Gutenberg-Richter b of the training events above Mc (Aki), set by the fit
    mark_names = ("magnitude",)  # its histories carry magnitudes; its samples forecast them

    def __init__(self, mc: float, background: str | tuple = "kde", max_lag: int = 3000,
                 variants: tuple = VARIANTS, cutoff_mass: float = 0.01, parent_mcs: tuple | str = "estimate"):
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown ETAS variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
        self.mc, self.background_spec, self.max_lag = mc, background, max_lag
        self.variants, self.cutoff_mass = tuple(variants), cutoff_mass
        self.context = max_lag
        self.variant, self.cutoff = self.variants[0], math.inf
        # issue 22: the magnitude above which events trigger (parents); every event above ``mc`` is still a target.
        # ``parent_mcs``: the thresholds tried, chosen on validation with the spatial kernel; "estimate": ``mc`` and
        # the training magnitudes' completeness by maximum curvature (+ 0.2) where that is higher (fit_events)
        self.parent_spec = parent_mcs
        self.parent_mcs = (mc,) if parent_mcs == "estimate" else tuple(parent_mcs)
        self.parent_mc = self.parent_mcs[0]
        self.validation, self.selected_on, self.summary = {}, "none", {}
        self.fit_info = {}  # the fit's diagnostics (etas_kernel.INFO), stored with its state

    # -------------------------------------------------------------------------------- likelihood
    def _pairs(self, data, cap, horizon, radius2=None):
        """(event, parent) pairs under the cut-off rule, leaving out those farther apart than ``radius2`` (per
        parent) when given; with the parents' compensator spans."""
        t = data["t"]
        i, j, r2 = stream_pairs(t, data["xy"], cap, horizon, radius2)
        keep = data["parent"][j] > 0  # events below the parent threshold trigger nothing
        i, j, r2 = i[keep], j[keep], r2[keep]
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
        kappa = A * np.exp(alpha * data["dm_all"]) * data["parent"]
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
            keep = data["parent"][j] > 0
            i, j = i[keep], j[keep]
            d = dm[j]
            log_f, _, _ = log_spatial(((xy[i] - xy[j]) ** 2).sum(1), 2 * math.log(D) + gamma * d, q, variant)
            trig += np.bincount(i, np.exp(math.log(A) + alpha * d + math.log((p - 1) / c)
                                          - p * np.log1p((t[i] - t[j]) / c) + log_f), minlength=n)
        comp = A * np.exp(alpha * dm) * data["parent"] * (1 - (1 + data["span"] / c) ** (1 - p))
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
        kappa = A * np.exp(alpha * data["dm_all"]) * data["parent"]
        until = parent_until(data["t"], self.max_lag, horizon, data["t_end"]) - data["t"]
        charged = kappa * (1 - (1 + data["span"] / c) ** (1 - p))
        windowed = kappa * (1 - (1 + until / c) ** (1 - p))
        return {"variant": variant, "parent_mc": data["parent_mc"], "theta": theta, "loglik": exact, "converged": converged,
                "cutoff": horizon, "mass_beyond_cutoff": float((1 + horizon / c) ** (1 - p)),
                "mass_left_out": float(1 - windowed.sum() / charged.sum()),
                "omori_lag_1pct": omori_cutoff(c, p, self.cutoff_mass),
                "cap_binds": float(np.mean(np.arange(data["n"]) - lo > self.max_lag)),
                "pruning_gap": float(gap), "pairs": int(len(pairs["i"])), "fit_seconds": time.perf_counter() - began}

    def _adopt(self, fit: dict) -> None:
        self.variant, self.theta, self.cutoff = fit["variant"], np.asarray(fit["theta"], float), fit["cutoff"]
        self.parent_mc = fit["parent_mc"]
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
        base = {"t": tt, "xy": xyt, "dm_all": mt - self.mc, "dm": mt - self.mc, "n": len(tt), "t_end": t_end,
                "period": t_end - t_start, "span": t_end - tt, "f0": np.exp(self.background.logpdf(xyt))}
        s = {"mu": 0.5 * len(tt) / (t_end - t_start), "A": 0.2, "alpha": 1.0, "c": 0.01, "p": 1.2, "D": 1.0,
             "q": 1.5, "gamma": 0.5, **(init or {})}
        start = np.array([math.log(s["mu"]), math.log(s["A"]), s["alpha"], math.log(s["c"]), math.log(s["p"] - 1),
                          math.log(s["D"]), math.log(s["q"] - 1), s["gamma"]])
        val = np.flatnonzero(~train & (t < (val_end if val_end is not None else -math.inf)))
        val = val[val >= 1]
        select = len(val) > 0 and len(self.variants) * len(self.parent_mcs) > 1
        fits, self.validation, self.summary = {}, {}, {}
        choices = [(v, pmc) for pmc in self.parent_mcs for v in self.variants] if select \
            else [(self.variants[0], self.parent_mcs[0])]
        for variant, pmc in choices:
            name = self.choice_name(variant, pmc)
            data = {**base, "parent_mc": float(pmc), "parent": (mt >= pmc - 1e-9).astype(float)}
            fits[name] = self._fit_variant(variant, data, start)
            self._adopt(fits[name])
            if len(val):
                self.validation[name] = self.mean_nll(t, xy, m, val)
            self.summary[name] = {"train_loglik": fits[name]["loglik"],
                                  "fit_seconds": round(fits[name]["fit_seconds"], 2),
                                  **({"validation_nll": self.validation[name]} if len(val) else {})}
        best = min(self.validation, key=self.validation.get) if select else self.choice_name(*choices[0])
        self._adopt(fits[best])
        self.selected_on = f"validation ({len(val)} events)" if select else "none"
        return self

    def choice_name(self, variant: str, parent_mc: float) -> str:
        """How a (spatial kernel, parent threshold) choice is named in the validation scores: the kernel's name
        alone where every event above Mc is a parent (the names before issue 22)."""
        return variant if parent_mc <= self.mc + 1e-9 else f"{variant} / parents from M{parent_mc:g}"

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
        """The :class:`~stforecast.models.base.Forecaster` face: fit on the catalog's events above Mc before
        ``fit_end``, choosing the spatial kernel on its events in [fit_end, val_end) where given; the
        Gutenberg-Richter b of the simulated magnitudes is Aki's estimate on the training events."""
        stream = events[(events["t"] < (fit_end if val_end is None else val_end))
                        & (events["magnitude"] >= self.mc - 1e-9)]
        train_m = stream.loc[stream["t"] < fit_end, "magnitude"].to_numpy()
        self.b_value = aki_b_value(train_m, self.mc)
        if self.parent_spec == "estimate" and len(train_m):
            estimate = max_curvature_mc(train_m)
            self.parent_mcs = (self.mc, estimate) if estimate > self.mc + 1e-9 else (self.mc,)
        return self.fit(stream["t"].to_numpy(), stream[["x", "y"]].to_numpy(), stream["magnitude"].to_numpy(),
                        fit_end, val_end=val_end)

    def state(self) -> dict:
        return {"variant": self.variant, "theta": [float(v) for v in self.theta], "params": self.params,
                "mc": self.mc, "parent_mc": float(self.parent_mc), "b_value": float(self.b_value), "loglik": float(self.loglik),
                "converged": self.converged, "cutoff": None if math.isinf(self.cutoff) else float(self.cutoff),
                "cutoff_mass": self.cutoff_mass, "max_lag": self.max_lag, "selected_on": self.selected_on,
                "validation_nll": dict(self.validation), "variants": self.summary,
                **{k: (None if math.isinf(v) else float(v)) for k, v in self.fit_info.items()}}

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
        if "parent_mc" in state:  # absent (written before issue 22): every event is a parent
            check_number(state, "parent_mc", state["mc"] - 1e-9, 10, optional=True)
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
        self.parent_mc = float(state.get("parent_mc") or self.mc)
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
        parents = "" if self.parent_mc <= self.mc + 1e-9 else f", parents M >= {self.parent_mc:g}"
        return f"etas ({self.variant} spatial kernel{parents}, {chosen}; conditions on the {cut})"

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
        :class:`~stforecast.models.base.SimulatedChunk` per ``chunk`` catalogs: ``first`` its first catalog id,
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
        mass = A * np.exp(alpha * (pm - self.mc)) * (pm >= self.parent_mc - 1e-9) * np.exp((1 - p) * np.log1p(a0 / c)) * drop
        return {"xy": pxy, "log_sig2": 2 * math.log(D) + gamma * (pm - self.mc), "a0": a0, "a1": a1,
                "drop": drop, "mass": mass}
