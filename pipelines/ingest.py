"""The Dask ingestion graph shared by every catalog kind.

    files ──plan──▶ chunks ──(parallel) parse + validate + filter──▶ ordered, de-duplicated, projected catalog
          ──▶ chronological split ──▶ sequences ──▶ Parquet (partitioned by split) + manifest.json

Parsing, validation and filtering run per chunk on the cluster's workers (the expensive part: text → numbers);
the global steps (order, de-duplicate, tie-break, project, split, window, write) run as single tasks of the
same graph. Outputs are written into a temporary folder beside the target and renamed into place at the end,
so a failed or interrupted run leaves the previous output intact. A run whose inputs and configuration hash to
the manifest already there does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import json
import operator
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import stforecast
from pipelines.cluster import dask_client
from stforecast.catalog import SECONDS_PER, CatalogError, raise_for_invalid
from stforecast.clean import (
    add_keys,
    apply_filters,
    geographic,
    load_window,
    order_events,
    project,
    projection_for,
    to_model_time,
)
from stforecast.config import IngestConfig, Settings, check_name
from stforecast.io import tables
from stforecast.io.atomic import atomic_dir, sweep_stale
from stforecast.sequences import (
    SPLITS,
    assign_splits,
    build_sequences,
    chunk_edges,
    given_sequences,
    normalisation_stats,
    sequence_ranges,
    split_counts,
    window_edges,
)

PIPELINE_VERSION = "ingest-1"


@dataclass
class IngestResult:
    out_dir: Path
    manifest: dict
    skipped: bool = False  # True when the output was already up to date
    seconds: float = 0.0
    stages: dict | None = None  # seconds per step of the partition-wise path

    @property
    def catalog(self):
        """The ingested catalog, as every later step reads it (:class:`~stforecast.ingested.IngestedCatalog`)."""
        from stforecast.ingested import IngestedCatalog

        return IngestedCatalog(self.out_dir, self.manifest)


# ------------------------------------------------------------------------------------------------ inputs
def resolve_inputs(cfg: IngestConfig, settings: Settings, progress: bool = False) -> dict[str, Path]:
    """Role → local file. URLs are fetched into the cache; service queries are downloaded (cached)."""
    from stforecast.io import remote

    def get(p: str) -> Path:
        return remote.fetch(settings.resolve(p), settings.cache_dir, progress=progress)

    inputs: dict[str, Path] = {}
    if cfg.download:
        q = dict(cfg.download)
        service = q.pop("service", None)
        if service == "fdsn":
            inputs["catalog"] = remote.download_fdsn_catalog(settings.cache_dir, **q)
        elif service == "socrata":
            inputs["catalog"] = remote.download_socrata(q.pop("url"), settings.cache_dir, **q)
        else:
            raise ValueError(f"catalog {cfg.name}: download.service must be 'fdsn' or 'socrata', not {service!r}")
    elif cfg.split_files:
        for split, p in cfg.split_files.items():
            if split not in SPLITS:
                raise ValueError(f"catalog {cfg.name}: split_files keys must be {SPLITS}, not {split!r}")
            inputs[split] = get(p)
    elif cfg.path:
        inputs["catalog"] = get(cfg.path)
    else:
        raise ValueError(f"catalog {cfg.name}: give a path (file or URL), split_files, or a download query")
    if cfg.format == "spikes":
        if not cfg.positions:
            raise ValueError(f"catalog {cfg.name}: spikes need `positions` (a Trodes .videoPositionTracking file)")
        inputs["positions"] = get(cfg.positions)
    if cfg.filters.polygon:
        inputs["window"] = get(cfg.filters.polygon)
    return inputs


def file_sha256(path: Path, bufsize: int = 8 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def input_hash(cfg: IngestConfig, inputs: dict[str, Path], quarantine: bool = False) -> tuple[str, list[dict]]:
    """One hash over the input bytes, the configuration, the pipeline version and the quarantine switch (which
    decides whether invalid rows fail the run or are set aside)."""
    files = [{"role": role, "path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for role, p in sorted(inputs.items())]
    h = hashlib.sha256()
    h.update(PIPELINE_VERSION.encode())
    h.update(cfg.canonical_json().encode())
    h.update(f"quarantine={bool(quarantine)}".encode())
    for f in files:
        h.update(f"{f['role']}:{f['sha256']}".encode())
    return h.hexdigest(), files


def table_spec(cfg: IngestConfig) -> tables.TableSpec:
    if cfg.format in tables.PRESETS:
        base = tables.PRESETS[cfg.format].to_dict()
    elif cfg.format == "table":
        base = {}
    else:
        raise ValueError(f"catalog {cfg.name}: unknown format {cfg.format!r}; "
                         f"choose one of {sorted(tables.PRESETS)}, 'table' or 'spikes'")
    values = {**base, **cfg.table}
    try:
        return tables.TableSpec(**values)
    except TypeError as e:
        raise ValueError(f"catalog {cfg.name}: bad [table] settings ({e})") from e


# ------------------------------------------------------------------------------------------------ tasks
# Each function below is one node of the graph; a chunk's events stay on its worker until `finish` needs them.
def parse_table_chunk(chunk, first_row, spec, source, filters, window, time_range, origin, time_unit, name):
    """Worker task: parse, validate, filter and key one chunk → (events, rejects, rows_read)."""
    events, rejects = tables.read_chunk(chunk, first_row, spec, source, name)
    n_read = len(events) + int(rejects["row"].nunique())  # read_chunk's rejects are invalid rows, one or more each
    kept, filtered = apply_filters(events, filters, window, time_range,
                                   line_offset=None if chunk.kind == "parquet" else 1)
    kept["t"] = to_model_time(kept["time"], origin, time_unit, spec.time_unit or "seconds")
    return add_keys(kept), pd.concat([rejects, filtered], ignore_index=True), n_read


def read_spike_task(inputs, cfg: IngestConfig, time_range, origin):
    from stforecast.io.spikes import read_spikes

    s = cfg.spikes
    events, rejects, info = read_spikes(
        inputs["catalog"], inputs["positions"], speed_min=s.speed_min, max_gap_s=s.max_gap_s,
        exclude_units=s.exclude_units, max_unit_fraction=s.max_unit_fraction, invalid_position=s.invalid_position)
    events = events.assign(source=cfg.name)
    events["event_id"] = (cfg.name + ":" + events["_row"].astype("str")).to_numpy()
    kept, filtered = apply_filters(events, cfg.filters, None, time_range, line_offset=None)
    kept["t"] = to_model_time(kept["time"], origin, cfg.time_unit)
    return add_keys(kept), pd.concat([rejects, filtered], ignore_index=True), int(info["spikes_read"]), info


def part_bounds(part, train_range) -> tuple[float, ...] | None:
    """Extent of a chunk's training-period events (the projection centre must not depend on val/test data):
    ``(min x, min y, max x, max y, min x', max x')`` with x' = x mod 360, the longitude range measured across the
    antimeridian (:func:`stforecast.clean.lonlat_centre`)."""
    events = part[0]
    lo, hi = train_range
    if lo is not None:
        events = events[events["t"] >= lo]
    if hi is not None:
        events = events[events["t"] < hi]
    if events.empty:
        return None
    wrapped = events["x"].to_numpy() % 360.0
    return (float(events["x"].min()), float(events["y"].min()), float(events["x"].max()), float(events["y"].max()),
            float(wrapped.min()), float(wrapped.max()))


def choose_projection(bounds, cfg: IngestConfig, crs_in):
    """Model CRS from the configuration and the data's extent (the reduction of every chunk's bounds)."""
    if crs_in is None:
        return None, None
    bounds = [b for b in bounds if b is not None]
    total = tuple(min(b[i] for b in bounds) if i in (0, 1, 4) else max(b[i] for b in bounds)
                  for i in range(6)) if bounds else None
    return projection_for(cfg.projection, total)


def project_part(part, crs_in, projection):
    """Worker task: keep lon/lat and project x, y into the model CRS."""
    events, *rest = part
    crs_model, _ = projection
    new = {}  # a new frame, never the input modified in place (a task may run twice)
    if geographic(crs_in):
        new["lon"], new["lat"] = events["x"].to_numpy(), events["y"].to_numpy()
    if crs_model is not None and len(events):
        new["x"], new["y"] = project(events["x"], events["y"], crs_in, crs_model)
    return (events.assign(**new), *rest)


def finish(parts, cfg: IngestConfig, given: bool, split_of_file: dict, bounds_t: dict, columns: dict,
           out_tmp: Path, quarantine: bool) -> dict:
    """Single task: global order → split → sequences → statistics, written into ``out_tmp``.

    Returns a small summary (counts, statistics); the tables stay on the worker that writes them. Raises
    :class:`CatalogError` for invalid rows unless quarantining, and when nothing is left.
    """
    events = pd.concat([p[0] for p in parts], ignore_index=True)
    rejects = pd.concat([p[1] for p in parts], ignore_index=True)
    n_read = int(sum(p[2] for p in parts))
    line_offset = columns.pop("line_offset")
    events, rej = order_events(events, time_unit=cfg.time_unit, tie_resolution_s=cfg.tie_resolution_s,
                               dedupe=cfg.dedupe, given_sequences=given, line_offset=line_offset,
                               barriers=list(bounds_t.values()), **columns)
    rejects = pd.concat([rejects, rej], ignore_index=True)
    if not quarantine:
        raise_for_invalid(rejects, hint=f" of catalog {cfg.name} (fix them, or rerun with --quarantine to set "
                                        "invalid rows aside)")
    if events.empty:
        raise CatalogError(
            f"catalog {cfg.name}: no events left after cleaning and filters ({n_read} read). "
            + "; ".join(f"{r['rows']} {r['kind']}: {r['reason']}" for r in rejects_summary(rejects)[:8]))
    if given:
        seqs = given_sequences(events, split_of_file)
        events["split"] = events["_file"].map(split_of_file)
    else:
        events["split"] = assign_splits(events["t"].to_numpy(), bounds_t)
        seqs = build_sequences(events, events["split"].to_numpy(), cfg.sequences, bounds_t)
    counts = split_counts(seqs)
    if counts["train"]["targets"] == 0:
        raise CatalogError(f"catalog {cfg.name}: the train split has no target events; check the split settings "
                           f"against the catalog's time range {events['time'].min()} … {events['time'].max()}")
    events.to_parquet(out_tmp / "events.parquet", index=False)
    write_sequences(seqs, out_tmp / "sequences")
    if quarantine and len(rejects):
        rejects.astype({"value": "str"}).to_parquet(out_tmp / "rejected.parquet", index=False)
    return {
        "rows_read": n_read, "events_kept": int(len(events)), "rejected": rejects_summary(rejects),
        "splits": counts, "events_per_split": {k: int(v) for k, v in events["split"].value_counts().items()},
        "normalisation": normalisation_stats(seqs),
        "marks": [m for m in ("magnitude", "category", "unit") if m in events],
        "time_range": [str(events["time"].min()), str(events["time"].max())],
        "quarantined": bool(quarantine and len(rejects)),
        "spikes": parts[0][3] if len(parts[0]) > 3 else None,
    }


def finish_partitioned(parts: list, cfg, bounds_t: dict, train_range, crs_in, columns: dict, out_tmp: Path,
                       quarantine: bool, compute, part_rows: int, spikes: tuple | None = None) -> tuple[tuple, dict]:
    """The partition-wise :func:`finish` (:mod:`pipelines.ingest_parts`): ``parts`` are the graph's parse tasks (delayed);
    ``compute(tasks, label)`` runs a list of delayed tasks (on the cluster) and returns their results.
    ``spikes``: ``(inputs, origin, time_range)`` of a recording, read cluster by cluster instead of ``parts``.
    Returns ``((crs_model, center), summary)`` as the in-memory path does."""
    from dask import delayed

    from pipelines.ingest_parts import (
        LABELS, Finalize, Parts, Rejects, SpikeRows, _ranges, _union, check_id_bucket, cleanup, count_below,
        empty_sequences, finish_range, first_time, locate, merge_rejects, normalisation_from_parts, sequence_batch,
        sort_range, spill_chunk, spill_spikes, stream_parquet, time_edges)
    from stforecast.catalog import MARK_COLUMNS

    work = out_tmp / "_work"
    work.mkdir()
    line_offset, id_col = columns["line_offset"], columns["id_col"]
    stages: dict[str, float] = {}  # seconds per step, for benchmarks.ingest ("where the time goes")
    run_stage = compute

    def compute(tasks, label):  # noqa: F811 - the caller's compute, timed
        t0 = time.perf_counter()
        out = run_stage(tasks, f"ingest {cfg.name}: {label}")  # one progress bar per step
        stages[label] = stages.get(label, 0.0) + time.perf_counter() - t0
        return out

    spike_info = spike_rows = None
    if spikes is not None:
        inputs, origin, time_range = spikes
        [(chunks, reading, spike_info)] = compute([delayed(spill_spikes)(inputs, cfg, origin, work, part_rows)],
                                                  "read spikes")
        spike_rows = SpikeRows(reading, cfg.name, cfg.filters, time_range, origin, cfg.time_unit)
    else:
        chunks = compute([delayed(spill_chunk)(part, i, train_range, work, part_bounds, quarantine)
                          for i, part in enumerate(parts)], "parse")
    projection = choose_projection([c.bounds for c in chunks], cfg, crs_in)
    rows_read = sum(c.rows_read for c in chunks)
    file_codes = {name: i for i, name in enumerate(sorted(set().union(*(c.files for c in chunks))))}
    ranges = _ranges(time_edges(chunks, part_rows))
    buckets = len(ranges)

    def overlapping(lo, hi):
        return [work / "chunks" / f"{c.index:06d}.arrow" for c in chunks if c.rows and c.t_max >= lo and c.t_min < hi]

    resolution = cfg.tie_resolution_s / SECONDS_PER[cfg.time_unit]
    barriers, marks_all = list(bounds_t.values()), list(MARK_COLUMNS)

    def finalize(hi):
        straddling = [work / "chunks" / f"{c.index:06d}.arrow" for c in chunks if c.rows and c.t_min < hi <= c.t_max]
        starts = [c.t_min for c in chunks if c.rows and c.t_min >= hi]
        return Finalize(straddling, min(starts, default=math.inf), resolution, barriers, bounds_t, marks_all)

    range_rows = [None] * len(ranges)
    if spike_rows is not None:  # a spike's row is its rank among all spikes read: count those before each range
        edges = np.array([lo for lo, _ in ranges])
        below = np.sum(compute([delayed(count_below)(work / "chunks" / f"{c.index:06d}.arrow", edges)
                                for c in chunks], "row numbers"), axis=0)
        range_rows = [dataclasses.replace(spike_rows, below=int(b)) for b in below]
    # each range sorted and finished in one task; in two steps (sort, next times, finish) when duplicated ids are
    # set aside and for spikes (the spilled chunks hold the spikes the reader drops: their times are not events)
    two_steps = spike_rows is not None
    finished = compute([delayed(sort_range)(p, lo, hi, overlapping(lo, hi), crs_in, projection, file_codes,
                                            line_offset, cfg.dedupe, bool(id_col), buckets, work, project_part,
                                            None if two_steps else finalize(hi), range_rows[p], quarantine)
                        for p, (lo, hi) in enumerate(ranges)], "order")
    # rejected rows stay in the tasks' files; the driver gets the invalid ones and counts
    rejects = [c.rejects for c in chunks] + [f.pop("rejects") for f in finished]
    invalid = None
    if id_col:
        found = compute([delayed(check_id_bucket)(work / "ids" / f"{b:04d}", line_offset, id_col)
                         for b in range(buckets)], "duplicate ids")
        duplicated = pd.concat(found, ignore_index=True)
        rejects.append(Rejects.of(duplicated, work, "ids", quarantine))
        invalid = duplicated[["file", "row"]]
    invalid_rows, rejected_summary, reject_files = merge_rejects(rejects)
    if not quarantine:
        raise_for_invalid(invalid_rows, hint=f" of catalog {cfg.name} (fix them, or rerun with --quarantine to set "
                                             "invalid rows aside)")
    if two_steps or (invalid is not None and len(invalid)):  # the next times come from the sorted ranges
        if not two_steps:  # rows leave the ranges: sort them again, without the duplicated ids
            compute([delayed(sort_range)(p, lo, hi, overlapping(lo, hi), crs_in, projection, file_codes,
                                         line_offset, cfg.dedupe, False, buckets, work, project_part)
                     for p, (lo, hi) in enumerate(ranges)], "order without duplicated ids")
        firsts = compute([delayed(first_time)(work / "sorted" / f"{p:06d}.arrow", invalid)
                          for p in range(len(ranges))], "next times")
        after = [next((f for f in firsts[p + 1:] if f is not None), math.inf) for p in range(len(ranges))]
        finished = compute([delayed(finish_range)(p, invalid, after[p], resolution, barriers, bounds_t, marks_all,
                                                  work) for p in range(len(ranges))], "split")
        cleanup(work / "sorted")
    cleanup(work / "chunks")  # consumed
    kept = sum(f["rows"] for f in finished)
    if kept == 0:
        raise CatalogError(
            f"catalog {cfg.name}: no events left after cleaning and filters ({rows_read} read). "
            + "; ".join(f"{r['rows']} {r['kind']}: {r['reason']}" for r in rejected_summary[:8]))
    ranges_done = Parts(work, finished)
    live = [f for f in finished if f["rows"]]
    marks = live[0]["marks"]
    label_rows = {n: sum(f["labels"].get(n, {}).get("rows", 0) for f in live) for n in LABELS}
    label_start = dict(zip(LABELS, np.r_[0, np.cumsum([label_rows[n] for n in LABELS])]))
    first_t = {n: min((f["labels"][n]["first_t"] for f in live if n in f["labels"]), default=None) for n in LABELS}
    last_t = {n: max((f["labels"][n]["last_t"] for f in live if n in f["labels"]), default=None) for n in LABELS}
    times = [f["time"] for f in live]
    time_range = [str(min(t[0] for t in times)), str(max(t[1] for t in times))]

    def global_searchsorted(values: np.ndarray) -> np.ndarray:
        where = np.searchsorted(ranges_done.last_t, values, side="left")  # the first range whose last time is ≥ v
        out = np.full(len(values), ranges_done.total, dtype=np.int64)
        todo = [j for j in np.unique(where) if j < len(ranges_done.files)]
        found = compute([delayed(locate)(ranges_done.files[j], int(ranges_done.offsets[j]), values[where == j]) for j in todo],
                        "windows")
        for j, idx in zip(todo, found):
            out[where == j] = idx
        return out

    seq_cfg = cfg.sequences
    windows = {name: window_edges(name, bounds_t, first_t[name], last_t[name], seq_cfg) for name in SPLITS
               if label_rows[name] and seq_cfg.mode == "windows"}
    if windows:  # every split's window starts and ends, located in one step
        rows = global_searchsorted(np.concatenate([np.r_[a, b] for a, b in windows.values()]))
        located = dict(zip(windows, np.split(rows, np.cumsum([2 * len(a) for a, _ in windows.values()])[:-1])))
    plans, counts = {}, {}
    for name in SPLITS:
        hist = first = stop = starts = np.array([], dtype=np.int64)
        if label_rows[name]:
            if seq_cfg.mode == "windows":
                starts = windows[name][0]
                first, stop = np.split(located[name], 2)
            elif seq_cfg.mode == "chunks":
                a = int(label_start[name])
                first, stop, starts = chunk_edges(a, a + label_rows[name], seq_cfg)
            else:
                raise ValueError(f"sequence mode {seq_cfg.mode!r} needs the source's own sequences (mode 'given')")
            hist, first, stop, starts = sequence_ranges(first, stop, starts, seq_cfg)
        plans[name] = (hist, first, stop, starts)
        counts[name] = {"sequences": int(((stop - hist) > 0).sum()), "targets": int((stop - first).sum()),
                        "history_rows": int((first - hist).sum()), "distinct_target_events": _union(first, stop)}
    if counts["train"]["targets"] == 0:
        raise CatalogError(f"catalog {cfg.name}: the train split has no target events; check the split settings "
                           f"against the catalog's time range {time_range[0]} … {time_range[1]}")

    columns_needed = ["t", "x", "y", *marks]
    tasks, empty = [], []
    for name in SPLITS:
        hist, first, stop, starts = plans[name]
        cum = np.cumsum(stop - hist)  # rows; sequences without rows keep their numbers, as in build_sequences
        if not len(cum) or cum[-1] == 0:
            empty.append(name)
            continue
        cuts = np.unique(np.searchsorted(cum, np.arange(part_rows, cum[-1], part_rows), side="left") + 1)
        for batch, (i0, i1) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(hist)])):
            if i0 >= i1 or cum[i1 - 1] == (cum[i0 - 1] if i0 else 0):
                continue
            lo_row, hi_row = int(hist[i0]), int(stop[i1 - 1])
            sel = [j for j in range(len(ranges_done.files))
                   if ranges_done.offsets[j] < hi_row and ranges_done.offsets[j + 1] > lo_row]
            tasks.append(delayed(sequence_batch)(
                name, [ranges_done.files[j] for j in sel], [int(ranges_done.offsets[j]) for j in sel], i0,
                hist[i0:i1], first[i0:i1], stop[i0:i1], starts[i0:i1], columns_needed, out_tmp, batch,
                work / "stats" if name == "train" else None, write_sequences))
    results = compute(tasks, "sequences")
    for name in empty:
        empty_sequences(name, marks, out_tmp, write_sequences)
    # two independent tasks, side by side on the workers
    normalisation, _ = compute([delayed(normalisation_from_parts)(work / "stats", [r["moments"] for r in results
                                                                                  if "moments" in r]),
                                delayed(stream_parquet)(ranges_done.files, out_tmp / "events.parquet")],
                               "statistics, events.parquet")
    if reject_files:
        stream_parquet(reject_files, out_tmp / "rejected.parquet")
    cleanup(work)
    summary = {
        "rows_read": rows_read, "events_kept": int(kept), "rejected": rejected_summary, "splits": counts,
        "events_per_split": {n: int(label_rows[n]) for n in sorted(label_rows, key=lambda n: -label_rows[n])
                             if label_rows[n]},
        "normalisation": normalisation, "marks": [m for m in ("magnitude", "category", "unit") if m in marks],
        "time_range": time_range, "quarantined": bool(reject_files),
        "spikes": spike_info, "stages": stages,
    }
    return projection, summary


def model_time(value, origin, cfg: IngestConfig, source_unit: str = "seconds") -> float | None:
    """A split boundary in model time. Numeric boundaries are in the catalog's own unit (seconds for recordings)."""
    if value is None:
        return None
    if isinstance(origin, pd.Timestamp):
        return float((value - origin) / pd.Timedelta(seconds=SECONDS_PER[cfg.time_unit]))
    return (float(value) - float(origin)) * SECONDS_PER[source_unit] / SECONDS_PER[cfg.time_unit]


def bound_value(value, calendar: bool, tz: str = "UTC"):
    """A split boundary as the events' time type: a wall-clock date in the catalog's zone → UTC timestamp,
    or a number of seconds for lab clocks."""
    if value is None:
        return None
    if not calendar:
        return float(value)
    if isinstance(value, (int, float)):
        raise ValueError(f"split boundary {value!r}: this catalog has calendar times, give a date like '2019-01-01'")
    ts = pd.Timestamp(value)
    ts = ts.tz_localize(tz, ambiguous=True, nonexistent="shift_forward") if ts.tzinfo is None else ts
    return ts.tz_convert("UTC")


# ------------------------------------------------------------------------------------------------ output
def write_sequences(seqs: pd.DataFrame, folder: Path, part: int = 0, splits=SPLITS) -> None:
    """Hive-partitioned Parquet: ``sequences/split=train/part-00000.parquet`` etc., one part per split (the
    partition-wise path writes one per batch of sequences, numbered by ``part``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # no parents=True: if the run was cancelled and its temp folder removed while this task still ran on a
    # worker, fail here instead of re-creating the temp folder
    folder.mkdir(exist_ok=True)
    for name in splits:
        table = seqs[seqs["split"] == name].drop(columns="split")
        d = folder / f"split={name}"
        d.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), d / f"part-{part:05d}.parquet")


def rejects_summary(rejects: pd.DataFrame) -> list[dict]:
    if rejects.empty:
        return []
    g = rejects.groupby(["kind", "field", "reason"], sort=True).size().reset_index(name="rows")
    return g.to_dict("records")


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of the output already in place, if any (to skip work whose inputs are unchanged)."""
    from stforecast.ingested import IngestedCatalog

    if not (out_dir / "manifest.json").exists():
        return None
    return IngestedCatalog.open(out_dir, out_dir.parent).manifest


# ------------------------------------------------------------------------------------------------ driver
def run_ingest(cfg: IngestConfig, settings: Settings, *, client=None, out_root: Path | None = None,
               quarantine: bool = False, force: bool = False, blocksize: int | None = 64 * 2**20,
               progress: bool = True, scheduler: str = "threads", part_rows: int | None = None,
               in_memory: bool = False) -> IngestResult:
    """Ingest one catalog. ``client``: a ``distributed.Client`` (the CLI makes a LocalCluster or connects to
    ``--scheduler``); ``None`` runs the same graph on a local dask scheduler (``threads`` or ``synchronous``).
    With a remote cluster the output folder must be on storage the workers share.

    The global steps run partition-wise (:mod:`pipelines.ingest_parts`: time ranges of ``part_rows`` events,
    memory bounded by that, not by the catalog) for one continuous catalog read in blocks; in one task
    (:func:`finish`, the whole catalog in memory) for the source's own sequences, for ``blocksize=None`` (the
    single-threaded reference path) and with ``in_memory``. Both give the same output."""
    import dask

    started = time.perf_counter()
    if part_rows is not None and part_rows < 1:
        raise ValueError(f"--part-rows must be at least 1, not {part_rows}")
    check_name(cfg.name)  # the name is a folder under the output root: never `..`, never a path
    out_dir = Path(out_root or settings.processed_dir).absolute() / cfg.name
    inputs = resolve_inputs(cfg, settings, progress=progress)
    digest, files = input_hash(cfg, inputs, quarantine)
    sweep_stale(out_dir)
    old = read_manifest(out_dir)
    if old and old.get("input_hash") == digest and not force:
        return IngestResult(out_dir, old, skipped=True, seconds=time.perf_counter() - started)

    given = cfg.split.mode == "given"
    spikes = cfg.format == "spikes"
    spec = None if spikes else table_spec(cfg)
    crs_in = None if spikes else spec.crs
    calendar = not spikes and spec.time_unit is None
    split_raw = {k: getattr(cfg.split, k) for k in ("history_start", "train_start", "val_start", "test_start", "end")}
    tz = spec.tz if spec is not None else "UTC"
    bounds = {k: bound_value(v, calendar, tz) for k, v in split_raw.items()}
    time_range = None if given else (bounds["history_start"], bounds["end"])
    # given sequences carry times relative to each window start: no global origin
    origin = 0.0 if given else (bounds["history_start"] if bounds["history_start"] is not None else bounds["train_start"])
    if origin is None:
        raise ValueError(f"catalog {cfg.name}: set split.history_start (or train_start): it is the time origin")
    source_unit = (spec.time_unit if spec is not None else None) or "seconds"
    bounds_t = {k: model_time(v, origin, cfg, source_unit) for k, v in bounds.items()}
    window = load_window(str(inputs["window"]), crs_in) if "window" in inputs else None
    data_inputs = {role: p for role, p in inputs.items() if role not in ("positions", "window")}
    # messages and lineage name a file by its base name, or its full path when two inputs share one
    base = [os.path.basename(str(p)) for p in data_inputs.values()]
    names = {role: (os.path.basename(str(p)) if base.count(os.path.basename(str(p))) == 1 else str(p))
             for role, p in data_inputs.items()}
    split_of_file = {names[role]: role for role in data_inputs if role in SPLITS}
    parquet_only = all(str(p).endswith((".parquet", ".pq")) for p in data_inputs.values())

    with atomic_dir(out_dir, kind="catalog", record="manifest.json") as tmp:
        # ---- the graph: parse chunks in parallel → extent → project in parallel → finish (order, split, write)
        delayed = dask.delayed
        if spikes:
            parts = [delayed(read_spike_task, pure=False)(inputs, cfg, time_range, origin)]
            columns = {"id_col": None, "line_offset": None}
        else:
            parts = []
            for role, path in data_inputs.items():
                first = 1
                for c in tables.plan_chunks(path, blocksize, spec.sep, spec.encoding):
                    parts.append(delayed(parse_table_chunk)(c, first, spec, cfg.name, cfg.filters, window,
                                                            time_range, origin, cfg.time_unit, names[role]))
                    first = delayed(operator.add)(first, delayed(tables.count_rows)(c))  # rows before the next chunk
            columns = {"time_col": spec.time_col, "id_col": spec.id_col, "line_offset": None if parquet_only else 1}
        train_range = (bounds_t["train_start"], bounds_t["val_start"]) if not given else (None, None)
        if not given and blocksize is not None and not in_memory:
            from pipelines.ingest_parts import PART_ROWS

            def compute(tasks, label):
                if client is None:
                    return list(dask.compute(*tasks, scheduler=scheduler))
                futures = client.compute(tasks)
                _wait_with_progress(futures, progress, label=label)
                return client.gather(futures)

            if client is not None:
                from pipelines.worker_logging import install

                install(client)
            (crs_model, center), summary = finish_partitioned(
                [] if spikes else parts, cfg, bounds_t, train_range, crs_in, columns, tmp, quarantine, compute,
                part_rows or PART_ROWS, spikes=(inputs, origin, time_range) if spikes else None)
        else:
            (crs_model, center), summary = _finish_in_memory(parts, cfg, given, split_of_file, bounds_t, columns, tmp,
                                                             quarantine, train_range, crs_in, client, progress,
                                                             scheduler)
        spikes_info = summary.pop("spikes")
        stages = summary.pop("stages", {})
        manifest = {
            "name": cfg.name, "kind": cfg.kind, "title": cfg.title,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stforecast_version": stforecast.__version__, "pipeline_version": PIPELINE_VERSION,
            "input_hash": digest, "inputs": files,
            "source": {"url": cfg.source_url, "licence": cfg.licence, "notice": cfg.notice},
            "schema": {
                "time": "UTC timestamp" if calendar else f"number ({spec.time_unit if spec else 'seconds'})",
                "time_unit": cfg.time_unit, "time_origin": "window start" if given else str(origin),
                "time_range": summary.pop("time_range"),
                "crs_input": crs_in, "crs_model": crs_model, "projection_center_lonlat": center,
                "spatial_unit": cfg.projection.unit if crs_model else ("degree" if geographic(crs_in) else "pixel"),
                "marks": summary.pop("marks"),
            },
            "split": {"mode": "given", "files": split_of_file} if given else {**split_raw, "model_time": bounds_t},
            "sequences": {"mode": "given"} if given else cfg.sequences.__dict__,
            "normalisation": summary.pop("normalisation"),
            "counts": {k: summary[k] for k in ("rows_read", "events_kept", "rejected", "splits", "events_per_split")},
            "config": cfg.to_dict(),
            "files": {"events": "events.parquet", "sequences": "sequences/",
                      "rejected": "rejected.parquet" if summary["quarantined"] else None},
            **({"spikes": spikes_info} if spikes_info is not None else {}),
        }
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f, indent=2, default=_json_default)
    return IngestResult(out_dir, manifest, skipped=False, seconds=time.perf_counter() - started, stages=stages)


def _finish_in_memory(parts, cfg, given, split_of_file, bounds_t, columns, tmp, quarantine, train_range, crs_in,
                      client, progress, scheduler):
    """The global steps as one task holding the whole catalog (the source's own sequences; the reference path)."""
    import dask

    delayed = dask.delayed
    projection = delayed(choose_projection)([delayed(part_bounds)(p, train_range) for p in parts], cfg, crs_in)
    projected = [delayed(project_part)(p, crs_in, projection) for p in parts]
    summary = delayed(finish)(projected, cfg, given, split_of_file, bounds_t, columns, tmp, quarantine)
    if client is None:
        return dask.compute(projection, summary, scheduler=scheduler)
    from pipelines.worker_logging import install

    install(client)  # a bad row is reported once, as the error raised here, not also by the worker's log
    # chunk futures are only watched for the progress bar; gathering them would ship every parsed row to this process
    futures = client.compute([*parts, projection, summary])
    _wait_with_progress(futures, progress, label=f"ingest {cfg.name}")
    return client.gather(futures[-2:])


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (pd.Timestamp, Path)):
        return str(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _wait_with_progress(futures, progress: bool, label: str) -> None:
    from distributed import as_completed

    if not progress:
        for _ in as_completed(futures):
            pass
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(label, total=len(futures))
        for fut in as_completed(futures):
            if fut.status == "error":
                fut.result()  # re-raise the worker's error here, with its message
            bar.advance(task)


# -------------------------------------------------------------------------------- the `stforecast ingest` command
KINDS = ("earthquakes", "crime", "spikes", "table")

DEFAULT_CATALOG = {"earthquakes": "japan", "crime": "chicago", "spikes": "wmaze", "table": None}

FORMATS = {"earthquakes": ["comcat", "japan", "pycsep", "dstpp-windows", "table"],
           "crime": ["chicago", "sf", "table"], "spikes": ["spikes"], "table": ["table"]}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ingest", help="read, validate, clean, split and window a catalog into Parquet sequences",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Turn a raw event catalog into model-ready sequences.\n\n"
            "Steps: read (file or URL) -> validate every row (bad rows are named by file, line and field) -> clean\n"
            "(drop exact duplicates, sort, spread tied times inside one clock tick, filters, spatial window) ->\n"
            "project to a local metric CRS -> split by date into train/val/test (targets never cross splits) ->\n"
            "sequences -> Parquet + manifest.json under data/processed/NAME. Re-running with unchanged inputs does\n"
            "nothing. Runs on a local Dask cluster; --scheduler uses an existing one."),
        epilog=(
            "examples:\n"
            "  stforecast ingest earthquakes japan\n"
            "  stforecast ingest earthquakes dstpp_japan\n"
            "  stforecast ingest crime chicago --quarantine\n"
            "  stforecast ingest spikes wmaze --speed-min 0\n"
            "  stforecast ingest earthquakes --name socal --format comcat --path https://example.org/q.csv \\\n"
            "      --history-start 2020-01-01 --train-start 2020-02-01 --val-start 2023-01-01 --test-start 2023-07-01 \\\n"
            "      --end 2024-01-01 --magnitude-min 2.5\n"
            "  stforecast ingest table --name mine --path events.csv --time-col when --x-col lon --y-col lat \\\n"
            "      --crs EPSG:4326 --time-format '%d/%m/%Y %H:%M' --tz Europe/London --category-col type \\\n"
            "      --encoding latin-1 --title 'My events 2021' --licence CC-BY-4.0 --source https://example.org ...\n\n"
            "paths: a relative --path/--positions/--window is looked for in the current directory first, then\n"
            "under the data root (the command says which it used); paths inside the config file start from the\n"
            "data root. NAME (--name, or the file name) may hold letters, digits, '_', '-' and '.'.\n"
            "bad input: each problem is named by file, line (row) and field; --quarantine sets invalid rows\n"
            "(bad values, malformed rows, undecodable bytes) aside in OUT/NAME/rejected.parquet. A failed or\n"
            "interrupted run keeps the previous output."))
    p.add_argument("kind", choices=KINDS, help="what the events are; sets defaults (units, format)")
    p.add_argument("catalog", nargs="?", help="a catalog named in the config file (default: japan, chicago, wmaze)")
    p.add_argument("--list", action="store_true", help="list the catalogs in the config file and exit")
    g = p.add_argument_group("where")
    g.add_argument("--config", help="catalog config file (default data/catalogs.toml, or $STFORECAST_CONFIG)")
    g.add_argument("--data-root", help="folder relative catalog paths start from (default ../shared/data)")
    g.add_argument("--out", help="output root (default data/processed); the catalog goes to OUT/NAME")
    g = p.add_argument_group("a catalog that is not in the config file (or overrides for one that is)")
    g.add_argument("--name", help="output name for an ad-hoc catalog (default: the file name); letters, digits, "
                                  "'_', '-', '.'")
    g.add_argument("--path", help="input file (CSV, CSV.gz, Parquet) or http(s) URL; relative: current directory "
                                  "first, then the data root")
    g.add_argument("--format", help="input preset: comcat, japan, pycsep, dstpp-windows, chicago, sf, table, spikes")
    g.add_argument("--positions", help="spikes: Trodes .videoPositionTracking file")
    g.add_argument("--encoding", dest="table.encoding", metavar="CODEC",
                   help="text encoding of a CSV file (default utf-8), e.g. latin-1 or cp1252")
    g.add_argument("--title", help="a title for the catalog, stored in manifest.json")
    g.add_argument("--licence", help="the data's licence or terms of use, stored in manifest.json")
    g.add_argument("--source", dest="source_url", metavar="URL",
                   help="where the data comes from (URL or citation), stored in manifest.json")
    g = p.add_argument_group("column mapping (format 'table' or to override a preset)")
    for flag, key, what in (("--time-col", "time_col", "event times"), ("--x-col", "x_col", "x (longitude)"),
                            ("--y-col", "y_col", "y (latitude)"), ("--id-col", "id_col", "the source's event ids"),
                            ("--magnitude-col", "magnitude_col", "magnitudes (a mark)"),
                            ("--category-col", "category_col", "categories such as crime types (a mark)"),
                            ("--unit-col", "unit_col", "neural unit ids (a mark)"),
                            ("--sequence-col", "sequence_col", "sequence ids, for given sequences")):
        g.add_argument(flag, dest=f"table.{key}", metavar="COL", help=f"the column holding {what}")
    g.add_argument("--crs", dest="table.crs", metavar="CRS",
                   help="CRS of x/y: EPSG:4326 (lon/lat, default) or e.g. EPSG:32616; 'none' for a local frame such "
                        "as pixels")
    g.add_argument("--time-format", dest="table.time_format", metavar="FORMAT",
                   help="strftime pattern or ISO8601 (default); for numeric times use --time-is")
    g.add_argument("--time-is", dest="table.time_unit", choices=["seconds", "minutes", "hours", "days"],
                   help="times are numbers in this unit (lab clocks) rather than dates")
    g.add_argument("--tz", dest="table.tz", metavar="ZONE",
                   help="zone of times written without one, e.g. America/Chicago (default UTC)")
    g.add_argument("--sep", dest="table.sep", metavar="CHAR", help="field separator (default ',')")
    g = p.add_argument_group("cleaning and filters")
    g.add_argument("--magnitude-min", dest="filters.magnitude_min", type=float, metavar="M",
                   help="drop events below this magnitude")
    g.add_argument("--magnitude-max", dest="filters.magnitude_max", type=float, metavar="M",
                   help="drop events above this magnitude")
    g.add_argument("--categories", dest="filters.categories", type=lambda s: s.split(","), metavar="LIST",
                   help="keep only these, comma-separated")
    g.add_argument("--exclude-categories", dest="filters.exclude_categories", type=lambda s: s.split(","),
                   metavar="LIST", help="drop these categories, comma-separated")
    g.add_argument("--bbox", dest="filters.bbox", type=lambda s: [float(v) for v in s.split(",")],
                   metavar="MINX,MINY,MAXX,MAXY", help="keep events inside this box (input CRS)")
    g.add_argument("--window", dest="filters.polygon", metavar="FILE", help="keep events inside this polygon (GeoJSON/GPKG)")
    g.add_argument("--no-dedupe", dest="dedupe", action="store_const", const=False, help="keep exact duplicates")
    g.add_argument("--tie-resolution", dest="tie_resolution_s", type=float, metavar="SECONDS",
                   help="clock tick: events sharing a time are spread inside one tick")
    g.add_argument("--speed-min", dest="spikes.speed_min", type=float, metavar="PX_PER_S",
                   help="spikes: drop spikes below this speed (px/s; 0 keeps all)")
    g.add_argument("--max-unit-fraction", dest="spikes.max_unit_fraction", type=float, metavar="SHARE",
                   help="spikes: drop clusters holding more than this share of spikes (multi-unit activity); 1 keeps all")
    g = p.add_argument_group("split (dates in the catalog's zone, or seconds for recordings)")
    for k, what in (("history-start", "first event kept (history only: conditions, never a target); the time origin"),
                    ("train-start", "first training target"), ("val-start", "first validation target"),
                    ("test-start", "first test target"), ("end", "end of the test period (exclusive)")):
        g.add_argument(f"--{k}", dest=f"split.{k.replace('-', '_')}", metavar="DATE", help=what)
    g = p.add_argument_group("sequences and units")
    g.add_argument("--sequence-mode", dest="sequences.mode", choices=["windows", "chunks", "given"],
                   help="time windows, runs of --seq-length events, or the source's own sequences")
    g.add_argument("--seq-window", dest="sequences.window", type=float, metavar="T",
                   help="window length in model time units")
    g.add_argument("--seq-stride", dest="sequences.stride", type=float, metavar="T",
                   help="window stride (default: window)")
    g.add_argument("--seq-length", dest="sequences.length", type=int, metavar="N", help="chunk length in target events")
    g.add_argument("--history-events", dest="sequences.history_events", type=int, metavar="N",
                   help="context events before each sequence")
    g.add_argument("--time-unit", dest="time_unit", choices=["seconds", "minutes", "hours", "days"], help="model time unit")
    g.add_argument("--projection", dest="projection.crs", metavar="CRS",
                   help="aeqd (default), none, or a CRS such as EPSG:26916")
    g.add_argument("--length-unit", dest="projection.unit", choices=["m", "km"], help="model length unit")
    g = p.add_argument_group("running")
    g.add_argument("--quarantine", action="store_true",
                   help="set invalid rows aside in rejected.parquet (with reasons) instead of failing")
    g.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:8786)")
    g.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    g.add_argument("--blocksize", type=int, default=64, metavar="MB", help="chunk size for parallel parsing (default 64 MB)")
    g.add_argument("--part-rows", type=int, default=None, metavar="N",
                   help="events per time range in the ordering, splitting and sequence steps; peak memory grows "
                        "with it (default 500,000: about 1.1 GB in all with 2 workers)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> dict:
    """Dotted argparse destinations → a nested override dict (only the flags the user gave)."""
    out: dict = {}
    for key, value in vars(args).items():
        if value is None or key in _NOT_CONFIG:
            continue
        if key.startswith("table.") and key.endswith(".crs") and str(value).lower() == "none":
            value = None
        if key == "spikes.speed_min" and value == 0:
            value = None
        if key == "spikes.max_unit_fraction" and value >= 1:
            value = None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for k in ("path", "format", "positions"):
        if getattr(args, k, None):
            out[k] = getattr(args, k)
    return out


_NOT_CONFIG = {"command", "kind", "catalog", "list", "config", "data_root", "out", "name", "path", "format", "positions",
               "quarantine", "force", "scheduler", "workers", "blocksize", "part_rows", "no_progress", "verbose"}


def run(args) -> int:
    from rich.console import Console

    from stforecast.config import build_config, load_settings

    console = Console()
    settings = load_settings(args.config, args.data_root)
    if args.list:
        for name, c in settings.catalogs.items():
            console.print(f"[bold]{name}[/] ({c.get('kind')}): {c.get('title', '')}")
        return 0
    from stforecast.config import check_name, safe_name

    if args.name is not None:
        check_name(args.name, "--name")
    overrides = _overrides(args)
    # paths typed here start from the current directory, then the data root (paths in the config file: data root)
    for flag, keys in (("--path", ("path",)), ("--positions", ("positions",)), ("--window", ("filters", "polygon"))):
        node = overrides
        for k in keys[:-1]:
            node = node.get(k, {})
        if node.get(keys[-1]):
            typed = node[keys[-1]]
            node[keys[-1]], where = settings.locate(typed, flag)
            if where != "as given":
                console.print(f"{flag} {typed}: using {node[keys[-1]]} (found in the {where})", soft_wrap=True,
                              markup=False, highlight=False)
    name = args.catalog or (None if (args.path or args.name) else DEFAULT_CATALOG[args.kind])
    if name:
        cfg = settings.catalog(name, overrides)
        if cfg.kind != args.kind and args.kind != "table":
            raise ValueError(f"catalog {name!r} holds {cfg.kind}, not {args.kind}: run `stforecast ingest "
                             f"{cfg.kind} {name}`")
        if args.name:  # a named catalog written under another output name
            import dataclasses

            cfg = dataclasses.replace(cfg, name=args.name)
    else:
        if not args.path:
            raise ValueError("give a catalog name from the config (see --list) or --path with a column mapping/format")
        fmt = args.format or {"earthquakes": "comcat", "crime": "table", "spikes": "spikes", "table": "table"}[args.kind]
        units = {"earthquakes": ("days", "km"), "crime": ("hours", "m"), "spikes": ("seconds", None), "table": ("days", "km")}
        time_unit, length = units[args.kind]
        base = {"kind": args.kind, "format": fmt, "time_unit": time_unit,
                "projection": {"crs": "none"} if length is None else {"crs": "aeqd", "unit": length}}
        from stforecast.config import deep_merge

        name = args.name or safe_name(Path(args.path.split("?")[0]).name.split(".")[0])
        cfg = build_config(name, deep_merge(base, overrides))
    with dask_client(args.scheduler, args.workers) as client:
        result = run_ingest(cfg, settings, client=client, out_root=args.out, quarantine=args.quarantine,
                            force=args.force, blocksize=args.blocksize * 2**20, progress=not args.no_progress,
                            part_rows=args.part_rows)
    print_summary(console, result)
    return 0


def print_summary(console, result) -> None:
    from rich.table import Table

    m = result.manifest
    if result.skipped:
        console.print(f"[green]Up to date[/]: {result.out_dir} already holds this input and configuration "
                      f"(hash {m['input_hash'][:12]}); nothing to do. Use --force to rebuild.")
    c = m["counts"]
    t = Table(title=f"{m['name']}: {m.get('title', '')}", min_width=72)
    t.add_column("events", justify="left")
    t.add_column("rows", justify="right")
    t.add_row("read", f"{c['rows_read']:,}")
    t.add_row("kept", f"{c['events_kept']:,}")
    for r in c["rejected"]:  # per reason; "invalid" rows only appear here with --quarantine
        t.add_row(f"  {r['kind']}: {r['field']}: {r['reason']}", f"{r['rows']:,}")
    rejected = c["rows_read"] - c["events_kept"]
    if rejected:
        t.add_row("removed / rejected (rows)", f"{rejected:,}")
    console.print(t)
    s = Table(title="sequences per split", min_width=72)
    for col in ("split", "sequences", "target events", "history rows", "events in split"):
        s.add_column(col, justify="right")
    for name, v in c["splits"].items():
        s.add_row(name, f"{v['sequences']:,}", f"{v['targets']:,}", f"{v['history_rows']:,}",
                  f"{c['events_per_split'].get(name, 0):,}")
    console.print(s)
    extra = f" in {result.seconds:.1f} s" if not result.skipped else ""
    console.print(f"Output: {result.out_dir}{extra}  (manifest.json, events.parquet, sequences/)")
    if m["files"].get("rejected"):
        console.print(f"Rejected rows with reasons: {result.out_dir / m['files']['rejected']}")
