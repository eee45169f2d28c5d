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

from stforecast.batch import Batch
from stforecast.defaults import SAMPLER_STEPS


@dataclass
class HorizonForecast:
    """``events``: one row per simulated event (``simulation``, ``index`` within it, ``t``, ``dt``, ``x``, ``y``);
    ``counts``: (m,) events per simulation in the horizon; ``capped``: (m,) True where ``max_events`` cut it."""

    events: pd.DataFrame
    counts: np.ndarray
    capped: np.ndarray
    t_start: float
    t_end: float


def history_batch(t: np.ndarray, xy: np.ndarray) -> Batch:
    """A (B, L) batch of B histories of equal length L: ``t`` (B, L) model times, ``xy`` (B, L, 2)."""
    t = torch.as_tensor(np.asarray(t, dtype=np.float32))
    xy = torch.as_tensor(np.asarray(xy, dtype=np.float32))
    B, L = t.shape
    dt = torch.zeros_like(t)
    dt[:, 1:] = t[:, 1:] - t[:, :-1]
    mask = torch.ones((B, L), dtype=torch.bool)
    return Batch(time=t - t[:, :1], dt=dt, xy=xy, mask=mask, target=torch.zeros((B, L), dtype=torch.bool),
                 lengths=torch.full((B,), L, dtype=torch.long))


@torch.no_grad()
def next_event(model, t_hist: np.ndarray, xy_hist: np.ndarray, n: int = 100, *, max_history: int = 128,
               sampler: str = "ddim", steps: int = SAMPLER_STEPS, seed: int = 0) -> pd.DataFrame:
    """``n`` samples of the event after a history (times ``t_hist`` (L,), locations ``xy_hist`` (L, 2), sorted):
    columns ``sample, t, dt, x, y``."""
    t_hist, xy_hist = np.asarray(t_hist, float)[-max_history:], np.asarray(xy_hist, float)[-max_history:]
    gen = torch.Generator().manual_seed(seed)
    s = model.sample_next(history_batch(t_hist[None], xy_hist[None]), n, sampler=sampler, steps=steps,
                          generator=gen)[0].double().numpy()
    return pd.DataFrame({"sample": np.arange(n), "t": t_hist[-1] + s[:, 0], "dt": s[:, 0], "x": s[:, 1], "y": s[:, 2]})


@torch.no_grad()
def simulate_horizon(model, t_hist: np.ndarray, xy_hist: np.ndarray, t_end: float, m: int = 100, *,
                     max_events: int = 1000, max_history: int = 128, sampler: str = "ddim", steps: int = SAMPLER_STEPS,
                     seed: int = 0, progress: bool = False) -> HorizonForecast:
    """``m`` simulated continuations of a history from its last event ``t_hist[-1]`` to ``t_end``.

    Each simulation conditions on its most recent ``max_history`` events (observed, then its own simulated ones).
    A cap of ``max_events`` per simulation bounds runaway (explosive) simulations; hitting it warns.
    """
    t_hist, xy_hist = np.asarray(t_hist, float), np.asarray(xy_hist, float)
    if len(t_hist) == 0:
        raise ValueError("a horizon forecast needs at least one observed event")
    t0 = float(t_hist[-1])
    keep = min(len(t_hist), max_history)
    # buffers: row = simulation (fixed id), columns = its event sequence (observed tail, then simulated)
    width = keep + max_events
    times = np.empty((m, width))
    locs = np.empty((m, width, 2))
    times[:, :keep] = t_hist[-keep:]
    locs[:, :keep] = xy_hist[-keep:]
    length = keep  # every live simulation has this many events so far
    counts = np.zeros(m, dtype=int)
    alive = np.ones(m, dtype=bool)
    capped = np.zeros(m, dtype=bool)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m, desc="simulations finished", unit="sim")
    while alive.any():
        ids = np.flatnonzero(alive)  # simulation ids: every array below is indexed by these, never by position
        lo = max(0, length - max_history)
        batch = history_batch(times[ids, lo:length], locs[ids, lo:length])
        draw = model.sample_next(batch, 1, sampler=sampler, steps=steps, generator=gen)[:, 0].double().numpy()
        new_t = times[ids, length - 1] + draw[:, 0]
        inside = new_t < t_end
        done = ids[~inside]
        alive[done] = False
        go = ids[inside]
        times[go, length] = new_t[inside]
        locs[go, length] = draw[inside, 1:]
        counts[go] += 1
        rows.append(pd.DataFrame({"simulation": go, "index": counts[go] - 1, "t": new_t[inside],
                                  "dt": draw[inside, 0], "x": draw[inside, 1], "y": draw[inside, 2]}))
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


# ------------------------------------------------------------------------------------ back to original units
def to_original_units(frame: pd.DataFrame, schema: dict) -> pd.DataFrame:
    """Add the catalog's own coordinates to a frame with model-unit columns ``t``, ``x``, ``y``: ``time`` (UTC
    timestamps for calendar catalogs, the recording's clock otherwise) and ``lon``/``lat`` (or ``x_input``/
    ``y_input`` for a projected or pixel input CRS). ``schema`` is the ingestion manifest's ``schema``."""
    from stforecast.catalog import SECONDS_PER
    from stforecast.clean import geographic, project

    out = frame.copy()
    scale = SECONDS_PER[schema["time_unit"]]
    origin = schema["time_origin"]
    if schema["time"] == "UTC timestamp":
        out["time"] = pd.Timestamp(origin) + pd.to_timedelta(out["t"].to_numpy() * scale, unit="s")
    else:  # a lab clock: the origin is a number in the source's seconds
        out["time"] = (float(origin) if origin != "window start" else 0.0) + out["t"].to_numpy() * scale
    if schema.get("crs_model"):
        a, b = project(out["x"].to_numpy(), out["y"].to_numpy(), schema["crs_model"], schema["crs_input"])
    else:
        a, b = out["x"].to_numpy(), out["y"].to_numpy()
    names = ("lon", "lat") if geographic(schema.get("crs_input")) else ("x_input", "y_input")
    out[names[0]], out[names[1]] = a, b
    return out


def model_time_of(when, schema: dict) -> float:
    """A moment (timestamp string/Timestamp for calendar catalogs, a number otherwise) in model time."""
    from stforecast.catalog import SECONDS_PER

    scale = SECONDS_PER[schema["time_unit"]]
    if schema["time"] == "UTC timestamp":
        ts = pd.Timestamp(when)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return float((ts - pd.Timestamp(schema["time_origin"])) / pd.Timedelta(seconds=scale))
    return (float(when) - float(schema["time_origin"])) / scale


def time_of(t: float, schema: dict):
    """The catalog's own time (a UTC Timestamp, or the recording clock) of model time ``t``."""
    return to_original_units(pd.DataFrame({"t": [float(t)], "x": [0.0], "y": [0.0]}), schema)["time"].iloc[0]


def horizon_length(text: str, schema: dict) -> float:
    """A horizon such as ``24h``, ``7d``, ``90min`` or ``30s`` (or a bare number, in model units) → model units."""
    from stforecast.catalog import SECONDS_PER

    import re

    try:
        return float(text)
    except ValueError:
        pass
    days = re.fullmatch(r"\s*([\d.]+)\s*d(?:ays?)?\s*", text)  # pandas is retiring the lower-case 'd' unit
    seconds = float(days.group(1)) * 86400 if days else pd.Timedelta(text).total_seconds()
    return seconds / SECONDS_PER[schema["time_unit"]]


def count_summary(forecast: HorizonForecast) -> pd.DataFrame:
    """One row: the distribution of the number of events in the horizon over the simulations."""
    c = forecast.counts
    q = np.quantile(c, [0.025, 0.1, 0.5, 0.9, 0.975])
    return pd.DataFrame([{"simulations": len(c), "mean": c.mean(), "std": c.std(ddof=1) if len(c) > 1 else 0.0,
                          "q02.5": q[0], "q10": q[1], "median": q[2], "q90": q[3], "q97.5": q[4],
                          "p_at_least_one": float((c >= 1).mean()), "capped": int(forecast.capped.sum())}])
