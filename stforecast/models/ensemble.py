"""A weighted mixture of forecasters with an exact likelihood: p(e | h) = Σ_m w_m p_m(e | h).

CSEP practice combines models this way. The weights are fitted by maximum likelihood on validation events (never
test): the log-likelihood Σ_i log Σ_m w_m p_m(e_i) is concave in w on the simplex, and EM (w_m ← the mean
responsibility of member m) climbs it monotonically to the optimum. Sampling picks a member per draw with these
weights and takes that member's draw; the NLL is a log-sum-exp over the members' NLLs, exact where every member's
is exact (an upper bound where one is a bound: each p_m is then under-counted).

    ensemble = Ensemble({"dstpp": dstpp, "etas": etas})
    ensemble.calibrate(val_histories, val_truth)   # members calibrate, then the weights are fitted
    dist = ensemble.forecast(histories)            # the mixture's NextEvent: sample(n, rng), nll(truth)
"""

from __future__ import annotations

import copy

import numpy as np
from scipy.special import logsumexp

from stforecast.models.base import NLL, Forecaster, Histories, NextEvent, Samples
from stforecast.sampling import Sampling

#: EM stops when the mean validation log-likelihood gains less than this per step (or after MAX_ITERATIONS)
TOLERANCE = 1e-10
MAX_ITERATIONS = 5000


def usable_events(joint_nll: np.ndarray) -> np.ndarray:
    """(H,) True on the events every member scored: a NaN NLL (a failed solve) or −inf (an infinite density, a
    degenerate member) cannot be weighed; +inf (zero density) can."""
    joint_nll = np.asarray(joint_nll, dtype=float)
    return ~(np.isnan(joint_nll) | np.isneginf(joint_nll)).any(0)


def fit_weights(joint_nll: np.ndarray) -> np.ndarray:
    """Maximum-likelihood mixture weights (M,) from the members' per-event joint NLLs ``joint_nll`` (M, H) on the
    same H validation events (those of :func:`usable_events`): EM from equal weights, until the mean
    log-likelihood gains less than :data:`TOLERANCE` per step. Members whose density is zero on an event (NLL
    +inf) get no responsibility there."""
    log_p = -np.asarray(joint_nll, dtype=float)
    log_p = log_p[:, usable_events(joint_nll)]
    M, H = log_p.shape
    if H == 0:
        raise ValueError("fitting ensemble weights needs at least one validation event every member can score")
    w = np.full(M, 1.0 / M)
    before = -np.inf
    for _ in range(MAX_ITERATIONS):
        with np.errstate(divide="ignore"):
            log_joint = np.log(w)[:, None] + log_p  # (M, H)
        total = logsumexp(log_joint, axis=0)  # (H,)
        if not np.isfinite(total).all():
            raise ValueError("every member gives some validation event zero density: the ensemble cannot score it")
        w = np.exp(log_joint - total).mean(1)
        gain, before = total.mean() - before, total.mean()
        if gain < TOLERANCE:
            break
    return w / w.sum()


def mixture_nll(joint_nll: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(H,) NLL of the mixture from the members' (M, H) joint NLLs and weights (M,). A member of weight 0 takes no
    part (its NLL, even NaN, is not read); NaN where a weighted member's NLL is NaN."""
    weights = np.asarray(weights, float)
    used = weights > 0
    return -logsumexp(np.log(weights[used])[:, None] - np.asarray(joint_nll, float)[used], axis=0)


class EnsembleNextEvent(NextEvent):
    """The mixture's next event after each of ``H`` histories: ``members`` the members' NextEvents, ``weights`` (M,)."""

    def __init__(self, members: list[NextEvent], weights: np.ndarray, size: int, names: list[str] | None = None,
                 marks: tuple = ()):
        self.members, self.weights, self.size = members, np.asarray(weights, float), size
        self.names = names or [f"member {i + 1}" for i in range(len(members))]
        self.marks = tuple(marks)  # the marks every member forecasts: each draw carries them, whoever drew it
        exact = all(m.kind in ("exact", "exact-ode") for m in members)
        self.kind = ("exact-ode" if any(m.kind == "exact-ode" for m in members) else "exact") if exact else "bound"

    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        """Each of the (H, n) draws from a member chosen with the weights: member m draws as many per history as the
        history with the most draws assigned to it needs, and each assigned slot takes the next of them."""
        H = self.size
        choice = rng.choice(len(self.members), size=(H, n), p=self.weights)  # (H, n)
        events = np.full((H, n, 3), np.nan)
        drawn = []
        for m, member in enumerate(self.members):
            mine = choice == m
            need = int(mine.sum(1).max()) if H else 0
            if need == 0:
                drawn.append(None)
                continue
            s = member.sample(need, rng)
            rank = np.cumsum(mine, axis=1) - 1  # (H, n): which of the member's draws a slot takes
            h, j = np.nonzero(mine)
            events[h, j] = s.events[h, rank[h, j]]
            drawn.append((s, h, j, rank[h, j]))
        marks = {k: np.full((H, n), np.nan) for k in self.marks}
        for d in drawn:
            if d is not None:
                s, h, j, r = d
                for k in self.marks:
                    marks[k][h, j] = s.marks[k][h, r]
        return Samples(events, marks)

    def member_nll(self, truth: np.ndarray) -> np.ndarray:
        """(M, H) each member's joint NLL of ``truth``."""
        return np.stack([m.nll(truth).joint_per_event for m in self.members])

    def nll(self, truth: np.ndarray) -> NLL:
        joint = mixture_nll(self.member_nll(truth), self.weights)
        # the mixture's joint density has no waiting-time / location split (as DSTPP's ODE); the weights ride along
        # into the evaluation row
        weights = ", ".join(f"{name} {w:.3f}" for name, w in zip(self.names, self.weights))
        return NLL(np.full((len(joint), 2), np.nan), self.kind, {"ensemble_weights": weights}, joint=joint)


class Ensemble(Forecaster):
    """Members (name → Forecaster) mixed with weights fitted on validation events by :meth:`calibrate` (equal until
    then). Every surface takes it like any model: ``--model ensemble:dstpp-checkpoint+etas``."""

    name = "ensemble"

    def __init__(self, members: dict, weights: dict | None = None):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, not {len(members)}")
        self.members = dict(members)
        self.weights = {k: 1.0 / len(members) for k in members} if weights is None else {
            k: float(weights[k]) for k in members}
        self.fitted_on = 0  # validation events the weights were fitted on (0: equal weights)
        self.unusable = 0  # validation events left out of the fit: a member's NLL was NaN or -inf
        self.validation = {}  # name → mean validation NLL (nats/event) of each member and of the mixture
        self.context = max(m.context for m in self.members.values())
        self.mark_names = tuple(sorted({k for m in self.members.values() for k in m.mark_names}))

    @property
    def forecast_marks(self) -> tuple:
        """The marks every member forecasts (a member's may depend on its sampling settings, hence a property)."""
        return tuple(sorted(set.intersection(*[set(m.forecast_marks) for m in self.members.values()])))

    def _twin(self, change) -> "Ensemble":
        twin = copy.copy(self)
        twin.members = {k: change(m) for k, m in self.members.items()}
        return twin

    def with_sampling(self, sampling: Sampling) -> "Ensemble":
        twin = self._twin(lambda m: m.with_sampling(sampling))
        twin.sampling = sampling
        return twin

    def configure(self, **settings) -> "Ensemble":
        return self._twin(lambda m: m.configure(**settings))

    def forecast(self, histories: Histories) -> EnsembleNextEvent:
        return EnsembleNextEvent([m.forecast(histories.newest(m.context)) for m in self.members.values()],
                                 np.array(list(self.weights.values())), len(histories), list(self.members),
                                 self.forecast_marks)

    def calibrate(self, histories: Histories, truth: np.ndarray) -> None:
        """Members calibrate on the validation events, then the weights are fitted on them by maximum likelihood."""
        for m in self.members.values():
            m.calibrate(histories.newest(m.context), truth)
        joint = self.forecast(histories).member_nll(truth)
        self.weights = dict(zip(self.members, fit_weights(joint).tolist()))
        usable = usable_events(joint)
        self.fitted_on, self.unusable = int(usable.sum()), int((~usable).sum())
        joint = joint[:, usable]
        mixed = mixture_nll(joint, np.array(list(self.weights.values())))
        self.validation = {**dict(zip(self.members, joint.mean(1).tolist())), "ensemble": float(mixed.mean())}

    def simulate_catalogs(self, t, xy, marks, t_end, n, rng, **kwargs):
        """The generic lock-step simulation through the mixture (each step draws from a member picked by weight).
        Every mark a member reads from its history must be one every member forecasts, or the simulated events
        would carry none for it (ETAS reads magnitudes; Poisson x KDE and Hawkes forecast none)."""
        missing = sorted(set(self.mark_names) - set(self.forecast_marks))
        if missing:
            lacking = [k for k, m in self.members.items() if not set(missing) <= set(m.forecast_marks)]
            raise ValueError(f"this ensemble cannot simulate catalogs: its members read {missing} from the history "
                             f"but {lacking} forecast none; mix members that all forecast them (e.g. ETAS with a "
                             "DSTPP trained with its magnitude head), or forecast the next event only")
        yield from super().simulate_catalogs(t, xy, marks, t_end, n, rng, **kwargs)

    def take_clamped_share(self) -> float | None:
        shares = [s for s in (m.take_clamped_share() for m in self.members.values()) if s is not None]
        return max(shares) if shares else None

    def describe(self) -> str:
        weights = " + ".join(f"{w:.3f} {k}" for k, w in self.weights.items())
        how = (f"weights by maximum likelihood on {self.fitted_on:,} validation events" if self.fitted_on
               else "equal weights until fitted on validation events")
        if self.unusable:
            how += f"; {self.unusable:,} left out, a member could not score them"
        return f"ensemble ({weights}; {how})"

    def state(self) -> dict:
        return {"members": list(self.members), "weights": dict(self.weights), "fitted_on": self.fitted_on,
                "validation_nll": dict(self.validation)}
