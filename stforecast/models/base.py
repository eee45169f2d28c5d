"""One interface for every next-event model, DSTPP and the classical baselines alike (RECAST's idea: ETAS and the
neural model are siblings; ifl-tpp's: a model returns a distribution object, so sampling and likelihood share it).

    model.fit_events(events, fit_end)   # baselines: maximum likelihood on events before fit_end; DSTPP: trained
                                        # by `stforecast train`, nothing to do
    model.calibrate(histories, truth)   # DSTPP: reverse variances of its bound on validation events; others: nothing
    dist = model.forecast(histories)    # NextEvent: the event after each of H histories
    dist.sample(n, rng)                 # Samples: events (H, n, 3) = (dt, x, y) in model units, marks {name: (H, n)}
    dist.nll(truth)                     # NLL per event of truth (H, 3): exact, or an upper bound (its ``kind``)

Histories are plain padded arrays (:class:`Histories`) built once from the catalog stream, a sequence split or a
simulation's buffer; every consumer (evaluation, horizon simulation, pyCSEP files, reports, batch jobs) only
calls these methods and never asks which model it holds.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from stforecast.models.simulate import SimulatedChunk, lockstep
from stforecast.region import Region
from stforecast.sampling import DEFAULT as DEFAULT_SAMPLING
from stforecast.sampling import Sampling

#: numeric marks that catalogs carry into histories (categories and units are not numbers: issue 11's work)
MARK_COLUMNS = ("magnitude",)


@dataclass
class Histories:
    """``H`` event histories in model units, newest event last, **left**-padded to a common length ``L``.

    * ``t``: ``(H, L)`` float64 model times (NaN in padding)
    * ``xy``: ``(H, L, 2)`` float64 model coordinates (NaN in padding)
    * ``marks``: ``{name: (H, L)}`` float64 marks such as ``magnitude`` (NaN in padding)
    * ``lengths``: ``(H,)`` int64 real events per history (its last ``lengths[i]`` columns), each ≥ 1
    * ``sequences``: the catalog's own sequence view of the same histories (a ``SequenceSet`` whose history ``i``
      ends at the same event), where one exists: DSTPP conditions on its training windows during evaluation
    """

    t: np.ndarray
    xy: np.ndarray
    marks: dict = field(default_factory=dict)
    lengths: np.ndarray | None = None
    sequences: object | None = None

    def __post_init__(self) -> None:
        self.t = np.asarray(self.t, dtype=float)
        self.xy = np.asarray(self.xy, dtype=float)
        H, L = self.t.shape
        if self.lengths is None:
            self.lengths = np.full(H, L, dtype=np.int64)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.marks = {k: np.asarray(v, dtype=float) for k, v in self.marks.items()}
        assert self.xy.shape == (H, L, 2), f"xy must be (H, L, 2) = {(H, L, 2)}, not {self.xy.shape}"
        assert self.lengths.shape == (H,) and bool(np.all((self.lengths >= 1) & (self.lengths <= L))), \
            "every history needs 1..L events"
        assert all(v.shape == (H, L) for v in self.marks.values()), "marks must be (H, L)"

    def __len__(self) -> int:
        return len(self.t)

    @property
    def valid(self) -> np.ndarray:
        """(H, L) True on real events."""
        return np.arange(self.t.shape[1])[None, :] >= (self.t.shape[1] - self.lengths)[:, None]

    @property
    def last_t(self) -> np.ndarray:
        """(H,) time of each history's newest event."""
        return self.t[:, -1]

    def newest(self, k: int) -> "Histories":
        """The same histories cut to their ``k`` newest events (what a model with a bounded context reads)."""
        if k >= self.t.shape[1]:
            return self
        return Histories(self.t[:, -k:], self.xy[:, -k:], {n: v[:, -k:] for n, v in self.marks.items()},
                         np.minimum(self.lengths, k), self.sequences)

    @classmethod
    def from_stream(cls, t: np.ndarray, xy: np.ndarray, index: np.ndarray, length: int,
                    marks: dict | None = None, sequences=None) -> "Histories":
        """The ``length`` events before each stream position ``index`` (each ≥ 1) of one time-sorted catalog:
        ``t`` (N,), ``xy`` (N, 2), ``marks`` {name: (N,)}. Fewer where the catalog starts later (padding)."""
        index = np.asarray(index, dtype=np.int64)
        if np.any(index < 1):
            raise ValueError("a history needs at least one earlier event")
        L = int(min(length, index.max()))
        rows = index[:, None] - L + np.arange(L)[None, :]  # (H, L) oldest → newest
        valid = rows >= 0
        safe = np.where(valid, rows, 0)

        def gather(values):
            out = np.asarray(values, dtype=float)[safe]
            out[~valid] = np.nan
            return out

        return cls(gather(t), gather(xy), {k: gather(v) for k, v in (marks or {}).items()},
                   valid.sum(1), sequences)

    @classmethod
    def from_sequences(cls, sequences) -> "Histories":
        """The histories of a ``SequenceSet`` (e.g. evaluation prefixes of the source's own windows), right-aligned,
        keeping the sequence view."""
        lengths = np.asarray(sequences.lengths, dtype=np.int64)
        H, L = len(lengths), int(lengths.max())
        t = np.full((H, L), np.nan)
        xy = np.full((H, L, 2), np.nan)
        pos = np.arange(L)[None, :] - (L - lengths)[:, None]  # position within the sequence, < 0 in padding
        valid = pos >= 0
        rows = (np.asarray(sequences.offsets[:-1])[:, None] + np.where(valid, pos, 0))
        t[valid] = sequences.t[rows[valid]]
        xy[valid] = np.stack([sequences.x[rows[valid]], sequences.y[rows[valid]]], -1)
        return cls(t, xy, {}, lengths, sequences)


@dataclass
class Samples:
    """``n`` draws of the next event for each of ``H`` histories: ``events`` (H, n, 3) = (dt, x, y) in model units,
    ``marks`` {name: (H, n)} for the marks the model forecasts (ETAS: magnitude)."""

    events: np.ndarray
    marks: dict = field(default_factory=dict)


@dataclass
class NLL:
    """Negative log-likelihood of the true next events, nats per event in model units: ``per_event`` (H, 2) =
    (waiting-time term, location term), summing to the joint; ``kind`` "exact", "exact-ode" (DSTPP: the probability-flow ODE, joint only) or
    "bound" (an upper bound);
    ``extra``: further columns for the evaluation row (Monte-Carlo error of a bound, the paper's protocol)."""

    per_event: np.ndarray
    kind: str
    extra: dict = field(default_factory=dict)
    joint: np.ndarray | None = None  # (H,) where the joint is known but not its split (DSTPP's ODE: NaN terms)

    @property
    def joint_per_event(self) -> np.ndarray:
        """(H,) joint NLL of each event."""
        return self.per_event.sum(1) if self.joint is None else np.asarray(self.joint, float)

    def row(self) -> dict:
        joint = self.joint_per_event
        return {"nll_dt": float(self.per_event[:, 0].mean()), "nll_xy": float(self.per_event[:, 1].mean()),
                "nll_joint": float(joint.mean()),
                "nll_joint_se": float(joint.std(ddof=1) / np.sqrt(len(joint))) if len(joint) > 1 else float("nan"),
                "nll_kind": self.kind,
                # the same columns for every model: an exact value has no Monte-Carlo error, and only DSTPP has
                # the paper's scaled-space protocol
                "nll_mc_se": 0.0, "paper_nll_dt_scaled": float("nan"), "paper_nll_xy_scaled": float("nan"),
                # DSTPP's bound beside its exact ODE value, and the ODE solver's figures
                **{k: float("nan") for k in ("nll_bound", "nll_bound_dt", "nll_bound_xy", "nll_ode_nfe",
                                             "nll_ode_solver_error", "nll_ode_tolerance")},
                "nll_bound_kind": "", "sampler": "", **self.extra}


class NextEvent(ABC):
    """The forecast distribution of the event after each of ``H`` histories."""

    kind = "exact"  # what :meth:`nll` returns: "exact", "exact-ode" or "bound"

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        """``n`` draws per history."""

    @abstractmethod
    def nll(self, truth: np.ndarray) -> NLL:
        """``truth`` (H, 3) = (dt, x, y) of the events that happened."""

    def mark_nll(self, marks: dict) -> dict:
        """{name: (H,)} NLL of the true marks ({name: (H,)}, e.g. magnitudes) of those events, for the marks the
        model forecasts (nats per mark unit); {} where it forecasts none."""
        return {}


def chunk_within(part: SimulatedChunk, box: Region) -> SimulatedChunk:
    """A chunk of simulated catalogs with only its events inside ``box`` forecast (those outside may still have
    shaped the simulation, as a model's process runs on the whole plane), and the counts recounted."""
    keep = Region.of(box).contains(part.events[["x", "y"]].to_numpy())
    events = part.events[keep].reset_index(drop=True)
    counts = np.bincount(events["simulation"].to_numpy(np.int64) - part.first, minlength=len(part.counts))
    return SimulatedChunk(events, part.first, counts, part.capped)


class WithinSupport(NextEvent):
    """``dist``'s next event with its location kept in ``box`` (the catalog's region with its margin): draws outside
    are redrawn (rejection, up to ``rounds`` times; a draw still outside after that is replaced by one of the same
    history's inside draws). That samples the distribution conditioned on the box. The likelihood stays ``dist``'s
    own (the model on the whole plane); :attr:`outside_share` says how much of its mass the box cut off."""

    def __init__(self, dist: NextEvent, box: Region, rounds: int = 50):
        self.dist, self.box, self.rounds = dist, Region.of(box), rounds
        self.kind = dist.kind
        self.outside_share = 0.0

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        s = self.dist.sample(n, rng)
        events, marks = s.events.copy(), {k: v.copy() for k, v in s.marks.items()}
        bad = ~self.box.contains(events[..., 1:3])
        self.outside_share = float(bad.mean()) if bad.size else 0.0
        for _ in range(self.rounds):
            if not bad.any():
                break
            fresh = self.dist.sample(n, rng)
            use = bad & self.box.contains(fresh.events[..., 1:3])
            events[use] = fresh.events[use]
            for k in marks:
                marks[k][use] = fresh.marks[k][use]
            bad &= ~use
        for h, j in zip(*np.nonzero(bad)):  # (rare) still outside: another inside draw of the same history
            good = np.flatnonzero(~bad[h])
            if len(good):
                pick = rng.choice(good)
                events[h, j] = events[h, pick]
                for k in marks:
                    marks[k][h, j] = marks[k][h, pick]
        return Samples(events, marks)

    def nll(self, truth: np.ndarray) -> NLL:
        return self.dist.nll(truth)

    def mark_nll(self, marks: dict) -> dict:
        return self.dist.mark_nll(marks)


class Forecaster(ABC):
    """A next-event model. Subclasses set ``name``, ``context`` (how many recent events :meth:`forecast` reads:
    histories are built that long) and ``mark_names`` (marks its histories must carry, e.g. ``("magnitude",)``)."""

    name = "model"
    context = 128
    sampling: Sampling = DEFAULT_SAMPLING  # how forecasts are drawn (see with_sampling)
    #: (x0, y0, x1, y1) model units: where forecast locations are kept (the catalog's region with its margin, set
    #: by :meth:`within`); None: the whole plane
    support: Region | None = None
    mark_names: tuple = ()
    #: marks its simulated events carry from the model itself (ETAS: its Gutenberg-Richter magnitudes)
    forecast_marks: tuple = ()

    def fit_events(self, events, fit_end: float) -> "Forecaster":
        """Fit on the catalog's events (a DataFrame with ``t``, ``x``, ``y`` and marks) before ``fit_end``."""
        return self

    def state(self) -> dict:
        """What a fit found, as JSON-able values (saved without pickle; see :mod:`stforecast.registry`)."""
        return {}

    def restore(self, state: dict, events, fit_end: float) -> "Forecaster":
        """Undo :meth:`state` on the same events (what is cheap to recompute, e.g. a KDE, is recomputed)."""
        return self

    def calibrate(self, histories: Histories, truth: np.ndarray) -> None:
        """Use held-out validation events where the model's likelihood needs it (DSTPP's bound variances)."""

    def configure(self, **settings) -> "Forecaster":
        """Evaluation settings (DSTPP: ``bound_repeats``); other models have none."""
        return self

    def within(self, support: Region | None) -> "Forecaster":
        """This forecaster with its forecast locations kept in ``support`` (a shallow copy, as
        :meth:`with_sampling`): next-event draws outside it are redrawn, simulated events outside it are not
        forecast (they still trigger others where the model triggers). A bounded DSTPP's own support already
        lies inside its catalog's region."""
        twin = copy.copy(self)
        twin.support = None if support is None else Region.of(support)
        return twin

    def forecast_within(self, histories: Histories) -> NextEvent:
        """:meth:`forecast` with its locations kept in :attr:`support` (:class:`WithinSupport`): what forecasts
        for people (tables, maps, simulations) draw from. Scoring uses :meth:`forecast`, the model itself."""
        dist = self.forecast(histories)
        return dist if self.support is None else WithinSupport(dist, self.support)

    def with_sampling(self, sampling: Sampling) -> "Forecaster":
        """This forecaster drawing its forecasts as ``sampling`` says: a shallow copy sharing every fitted
        parameter and network (nothing is refitted or copied), so the object a caller holds is never changed.
        Models that sample exactly ignore the sampler fields."""
        twin = copy.copy(self)
        twin.sampling = sampling
        return twin

    @abstractmethod
    def forecast(self, histories: Histories) -> NextEvent:
        """The next-event distribution after each history."""

    def take_clamped_share(self) -> float | None:
        """The share of sampled values that sat at the sampler's safety clamp since the last call (then reset to
        zero); None for models that sample exactly (no clamp). A large share means the model extrapolates far
        outside its training range and those samples say little."""
        return None

    def describe(self) -> str:
        """One line for titles, logs and file attributes."""
        return self.name

    def simulate_catalogs(self, t: np.ndarray, xy: np.ndarray, marks: dict, t_end: float, n: int,
                          rng: np.random.Generator, *, t_start: float | None = None, chunk: int = 1000,
                          max_events: int = 1000, max_history: int | None = None, progress: bool = False):
        """``n`` simulated continuations of one history (``t`` (L,), ``xy`` (L, 2), ``marks`` {name: (L,)}, newest
        last) from its newest event to ``t_end``; yields a :class:`SimulatedChunk` per ``chunk`` catalogs, with
        the events in [``t_start`` (default: the newest event), ``t_end``).

        This generic version runs the lock-step simulator (:func:`stforecast.models.simulate.lockstep`) through
        :meth:`forecast_within`: at each step every live simulation draws its next event conditioned on its
        newest ``max_history`` (default: ``context``) events, observed then its own. Models override it where they
        can do better (ETAS: its branching process; DSTPP: an encoder state carried forward)."""
        t, xy = np.asarray(t, float), np.asarray(xy, float)
        marks = {k: np.asarray(v, float) for k, v in (marks or {}).items()}
        missing = [k for k in self.mark_names if k not in marks]
        if missing:
            raise ValueError(f"{self.describe()} needs the history's {missing}")
        context = int(max_history or self.context)
        yield from lockstep(lambda size: HistoryStepper(self, t, xy, marks, size, context, max_events), float(t[-1]),
                            t_end, n, rng, t_start=t_start, chunk=chunk, max_events=max_events, progress=progress)


# ------------------------------------------------------------------------------------------ stored fits
#: the largest event rate (events per model time unit) a stored fit may claim: the finest unit is the second,
#: and no catalog has a billion events a second (a crafted 1e300 would overflow the samplers)
MAX_RATE = 1e9


def check_number(state: dict, key: str, lo: float = -np.inf, hi: float = np.inf, *, optional: bool = False,
                 integer: bool = False, finite: bool = True) -> None:
    """``state[key]`` a number (an integer with ``integer``) in [lo, hi] (finite unless ``finite`` is False; None
    allowed with ``optional``): a stored fit read back must be what the fit could have written. Raises a
    ValueError naming the field and the value."""
    if key not in state:
        raise ValueError(f"field {key!r} is missing")
    value = state[key]
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"field {key!r} must be {'a whole number' if integer else 'a number'}, not {value!r}")
    if np.isnan(value) or (finite and not np.isfinite(value)):
        raise ValueError(f"field {key!r} must be a finite number, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"field {key!r} = {value!r} is outside the fit's range [{lo:g}, {hi:g}]")


class HistoryStepper:
    """Lock-step simulations through a forecaster's next-event distribution: each draw conditions on the newest
    ``context`` events of each live simulation (observed, then its own), as the model's histories."""

    def __init__(self, model, t: np.ndarray, xy: np.ndarray, marks: dict, size: int, context: int,
                 max_events: int):
        keep = min(len(t), context)
        width = keep + max_events
        self.model, self.context, self.length = model, context, keep
        self.times, self.locs = np.empty((size, width)), np.empty((size, width, 2))
        self.times[:, :keep], self.locs[:, :keep] = t[-keep:], xy[-keep:]
        self.buffers = {k: np.full((size, width), np.nan) for k in marks}
        for k, v in marks.items():
            self.buffers[k][:, :keep] = v[-keep:]
        self.rows = np.arange(size)  # buffer rows of the live simulations
        self.marks = tuple(model.forecast_marks)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        lo, hi = max(0, self.length - self.context), self.length
        h = Histories(self.times[self.rows, lo:hi], self.locs[self.rows, lo:hi],
                      {k: v[self.rows, lo:hi] for k, v in self.buffers.items()})
        s = self.model.forecast_within(h).sample(1, rng)
        return s.events[:, 0], {k: v[:, 0] for k, v in s.marks.items()}

    def advance(self, keep: np.ndarray, t: np.ndarray, events: np.ndarray, marks: dict) -> None:
        self.rows = self.rows[keep]
        self.times[self.rows, self.length], self.locs[self.rows, self.length] = t, events[:, 1:]
        for k, v in marks.items():
            if k in self.buffers:
                self.buffers[k][self.rows, self.length] = v
        self.length += 1
