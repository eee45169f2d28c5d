"""Forecasts from a trained model: the next event, and whole continuations over a horizon.

Both work in model units (the catalog's model time and CRS, see the ingestion manifest); converting back to
calendar time and lon/lat is the caller's (reports, CLI) business.

Horizon simulation runs ``m`` continuations in lock-step: at every step each live simulation draws its next event
conditioned on its *own* full recent history, including its newest simulated event; a simulation whose next
event falls past the horizon retires, and one that reaches ``max_events`` is cut (and reported). Because all live
simulations share the observed history and have drawn the same number of events, their histories have equal
length: each step is one unpadded batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stforecast.model.base import MARK_COLUMNS, Forecaster, Histories


@dataclass
class HorizonForecast:
    """``events``: one row per simulated event (``simulation``, ``index`` within it, ``t``, ``dt``, ``x``, ``y``);
    ``counts``: (m,) events per simulation in the horizon; ``capped``: (m,) True where ``max_events`` cut it."""

    events: pd.DataFrame
    counts: np.ndarray
    capped: np.ndarray
    t_start: float
    t_end: float


def history_of(past: pd.DataFrame, keep: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The newest ``keep`` events of a catalog frame as model inputs: times (L,), locations (L, 2), marks."""
    tail = past.iloc[-keep:]
    return (tail["t"].to_numpy(), tail[["x", "y"]].to_numpy(),
            {c: tail[c].to_numpy(float) for c in MARK_COLUMNS if c in tail})


def _context(model, max_history: int | None) -> int:
    return int(max_history or model.context)


@torch.no_grad()
def next_event(model: Forecaster, t_hist: np.ndarray, xy_hist: np.ndarray, n: int = 100, *,
               marks: dict | None = None, max_history: int | None = None, steps: int | None = None,
               seed: int = 0) -> pd.DataFrame:
    """``n`` samples of the event after a history (times ``t_hist`` (L,), locations ``xy_hist`` (L, 2), marks
    {name: (L,)}, sorted) from any :class:`~stforecast.model.base.Forecaster`: columns ``sample, t, dt, x, y``
    and the marks the model forecasts. The model reads its newest ``max_history`` events (default: its own
    context); ``steps`` sets DSTPP's DDIM steps."""
    if steps is not None:
        model.configure(steps=steps)
    keep = _context(model, max_history)
    t_hist, xy_hist = np.asarray(t_hist, float)[-keep:], np.asarray(xy_hist, float)[-keep:]
    h = Histories(t_hist[None], xy_hist[None], {k: np.asarray(v, float)[-keep:][None] for k, v in (marks or {}).items()})
    s = model.forecast(h).sample(n, np.random.default_rng(seed))
    e = s.events[0]
    return pd.DataFrame({"sample": np.arange(n), "t": t_hist[-1] + e[:, 0], "dt": e[:, 0], "x": e[:, 1], "y": e[:, 2],
                         **{k: v[0] for k, v in s.marks.items()}})


@torch.no_grad()
def simulate_horizon(model: Forecaster, t_hist: np.ndarray, xy_hist: np.ndarray, t_end: float, m: int = 100, *,
                     marks: dict | None = None, max_events: int = 1000, max_history: int | None = None,
                     steps: int | None = None, seed: int = 0, progress: bool = False) -> HorizonForecast:
    """``m`` simulated continuations of a history from its last event ``t_hist[-1]`` to ``t_end``, from any
    :class:`~stforecast.model.base.Forecaster` (``marks``: the history's marks, {name: (L,)}; the model's own
    ``mark_names`` must be among them, and simulated events carry the marks the model samples, e.g. ETAS's
    magnitudes, which its next steps then condition on).

    Each simulation conditions on its most recent ``max_history`` events (default: the model's context; observed,
    then its own simulated ones). A cap of ``max_events`` per simulation bounds runaway (explosive) simulations;
    hitting it warns.
    """
    if steps is not None:
        model.configure(steps=steps)
    t_hist, xy_hist = np.asarray(t_hist, float), np.asarray(xy_hist, float)
    if len(t_hist) == 0:
        raise ValueError("a horizon forecast needs at least one observed event")
    marks = {k: np.asarray(v, float) for k, v in (marks or {}).items()}
    missing = [k for k in model.mark_names if k not in marks]
    if missing:
        raise ValueError(f"{model.describe()} needs the history's {missing}")
    t0 = float(t_hist[-1])
    context = _context(model, max_history)
    keep = min(len(t_hist), context)
    # buffers: row = simulation (fixed id), columns = its event sequence (observed tail, then simulated)
    width = keep + max_events
    times = np.empty((m, width))
    locs = np.empty((m, width, 2))
    times[:, :keep] = t_hist[-keep:]
    locs[:, :keep] = xy_hist[-keep:]
    mark_buf = {k: np.full((m, width), np.nan) for k in marks}
    for k, v in marks.items():
        mark_buf[k][:, :keep] = v[-keep:]
    length = keep  # every live simulation has this many events so far
    counts = np.zeros(m, dtype=int)
    alive = np.ones(m, dtype=bool)
    capped = np.zeros(m, dtype=bool)
    rows = []
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m, desc="simulations finished", unit="sim")
    while alive.any():
        ids = np.flatnonzero(alive)  # simulation ids: every array below is indexed by these, never by position
        lo = max(0, length - context)
        h = Histories(times[ids, lo:length], locs[ids, lo:length], {k: v[ids, lo:length] for k, v in mark_buf.items()})
        drawn = model.forecast(h).sample(1, rng)
        draw = drawn.events[:, 0]
        new_t = times[ids, length - 1] + draw[:, 0]
        inside = new_t < t_end
        done = ids[~inside]
        alive[done] = False
        go = ids[inside]
        times[go, length] = new_t[inside]
        locs[go, length] = draw[inside, 1:]
        drawn_marks = {k: v[inside, 0] for k, v in drawn.marks.items()}
        for k, v in drawn_marks.items():
            if k in mark_buf:
                mark_buf[k][go, length] = v
        counts[go] += 1
        rows.append(pd.DataFrame({"simulation": go, "index": counts[go] - 1, "t": new_t[inside],
                                  "dt": draw[inside, 0], "x": draw[inside, 1], "y": draw[inside, 2], **drawn_marks}))
        length += 1
        full = go[counts[go] >= max_events]
        if len(full):
            capped[full] = True
            alive[full] = False
        if bar is not None:
            bar.update(int((~inside).sum()) + len(full))
    if bar is not None:
        bar.close()
    if capped.any():
        warnings.warn(f"{int(capped.sum())} of {m} simulations hit max_events={max_events} before t_end={t_end}: "
                      "their counts are lower bounds (the model may be explosive here)", RuntimeWarning, stacklevel=2)
    events = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["simulation", "index", "t", "dt", "x", "y"])
    events = events.sort_values(["simulation", "index"], kind="stable").reset_index(drop=True)
    return HorizonForecast(events=events, counts=counts, capped=capped, t_start=t0, t_end=float(t_end))


def count_summary(forecast: HorizonForecast) -> pd.DataFrame:
    """One row: the distribution of the number of events in the horizon over the simulations."""
    c = forecast.counts
    q = np.quantile(c, [0.025, 0.1, 0.5, 0.9, 0.975])
    return pd.DataFrame([{"simulations": len(c), "mean": c.mean(), "std": c.std(ddof=1) if len(c) > 1 else 0.0,
                          "q02.5": q[0], "q10": q[1], "median": q[2], "q90": q[3], "q97.5": q[4],
                          "p_at_least_one": float((c >= 1).mean()), "capped": int(forecast.capped.sum())}])
