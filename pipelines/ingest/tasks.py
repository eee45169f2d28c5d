"""The graph's per-chunk tasks (parse, validate, filter; extent; projection) and what both global-step paths
share (writing sequences, summarising rejects). Each runs on a worker; a chunk's events stay there."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stforecast.clean import (add_keys, apply_filters, dequantise, geographic, project, projection_for,
                              to_model_time)
from stforecast.config import IngestConfig
from stforecast.io import tables
from stforecast.sequences import SPLITS


# Each function below is one node of the graph; a chunk's events stay on its worker until `finish` needs them.
def parse_table_chunk(chunk, first_row, spec, source, filters, window, time_range, origin, time_unit, name,
                      cell: dict | None = None):
    """Worker task: parse, validate, filter and key one chunk → (events, rejects, rows_read). ``cell``: the
    catalog's ``dequantise`` setting (locations spread within their source cell, after the filters saw them)."""
    events, rejects = tables.read_chunk(chunk, first_row, spec, source, name)
    n_read = len(events) + int(rejects["row"].nunique())  # read_chunk's rejects are invalid rows, one or more each
    kept, filtered = apply_filters(events, filters, window, time_range,
                                   line_offset=None if chunk.kind == "parquet" else 1)
    kept["t"] = to_model_time(kept["time"], origin, time_unit, spec.time_unit or "seconds")
    return dequantise(add_keys(kept), cell), pd.concat([rejects, filtered], ignore_index=True), n_read


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

