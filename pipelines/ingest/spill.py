"""Spilling parsed input to the staging folder: each parsed chunk (or a recording, cluster by cluster) sorted by
time and written as an Arrow IPC file, with the small summary the driver plans the time ranges from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.ingest.tasks import part_bounds
from stforecast.catalog import empty_rejects
from stforecast.sequences import SPLITS

# rows per time range and per sequence batch: ≈ 0.6 KB per event while a range is processed, so ≈ 300 MB per task
PART_ROWS = 500_000


SAMPLE_POINTS = 256  # t-sample per chunk for the edges: ranges come out within ≈ 1/256 of a chunk of the target


LABELS = ("history", *SPLITS, "after")


# compression of the intermediate files ("lz4", "zstd"). lz4 measured here: 50 M rows 323.5 s against 326.7 s raw,
# 5 M rows 37.0 s against 31.2 s raw: no gain on this disk, so raw; worth trying where the disk is much slower
INTERMEDIATE_COMPRESSION = None


HELPER_COLUMNS = ["_hash", "_idhash", "_chunk"]



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
            write_arrow(rejects.astype({"value": "str"}), file)
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



def write_arrow(frame: pd.DataFrame, path: Path) -> None:
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


def open_arrow(path: Path, columns: list[str] | None = None):
    """An intermediate table, memory-mapped (pages are read when a slice of them is used)."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return table.select(columns) if columns else table


def read_arrow(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return open_arrow(path, columns).to_pandas()



def spill_chunk(part, index: int, train_range, work: Path, quarantine: bool = False) -> ChunkInfo:
    """Worker task: a parsed chunk ``(events, rejects, rows_read[, spikes info])`` → sorted by t (stably: ties keep
    input order) and written to ``work/chunks``; returns its summary (with its training extent, :func:`part_bounds`)."""
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
        write_arrow(events, work / "chunks" / f"{index:06d}.arrow")
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
        write_arrow(frame, work / "chunks" / f"{i:06d}.arrow")
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
    return np.searchsorted(open_arrow(chunk_file, ["t"]).column("t").to_numpy(), values, side="left")

