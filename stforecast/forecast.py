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

from stforecast.models.base import MARK_COLUMNS, Forecaster, Histories


@dataclass
class HorizonForecast:
    """``events``: one row per simulated event (``simulation``, ``index`` within it, ``t``, ``dt``, ``x``, ``y``);
    ``counts``: (m,) events per simulation in the horizon; ``capped``: (m,) True where ``max_events`` cut it;
    ``clamped_share``: the share of sampled values at the sampler's safety clamp (None: the model samples
    exactly, see :meth:`~stforecast.models.base.Forecaster.take_clamped_share`)."""

    events: pd.DataFrame
    counts: np.ndarray
    capped: np.ndarray
    t_start: float
    t_end: float
    clamped_share: float | None = None


#: a share of sampled values at the sampler's clamp above which forecasts warn: a few in a thousand are the tails of
#: a trained model (the demo's Japan model: 0.1 % over a week's simulations); a share that piles up is not
CLAMP_WARNING_SHARE = 0.01


def clamp_warning(share: float | None, what: str) -> str | None:
    """One line warning that ``share`` of ``what`` sat at the sampler's clamp, or None when it is negligible."""
    if share is None or share <= CLAMP_WARNING_SHARE:
        return None
    return (f"warning: {share:.1%} of the {what} sat at the sampler's safety clamp (far outside the training "
            "range): the model extrapolates there, so treat these forecasts with care")


def history_of(past: pd.DataFrame, keep: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The newest ``keep`` events of a catalog frame as model inputs: times (L,), locations (L, 2), marks."""
    tail = past.iloc[-keep:]
    return (tail["t"].to_numpy(), tail[["x", "y"]].to_numpy(),
            {c: tail[c].to_numpy(float) for c in MARK_COLUMNS if c in tail})


def _context(model, max_history: int | None) -> int:
    return int(max_history or model.context)


def histories_from_table(frame: pd.DataFrame, context: int) -> tuple[np.ndarray, Histories]:
    """A long table of histories (``history``, ``t``, ``x``, ``y`` and marks such as ``magnitude``; sorted or not)
    as (history ids (H,), :class:`Histories` of each one's newest ``context`` events): what the MLflow model
    takes, built as :func:`next_event` builds its one history."""
    frame = frame.sort_values(["history", "t"], kind="stable")
    ids, first = np.unique(frame["history"].to_numpy(), return_index=True)
    ends = np.r_[first[1:], len(frame)]
    starts = np.maximum(first, ends - context)
    lengths = (ends - starts).astype(np.int64)
    L = int(lengths.max())
    cols = {"t": frame["t"].to_numpy(float), "x": frame["x"].to_numpy(float), "y": frame["y"].to_numpy(float),
            **{c: frame[c].to_numpy(float) for c in MARK_COLUMNS if c in frame}}
    pos = np.arange(L)[None, :] - (L - lengths)[:, None]  # left padding: the newest event last
    valid = pos >= 0
    rows = np.where(valid, starts[:, None] + pos, 0)

    def gather(values):
        out = values[rows]
        out[~valid] = np.nan
        return out

    h = Histories(gather(cols["t"]), np.stack([gather(cols["x"]), gather(cols["y"])], -1),
                  {c: gather(cols[c]) for c in MARK_COLUMNS if c in cols}, lengths)
    return ids, h


@torch.no_grad()
def next_event(model: Forecaster, t_hist: np.ndarray, xy_hist: np.ndarray, n: int = 100, *,
               marks: dict | None = None, max_history: int | None = None, seed: int = 0) -> pd.DataFrame:
    """``n`` samples of the event after a history (times ``t_hist`` (L,), locations ``xy_hist`` (L, 2), marks
    {name: (L,)}, sorted) from any :class:`~stforecast.models.base.Forecaster`, drawn as its
    :class:`~stforecast.sampling.Sampling` says: columns ``sample, t, dt, x, y`` and the marks the model
    forecasts. The model reads its newest ``max_history`` events (default: its own context)."""
    keep = _context(model, max_history)
    t_hist, xy_hist = np.asarray(t_hist, float)[-keep:], np.asarray(xy_hist, float)[-keep:]
    h = Histories(t_hist[None], xy_hist[None], {k: np.asarray(v, float)[-keep:][None] for k, v in (marks or {}).items()})
    model.take_clamped_share()  # count this forecast's samples only
    s = model.forecast_within(h).sample(n, np.random.default_rng(seed))
    e = s.events[0]
    frame = pd.DataFrame({"sample": np.arange(n), "t": t_hist[-1] + e[:, 0], "dt": e[:, 0], "x": e[:, 1],
                          "y": e[:, 2], **{k: v[0] for k, v in s.marks.items()}})
    frame.attrs["clamped_share"] = model.take_clamped_share()
    return frame


@torch.no_grad()
def simulate_horizon(model: Forecaster, t_hist: np.ndarray, xy_hist: np.ndarray, t_end: float, m: int = 100, *,
                     marks: dict | None = None, max_events: int = 1000, max_history: int | None = None,
                     seed: int = 0, progress: bool = False, chunk: int = 1000) -> HorizonForecast:
    """``m`` simulated continuations of a history from its last event ``t_hist[-1]`` to ``t_end``, from any
    :class:`~stforecast.models.base.Forecaster` (``marks``: the history's marks, {name: (L,)}; the model's own
    ``mark_names`` must be among them, and simulated events carry the marks the model samples, e.g. ETAS's
    magnitudes, which its next steps then condition on).

    Each model simulates its own way (:meth:`~stforecast.models.base.Forecaster.simulate_catalogs`, ``chunk``
    simulations at a time): by default each simulation conditions on its most recent ``max_history`` events
    (default: the model's context; observed, then its own simulated ones); DSTPP carries its encoder state forward
    from the observed history, ETAS runs its branching process. A cap of ``max_events`` per simulation bounds
    runaway (explosive) simulations; hitting it warns.
    """
    t_hist, xy_hist = np.asarray(t_hist, float), np.asarray(xy_hist, float)
    if len(t_hist) == 0:
        raise ValueError("a horizon forecast needs at least one observed event")
    t0 = float(t_hist[-1])
    model.take_clamped_share()  # count this forecast's samples only
    chunks = list(model.simulate_catalogs(t_hist, xy_hist, marks or {}, float(t_end), m, np.random.default_rng(seed),
                                          chunk=chunk, max_events=max_events, max_history=_context(model, max_history),
                                          progress=progress))
    counts = np.concatenate([c.counts for c in chunks]) if chunks else np.zeros(0, int)
    capped = np.concatenate([c.capped for c in chunks]) if chunks else np.zeros(0, bool)
    if capped.any():
        warnings.warn(f"{int(capped.sum())} of {m} simulations hit max_events={max_events} before t_end={t_end}: "
                      "their counts are lower bounds (the model may be explosive here)", RuntimeWarning, stacklevel=2)
    frames = [c.events for c in chunks if len(c.events)]
    if frames:
        events = pd.concat(frames, ignore_index=True).sort_values(["simulation", "t"], kind="stable")
        events["simulation"] = events["simulation"].astype(int)
        events.insert(1, "index", events.groupby("simulation").cumcount())
        prev = events.groupby("simulation")["t"].shift(1).fillna(t0)
        events.insert(3, "dt", events["t"] - prev)
        events = events.reset_index(drop=True)
    else:
        events = pd.DataFrame(columns=["simulation", "index", "t", "dt", "x", "y"])
    return HorizonForecast(events=events, counts=counts, capped=capped, t_start=t0, t_end=float(t_end),
                           clamped_share=model.take_clamped_share())


def count_summary(forecast: HorizonForecast) -> pd.DataFrame:
    """One row: the distribution of the number of events in the horizon over the simulations."""
    c = forecast.counts
    q = np.quantile(c, [0.025, 0.1, 0.5, 0.9, 0.975])
    return pd.DataFrame([{"simulations": len(c), "mean": c.mean(), "std": c.std(ddof=1) if len(c) > 1 else 0.0,
                          "q02.5": q[0], "q10": q[1], "median": q[2], "q90": q[3], "q97.5": q[4],
                          "p_at_least_one": float((c >= 1).mean()), "capped": int(forecast.capped.sum())}])
