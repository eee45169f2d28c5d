"""An ingested catalog as one plain object (pyCSEP's idea: a catalog and its region are objects every step passes
along, not dicts re-read from disk).

    catalog = IngestedCatalog.open("japan")          # a name under the processed directory, or a folder
    catalog.events                                   # events.parquet (time-sorted; t, x, y in model units, marks)
    catalog.split_start("val")                       # model time where a split begins
    catalog.units.time_of(t), catalog.units.model_time_of("2016-04-14T13:00"), catalog.units.horizon("3d")
    catalog.units.to_original(frame)                 # model units → UTC time and lon/lat (or the input CRS)

It is the only reader of the ingestion manifest (``manifest.json``); ``stforecast ingest`` writes it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stforecast.region import Region


@dataclass(frozen=True)
class CatalogUnits:
    """How model units map to the catalog's own: ``time_unit`` (seconds, minutes, hours, days), ``calendar``
    (True: model time counts from the UTC ``origin``; False: a lab clock, ``origin`` in the source's seconds, or
    each window's own start for the source's windows), the model CRS (None: coordinates are the input's own) and
    the input CRS (lon/lat, a projected CRS or a pixel frame)."""

    time_unit: str
    calendar: bool
    origin: str | float | None
    crs_model: str | None
    crs_input: str | None
    spatial_unit: str

    @classmethod
    def from_schema(cls, schema: dict) -> "CatalogUnits":
        calendar = schema["time"] == "UTC timestamp"
        origin = schema.get("time_origin")
        if not calendar:
            origin = None if origin in (None, "window start") else float(origin)
        return cls(schema["time_unit"], calendar, origin, schema.get("crs_model"), schema.get("crs_input"),
                   schema.get("spatial_unit", ""))

    @property
    def seconds(self) -> float:
        """Seconds per model time unit."""
        from stforecast.catalog import SECONDS_PER

        return SECONDS_PER[self.time_unit]

    @property
    def geographic(self) -> bool:
        """True when the input coordinates are lon/lat (maps draw over the basemap)."""
        from stforecast.clean import geographic

        return bool(geographic(self.crs_input))

    def to_original(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with model-unit columns ``t``, ``x``, ``y`` plus the catalog's own coordinates: ``time`` (UTC
        timestamps for calendar catalogs, the recording's clock otherwise) and ``lon``/``lat`` (or ``x_input``/
        ``y_input`` for a projected or pixel input CRS)."""
        from stforecast.clean import project

        out = frame.copy()
        if self.calendar:
            out["time"] = pd.Timestamp(self.origin) + pd.to_timedelta(out["t"].to_numpy() * self.seconds, unit="s")
        else:
            out["time"] = (self.origin or 0.0) + out["t"].to_numpy() * self.seconds
        if self.crs_model:
            a, b = project(out["x"].to_numpy(), out["y"].to_numpy(), self.crs_model, self.crs_input)
        else:
            a, b = out["x"].to_numpy(), out["y"].to_numpy()
        names = ("lon", "lat") if self.geographic else ("x_input", "y_input")
        out[names[0]], out[names[1]] = a, b
        return out

    def model_time_of(self, when) -> float:
        """A moment (timestamp string/Timestamp for calendar catalogs, a number otherwise) in model time."""
        if self.calendar:
            ts = pd.Timestamp(when)
            ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
            return float((ts - pd.Timestamp(self.origin)) / pd.Timedelta(seconds=self.seconds))
        return (float(when) - (self.origin or 0.0)) / self.seconds

    def time_of(self, t: float):
        """The catalog's own time (a UTC Timestamp, or the recording clock) of model time ``t``."""
        return self.to_original(pd.DataFrame({"t": [float(t)], "x": [0.0], "y": [0.0]}))["time"].iloc[0]

    def horizon(self, text: str) -> float:
        """A horizon such as ``24h``, ``7d``, ``90min`` or ``30s`` (or a bare number, in model units) → model units."""
        try:
            return float(text)
        except ValueError:
            pass
        days = re.fullmatch(r"\s*([\d.]+)\s*d(?:ays?)?\s*", text)  # pandas is retiring the lower-case 'd' unit
        try:
            seconds = float(days.group(1)) * 86400 if days else pd.Timedelta(text).total_seconds()
        except ValueError:
            raise ValueError(f"horizon {text!r}: give a duration such as 24h, 7d or 90min, or a number in "
                             f"{self.time_unit}") from None
        return seconds / self.seconds


class IngestedCatalog:
    """A processed catalog: its folder, manifest, events, splits, units and the baselines' completeness."""

    def __init__(self, folder: str | Path, manifest: dict):
        self.folder, self.manifest = Path(folder), manifest
        self.units = CatalogUnits.from_schema(manifest["schema"])

    @classmethod
    def open(cls, name_or_folder: str | Path, processed_dir: str | Path | None = None) -> "IngestedCatalog":
        """A folder holding ``manifest.json``, or a name under the processed directory (default: the settings')."""
        candidates = [Path(name_or_folder)]
        if processed_dir is None:
            from stforecast.config import load_settings

            processed_dir = load_settings().processed_dir
        candidates.append(Path(processed_dir) / str(name_or_folder))
        for folder in candidates:
            path = folder / "manifest.json"
            if path.is_file():
                try:
                    return cls(folder, json.loads(path.read_text()))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); re-run "
                                     "`stforecast ingest ... --force` to rewrite it") from None
        raise FileNotFoundError(f"no ingested catalog {str(name_or_folder)!r} (looked for {candidates[0]}/manifest.json "
                                f"and {candidates[1]}/manifest.json); run `stforecast ingest` first")

    # ------------------------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def kind(self) -> str:
        """What the catalog records: earthquakes, crime, spikes or table."""
        return self.manifest["kind"]

    @property
    def input_hash(self) -> str:
        return self.manifest["input_hash"]

    @property
    def schema(self) -> dict:
        return self.manifest["schema"]

    @property
    def marks(self) -> list:
        return list(self.schema.get("marks", []))

    @property
    def pipeline_version(self) -> str:
        return str(self.manifest.get("pipeline_version", ""))

    @property
    def identity(self) -> dict:
        """What a model's coordinates mean: this catalog's name, input hash, units and frame. Stored in every
        checkpoint and compared with the catalog a forecast is made on (:func:`stforecast.checkpoints.check_catalog`)."""
        schema = self.schema
        return {"name": self.name, "input_hash": self.input_hash, "time_unit": schema.get("time_unit"),
                "spatial_unit": schema.get("spatial_unit"), "crs_model": schema.get("crs_model"),
                "projection_center_lonlat": schema.get("projection_center_lonlat")}

    @property
    def normalisation(self) -> dict:
        """Statistics of the train targets (waiting time, log waiting time, x, y: min, max, mean, ...): what a
        model is scaled by."""
        return self.manifest["normalisation"]

    @property
    def clock_tick_s(self) -> float | None:
        """The catalog's clock tick in seconds (its ingest config's ``tie_resolution_s``: 0.01 s for ComCat, 60 s
        for the crime tables), None when the manifest does not say: maps show times to this precision."""
        tick = self.manifest["config"].get("tie_resolution_s")
        return float(tick) if tick else None

    # ------------------------------------------------------------------------------------------ splits
    @property
    def continuous(self) -> bool:
        """One chronological catalog (False: the source's own windows, e.g. the DSTPP paper's)."""
        return self.manifest["split"].get("mode") != "given"

    def require_continuous(self, what: str) -> None:
        if not self.continuous:
            raise ValueError(f"{self.folder}: {what} needs one continuous catalog, not the source's own windows")

    def split_start(self, split: str) -> float:
        """Model time where ``split`` (train, val, test) begins."""
        self.require_continuous(f"the start of the {split} split")
        return float(self.manifest["split"]["model_time"][f"{split}_start"])

    def split_end(self, split: str) -> float:
        """Model time where ``split`` ends: the next split's start, or the catalog's ``end`` (just after its last
        event where the settings leave the end open)."""
        following = {"history": "train", "train": "val", "val": "test", "test": "end"}[split]
        key = "end" if following == "end" else f"{following}_start"
        self.require_continuous(f"the end of the {split} split")
        value = self.manifest["split"]["model_time"].get(key)
        if value is None:
            return float(np.nextafter(self.events["t"].max(), np.inf))
        return float(value)

    # ------------------------------------------------------------------------------------------ events
    @functools.cached_property
    def events(self) -> pd.DataFrame:
        """Every kept event, time-sorted (``events.parquet``)."""
        return pd.read_parquet(self.folder / "events.parquet")

    def sequence_frame(self, split: str) -> pd.DataFrame:
        """The ``split`` (train, val, test) sequences' rows as stored (one row per event of a sequence:
        ``sequence``, ``position``, ``is_target``, ``t``, ``x``, ``y``, marks, ``event_index``)."""
        folder = self.folder / self.manifest["files"]["sequences"] / f"split={split}"
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{folder}: no sequences; run `stforecast ingest` first")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def sequences(self, split: str):
        """The ``split``'s sequences as a :class:`~stforecast.batch.SequenceSet` (what training batches)."""
        from stforecast.batch import SequenceSet

        return SequenceSet.from_frame(self.sequence_frame(split))

    def before(self, t: float) -> pd.DataFrame:
        return self.events[self.events["t"] < t]

    @property
    def train_events(self) -> pd.DataFrame:
        """Events before the validation start (what baselines are fitted on)."""
        return self.before(self.split_start("val"))

    @property
    def dequantised(self) -> str:
        """How the ingestion spread grid-snapped locations ("" when it did not): for every table that scores this
        catalog, since a continuous density on exact repeats is unbounded."""
        cell = self.manifest["config"].get("dequantise") or {}
        if not cell:
            return ""
        unit = "°" if self.units.geographic else " source units"
        return (f"locations dequantised at ingestion: moved uniformly within their source cell of "
                f"{cell['x']:g}{unit} x {cell['y']:g}{unit} (the source's stated precision), the same for every model")

    def completeness(self) -> float | None:
        """The magnitude above which the catalog counts as complete for the baselines: its ingestion threshold,
        else its smallest magnitude (None without magnitudes)."""
        if "magnitude" not in self.events:
            return None
        return self.manifest["config"]["filters"].get("magnitude_min") or float(self.events["magnitude"].min())

    def region_lonlat(self) -> Region:
        """In lon/lat: the ingestion bounding box, else the events' extent (+0.1°)."""
        bbox = self.manifest["config"]["filters"].get("bbox")
        if bbox:
            return Region.of(bbox)
        lonlat = self.units.to_original(self.events[["t", "x", "y"]])
        return Region.of((lonlat["lon"].min(), lonlat["lat"].min(), lonlat["lon"].max() + 0.1,
                          lonlat["lat"].max() + 0.1))

    @functools.cached_property
    def region(self) -> Region:
        """In model units: the catalog's region, the box every one of its events lies in — the extent of all its
        events, joined with the ingestion bounding box (projected) when one was set. A bounded DSTPP's support is
        this box plus a margin; maps and gridded forecasts cover it."""
        lo, hi = self.events[["x", "y"]].min().to_numpy(), self.events[["x", "y"]].max().to_numpy()
        region = Region.of((*lo, *hi))
        bbox = self.manifest["config"]["filters"].get("bbox")
        if bbox and self.units.crs_model:
            from stforecast.clean import project

            lon, lat = Region.of(bbox).outline(101)  # densified: its projection is curved
            px, py = project(lon, lat, self.units.crs_input, self.units.crs_model)
            region = region.joined((px.min(), py.min(), px.max(), py.max()))
        return region

    def view_box(self, pad: float = 0.05) -> Region:
        """In model units: :attr:`region` widened by ``pad`` of its size on each side (a bounded DSTPP's support
        with the default margin): what maps, grids and highest-density regions cover."""
        return self.region.padded(pad)

    def view_bounds(self, pad: float = 0.05) -> list[list[float]]:
        """[[south, west], [north, east]] of :meth:`view_box` in the map's frame (lon/lat, longitudes continuous
        across the antimeridian around the catalog's centre; pixels for a pixel frame): where a map opens."""
        xs, ys = self.view_box(pad).outline(41)
        if self.units.crs_model and self.units.geographic:
            from stforecast.clean import project

            lon, lat = project(xs, ys, self.units.crs_model, self.units.crs_input)
            lon = unwrap_longitudes(lon, self.lon_center)
        else:
            lon, lat = xs, ys
        return [[float(lat.min()), float(lon.min())], [float(lat.max()), float(lon.max())]]

    @property
    def lon_center(self) -> float | None:
        """The longitude a geographic catalog's maps are centred on (its projection centre), None otherwise."""
        center = self.schema.get("projection_center_lonlat")
        return float(center[0]) if center else None

    def extent(self, pad: float = 0.05) -> Region:
        """In model units: the training events' extent widened by ``pad`` of its size."""
        train = self.train_events if self.continuous else self.events
        lo, hi = train[["x", "y"]].min().to_numpy(), train[["x", "y"]].max().to_numpy()
        return Region.of((*lo, *hi)).padded(pad)

    def __repr__(self) -> str:
        return f"IngestedCatalog({self.name!r}, {self.folder}, {len(self.events):,} events)" if \
            "events" in self.__dict__ else f"IngestedCatalog({self.name!r}, {self.folder})"


def as_catalog(catalog) -> IngestedCatalog:
    """An IngestedCatalog from itself, a folder or a name."""
    return catalog if isinstance(catalog, IngestedCatalog) else IngestedCatalog.open(catalog)


def unwrap_longitudes(lon, center: float | None):
    """Longitudes (array) shifted by whole turns into [center − 180, center + 180): a catalog across the antimeridian
    keeps continuous longitudes (179 and 181, not 179 and −179), so its polygons and views never wrap the globe."""
    lon = np.asarray(lon, dtype=float)
    if center is None:
        return lon
    return center + (lon - center + 180.0) % 360.0 - 180.0

