"""The ingestion graph's global steps, partition-wise: memory bounded by a block, not by the catalog.

    parsed chunk ──▶ sorted by t, spilled (Arrow IPC); its t-sample and extent ──▶ time edges, projection (driver)
      ──▶ per time range: its rows from the chunks that overlap it, projected, de-duplicated, sorted, ties broken
          (capped by the next time, read from the chunks straddling its upper edge), splits assigned, written;
          its ids out by hash bucket
      ──▶ per id bucket: duplicate ids (when some are set aside with --quarantine, the ranges are redone in two
          steps: sort, then the next times without them, then finish)
      ──▶ window boundaries located per range (a reduction of counts) ──▶ sequences written in batches of rows
      ──▶ normalisation statistics by reductions (exact order statistics by histogram refinement), beside
          ``events.parquet`` streamed from the ranges, one range at a time

Why the results equal the in-memory path (:func:`pipelines.ingest.finish`) exactly:

* Time ranges are cut at time *values* (``[edge_k, edge_k+1)`` of the parse-time ``t``): every event of one time
  lies in one range, so exact duplicates (equal times) and tied times never straddle an edge. Inside a range the
  rows are put back in input order (chunk, row) before de-duplication, so "keep the first" keeps the same row.
* Duplicate ids can lie far apart in time: they are checked per hash bucket of the id, over all ranges, again
  in input order.
* The one quantity that crosses an edge is the next range's first time, which caps the spread of a range's last
  tie group (:func:`stforecast.clean.break_ties`'s ``after``).
* Sequences are index ranges of the global sorted order: window boundaries are located by per-range
  ``searchsorted`` plus the range's row offset; each batch of sequences reads only the rows it covers.

Every task reads and writes files under the run's staging folder (so the output store must be shared by the
workers of a remote cluster, as for the rest of the graph) and returns only small summaries.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stforecast.catalog import empty_rejects
from stforecast.clean import break_ties, check_unique_ids, deduplicate
from stforecast.sequences import SPLITS, assign_splits

# rows per time range and per sequence batch: ≈ 0.6 KB per event while a range is processed, so ≈ 300 MB per task
PART_ROWS = 500_000
SAMPLE_POINTS = 256  # t-sample per chunk for the edges: ranges come out within ≈ 1/256 of a chunk of the target
LABELS = ("history", *SPLITS, "after")
# compression of the intermediate files ("lz4", "zstd"). lz4 measured here: 50 M rows 323.5 s against 326.7 s raw,
# 5 M rows 37.0 s against 31.2 s raw: no gain on this disk, so raw; worth trying where the disk is much slower
INTERMEDIATE_COMPRESSION = None
_HELPER_COLUMNS = ["_hash", "_idhash", "_chunk"]


@dataclass
class Rejects:
    """A task's rejected rows, kept small on their way to the driver: the invalid ones (an error names them),
    counts per (kind, field, reason) for the manifest, and with --quarantine the file that holds them all."""

    invalid: pd.DataFrame
    counts: dict  # (kind, field, reason) -> rows
    file: Path | None = None

    @classmethod
    def of(cls, rejects: pd.DataFrame, work: Path, name: str, quarantine: bool) -> "Rejects":
        counts = ({} if rejects.empty else
                  {k: int(v) for k, v in rejects.groupby(["kind", "field", "reason"], sort=True).size().items()})
        file = None
        if quarantine and len(rejects):
            (work / "rejects").mkdir(exist_ok=True)
            file = work / "rejects" / f"{name}.arrow"
            _write(rejects.astype({"value": "str"}), file)
        return cls(rejects[rejects["kind"] == "invalid"].reset_index(drop=True), counts, file)


def merge_rejects(parts: list[Rejects]) -> tuple[pd.DataFrame, list[dict], list[Path]]:
    """The invalid rows, the manifest's summary (as :func:`pipelines.ingest.rejects_summary`) and the files."""
    counts: dict = {}
    for r in parts:
        for k, v in r.counts.items():
            counts[k] = counts.get(k, 0) + v
    invalid = [r.invalid for r in parts if len(r.invalid)]
    summary = [{"kind": k[0], "field": k[1], "reason": k[2], "rows": v} for k, v in sorted(counts.items())]
    return (pd.concat(invalid, ignore_index=True) if invalid else empty_rejects(), summary,
            [r.file for r in parts if r.file is not None])


@dataclass
class ChunkInfo:
    """What a spilled chunk tells the driver (everything else stays on disk)."""

    index: int
    rows: int
    t_min: float
    t_max: float
    sample: np.ndarray  # (SAMPLE_POINTS,) t at evenly spaced ranks
    bounds: tuple | None  # training-period extent, for the projection
    rejects: Rejects
    rows_read: int
    files: set  # the input file names among its events (their sorted order breaks ties of equal times)
    spikes: dict | None = None


def _write(frame: pd.DataFrame, path: Path) -> None:
    """An intermediate table as an uncompressed Arrow IPC file: written and memory-mapped back at memory speed
    (Parquet's encoding and compression cost more than the work done between two steps)."""
    import warnings

    import pyarrow as pa

    with warnings.catch_warnings():  # pyarrow reads tz-aware times through Series.values (pandas 3.1 deprecation)
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        table = pa.Table.from_pandas(frame, preserve_index=False)
    tmp = path.with_suffix(".tmp")
    options = pa.ipc.IpcWriteOptions(compression=INTERMEDIATE_COMPRESSION)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    tmp.replace(path)  # a task that runs twice never leaves a half-written file for the next step


def _open(path: Path, columns: list[str] | None = None):
    """An intermediate table, memory-mapped (pages are read when a slice of them is used)."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return table.select(columns) if columns else table


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return _open(path, columns).to_pandas()


def spill_chunk(part, index: int, train_range, work: Path, part_bounds, quarantine: bool = False) -> ChunkInfo:
    """Worker task: a parsed chunk ``(events, rejects, rows_read[, spikes info])`` → sorted by t (stably: ties keep
    input order) and written to ``work/chunks``; returns its summary (``part_bounds``: its training extent)."""
    events, rejects, rows_read, *info = part
    bounds = part_bounds(part, train_range)
    t = events["t"].to_numpy()
    order = np.argsort(t, kind="stable")
    events = events.take(order).reset_index(drop=True)
    events["_chunk"] = np.int32(index)
    t = t[order]
    n = len(t)
    if n:
        (work / "chunks").mkdir(exist_ok=True)
        _write(events, work / "chunks" / f"{index:06d}.arrow")
    sample = t[np.linspace(0, n - 1, min(n, SAMPLE_POINTS)).round().astype(int)] if n else np.array([])
    return ChunkInfo(index, n, float(t[0]) if n else math.inf, float(t[-1]) if n else -math.inf, sample, bounds,
                     Rejects.of(rejects, work, f"chunk-{index:06d}", quarantine), int(rows_read),
                     set(events["_file"].unique()), info[0] if info else None)


@dataclass
class SpikeRows:
    """What a time range needs to turn spilled spikes into events: the recording's unit table and filters
    (without its spike times), the catalog's filters and clock, and how many spikes lie before the range."""

    reading: object  # stforecast.io.spikes.SpikeReading with clusters=[]
    name: str
    filters: object
    time_range: tuple | None
    origin: float
    time_unit: str
    below: int = 0  # spikes (kept or dropped) before the range: its first row is below + 1


def spill_spikes(inputs: dict, cfg, origin, work: Path, batch_spikes: int):
    """Worker task: a recording read cluster by cluster. Groups of clusters of ≈ ``batch_spikes`` spikes are
    located on the position track and classified by the reader's filters (:class:`SpikeReading`), then spilled
    like parsed chunks, dropped spikes included (each spike's row is its rank among all of them, assigned per
    time range). Returns ``(chunks, reading without spike times, reader info)``."""
    import dataclasses

    from stforecast.clean import to_model_time
    from stforecast.io.spikes import prepare_spikes

    s = cfg.spikes
    reading = prepare_spikes(inputs["catalog"], inputs["positions"], speed_min=s.speed_min, max_gap_s=s.max_gap_s,
                             exclude_units=s.exclude_units, max_unit_fraction=s.max_unit_fraction,
                             invalid_position=s.invalid_position)
    counts = np.zeros((len(reading.units), 6), dtype=np.int64)
    chunks: list[ChunkInfo] = []
    (work / "chunks").mkdir(exist_ok=True)

    def spill(group: list) -> None:
        times = np.concatenate([t for _, t in group])
        codes = np.concatenate([np.full(len(t), c, dtype=np.int32) for c, t in group])
        index = np.concatenate([np.arange(len(t), dtype=np.int64) for _, t in group])
        x, y, speed, drop = reading.classify(times, codes)
        np.add.at(counts, (codes, drop), 1)
        t = to_model_time(pd.Series(times), origin, cfg.time_unit)
        order = np.argsort(t, kind="stable")
        frame = pd.DataFrame({"time": times, "t": t, "x": x, "y": y, "speed": speed, "_code": codes,
                              "_index": index, "_drop": drop}).take(order).reset_index(drop=True)
        i = len(chunks)
        _write(frame, work / "chunks" / f"{i:06d}.arrow")
        ts = t[order]
        sample = ts[np.linspace(0, len(ts) - 1, min(len(ts), SAMPLE_POINTS)).round().astype(int)]
        chunks.append(ChunkInfo(i, len(ts), float(ts[0]), float(ts[-1]), sample, None, Rejects(empty_rejects(), {}),
                                reading.n_spikes if i == 0 else 0, {reading.file_name}))

    group, size = [], 0
    for code, (_, _, times) in enumerate(reading.clusters):  # one cluster at a time, never all spikes at once
        group.append((code, times))
        size += len(times)
        if size >= batch_spikes:
            spill(group)
            group, size = [], 0
    if group:
        spill(group)
    info = reading.info_from_counts(counts)
    # what the ranges need: the unit table and reasons, not the spike times nor the position track (tens of MB
    # that would travel with every task)
    empty = np.array([])
    return chunks, dataclasses.replace(reading, clusters=[], pos_t=empty, pos_x=empty, pos_y=empty,
                                       pos_speed=empty), info


def spike_rows(frame: pd.DataFrame, rows: SpikeRows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A time range's spilled spikes → ``(events, rejects)`` exactly as the in-memory path builds them: rows
    numbered in the reader's (time, tetrode, cluster) order, reader filters as rejects, then the catalog's
    filters, model time and keys."""
    from stforecast.clean import add_keys, apply_filters, to_model_time

    frame = frame.take(np.lexsort((frame["_index"].to_numpy(), frame["_code"].to_numpy(),
                                   frame["time"].to_numpy()))).reset_index(drop=True)
    numbers = rows.below + 1 + np.arange(len(frame), dtype=np.int64)
    events, rejects = rows.reading.rows_to_events(
        frame["time"].to_numpy(), frame["_code"].to_numpy(), frame["x"].to_numpy(), frame["y"].to_numpy(),
        frame["speed"].to_numpy(), frame["_drop"].to_numpy(), numbers)
    events = events.assign(source=rows.name)
    events["event_id"] = (rows.name + ":" + events["_row"].astype("str")).to_numpy()
    kept, filtered = apply_filters(events, rows.filters, None, rows.time_range, line_offset=None)
    kept["t"] = to_model_time(kept["time"], rows.origin, rows.time_unit)
    kept = add_keys(kept)
    kept["_chunk"] = np.int32(0)  # input order is row order
    return kept, pd.concat([r for r in (rejects, filtered) if len(r)] or [empty_rejects()], ignore_index=True)


def count_below(chunk_file: Path, values: np.ndarray) -> np.ndarray:
    """Worker task: rows of one time-sorted chunk with t below each value."""
    return np.searchsorted(_open(chunk_file, ["t"]).column("t").to_numpy(), values, side="left")


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


def _ranges(edges: np.ndarray) -> list[tuple[float, float]]:
    bounds = np.r_[-np.inf, edges, np.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def _read_range(files: list[Path], lo: float, hi: float) -> pd.DataFrame | None:
    """The rows with ``lo <= t < hi`` of time-sorted files, in file order (slices of the memory maps)."""
    import pyarrow as pa

    tables = []
    for f in files:
        table = _open(f)
        t = table.column("t").to_numpy()
        a, b = np.searchsorted(t, [lo, hi], side="left")
        if b > a:
            tables.append(table.slice(a, b - a))
    if not tables:
        return None
    return pa.concat_tables(tables).to_pandas()


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
               line_offset, dedupe: bool, check_ids: bool, buckets: int, work: Path, project_part,
               finalize: Finalize | None = None, spikes: SpikeRows | None = None, quarantine: bool = False) -> dict:
    """Worker task: one time range → projected (``project_part``), de-duplicated (first in input order kept),
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
    order = np.lexsort((events["_row"].to_numpy(), events["_chunk"].to_numpy()))  # input order
    events = events.take(order).reset_index(drop=True)
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
            _write(ids[bucket == b], folder / f"{p:06d}.arrow")
    codes = events["_file"].map(file_codes).to_numpy()
    order = np.lexsort((events["_row"].to_numpy(), codes, events["t"].to_numpy()))
    events = events.take(order).reset_index(drop=True)
    if finalize is not None:
        # the next time after this range: de-duplication keeps one row of every repeated time, so the smallest
        # t >= hi among the spilled chunks is the catalog's next time
        after = finalize.next_start
        for f in finalize.straddling:
            t = _open(f, ["t"]).column("t").to_numpy()
            i = np.searchsorted(t, hi, side="left")
            if i < len(t):
                after = min(after, float(t[i]))
        return {**_finish(events, p, after, finalize.resolution, finalize.barriers, finalize.bounds_t,
                          finalize.marks, work), "rejects": rejects}
    (work / "sorted").mkdir(exist_ok=True)
    _write(events, work / "sorted" / f"{p:06d}.arrow")
    return {"part": p, "rows": len(events), "rejects": rejects}


def check_id_bucket(folder: Path, line_offset, id_col: str) -> pd.DataFrame:
    """Worker task: duplicate ids within one hash bucket (all time ranges), the first in input order kept."""
    files = sorted(folder.glob("*.arrow"))
    if not files:
        return empty_rejects()
    ids = pd.concat([_read(f) for f in files], ignore_index=True)
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
    cols = _read(sorted_file, ["t", "_file", "_row"])
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
    events = _drop_invalid(_read(src), invalid)
    if events.empty:
        return empty
    return _finish(events, p, after, resolution, barriers, bounds_t, marks, work)


def _finish(events: pd.DataFrame, p: int, after: float, resolution: float, barriers: list, bounds_t: dict,
            marks: list, work: Path) -> dict:
    """A sorted range → ties broken (the last group capped by ``after``, the next range's first time), splits
    assigned; written to ``work/final``. Returns counts and first/last times."""
    events["t"] = break_ties(events["t"].to_numpy(), resolution, barriers, after=after)
    events = events.drop(columns=[c for c in _HELPER_COLUMNS if c in events])
    labels = assign_splits(events["t"].to_numpy(), bounds_t)
    events["split"] = labels
    (work / "final").mkdir(exist_ok=True)
    _write(events, work / "final" / f"{p:06d}.arrow")
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
    t = _open(final_file, ["t"]).column("t").to_numpy()
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
        table = _open(f, columns)
        a, b = max(lo - start, 0), min(hi - start, table.num_rows)
        if a < b:
            pieces.append(table.slice(a, b - a))
    return pa.concat_tables(pieces).to_pandas() if pieces else pd.DataFrame(columns=columns)


def sequence_batch(split: str, files: list[str], offsets: list[int], seq0: int, hist: np.ndarray, first: np.ndarray,
                   stop: np.ndarray, starts: np.ndarray, columns: list[str], out_tmp: Path, batch: int,
                   stats_dir: Path | None, write_sequences) -> dict:
    """Worker task: the rows of sequences ``seq0 …`` (global row ranges [hist, stop), targets from ``first``)
    written as part ``batch`` of the split; for train, the targets' (dt, x, y) to ``stats_dir`` and their partial
    statistics."""
    from stforecast.sequences import _frame, inter_event_times, sequence_rows

    base = int(hist[0])
    events = read_rows(files, offsets, base, int(stop[-1]), columns)
    rows, seq, position, is_target, t_start = sequence_rows(hist, first, stop, starts, events["t"].to_numpy(), base)
    frame = _frame(events, rows - base, split, seq + seq0, position, is_target, t_start)
    frame["event_index"] += base
    write_sequences(frame, out_tmp / "sequences", part=batch, splits=(split,))
    result = {"rows": len(frame)}
    if stats_dir is not None:
        dt = inter_event_times(frame)
        values = pd.DataFrame({"dt": dt, "x": frame["x"].to_numpy(), "y": frame["y"].to_numpy()})[is_target]
        positive = values["dt"].to_numpy()
        values["log_dt"] = np.log(np.where(positive > 0, positive, np.nan))
        stats_dir.mkdir(parents=True, exist_ok=True)
        _write(values, stats_dir / f"{batch:06d}.arrow")
        result["moments"] = {c: _moments(values[c].to_numpy()) for c in ("dt", "log_dt", "x", "y")}
    return result


def empty_sequences(split: str, marks: list[str], out_tmp: Path, write_sequences) -> None:
    """A split without sequences still gets its (empty) part, with the table's columns."""
    from stforecast.sequences import _frame

    events = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("t", "x", "y")})
    for m in marks:
        events[m] = pd.Series(dtype="float64" if m == "magnitude" else "object")
    e = np.array([], dtype=int)
    write_sequences(_frame(events, e, split, e, e, e.astype(bool), np.array([])), out_tmp / "sequences",
                           splits=(split,))


# ------------------------------------------------------------------------------------------------ statistics
def _moments(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": 0.0, "m2": 0.0, "min": math.inf, "max": -math.inf}
    mean = float(v.mean())
    return {"n": int(len(v)), "mean": mean, "m2": float(((v - mean) ** 2).sum()), "min": float(v.min()),
            "max": float(v.max())}


def combine_moments(parts: list[dict]) -> dict:
    """Chan et al.'s pairwise update: count, mean and sum of squared deviations of the union."""
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    for p in parts:
        if not p["n"]:
            continue
        delta = p["mean"] - mean
        total = n + p["n"]
        mean += delta * p["n"] / total
        m2 += p["m2"] + delta * delta * n * p["n"] / total
        n = total
        lo, hi = min(lo, p["min"]), max(hi, p["max"])
    return {"n": n, "mean": mean, "m2": m2, "min": lo, "max": hi}


def order_statistic(files: list[Path], column: str, rank: int, lo: float, hi: float, bins: int = 4096,
                    collect: int = 2_000_000) -> float:
    """The ``rank``-th smallest finite value of ``column`` over ``files`` (0-based), exactly, holding at most
    ``collect`` values: histogram the candidates, keep the bin that holds the rank, repeat until it is small."""
    levels: list[tuple[float, float, int]] = []  # (lo, hi, bin): a value is a candidate if it lands in each

    def candidates(frame_values: np.ndarray) -> np.ndarray:
        v = frame_values[np.isfinite(frame_values)]
        for a, b, j in levels:
            v = v[(v >= a) & (v <= b)]
            v = v[_bin(v, a, b, bins) == j]
        return v

    while True:
        if lo == hi:
            return lo
        counts = np.zeros(bins, dtype=np.int64)
        for f in files:
            v = candidates(_open(f, [column]).column(column).to_numpy())
            v = v[(v >= lo) & (v <= hi)]
            counts += np.bincount(_bin(v, lo, hi, bins), minlength=bins)
        cum = np.cumsum(counts)
        j = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[j - 1]) if j else 0
        levels.append((lo, hi, j))
        if counts[j] <= collect:
            v = np.concatenate([candidates(_open(f, [column]).column(column).to_numpy()) for f in files])
            return float(np.partition(v, rank)[rank])
        width = (hi - lo) / bins
        lo, hi = lo + j * width, min(hi, lo + (j + 1) * width)  # a superset of the bin: `levels` decides


def _bin(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    if hi <= lo:
        return np.zeros(len(v), dtype=np.int64)
    return np.clip(((v - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)


def quantile(files: list[Path], column: str, q: float, n: int, lo: float, hi: float) -> float:
    """``np.quantile(values, q)`` (linear method) from exact order statistics, computed the way numpy does."""
    h = (n - 1) * q
    k = int(math.floor(h))
    a = order_statistic(files, column, k, lo, hi)
    b = order_statistic(files, column, k + 1, lo, hi) if k + 1 < n else a
    g = h - k
    return float(b - (b - a) * (1 - g)) if g >= 0.5 else float(a + (b - a) * g)


def normalisation_from_parts(stats_dir: Path, moments: list[dict]) -> dict:
    """:func:`stforecast.sequences.normalisation_stats` by reductions: moments combined, quantiles exact."""
    files = sorted(stats_dir.glob("*.arrow")) if stats_dir.exists() else []
    out = {}
    for name in ("dt", "log_dt", "x", "y"):
        m = combine_moments([p[name] for p in moments])
        if not m["n"]:
            raise ValueError("no training targets: normalisation statistics need at least one")
        q = {k: quantile(files, name, level, m["n"], m["min"], m["max"]) for k, level in (("q01", 0.01), ("q99", 0.99))}
        out[name] = {"mean": m["mean"], "std": math.sqrt(m["m2"] / m["n"]), "min": m["min"], "max": m["max"], **q,
                     "n": m["n"]}
    return out


def stream_parquet(files: list[Path], dest: Path) -> None:
    """One Parquet file (``events.parquet``, ``rejected.parquet``) from intermediate files, one at a time (the
    schema of the first; null columns cast to it)."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for f in files:
            table = _open(f)
            if writer is None:
                writer = pq.ParquetWriter(dest, table.schema)
            elif not table.schema.equals(writer.schema, check_metadata=False):
                table = table.cast(writer.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def content_hash(out_dir: Path) -> dict[str, str]:
    """sha256 of the content of ``events.parquet`` and of each split's sequences: column names, Arrow types and
    values in row order (not the file layout, row groups or metadata), to compare two ingestions' outputs."""
    import hashlib

    import pyarrow.parquet as pq

    def digest(files: list[Path]) -> str:
        h = hashlib.sha256()
        tables = [pq.read_table(f) for f in files]
        if not tables:
            return h.hexdigest()
        schema = tables[0].schema
        h.update(repr([(f.name, str(f.type)) for f in schema]).encode())
        for table in tables:  # one 64-bit hash per row over all its columns: independent of how rows are split
            h.update(pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy().tobytes())
        return h.hexdigest()

    out = {"events": digest([out_dir / "events.parquet"])}
    for split in SPLITS:
        files = sorted((out_dir / "sequences" / f"split={split}").glob("*.parquet"))
        out[f"sequences/{split}"] = digest([f for f in files if pq.read_metadata(f).num_rows] or files[:1])
    return out


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def _union(first: np.ndarray, stop: np.ndarray) -> int:
    """Size of the union of the row intervals [first, stop) (sorted by first)."""
    total, reach = 0, -1
    for a, b in zip(first.tolist(), stop.tolist()):
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total
