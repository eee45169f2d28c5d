"""The one lock-step catalog simulator: ``n`` continuations of one observed history, ``chunk`` at a time. At every
step each live simulation draws its next event; one that passes ``t_end`` retires, one that reaches
``max_events`` is cut (and counted as capped). Because all live simulations of a chunk have drawn the same number
of events, each step is one batch.

What differs between models is only how the next event is drawn and how a simulation's state takes it in — a
:class:`Stepper`:

* :class:`~stforecast.models.base.HistoryStepper` (any forecaster): each live simulation's newest ``context``
  events, observed then its own, as histories for the model's next-event distribution;
* DSTPP's cached stepper (:mod:`stforecast.models.dstpp.simulation`): the observed history encoded once, each
  simulation's encoder state carried forward one event at a time.

(ETAS simulates by its branching process instead, generation by generation: a different algorithm, exact and
vectorised over catalogs, not a step-by-step one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import pandas as pd


@dataclass
class SimulatedChunk:
    """Simulated catalogs ``first`` .. ``first + len(counts) − 1`` of a horizon forecast: ``events`` one row per
    simulated event in the scored window (``simulation`` the catalog id, ``t``, ``x``, ``y`` in model units, and
    the marks the model forecasts), ``counts`` (c,) events per catalog in the window, ``capped`` (c,) True where
    ``max_events`` cut a catalog (its count is then a lower bound)."""

    events: object  # pandas DataFrame
    first: int
    counts: np.ndarray
    capped: np.ndarray



class Stepper(Protocol):
    """The live simulations of one chunk. ``marks``: the names of the marks its events carry."""

    marks: tuple

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """The next event of every live simulation: (B, 3) = (dt, x, y) and {mark: (B,)}."""

    def advance(self, keep: np.ndarray, t: np.ndarray, events: np.ndarray, marks: dict) -> None:
        """Keep the live simulations at positions ``keep`` (the others retired) and add to each its drawn event:
        times ``t`` (b,), ``events`` (b, 3), marks {mark: (b,)}."""


def lockstep(start: Callable[[int], Stepper], t_last: float, t_end: float, n: int, rng: np.random.Generator, *,
             t_start: float | None = None, chunk: int = 1000, max_events: int = 1000,
             progress: bool = False) -> Iterator[SimulatedChunk]:
    """Yield a :class:`SimulatedChunk` per ``chunk`` simulations of ``n``, each starting after the observed
    history's newest event at ``t_last`` (``start(size)`` gives the chunk's stepper); the events kept are those
    in [``t_start`` (default ``t_last``), ``t_end``)."""
    t_start = float(t_last) if t_start is None else float(t_start)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="catalogs simulated", unit="catalog")
    try:
        for first in range(0, n, chunk):
            size = min(chunk, n - first)
            stepper = start(size)
            ids = np.arange(size)  # chunk positions of the live simulations
            last_t = np.full(size, float(t_last))
            counts, capped, drawn = np.zeros(size, np.int64), np.zeros(size, bool), np.zeros(size, np.int64)
            parts = []
            while len(ids):
                d, marks = stepper.draw(rng)
                new_t = last_t + d[:, 0]
                inside = new_t < t_end
                record = inside & (new_t >= t_start)
                counts[ids[record]] += 1
                drawn[ids[inside]] += 1
                if record.any():
                    parts.append(pd.DataFrame({"simulation": first + ids[record], "t": new_t[record],
                                               "x": d[record, 1], "y": d[record, 2],
                                               **{k: v[record] for k, v in marks.items()}}))
                full = inside & (drawn[ids] >= max_events)
                capped[ids[full]] = True
                go = inside & ~full
                if bar is not None:
                    bar.update(int((~go).sum()))
                if not go.any():
                    break
                stepper.advance(np.flatnonzero(go), new_t[go], d[go], {k: v[go] for k, v in marks.items()})
                ids, last_t = ids[go], new_t[go]
            events = (pd.concat(parts, ignore_index=True) if parts
                      else pd.DataFrame(columns=["simulation", "t", "x", "y", *stepper.marks]))
            yield SimulatedChunk(events, first, counts, capped)
    finally:
        if bar is not None:
            bar.close()
