"""Chronological splits and event sequences.

Input: a cleaned, time-sorted event table with model time ``t`` (float64, model units since the catalog origin)
and model coordinates ``x``, ``y``. Output: a *long* sequence table, one row per (sequence, position):

==============  ===========================================================================================
``split``       ``train`` / ``val`` / ``test``
``sequence``    int, unique within the split
``position``    int, 0-based position in the sequence
``is_target``   bool: the model predicts this event. Non-targets are earlier history that conditions it
``event_index`` int64 row of the event in ``events.parquet`` (an event may appear in several sequences: as
                history, or in overlapping windows); join there for ids, times and coordinates in lon/lat
``t``           float64 model time since the catalog origin
``t_start``     float64 start of the sequence's target window (for the first target's waiting time)
``x``, ``y``    float64 model coordinates
marks           ``magnitude`` / ``category`` / ``unit`` when the catalog has them
==============  ===========================================================================================

Leakage rule: a target belongs to exactly one split, the split whose time range holds it; history may reach
back into earlier splits (that is information available at forecast time), never forward.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stforecast.catalog import MARK_COLUMNS
from stforecast.config import SequenceConfig

SPLITS = ("train", "val", "test")
SEQUENCE_COLUMNS = ("split", "sequence", "position", "is_target", "event_index", "t", "t_start", "x", "y")


def assign_splits(t: np.ndarray, bounds: dict[str, float | None]) -> np.ndarray:
    """Split label per event from model-time boundaries ``train_start <= val_start <= test_start <= end``.
    Events before ``train_start`` are ``history``, at or after ``end`` are ``after``."""
    edges = [bounds.get(k) for k in ("train_start", "val_start", "test_start", "end")]
    edges = [(-np.inf if i == 0 else np.inf) if e is None else e for i, e in enumerate(edges)]
    if any(b < a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"split boundaries must be ordered train_start <= val_start <= test_start <= end: {bounds}")
    labels = np.array(["history", "train", "val", "test", "after"], dtype=object)
    return labels[np.searchsorted(np.asarray(edges), np.asarray(t), side="right")]


def window_edges(name: str, bounds: dict[str, float | None], first_t: float, last_t: float,
                 cfg: SequenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Start and end times of the windows covering split ``name``: from its start boundary (else its first event
    time ``first_t``) to its end boundary (else just past its last event time ``last_t``)."""
    end_key = {"train": "val_start", "val": "test_start", "test": "end"}[name]
    lo = bounds.get(f"{name}_start")
    lo = first_t if lo is None else lo
    hi = bounds.get(end_key)
    hi = np.nextafter(last_t, np.inf) if hi is None else hi
    starts = np.arange(lo, hi, cfg.stride or cfg.window)
    return starts, np.minimum(starts + cfg.window, hi)


def chunk_edges(a: int, b: int, cfg: SequenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, stop, starts) of the chunks of ``length`` events covering rows [a, b) (``starts`` NaN: a chunk's
    waiting times start at its first history event)."""
    first = np.arange(a, b, cfg.length, dtype=np.int64)
    return first, np.minimum(first + cfg.length, b), np.full(len(first), np.nan)


def sequence_ranges(first: np.ndarray, stop: np.ndarray, starts: np.ndarray, cfg: SequenceConfig):
    """Keep the sequences with at least ``min_targets`` targets and reach back ``history_events`` rows: returns
    ``(hist, first, stop, starts)``: rows [hist, stop) of each sequence, targets from ``first``."""
    keep = (stop - first) >= cfg.min_targets
    first, stop, starts = first[keep], stop[keep], starts[keep]
    return np.maximum(first - cfg.history_events, 0), first, stop, starts


def sequence_rows(hist: np.ndarray, first: np.ndarray, stop: np.ndarray, starts: np.ndarray, t: np.ndarray,
                  base: int = 0):
    """The long layout of sequences [hist, stop): per row its event row, sequence number (0-based here),
    position, target flag and window start. ``t`` holds the event times from row ``base`` on."""
    lengths = stop - hist
    rows = np.concatenate([np.arange(h, s) for h, s in zip(hist, stop)]) if len(lengths) else np.array([], int)
    seq = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.repeat(np.cumsum(np.r_[0, lengths[:-1]]), lengths)
    position = np.arange(len(rows)) - offsets
    is_target = rows >= np.repeat(first, lengths)
    t_start = np.where(np.isnan(starts), np.take(t, hist - base, mode="clip") if len(hist) else starts, starts)
    return rows, seq, position, is_target, np.repeat(t_start, lengths)


def build_sequences(events: pd.DataFrame, split: np.ndarray, cfg: SequenceConfig,
                    bounds: dict[str, float | None]) -> pd.DataFrame:
    """Sequences for every split of a single time-sorted stream (windows or chunks modes).

    ``events`` needs ``t``, ``x``, ``y`` and optional marks; ``split`` is :func:`assign_splits`'s
    output. The loop below runs once per *sequence* (thousands), never per event.
    """
    t = events["t"].to_numpy()
    if len(t) > 1 and np.any(np.diff(t) < 0):
        raise ValueError("events must be sorted by t before building sequences")
    pieces = []
    for name in SPLITS:
        idx = np.flatnonzero(split == name)  # contiguous: t is sorted and splits are time ranges
        if len(idx) == 0:
            continue
        if cfg.mode == "windows":
            starts, ends = window_edges(name, bounds, t[idx[0]], t[idx[-1]], cfg)
            first, stop = np.searchsorted(t, starts, side="left"), np.searchsorted(t, ends, side="left")
        elif cfg.mode == "chunks":
            first, stop, starts = chunk_edges(idx[0], idx[-1] + 1, cfg)
        else:
            raise ValueError(f"sequence mode {cfg.mode!r} needs the source's own sequences (mode 'given')")
        hist, first, stop, starts = sequence_ranges(first, stop, starts, cfg)
        rows, seq, position, is_target, t_start = sequence_rows(hist, first, stop, starts, t)
        pieces.append(rows_as_sequences(events, rows, name, seq, position, is_target, t_start))
    return pd.concat(pieces, ignore_index=True) if pieces else rows_as_sequences(events, np.array([], int), "train", *[np.array([])] * 4)


def given_sequences(events: pd.DataFrame, split_of_file: dict[str, str]) -> pd.DataFrame:
    """Sequences exactly as the source defines them (``sequence`` column, split from the file name).
    ``events`` must be sorted by (file, sequence, t); ``t`` is then time since the window start."""
    names = events["_file"].map(split_of_file).to_numpy()
    pieces = []
    for name in SPLITS:
        sel = np.flatnonzero(names == name)
        if len(sel) == 0:
            continue
        seq = events["sequence"].to_numpy()[sel]
        _, seq_index = np.unique(seq, return_inverse=True)
        position = pd.Series(seq_index).groupby(seq_index).cumcount().to_numpy()
        pieces.append(rows_as_sequences(events, sel, name, seq_index, position, np.ones(len(sel), bool), np.zeros(len(sel))))
    return pd.concat(pieces, ignore_index=True)


def rows_as_sequences(events, rows, name, seq, position, is_target, t_start) -> pd.DataFrame:
    """The stored table of sequences: ``events``' rows ``rows`` (their global event index), each in sequence
    ``seq`` at ``position``, a target or history, of split ``name``, with its sequence's start time ``t_start``."""
    sub = events.iloc[rows]
    out = pd.DataFrame({
        "split": name, "sequence": np.asarray(seq, dtype="int64"), "position": np.asarray(position, dtype="int64"),
        "is_target": np.asarray(is_target, dtype=bool), "event_index": np.asarray(rows, dtype="int64"),
        "t": sub["t"].to_numpy(dtype="float64"), "t_start": np.asarray(t_start, dtype="float64"),
        "x": sub["x"].to_numpy(dtype="float64"), "y": sub["y"].to_numpy(dtype="float64"),
    })
    for m in MARK_COLUMNS:
        if m in sub:
            out[m] = sub[m].to_numpy()
    return out


def inter_event_times(seqs: pd.DataFrame) -> np.ndarray:
    """Waiting time before each row: since the previous event of its sequence, or since ``t_start`` for the first.
    ``seqs`` rows are grouped by sequence and ordered by position (as :func:`build_sequences` makes them)."""
    t = seqs["t"].to_numpy()
    seq = seqs["sequence"].to_numpy()
    split = seqs["split"].to_numpy()
    first = np.ones(len(t), dtype=bool)
    first[1:] = (seq[1:] != seq[:-1]) | (split[1:] != split[:-1])
    prev = np.r_[np.nan, t[:-1]]
    return t - np.where(first, seqs["t_start"].to_numpy(), prev)


def normalisation_stats(seqs: pd.DataFrame) -> dict:
    """Statistics of what the model sees, fitted on **train targets only**: waiting time ``dt`` (and its log),
    ``x`` and ``y``. Stored in the manifest so every later step scales data the same way."""
    dt = inter_event_times(seqs)
    train = (seqs["split"] == "train").to_numpy() & seqs["is_target"].to_numpy()
    if not train.any():
        raise ValueError("no training targets: normalisation statistics need at least one")
    out = {}
    positive = dt[train][dt[train] > 0]
    for name, v in (("dt", dt[train]), ("log_dt", np.log(positive)), ("x", seqs["x"].to_numpy()[train]),
                    ("y", seqs["y"].to_numpy()[train])):
        v = v[np.isfinite(v)]
        out[name] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
                     "q01": float(np.quantile(v, 0.01)), "q99": float(np.quantile(v, 0.99)), "n": int(len(v))}
    return out


def split_counts(seqs: pd.DataFrame) -> dict:
    out = {}
    for name in SPLITS:
        s = seqs[seqs["split"] == name]
        out[name] = {"sequences": int(s["sequence"].nunique()), "targets": int(s["is_target"].sum()),
                     "history_rows": int((~s["is_target"]).sum()),
                     "distinct_target_events": int(s.loc[s["is_target"], "event_index"].nunique())}
    return out
