"""What an ingestion reads: the input files (local, fetched or downloaded), their hash, the table reader's settings
and the split boundaries in model time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from pipelines.ingest.manifest import PIPELINE_VERSION
from stforecast.catalog import SECONDS_PER
from stforecast.config import IngestConfig, Settings
from stforecast.io import tables
from stforecast.sequences import SPLITS


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

