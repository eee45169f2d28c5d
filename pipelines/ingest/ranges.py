"""The partition-wise global steps' worker tasks, per time range: order, de-duplicate, break ties, split, and
write sequences by batches of rows (:mod:`pipelines.ingest.partitioned` plans them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.ingest.spill import (
    HELPER_COLUMNS, LABELS, ChunkInfo, Rejects, SpikeRows, open_arrow, read_arrow, write_arrow, spike_rows)
from pipelines.ingest.stats import moments_of
from pipelines.ingest.tasks import project_part, write_sequences
from stforecast.catalog import empty_rejects
from stforecast.clean import break_ties, check_unique_ids, deduplicate
from stforecast.sequences import assign_splits


def time_edges(chunks: list[ChunkInfo], part_rows: int) -> np.ndarray:
    """Inner edges ``e_1 < … < e_{K-1}`` of time ranges holding ≈ ``part_rows`` events each, from the chunks'
    t-samples (each sample point stands for rows/len(sample) events). Ranges are ``[e_k, e_k+1)``, e_0 = -∞."""
    values, weights = [], []
    for c in chunks:
        if c.rows:
            values.append(c.sample)
            weights.append(np.full(len(c.sample), c.rows / len(c.sample)))
    if not values:
        return np.array([])
    v = np.concatenate(values)
    w = np.concatenate(weights)
    order = np.argsort(v, kind="stable")
    v, cum = v[order], np.cumsum(w[order])
    total = cum[-1]
    k = int(math.ceil(total / part_rows))
    if k <= 1:
        return np.array([])
    at = np.searchsorted(cum, np.arange(1, k) * (total / k), side="left")
    edges = np.unique(v[np.minimum(at, len(v) - 1)])
    return edges[edges > v[0]]  # the first range must not be empty by construction


def _by_time(chunks: list[ChunkInfo]) -> list[ChunkInfo]:
    return sorted((c for c in chunks if c.rows), key=lambda c: (c.t_min, c.t_max))


def in_time_order(chunks: list[ChunkInfo]) -> bool:
    """True when the parsed chunks' time extents do not overlap (each one's last ``t`` ≤ the next one's first,
    in time order): a catalog already sorted by time, oldest first as most files are or newest first as ComCat's
    own default."""
    live = _by_time(chunks)
    return all(a.t_max <= b.t_min for a, b in zip(live, live[1:]))


def sorted_chunk_edges(chunks: list[ChunkInfo], part_rows: int) -> np.ndarray:
    """Inner edges (as :func:`time_edges`) that follow chunks whose extents do not overlap (:func:`in_time_order`):
    neighbours in time grouped into ranges of ≤ ``part_rows`` events, a chunk larger than that cut by its own
    t-sample. A range then reads one spilled chunk (or whole neighbours), except the rows of the time that ends a
    chunk when the next one starts at that same time: an edge is a time value, so they go with the next range
    (with their ties and duplicates)."""
    live = _by_time(chunks)
    edges: list[float] = []
    held = 0  # events in the range being filled
    for c in live:
        if held and held + c.rows > part_rows:
            edges.append(c.t_min)
            held = 0
        edges.extend(time_edges([c], part_rows))
        held += c.rows
    if not edges:
        return np.array([])
    edges = np.unique(edges)
    return edges[edges > live[0].t_min]  # the first range must not be empty by construction


def time_ranges(edges: np.ndarray) -> list[tuple[float, float]]:
    bounds = np.r_[-np.inf, edges, np.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def _read_range(files: list[Path], lo: float, hi: float) -> pd.DataFrame | None:
    """The rows with ``lo <= t < hi`` of time-sorted files, in file order (slices of the memory maps)."""
    import pyarrow as pa

    tables = []
    for f in files:
        table = open_arrow(f)
        t = table.column("t").to_numpy()
        a, b = np.searchsorted(t, [lo, hi], side="left")
        if b > a:
            tables.append(table.slice(a, b - a))
    if not tables:
        return None
    return pa.concat_tables(tables).to_pandas()


def _ascending(*keys: np.ndarray) -> bool:
    """True when the rows are already in lexicographic order of ``keys`` (most significant first; equal rows
    allowed): a stable sort by them would leave every row in place. O(rows), so a sorted range skips the sort."""
    if len(keys[0]) < 2:
        return True
    tied = np.ones(len(keys[0]) - 1, dtype=bool)  # neighbours equal on the keys so far
    for k in keys:
        step = np.diff(k)
        if (tied & ~((step > 0) | (step == 0))).any():  # a decrease (or NaN) where the keys so far are equal
            return False
        tied &= step == 0
    return True


@dataclass
class Finalize:
    """What a range needs to finish in the same task as its sort (the fast path, when no id is duplicated):
    the chunks that straddle its upper edge and the smallest start of those after it give the next time."""

    straddling: list  # chunk files with t_min < hi <= t_max
    next_start: float  # min t_min of the chunks starting at or after hi (inf when none)
    resolution: float
    barriers: list
    bounds_t: dict
    marks: list


def sort_range(p: int, lo: float, hi: float, chunk_files: list[Path], crs_in, projection, file_codes: dict,
               line_offset, dedupe: bool, check_ids: bool, buckets: int, work: Path,
               finalize: Finalize | None = None, spikes: SpikeRows | None = None, quarantine: bool = False) -> dict:
    """Worker task: one time range → projected (:func:`project_part`), de-duplicated (first in input order kept),
    sorted by (t, file, row); its ids (for the global duplicate-id check) into ``work/ids``. With ``finalize``,
    finished here (:func:`_finish`, into ``work/final``); else written to ``work/sorted``."""
    events = _read_range(chunk_files, lo, hi)
    spike_rejects = None
    if events is not None and spikes is not None:
        events, spike_rejects = spike_rows(events, spikes)
    if events is None or events.empty:
        return {"part": p, "rows": 0, "labels": {}, "time": None, "marks": [],
                "rejects": Rejects.of(empty_rejects() if spike_rejects is None else spike_rejects, work,
                                      f"range-{p:06d}", quarantine)}
    chunk, row = events["_chunk"].to_numpy(), events["_row"].to_numpy()
    if not _ascending(chunk, row):  # input order (already so when the range is read from chunks in time order)
        events = events.take(np.lexsort((row, chunk))).reset_index(drop=True)
    events = project_part((events,), crs_in, projection)[0]
    events, rejects = deduplicate(events, line_offset) if dedupe else (events, empty_rejects())
    if spike_rejects is not None and len(spike_rejects):
        rejects = pd.concat([spike_rejects, rejects], ignore_index=True)
    rejects = Rejects.of(rejects, work, f"range-{p:06d}", quarantine)
    if check_ids:
        ids = events[["_idhash", "_chunk", "_row", "event_id", "_file"]]
        bucket = (ids["_idhash"].to_numpy() % np.uint64(buckets)).astype(np.int64)
        for b in np.unique(bucket):
            folder = work / "ids" / f"{b:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            write_arrow(ids[bucket == b], folder / f"{p:06d}.arrow")
    # each file's code by its distinct names (a per-row map of the names cost ≈ 0.4 µs a row)
    inverse, names = pd.factorize(events["_file"])
    codes = np.array([file_codes[n] for n in names], dtype=np.int64)[inverse]
    t, row = events["t"].to_numpy(), events["_row"].to_numpy()
    if not _ascending(t, codes, row):
        events = events.take(np.lexsort((row, codes, t))).reset_index(drop=True)
    if finalize is not None:
        # the next time after this range: de-duplication keeps one row of every repeated time, so the smallest
        # t >= hi among the spilled chunks is the catalog's next time
        after = finalize.next_start
        for f in finalize.straddling:
            t = open_arrow(f, ["t"]).column("t").to_numpy()
            i = np.searchsorted(t, hi, side="left")
            if i < len(t):
                after = min(after, float(t[i]))
        return {**_finish(events, p, after, finalize.resolution, finalize.barriers, finalize.bounds_t,
                          finalize.marks, work), "rejects": rejects}
    (work / "sorted").mkdir(exist_ok=True)
    write_arrow(events, work / "sorted" / f"{p:06d}.arrow")
    return {"part": p, "rows": len(events), "rejects": rejects}


def check_id_bucket(folder: Path, line_offset, id_col: str) -> pd.DataFrame:
    """Worker task: duplicate ids within one hash bucket (all time ranges), the first in input order kept."""
    files = sorted(folder.glob("*.arrow"))
    if not files:
        return empty_rejects()
    ids = pd.concat([read_arrow(f) for f in files], ignore_index=True)
    order = np.lexsort((ids["_row"].to_numpy(), ids["_chunk"].to_numpy()))
    return check_unique_ids(ids.take(order).reset_index(drop=True), line_offset, id_col)


def _drop_invalid(events: pd.DataFrame, invalid: pd.DataFrame) -> pd.DataFrame:
    if invalid is None or not len(invalid) or events.empty:
        return events
    bad = pd.MultiIndex.from_arrays([invalid["file"], invalid["row"]])
    return events[~pd.MultiIndex.from_arrays([events["_file"], events["_row"]]).isin(bad)].reset_index(drop=True)


def first_time(sorted_file: Path, invalid: pd.DataFrame) -> float | None:
    """Worker task: a sorted range's first time once invalid rows are dropped (None when nothing is left)."""
    if not sorted_file.exists():
        return None
    cols = read_arrow(sorted_file, ["t", "_file", "_row"])
    cols = _drop_invalid(cols, invalid)
    return float(cols["t"].iloc[0]) if len(cols) else None


def finish_range(p: int, invalid: pd.DataFrame, after: float, resolution: float, barriers: list,
                 bounds_t: dict, marks: list, work: Path) -> dict:
    """Worker task (the path when ids were duplicated and set aside): one sorted range → invalid ids dropped, then
    :func:`_finish`."""
    src = work / "sorted" / f"{p:06d}.arrow"
    empty = {"part": p, "rows": 0, "labels": {}, "time": None, "marks": []}
    if not src.exists():
        return empty
    events = _drop_invalid(read_arrow(src), invalid)
    if events.empty:
        return empty
    return _finish(events, p, after, resolution, barriers, bounds_t, marks, work)


def _finish(events: pd.DataFrame, p: int, after: float, resolution: float, barriers: list, bounds_t: dict,
            marks: list, work: Path) -> dict:
    """A sorted range → ties broken (the last group capped by ``after``, the next range's first time), splits
    assigned; written to ``work/final``. Returns counts and first/last times."""
    events["t"] = break_ties(events["t"].to_numpy(), resolution, barriers, after=after)
    events = events.drop(columns=[c for c in HELPER_COLUMNS if c in events])
    labels = assign_splits(events["t"].to_numpy(), bounds_t)
    events["split"] = labels
    (work / "final").mkdir(exist_ok=True)
    write_arrow(events, work / "final" / f"{p:06d}.arrow")
    t = events["t"].to_numpy()
    per_label = {}
    for name in LABELS:
        sel = np.flatnonzero(labels == name)
        if len(sel):
            per_label[name] = {"rows": int(len(sel)), "first_t": float(t[sel[0]]), "last_t": float(t[sel[-1]])}
    return {"part": p, "rows": len(events), "labels": per_label, "first_t": float(t[0]), "last_t": float(t[-1]),
            "time": (events["time"].min(), events["time"].max()),
            "marks": [m for m in marks if m in events]}


def locate(final_file: Path, offset: int, values: np.ndarray) -> np.ndarray:
    """Worker task: ``offset + searchsorted(t, values)`` in one final range (global row of each value)."""
    t = open_arrow(final_file, ["t"]).column("t").to_numpy()
    return offset + np.searchsorted(t, values, side="left")


class Parts:
    """The final ranges: global row offsets, and reading any global row interval."""

    def __init__(self, work: Path, finished: list[dict]):
        self.files = [work / "final" / f"{f['part']:06d}.arrow" for f in finished if f["rows"]]
        self.rows = np.array([f["rows"] for f in finished if f["rows"]], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(self.rows)].astype(np.int64)
        self.last_t = np.array([f["last_t"] for f in finished if f["rows"]])

    @property
    def total(self) -> int:
        return int(self.offsets[-1])


def read_rows(files: list[str], offsets: list[int], lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
    """Global rows [lo, hi) from the final ranges (``offsets[i]``: the first global row of ``files[i]``)."""
    import pyarrow as pa

    pieces = []
    for f, start in zip(files, offsets):
        table = open_arrow(f, columns)
        a, b = max(lo - start, 0), min(hi - start, table.num_rows)
        if a < b:
            pieces.append(table.slice(a, b - a))
    return pa.concat_tables(pieces).to_pandas() if pieces else pd.DataFrame(columns=columns)


def sequence_batch(split: str, files: list[str], offsets: list[int], seq0: int, hist: np.ndarray, first: np.ndarray,
                   stop: np.ndarray, starts: np.ndarray, columns: list[str], out_tmp: Path, batch: int,
                   stats_dir: Path | None) -> dict:
    """Worker task: the rows of sequences ``seq0 …`` (global row ranges [hist, stop), targets from ``first``)
    written as part ``batch`` of the split; for train, the targets' (dt, x, y) to ``stats_dir`` and their partial
    statistics."""
    from stforecast.sequences import inter_event_times, rows_as_sequences, sequence_rows

    base = int(hist[0])
    events = read_rows(files, offsets, base, int(stop[-1]), columns)
    rows, seq, position, is_target, t_start = sequence_rows(hist, first, stop, starts, events["t"].to_numpy(), base)
    frame = rows_as_sequences(events, rows - base, split, seq + seq0, position, is_target, t_start)
    frame["event_index"] += base
    write_sequences(frame, out_tmp / "sequences", part=batch, splits=(split,))
    result = {"rows": len(frame)}
    if stats_dir is not None:
        dt = inter_event_times(frame)
        values = pd.DataFrame({"dt": dt, "x": frame["x"].to_numpy(), "y": frame["y"].to_numpy()})[is_target]
        positive = values["dt"].to_numpy()
        values["log_dt"] = np.log(np.where(positive > 0, positive, np.nan))
        stats_dir.mkdir(parents=True, exist_ok=True)
        write_arrow(values, stats_dir / f"{batch:06d}.arrow")
        result["moments"] = {c: moments_of(values[c].to_numpy()) for c in ("dt", "log_dt", "x", "y")}
    return result


def empty_sequences(split: str, marks: list[str], out_tmp: Path) -> None:
    """A split without sequences still gets its (empty) part, with the table's columns."""
    from stforecast.sequences import rows_as_sequences

    events = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("t", "x", "y")})
    for m in marks:
        events[m] = pd.Series(dtype="float64" if m == "magnitude" else "object")
    e = np.array([], dtype=int)
    write_sequences(rows_as_sequences(events, e, split, e, e, e.astype(bool), np.array([])), out_tmp / "sequences",
                           splits=(split,))

