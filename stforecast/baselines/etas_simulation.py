"""ETAS forecasts: the exact next-event sampler and density after each history (:class:`ETASNextEvent`), and
whole catalogs by the branching process, vectorised over catalogs and generations (:meth:`ETAS.simulate_catalogs`
runs :func:`catalog_chunks`); :func:`simulate_etas` simulates a catalog from known parameters (the fit's tests)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from stforecast.baselines.etas_kernel import FIRST_WINDOW, NAMES, _kernel_offsets, _tied, _unpack, log_spatial
from stforecast.baselines.kernels import CELL_BLOCK, pick_columns, recent
from stforecast.models.base import NLL, Histories, NextEvent, Samples
from stforecast.models.marks import gutenberg_richter_log_prob, sample_gutenberg_richter
from stforecast.models.simulate import SimulatedChunk

class ETASNextEvent(NextEvent):
    """The exact next-event distribution after each history (its parents: the model's cut-off rule; its
    magnitudes are marks of the samples)."""

    def __init__(self, model: "ETAS", h: Histories):  # noqa: F821 - etas.py imports this module
        if "magnitude" not in h.marks:
            raise ValueError("ETAS forecasts need the magnitudes of the history")
        self.model = model
        self.theta = _unpack(_tied(model.theta, model.variant))
        self.valid, self.parent_xy, marks, self.age = recent(h, model.max_lag, model.cutoff)
        self.parent_m = np.where(self.valid, marks["magnitude"], model.mc)
        mu, A, alpha, c, p, D, q, gamma = self.theta
        trigger = self.valid & (self.parent_m >= model.parent_mc - 1e-9)  # events below the threshold trigger nothing
        self.kappa = np.where(trigger, A * np.exp(alpha * (self.parent_m - model.mc)), 0.0)
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

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        """Exact draws. The triggered part after t_n is a Poisson process (the superposition of each parent's
        remaining offspring) that competes with a background event at τ_bg ~ Exp(μ). It is drawn window by window,
        (0, τ_1], (τ_1, 2τ_1], (2τ_1, 4τ_1], ... (independent counts of a Poisson process): in a window each
        unresolved draw gets Poisson(Σ_j M_j) offspring, M_j = κ_j (S(age_j + lo) − S(age_j + hi)) the window's mass
        of parent j, S(a) = (1 + a/c)^{1−p}; each from parent j ∝ M_j at a time from its Omori law within the window
        (closed-form inverse). A draw is resolved by its first offspring, or by its background event once τ_bg
        falls in the window, whichever is earlier; work grows with the windows and the offspring drawn before the
        first, not with the remaining offspring mass (which for p near 1 is huge and nearly all far in the future).
        The winner's location is the parent's kernel draw or the background density's; magnitudes are
        Gutenberg-Richter with the model's :attr:`~stforecast.baselines.etas.ETAS.sampling_b` (the sampling's
        ``magnitude_b``, else the fitted b)."""
        mu, A, alpha, c, p, D, q, gamma = self.theta
        b_value = self.model.sampling_b
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
        magnitude = sample_gutenberg_richter((H, n), self.model.mc, b_value, rng)
        return Samples(out, {"magnitude": magnitude})


# ------------------------------------------------------------------------------ many catalogs of one window
def _fit_in_room(cat: np.ndarray, k: np.ndarray, room: np.ndarray) -> np.ndarray:
    """``k`` offspring counts of events grouped by catalog (``cat`` sorted), cut so that no catalog gets more than
    its ``room``: earlier events of a catalog fill it first."""
    before = np.cumsum(k) - k
    starts = np.r_[0, np.flatnonzero(np.diff(cat)) + 1] if len(cat) else np.zeros(0, np.int64)
    within = before - np.repeat(before[starts], np.diff(np.r_[starts, len(cat)]))
    return np.clip(room[cat] - within, 0, k)


def _catalog_chunks(model: "ETAS", parents: dict, t_start: float, t_end: float, n_catalogs: int,  # noqa: F821
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
            mm = sample_gutenberg_richter(len(cat), mc, b_value, rng, m_max)
            parts = []
            while len(cat):
                tt = np.minimum(tt, last)
                parts.append((cat, tt, xy, mm))
                live = ~capped[cat]  # a capped catalog's events trigger no more
                cat, tt, xy, mm = cat[live], tt[live], xy[live], mm[live]
                a1 = np.minimum(t_end - tt, cutoff)
                drop = -np.expm1((1 - p) * np.log1p(a1 / c))  # 1 − S(a1): the offspring share left in the window
                k = rng.poisson(np.minimum(A * np.exp(alpha * (mm - mc)) * (mm >= model.parent_mc - 1e-9) * drop,
                                           lam_cap))
                kept = _fit_in_room(cat, k, max_events - counts)
                capped[cat[kept < k]] = True
                parent = np.repeat(np.arange(len(cat)), kept)
                with np.errstate(over="ignore"):
                    age = c * np.expm1(np.log1p(-rng.random(len(parent)) * drop[parent]) / (1 - p))
                new_t = tt[parent] + np.minimum(age, a1[parent])
                new_xy = xy[parent] + _kernel_offsets(2 * math.log(D) + gamma * (mm[parent] - mc), q, variant, rng)
                cat, tt, xy = cat[parent], new_t, new_xy
                mm = sample_gutenberg_richter(len(cat), mc, b_value, rng, m_max)
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
                  max_events: int = 500_000, variant: str = "power-law", parent_mc: float | None = None):
    """A catalog from the ETAS branching structure: background events uniform in the box, Gutenberg-Richter
    magnitudes, Poisson(κ(m)) direct aftershocks with Omori waiting times and the ``variant``'s spatial kernel
    (``params`` needs ``q`` only for the power laws and ``gamma`` only for ``"power-law"``; otherwise γ = α).
    The process has no cut-off: every event keeps triggering (only those of magnitude ≥ ``parent_mc`` where given).
    Returns (t, xy, m) sorted by time."""
    mu, A, alpha, c, p, D = (params[k] for k in NAMES[:6])
    q = params.get("q")
    gamma = params["gamma"] if variant == "power-law" else alpha
    x0, y0, x1, y1 = bounds
    n0 = rng.poisson(mu * t_end)
    t = rng.uniform(0, t_end, n0)
    xy = np.column_stack([rng.uniform(x0, x1, n0), rng.uniform(y0, y1, n0)])
    m = sample_gutenberg_richter(n0, mc, b_value, rng)
    parts = [(t, xy, m)]
    while len(t) and sum(len(a[0]) for a in parts) < max_events:
        k = rng.poisson(A * np.exp(alpha * (m - mc)) * (m >= (mc if parent_mc is None else parent_mc)))
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
        m = sample_gutenberg_richter(len(parent), mc, b_value, rng)
        keep = t < t_end
        t, xy, m = t[keep], xy[keep], m[keep]
        parts.append((t, xy, m))
    t = np.concatenate([a[0] for a in parts])
    xy = np.concatenate([a[1] for a in parts])
    m = np.concatenate([a[2] for a in parts])
    order = np.argsort(t)
    return t[order], xy[order], m[order]
