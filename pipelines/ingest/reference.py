"""The in-memory global steps: the whole catalog in one task. Used for the source's own sequences (``given``
mode: small files of windows, such as the DSTPP paper's) and as the reference the partition-wise path is tested
against (``blocksize=None``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import cluster
from pipelines.ingest.tasks import choose_projection, part_bounds, project_part, rejects_summary, write_sequences
from stforecast.catalog import CatalogError, raise_for_invalid
from stforecast.clean import order_events
from stforecast.config import IngestConfig
from stforecast.sequences import assign_splits, build_sequences, given_sequences, normalisation_stats, split_counts


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


def finish_in_memory(parts, cfg, given, split_of_file, bounds_t, columns, tmp, quarantine, train_range, crs_in,
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
    cluster.wait_with_progress(futures, progress, label=f"ingest {cfg.name}")
    return client.gather(futures[-2:])

