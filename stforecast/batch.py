"""Sequences → padded, masked batches for the model.

Takes a split's sequences from the ingested catalog (:meth:`stforecast.ingested.IngestedCatalog.sequences`) and
builds :class:`Batch` objects: every tensor is right-padded
to the longest sequence in the batch, with a mask. Batches are built from length buckets so sequences of similar
length travel together (little padding, and the recurrent heads run without packing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class Batch:
    """A padded batch of ``B`` sequences of at most ``L`` events.

    * ``time``: ``(B, L)`` float32, model time since the sequence's first row (what the temporal encoding sees)
    * ``dt``: ``(B, L)`` float32, waiting time before each row in model units (0 in padding)
    * ``xy``: ``(B, L, 2)`` float32, coordinates in the model CRS (km, m or px)
    * ``mask``: ``(B, L)`` bool, True on real rows
    * ``target``: ``(B, L)`` bool, rows the model predicts; row ``j`` is predicted from the history up to
      ``j - 1``, so ``target[:, 0]`` is always False
    * ``lengths``: ``(B,)`` int64, real rows per sequence
    * ``mark``: ``(B, L)`` float32 numeric mark of each row (an earthquake's magnitude; 0 in padding), or None
      where the catalog has none
    """

    time: torch.Tensor
    dt: torch.Tensor
    xy: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    lengths: torch.Tensor
    mark: torch.Tensor | None = None

    def __post_init__(self) -> None:
        B, L = self.time.shape
        assert self.dt.shape == (B, L) and self.xy.shape == (B, L, 2), "dt must be (B, L) and xy (B, L, 2)"
        assert self.mask.shape == (B, L) and self.target.shape == (B, L) and self.lengths.shape == (B,)
        assert self.mask.dtype == torch.bool and self.target.dtype == torch.bool
        assert not bool(self.target[:, 0].any()), "the first row has no history to predict it from"
        assert not bool((self.target & ~self.mask).any()), "a padded row cannot be a target"
        assert self.mark is None or self.mark.shape == (B, L), "mark must be (B, L)"

    @property
    def num_targets(self) -> int:
        return int(self.target.sum())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(None if getattr(self, f) is None else getattr(self, f).to(device, non_blocking=non_blocking)
                       for f in ("time", "dt", "xy", "mask", "target", "lengths", "mark")))

    def rows(self, index: torch.Tensor, length: int) -> "Batch":
        """Sequences ``index`` cut to their first ``length`` columns."""
        return Batch(*(None if getattr(self, f) is None else getattr(self, f)[index, :length]
                       for f in ("time", "dt", "xy", "mask", "target")), self.lengths[index],
                     None if self.mark is None else self.mark[index, :length])


class SequenceSet:
    """The sequences of one split, held as flat numpy arrays plus offsets (no per-event Python objects);
    ``mark`` (N,) the numeric mark of each row (magnitude) where the catalog has one."""

    #: the numeric mark column sequences carry into batches (categorical marks are not read yet)
    MARK = "magnitude"

    def __init__(self, t: np.ndarray, x: np.ndarray, y: np.ndarray, t_start: np.ndarray, is_target: np.ndarray,
                 offsets: np.ndarray, mark: np.ndarray | None = None):
        self.t, self.x, self.y, self.is_target, self.mark = t, x, y, is_target, mark
        self.offsets = offsets  # (S + 1,): sequence s is rows offsets[s]:offsets[s + 1]
        self.lengths = np.diff(offsets)
        first = np.zeros(len(t), dtype=bool)
        first[offsets[:-1]] = True
        prev = np.r_[0.0, t[:-1]]
        starts = np.repeat(t_start, self.lengths)
        self.dt = t - np.where(first, starts, prev)  # waiting time before each row
        self.time_since_first = t - np.repeat(t[offsets[:-1]], self.lengths)
        self.predictable = is_target & ~first  # a target needs at least one earlier row
        self.origin = None  # (source set, seq, cut) for prefixes of a source's windows

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_targets(self) -> int:
        return int(self.predictable.sum())

    @classmethod
    def from_frame(cls, seqs: pd.DataFrame) -> "SequenceSet":
        seqs = seqs.sort_values(["sequence", "position"], kind="stable")
        seq = seqs["sequence"].to_numpy()
        starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
        offsets = np.r_[starts, len(seq)].astype(np.int64)
        mark = seqs[cls.MARK].to_numpy("float64") if cls.MARK in seqs else None
        return cls(seqs["t"].to_numpy("float64"), seqs["x"].to_numpy("float64"), seqs["y"].to_numpy("float64"),
                   seqs["t_start"].to_numpy("float64")[starts], seqs["is_target"].to_numpy(bool), offsets, mark)

    def collate(self, index: np.ndarray) -> Batch:
        """Pad the sequences ``index`` into a :class:`Batch` (vectorised scatter; the loop-free way to pad)."""
        index = np.asarray(index)
        lengths = self.lengths[index]
        B, L = len(index), int(lengths.max())
        rows = np.concatenate([np.arange(self.offsets[s], self.offsets[s + 1]) for s in index])
        b = np.repeat(np.arange(B), lengths)
        j = np.arange(len(rows)) - np.repeat(np.cumsum(np.r_[0, lengths[:-1]]), lengths)

        def pad(values, dtype=np.float32):
            out = np.zeros((B, L), dtype=dtype)
            out[b, j] = values[rows]
            return torch.from_numpy(out)

        xy = torch.stack([pad(self.x), pad(self.y)], -1)
        return Batch(time=pad(self.time_since_first), dt=pad(self.dt), xy=xy, mask=pad(np.ones(len(self.t), bool), bool),
                     target=pad(self.predictable, bool), lengths=torch.from_numpy(lengths.astype(np.int64)),
                     mark=None if self.mark is None else pad(np.nan_to_num(self.mark)))

    def prefixes(self, seq: np.ndarray, cut: np.ndarray) -> tuple["SequenceSet", np.ndarray]:
        """Histories made of the first ``cut`` rows of sequences ``seq`` (one history per pair), and the event
        that follows each as ``(H, 3)`` = (dt, x, y): the held-out truth for next-event forecasts."""
        seq, cut = np.asarray(seq), np.asarray(cut)
        if np.any(cut < 1) or np.any(cut >= self.lengths[seq]):
            raise ValueError("each cut must leave at least one history row and one row to predict")
        rows = np.concatenate([np.arange(self.offsets[s], self.offsets[s] + c) for s, c in zip(seq, cut)])
        offsets = np.r_[0, np.cumsum(cut)].astype(np.int64)
        t_start = self.t[self.offsets[seq]] - self.dt[self.offsets[seq]]
        sub = SequenceSet(self.t[rows], self.x[rows], self.y[rows], t_start, self.is_target[rows], offsets,
                          None if self.mark is None else self.mark[rows])
        sub.origin = (self, seq, cut)  # one causal pass over each source window gives every prefix's state
        nxt = self.offsets[seq] + cut
        return sub, np.stack([self.dt[nxt], self.x[nxt], self.y[nxt]], -1)

    def next_marks(self, seq: np.ndarray, cut: np.ndarray) -> np.ndarray | None:
        """(H,) the mark of the row after each prefix (the held-out magnitude), or None without marks."""
        if self.mark is None:
            return None
        return self.mark[self.offsets[np.asarray(seq)] + np.asarray(cut)]

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                max_tokens: int | None = None) -> list[np.ndarray]:
        """Length-bucketed batches: sort by length (random order among equal lengths), cut into batches of
        ``batch_size`` sequences (or fewer if ``max_tokens`` padded rows would be exceeded), shuffle the batch
        order. Deterministic in (seed, epoch), which makes resumed training replay the same batches."""
        rng = np.random.default_rng([seed, epoch])
        jitter = rng.random(len(self)) if shuffle else np.arange(len(self)) / max(len(self), 1)
        order = np.lexsort((jitter, self.lengths))
        out, current, longest = [], [], 0
        for s in order:
            new_longest = max(longest, int(self.lengths[s]))
            if current and (len(current) >= batch_size or (max_tokens and new_longest * (len(current) + 1) > max_tokens)):
                out.append(np.asarray(current))
                current, new_longest = [], int(self.lengths[s])
            current.append(s)
            longest = new_longest
        if current:
            out.append(np.asarray(current))
        if shuffle:
            rng.shuffle(out)
        return out


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of padded rows over all rows computed, for reporting what bucketing saves."""
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1 - real / padded if padded else math.nan
