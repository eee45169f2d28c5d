"""What Hawkes and ETAS share: the event windows their intensities sum over (every past event whose kernel still
matters, up to a cap), (event, parent) pairs built and summed in blocks, a uniform spatial box, and picking a
parent by weight. The models' own kernels live in their modules."""

from __future__ import annotations

import math

import numpy as np

from stforecast.models.base import Histories
from stforecast.region import Region


#: (event, parent) pairs per block when pairs are built or summed in pieces
PAIR_BLOCK = 2_000_000
#: history entries (H × L) per block when next-event densities are computed in pieces
CELL_BLOCK = 1_000_000
PILOT_LAG = 50
#: the fit's sums leave out pairs where the offspring's spatial kernel is below this fraction of its peak ...
PRUNE_DENSITY = 1e-5
#: ... as long as that changes the log-likelihood by at most this many nats per event
PRUNE_TOLERANCE = 1e-3


class UniformBox:
    def __init__(self, bounds):
        self.x0, self.y0, self.x1, self.y1 = bounds
        self.log_area = math.log((self.x1 - self.x0) * (self.y1 - self.y0))

    def logpdf(self, xy):
        return np.where(Region(self.x0, self.y0, self.x1, self.y1).contains(xy), -self.log_area, -np.inf)

    def sample(self, n, rng):
        return np.column_stack([rng.uniform(self.x0, self.x1, n), rng.uniform(self.y0, self.y1, n)])


# ------------------------------------------------------------------------------------ the past each event reads
def window_starts(t: np.ndarray, cap: int, horizon: float) -> np.ndarray:
    """(N,) first parent of each event i of a time-sorted stream: its parents are ``lo[i] .. i − 1``, the newest
    ``cap`` events before it that lie within ``horizon`` of its predecessor t_{i−1} (none for i = 0)."""
    i = np.arange(len(t))
    lo = np.maximum(i - cap, 0)
    if np.isfinite(horizon) and len(t):
        lo = np.maximum(lo, np.searchsorted(t, t[np.maximum(i - 1, 0)] - horizon, side="left"))
    return np.minimum(lo, i)


def parent_until(t: np.ndarray, cap: int, horizon: float, t_end: float) -> np.ndarray:
    """(N,) the time until which each event is a parent under :func:`window_starts`' rule: the time of the first
    event whose history no longer holds it (``t_end`` if every later interval does)."""
    n = len(t)
    j = np.arange(n)
    e = np.minimum(j + cap, n)
    if np.isfinite(horizon):
        e = np.minimum(e, np.searchsorted(t, t + horizon, side="right"))
    return np.append(t, t_end)[e]


def pair_blocks(lo: np.ndarray, targets: np.ndarray | None = None, block: int = PAIR_BLOCK):
    """(target, parent) index pairs for the windows ``lo[i] .. i − 1`` of ``targets`` (default: every event), in
    blocks of about ``block`` pairs, grouped by target."""
    targets = np.arange(len(lo)) if targets is None else np.asarray(targets)
    counts = targets - lo[targets]
    cum = np.cumsum(counts)
    start = 0
    while start < len(targets):
        base = cum[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(cum, base + block, side="right")))
        c = counts[start:end]
        i = np.repeat(targets[start:end], c)
        j = np.repeat(lo[targets[start:end]], c) + np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        yield i, j
        start = end


def stream_pairs(t: np.ndarray, xy: np.ndarray, cap: int, horizon: float, radius2=None):
    """(target, parent, squared distance) of every pair under the cut-off rule (:func:`window_starts`), leaving out
    pairs farther apart than ``radius2`` (a number, or one per parent) when given; built in blocks."""
    parts = []
    for i, j in pair_blocks(window_starts(t, cap, horizon)):
        r2 = ((xy[i] - xy[j]) ** 2).sum(1)
        if radius2 is not None:
            near = r2 <= (radius2[j] if np.ndim(radius2) else radius2)
            i, j, r2 = i[near], j[near], r2[near]
        parts.append((i, j, r2))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a b without BLAS (whose threads stall when the other core is busy: 50x slower on 2-core machines)."""
    return float(np.einsum("i,i->", a, b))


def needed_length(t: np.ndarray, index: np.ndarray, cap: int, horizon: float) -> int:
    """The longest history any of ``index`` needs under the cut-off rule (≤ ``cap``)."""
    index = np.asarray(index)
    if not np.isfinite(horizon):
        return int(min(cap, index.max()))
    first = np.searchsorted(t, np.asarray(t)[index - 1] - horizon, side="left")
    return int(max(1, min(cap, (index - first).max())))


def recent(h: Histories, cap: int, horizon: float):
    """The parents of each history under the cut-off rule, newest first and trimmed to the widest history:
    (valid (H, W), t (H, W), xy (H, W, 2), marks {name: (H, W)}, age at the newest event (H, W))."""
    h = h.newest(cap)
    valid = h.valid[:, ::-1]
    age = h.last_t[:, None] - h.t[:, ::-1]
    keep = valid & (age <= horizon)
    width = max(1, int(keep.sum(1).max()))  # the kept parents are each history's newest: a prefix of these rows
    keep = keep[:, :width]
    xy = np.where(keep[..., None], h.xy[:, ::-1][:, :width], 0.0)
    marks = {k: v[:, ::-1][:, :width] for k, v in h.marks.items()}
    return keep, xy, marks, np.where(keep, age[:, :width], 0.0)


def pick_columns(weights: np.ndarray, u: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Columns drawn ∝ rows of ``weights`` (H, W) ≥ 0 given uniforms ``u`` in [0, 1): ``u`` (H, n) draws per row,
    or any shape with ``rows`` (same shape) naming each draw's row. One searchsorted over the rows laid end to end
    (no (H, n, W) array); rows of zero weight give column 0."""
    H, W = weights.shape
    if rows is None:
        rows = np.broadcast_to(np.arange(H)[:, None], u.shape)
    cum = np.cumsum(weights, 1)
    total = cum[:, -1:]
    norm = np.where(total > 0, cum / np.where(total > 0, total, 1.0), 1.0)
    flat = (norm + 2.0 * np.arange(H)[:, None]).ravel()
    pos = np.searchsorted(flat, (u + 2.0 * rows).ravel(), side="right").reshape(u.shape)
    return np.clip(pos - W * rows, 0, W - 1)


def cutoff_lag(beta: float, mass: float) -> float:
    """T with e^{−βT} = mass (inf for mass 0)."""
    return math.log(1 / mass) / beta if mass > 0 else math.inf
