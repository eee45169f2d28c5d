"""The Dask ingestion graph shared by every catalog kind.

    files ──plan──▶ chunks ──(parallel) parse + validate + filter──▶ ordered, de-duplicated, projected catalog
          ──▶ chronological split ──▶ sequences ──▶ Parquet (partitioned by split) + manifest.json

Parsing, validation and filtering run per chunk on the cluster's workers (the expensive part: text → numbers);
the global steps (order, de-duplicate, tie-break, project, split, window, write) run partition-wise
(:mod:`pipelines.ingest.partitioned`). Outputs are written into a temporary folder beside the target and renamed
into place at the end, so a failed or interrupted run leaves the previous output intact. A run whose inputs and
configuration hash to the manifest already there does nothing.
"""

from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines import cluster
from pipelines.ingest.inputs import bound_value, input_hash, model_time, resolve_inputs, table_spec
from pipelines.ingest.manifest import MANIFEST, Manifest, read_manifest
from pipelines.ingest.partitioned import finish_partitioned
from pipelines.ingest.reference import finish_in_memory
from pipelines.ingest.spill import PART_ROWS
from pipelines.ingest.tasks import parse_table_chunk, read_spike_task
from stforecast.clean import geographic, load_window
from stforecast.config import IngestConfig, Settings, check_name
from stforecast.io import tables
from stforecast.io.atomic import atomic_dir, sweep_stale
from stforecast.sequences import SPLITS


@dataclass
class IngestResult:
    out_dir: Path
    manifest: dict
    skipped: bool = False  # True when the output was already up to date
    seconds: float = 0.0
    stages: dict | None = None  # seconds per step of the partition-wise path
    order: dict | None = None  # how its time ranges were cut: path "chunks" (input in time order) or "merge"

    @property
    def catalog(self):
        """The ingested catalog, as every later step reads it (:class:`~stforecast.ingested.IngestedCatalog`)."""
        from stforecast.ingested import IngestedCatalog

        return IngestedCatalog(self.out_dir, self.manifest)


def run_ingest(cfg: IngestConfig, settings: Settings, *, client=None, out_root: Path | None = None,
               quarantine: bool = False, force: bool = False, blocksize: int | None = 64 * 2**20,
               progress: bool = True, scheduler: str = "threads", part_rows: int | None = None,
               in_memory: bool = False) -> IngestResult:
    """Ingest one catalog. ``client``: a ``distributed.Client`` (the CLI makes a LocalCluster or connects to
    ``--scheduler``); ``None`` runs the same graph on a local dask scheduler (``threads`` or ``synchronous``).
    With a remote cluster the output folder must be on storage the workers share.

    The global steps run partition-wise (:mod:`pipelines.ingest.partitioned`: time ranges of ``part_rows``
    events, memory bounded by that, not by the catalog). The source's own sequences (``given``: small files of
    windows), ``blocksize=None`` and ``in_memory`` run them in one task instead
    (:mod:`pipelines.ingest.reference`, the whole catalog in memory: the reference the tests compare with). Both
    give the same output."""
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

    with atomic_dir(out_dir, kind="catalog", record=MANIFEST) as tmp:
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
                                                            time_range, origin, cfg.time_unit, names[role],
                                                            cfg.dequantise))
                    first = delayed(operator.add)(first, delayed(tables.count_rows)(c))  # rows before the next chunk
            columns = {"time_col": spec.time_col, "id_col": spec.id_col, "line_offset": None if parquet_only else 1}
        train_range = (bounds_t["train_start"], bounds_t["val_start"]) if not given else (None, None)
        if not given and blocksize is not None and not in_memory:
            def compute(tasks, label):
                if client is None:
                    return list(dask.compute(*tasks, scheduler=scheduler))
                futures = client.compute(tasks)
                cluster.wait_with_progress(futures, progress, label=label)
                return client.gather(futures)

            if client is not None:
                from pipelines.worker_logging import install

                install(client)
            (crs_model, center), summary = finish_partitioned(
                [] if spikes else parts, cfg, bounds_t, train_range, crs_in, columns, tmp, quarantine, compute,
                part_rows or PART_ROWS, spikes=(inputs, origin, time_range) if spikes else None)
        else:
            (crs_model, center), summary = finish_in_memory(parts, cfg, given, split_of_file, bounds_t, columns, tmp,
                                                             quarantine, train_range, crs_in, client, progress,
                                                             scheduler)
        spikes_info = summary.pop("spikes")
        stages = summary.pop("stages", {})
        order = summary.pop("order", None)
        manifest = Manifest(
            name=cfg.name, kind=cfg.kind, title=cfg.title, input_hash=digest, inputs=files,
            source={"url": cfg.source_url, "licence": cfg.licence, "notice": cfg.notice},
            schema={
                "time": "UTC timestamp" if calendar else f"number ({spec.time_unit if spec else 'seconds'})",
                "time_unit": cfg.time_unit, "time_origin": "window start" if given else str(origin),
                "time_range": summary.pop("time_range"),
                "crs_input": crs_in, "crs_model": crs_model, "projection_center_lonlat": center,
                "spatial_unit": cfg.projection.unit if crs_model else ("degree" if geographic(crs_in) else "pixel"),
                "marks": summary.pop("marks"),
            },
            split={"mode": "given", "files": split_of_file} if given else {**split_raw, "model_time": bounds_t},
            sequences={"mode": "given"} if given else cfg.sequences.__dict__,
            normalisation=summary.pop("normalisation"),
            counts={k: summary[k] for k in ("rows_read", "events_kept", "rejected", "splits", "events_per_split")},
            config=cfg.to_dict(),
            files={"events": "events.parquet", "sequences": "sequences/",
                   "rejected": "rejected.parquet" if summary["quarantined"] else None},
            spikes=spikes_info)
        record = manifest.write(tmp)
    return IngestResult(out_dir, record, skipped=False, seconds=time.perf_counter() - started, stages=stages,
                        order=order)
