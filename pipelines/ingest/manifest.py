"""The record an ingestion leaves beside its output: ``manifest.json``, written from one :class:`Manifest`.

:class:`stforecast.ingested.IngestedCatalog` is its one reader; everything after ingestion asks that object."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

import stforecast

#: the file name of the record, inside the catalog's output folder
MANIFEST = "manifest.json"
#: bumped when the same inputs and settings would give other output: part of every input hash
PIPELINE_VERSION = "ingest-1"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(kw_only=True)
class Manifest:
    """One ingestion's record. The fields are the JSON's top-level keys, in the order they are written."""

    name: str
    kind: str
    title: str | None
    created_utc: str = field(default_factory=_now)
    stforecast_version: str = stforecast.__version__
    pipeline_version: str = PIPELINE_VERSION
    input_hash: str  # sha256 over input bytes, settings, pipeline version and --quarantine: equal → nothing to do
    inputs: list  # per input file: role, path, bytes, sha256
    source: dict  # url, licence, notice
    schema: dict  # time (kind, unit, origin, range), CRSs and projection centre, spatial unit, marks
    split: dict  # the split settings and their model times (or the given files)
    sequences: dict  # the windowing settings
    normalisation: dict  # train-split statistics of (dt, log dt, x, y)
    counts: dict  # rows read, kept, rejected per reason, sequences and events per split
    config: dict  # the whole IngestConfig
    files: dict  # events, sequences, rejected (or None)
    spikes: dict | None = None  # a recording's reader summary (units kept and dropped, and why)

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["spikes"] is None:
            del out["spikes"]
        return out

    def write(self, folder: Path) -> dict:
        """Into ``folder`` (the run's staging folder, renamed into place with the rest of the output); returns the
        record as the file holds it (plain JSON types, as :class:`IngestedCatalog` reads it back)."""
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        (Path(folder) / MANIFEST).write_text(text)
        return json.loads(text)


def read_manifest(out_dir: Path) -> dict | None:
    """The manifest of the output already in place, if any (to skip work whose inputs are unchanged)."""
    from stforecast.ingested import IngestedCatalog

    if not (out_dir / MANIFEST).exists():
        return None
    return IngestedCatalog.open(out_dir, out_dir.parent).manifest


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
