"""DSTPP's catalog simulation: the observed history encoded once, each simulation's encoder state carried
forward one simulated event at a time (a method of :class:`~stforecast.models.dstpp.model.DSTPP`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from stforecast.batch import Batch

from stforecast.models.base import Forecaster, Histories, chunk_within
from stforecast.models.dstpp.encoder import EncoderCache
from stforecast.models.dstpp.modes import evaluating
from stforecast.models.simulate import lockstep


@torch.no_grad()
def simulate_catalogs(model, t: np.ndarray, xy: np.ndarray, marks: dict, t_end: float, n: int,
                      rng: np.random.Generator, *, t_start: float | None = None, chunk: int = 1000,
                      max_events: int = 1000, max_history: int | None = None, progress: bool = False):
    """``n`` simulated continuations of one history (``t`` (L,), ``xy`` (L, 2), ``marks`` {name: (L,)}) from its
    newest event to ``t_end``, in lock-step, ``chunk`` simulations at a time; yields a
    :class:`~stforecast.models.base.SimulatedChunk` per chunk (events in [``t_start``, ``t_end``)).

    The observed history is encoded **once**; every simulation then carries its own encoder state forward
    (attention keys/values and recurrent state, :class:`EncoderCache`), so a simulated event costs one row of
    encoding, not a re-encoding of the whole history: the simulations' context grows from the newest
    ``max_history`` observed events (default: ``context``) by their own events instead of sliding. Each step
    samples as ``model.sampling`` says (``with_sampling(Sampling(sampler="dpm"))`` for the fast one) and the
    magnitudes with ``model.magnitudes``. A parent mixture's stepper also keeps each simulation's rows, where its
    candidate parents come from (:class:`MixtureStepper`). An Omori-chosen reference (``location = "parent"``)
    takes the generic path."""
    if model.cfg.location == "parent":
        yield from Forecaster.simulate_catalogs(model, t, xy, marks, t_end, n, rng, t_start=t_start, chunk=chunk,
                                                max_events=max_events, max_history=max_history,
                                                progress=progress)
        return
    keep = int(max_history or model.context)
    t, xy = np.asarray(t, float)[-keep:], np.asarray(xy, float)[-keep:]
    marks = {k: np.asarray(v, float)[-keep:] for k, v in (marks or {}).items()}
    missing = [k for k in model.mark_names if k not in marks]
    if missing:
        raise ValueError(f"{model.describe()} needs the history's {missing}")
    device = model.scaler.lo.device
    with evaluating(model):
        batch = model.history_batch(Histories(t[None], xy[None], {k: v[None] for k, v in marks.items()}),
                                    keep).to(device)
        start = model.encoder.start(batch.time, model.scaler.position(batch.xy), *model.row_features(batch))
        sampler = model.sampler_object()
        gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))

        def stepper(size: int) -> EncoderStepper:
            if model.mixture is not None:
                return MixtureStepper(model, start.expand(size), batch, t[0], sampler, gen)
            return EncoderStepper(model, start.expand(size), t[0], xy[-1], sampler, gen, batch.time.dtype)

        for part in lockstep(stepper, float(t[-1]), t_end, n, rng, t_start=t_start, chunk=chunk,
                             max_events=max_events, progress=progress):
            # a bounded model's events are inside its region already; an older unbounded one's are kept there
            yield part if model.support is None or model.scaler.bounded else chunk_within(part, model.support)


class EncoderStepper:
    """The lock-step simulator's stepper for DSTPP (:class:`stforecast.models.simulate.Stepper`): each live
    simulation's encoder state (``cache``), its newest location (the next draw's reference) and the draw in
    hand."""

    def __init__(self, model, cache: EncoderCache, t0: float, xy_last: np.ndarray, sampler, gen: torch.Generator,
                 dtype: torch.dtype):
        self.model, self.cache, self.t0, self.sampler, self.gen, self.dtype = model, cache, t0, sampler, gen, dtype
        device = model.scaler.lo.device
        self.last_xy = torch.tensor(np.array(xy_last), dtype=dtype, device=device).expand(cache.state.shape[0], 2).clone()
        self.marks = ("magnitude",) if model.magnitudes != "none" else ()
        self.drawn = None

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        cond = self.cache.state
        self.drawn = self.model.sample_from_condition_with(cond, 1, self.sampler, self.gen, self.last_xy)[:, 0]
        mags = self.model.sample_magnitudes(cond, 1, rng, self.gen)
        return self.drawn.double().cpu().numpy(), {k: v[:, 0] for k, v in mags.items()}

    def advance(self, keep: np.ndarray, t: np.ndarray, events: np.ndarray, marks: dict) -> None:
        sel = torch.as_tensor(keep, device=self.last_xy.device)
        if len(keep) < len(self.last_xy):
            self.cache.select(sel)
        new = self.drawn[sel].to(self.dtype)
        extend(self.model, self.cache, torch.as_tensor(t - self.t0, dtype=self.dtype, device=new.device), new[:, 0],
               new[:, 1:], self.last_xy[sel], marks)
        self.last_xy = new[:, 1:]


class MixtureStepper(EncoderStepper):
    """:class:`EncoderStepper` for a parent mixture: beside the encoder state, each live simulation's rows (time
    since the history's first row, location, magnitude; (B, L) with L = observed + own), which its candidate
    parents are chosen from, as :meth:`ParentMixture.components` reads them from a batch. A row is one copy per
    step, not a re-encoding."""

    def __init__(self, model, cache: EncoderCache, history: Batch, t0: float, sampler, gen: torch.Generator):
        n = int(history.lengths[0])
        super().__init__(model, cache, t0, history.xy[0, n - 1].cpu().numpy(), sampler, gen, history.time.dtype)
        size = cache.state.shape[0]
        self.rows = SimpleNamespace(time=history.time[:1, :n].expand(size, n),
                                    xy=history.xy[:1, :n].expand(size, n, 2),
                                    mark=None if history.mark is None else history.mark[:1, :n].expand(size, n))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        cond, rows = self.cache.state, self.rows
        b = torch.arange(cond.shape[0], device=cond.device)
        comps = self.model.mixture.components(rows, cond, b, torch.full_like(b, rows.time.shape[1] - 1), self.model)
        self.drawn = self.model.sample_components(comps, cond, 1, self.sampler, self.gen)[:, 0]
        mags = self.model.sample_magnitudes(cond, 1, rng, self.gen)
        return self.drawn.double().cpu().numpy(), {k: v[:, 0] for k, v in mags.items()}

    def advance(self, keep: np.ndarray, t: np.ndarray, events: np.ndarray, marks: dict) -> None:
        sel = torch.as_tensor(keep, device=self.last_xy.device)
        rows, new = self.rows, self.drawn[sel].to(self.dtype)
        time = torch.as_tensor(t - self.t0, dtype=self.dtype, device=new.device)
        rows.time = torch.cat([rows.time[sel], time.unsqueeze(1)], 1)
        rows.xy = torch.cat([rows.xy[sel], new[:, 1:].unsqueeze(1)], 1)
        if rows.mark is not None:
            m = marks.get("magnitude")
            m = (torch.full_like(time, float("nan")) if m is None
                 else torch.as_tensor(m, dtype=self.dtype, device=new.device))
            rows.mark = torch.cat([rows.mark[sel], m.unsqueeze(1)], 1)
        super().advance(keep, t, events, marks)


def extend(model, cache: EncoderCache, time: torch.Tensor, dt: torch.Tensor, xy: torch.Tensor,
            prev_xy: torch.Tensor, marks: dict) -> None:
    """Add one row (time since the history's first row (B,), waiting time (B,), location (B, 2), the previous
    row's location (B, 2), marks {name: (B,)}) to every sequence of ``cache``: the features :meth:`encode`
    gives a row, computed for that row alone."""
    m = marks.get("magnitude")
    m = None if m is None else torch.as_tensor(m, dtype=time.dtype, device=time.device)
    model.encoder.advance(cache, time, model.scaler.position(xy), *model.row_inputs(dt, xy, prev_xy, m))
