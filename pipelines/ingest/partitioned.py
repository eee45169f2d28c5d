"""The ingestion graph's global steps, partition-wise: memory bounded by a time range, not by the catalog.

    parsed chunk ──▶ sorted by t, spilled (Arrow IPC); its t-sample and extent ──▶ time edges, projection (driver)
      ──▶ per time range: its rows from the chunks that overlap it, projected, de-duplicated, sorted, ties broken
          (capped by the next time, read from the chunks straddling its upper edge), splits assigned, written;
          its ids out by hash bucket
      ──▶ per id bucket: duplicate ids (when some are set aside with --quarantine, the ranges are redone in two
          steps: sort, then the next times without them, then finish)
      ──▶ window boundaries located per range (a reduction of counts) ──▶ sequences written in batches of rows
      ──▶ normalisation statistics by reductions (exact order statistics by histogram refinement), beside
          ``events.parquet`` streamed from the ranges, one range at a time

When the parsed chunks' time extents do not overlap (a file sorted by time, as most exported catalogs are), the
time ranges follow the chunks: a range reads one spilled chunk (or several whole neighbours) instead of slices of
every chunk that overlaps it, and when the file is oldest first the range is already in input and in time order:
merging and sorting it is a check. The spill and its one re-read stay: the projection's centre is known only
once every chunk is parsed, and holding the parsed chunks until then would hold the catalog.

Why the results equal the in-memory reference (:func:`pipelines.ingest.reference.finish`) exactly:

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

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from dask import delayed

from pipelines.ingest.ranges import (
    Finalize, Parts, time_ranges, check_id_bucket, empty_sequences, finish_range, first_time,
    in_time_order, locate, sequence_batch, sort_range, sorted_chunk_edges, time_edges)
from pipelines.ingest.spill import LABELS, Rejects, SpikeRows, count_below, merge_rejects, spill_chunk, spill_spikes
from pipelines.ingest.stats import union_size, cleanup, normalisation_from_parts, stream_parquet
from pipelines.ingest.tasks import choose_projection
from stforecast.catalog import MARK_COLUMNS, SECONDS_PER, CatalogError, raise_for_invalid
from stforecast.sequences import SPLITS, chunk_edges, sequence_ranges, window_edges


#: ranges follow the parsed chunks when these are in time order (:func:`pipelines.ingest.ranges.sorted_chunk_edges`);
#: False cuts them from the t-samples as for any input (the tests compare both)
FOLLOW_SORTED_CHUNKS = True


def finish_partitioned(parts: list, cfg, bounds_t: dict, train_range, crs_in, columns: dict, out_tmp: Path,
                       quarantine: bool, compute, part_rows: int, spikes: tuple | None = None) -> tuple[tuple, dict]:
    """The global steps partition-wise (this module's docstring): ``parts`` are the graph's parse tasks (delayed);
    ``compute(tasks, label)`` runs a list of delayed tasks (on the cluster) and returns their results.
    ``spikes``: ``(inputs, origin, time_range)`` of a recording, read cluster by cluster instead of ``parts``.
    Returns ``((crs_model, center), summary)`` as the in-memory path does."""
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
        chunks = compute([delayed(spill_chunk)(part, i, train_range, work, quarantine)
                          for i, part in enumerate(parts)], "parse")
    projection = choose_projection([c.bounds for c in chunks], cfg, crs_in)
    rows_read = sum(c.rows_read for c in chunks)
    file_codes = {name: i for i, name in enumerate(sorted(set().union(*(c.files for c in chunks))))}
    # a catalog in time order (the chunks' extents do not overlap): ranges follow the chunks, so each reads one
    # spilled chunk; else ranges of ≈ part_rows from the t-samples, merged from the chunks that overlap them.
    # Either way the edges are time values, so the output is the same.
    follow = FOLLOW_SORTED_CHUNKS and spikes is None and in_time_order(chunks)
    ranges = time_ranges(sorted_chunk_edges(chunks, part_rows) if follow else time_edges(chunks, part_rows))
    buckets = len(ranges)

    def overlapping(lo, hi):
        return [work / "chunks" / f"{c.index:06d}.arrow" for c in chunks if c.rows and c.t_max >= lo and c.t_min < hi]

    reads = [len(overlapping(lo, hi)) for lo, hi in ranges]
    order = {"path": "chunks" if follow else "merge", "ranges": len(ranges),
             "one_chunk": sum(n == 1 for n in reads)}  # for the run's summary: which path ran

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
                                            line_offset, cfg.dedupe, bool(id_col), buckets, work,
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
                                         line_offset, cfg.dedupe, False, buckets, work)
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
                        "history_rows": int((first - hist).sum()), "distinct_target_events": union_size(first, stop)}
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
                work / "stats" if name == "train" else None))
    results = compute(tasks, "sequences")
    for name in empty:
        empty_sequences(name, marks, out_tmp)
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
        "spikes": spike_info, "stages": stages, "order": order,
    }
    return projection, summary

