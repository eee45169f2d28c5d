"""Ingestion configuration: plain dataclasses, loaded from ``data/catalogs.toml`` (in the one layout of every
settings file, :mod:`stforecast.settings_files`) and overridden from the command line.

Unknown keys are errors that name the file and the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stforecast.settings_files import deep_merge, read_settings_file, typed_fields

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FilterConfig:
    magnitude_min: float | None = None
    magnitude_max: float | None = None
    categories: list[str] | None = None  # keep only these
    exclude_categories: list[str] | None = None
    bbox: list[float] | None = None  # [min_x, min_y, max_x, max_y] in the input CRS (lon/lat for catalogs)
    polygon: str | None = None  # GeoJSON/GPKG file (relative to the data root or absolute) of the spatial window


@dataclass
class SplitConfig:
    """Chronological split. Dates (``"2007-01-01"``, UTC) for calendar catalogs, numbers in the catalog's own time
    unit (seconds for recordings). Events in [history_start, train_start) are history only: they may condition the
    first training targets but are never targets. ``mode = "given"`` takes splits from the source's files."""

    mode: str = "dates"
    history_start: str | float | None = None
    train_start: str | float | None = None
    val_start: str | float | None = None
    test_start: str | float | None = None
    end: str | float | None = None


@dataclass
class SequenceConfig:
    """How a split's events become sequences.

    ``windows``: time windows of ``window`` model-time units every ``stride`` units (stride < window overlaps, as in the
    DSTPP paper); ``chunks``: consecutive runs of ``length`` target events; ``given``: as the source defines them.
    Each sequence is prefixed with up to ``history_events`` earlier events (possibly from an earlier split) that
    condition the model but are not targets, so no target belongs to two splits.
    """

    mode: str = "windows"
    window: float = 30.0
    stride: float | None = None  # default: window (no overlap)
    length: int = 64
    history_events: int = 32
    min_targets: int = 2


@dataclass
class ProjectionConfig:
    """Modelling CRS: ``aeqd`` (azimuthal equidistant about ``center`` lon/lat, default the data's bounding-box
    centre), any pyproj CRS string (``EPSG:26916``), or ``none`` to keep input coordinates (pixels, or degrees for the
    DSTPP paper protocol)."""

    crs: str = "aeqd"
    center: list[float] | None = None
    unit: str = "km"


@dataclass
class SpikeConfig:
    speed_min: float | None = None  # px/s; None keeps spikes at rest
    max_gap_s: float = 1.0
    exclude_units: list[str] = field(default_factory=list)
    max_unit_fraction: float | None = 0.5  # clusters holding more than this share of spikes are multi-unit activity
    invalid_position: str = "y<=1"


@dataclass
class IngestConfig:
    name: str
    kind: str  # earthquakes | crime | spikes | table
    format: str = "table"  # a preset of stforecast.io.tables.PRESETS, "table", or "spikes"
    title: str = ""
    licence: str = ""
    notice: str = ""
    source_url: str = ""
    path: str | None = None  # file or URL (relative paths: under the data root; on the command line: cwd first)
    split_files: dict[str, str] = field(default_factory=dict)  # split name → file, for split.mode = "given"
    positions: str | None = None  # spikes: Trodes position file
    table: dict[str, Any] = field(default_factory=dict)  # TableSpec fields overriding the preset
    time_unit: str = "days"  # model time unit: seconds | minutes | hours | days
    tie_resolution_s: float = 0.001  # clock resolution: tied events are spread evenly inside one tick
    dedupe: bool = True
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    download: dict[str, Any] = field(default_factory=dict)  # {"service": "fdsn"|"socrata", ...query}
    # {"x": dx, "y": dy} in the source's coordinate units (degrees for longitude/latitude): each location is moved
    # uniformly within ± half its cell, the source's stated precision, so that coordinates snapped to a grid (block-
    # level crime geocoding) have no exact repeats on which a continuous density is unbounded. Seeded by each row's
    # content: the same rows give the same output, and exact duplicates stay duplicates. Empty: off.
    dequantise: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dequantise:
            if not isinstance(self.dequantise, dict):
                raise ValueError(f"catalog {self.name}: dequantise must be a table {{ x = dx, y = dy }} (the cell size "
                                 f"of each coordinate in the source's units), not {self.dequantise!r}")
            if self.format == "spikes":
                raise ValueError(f"catalog {self.name}: dequantise applies to tables of events; a recording's "
                                 "locations are the animal's interpolated position, not snapped to a grid")
            if set(self.dequantise) != {"x", "y"}:
                raise ValueError(f"catalog {self.name}: dequantise needs exactly the keys x and y (the cell size of each "
                                 f"coordinate in the source's units), not {sorted(self.dequantise)}")
            for axis, size in self.dequantise.items():
                if isinstance(size, bool) or not isinstance(size, (int, float)) or not 0 < size <= 1e6:
                    raise ValueError(f"catalog {self.name}: dequantise.{axis} must be a positive cell size in the "
                                     f"source's coordinate units, not {size!r}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not out["dequantise"]:
            del out["dequantise"]  # off: the same settings hash (and so no re-ingestion) as before the option existed
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)



_SAFE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")


def check_name(name: object, where: str = "catalog name", what: str = "catalog name") -> str:
    """A name that becomes a folder (a catalog's OUT/NAME, a batch job's, an MLflow experiment's artifact folder):
    allow letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` (so no ``..``, no path separators, no
    hidden folders). ``what`` says what the name is, in the message."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or len(name) > 200:
        raise ValueError(f"{where}: {name!r} is not a valid {what}: it becomes a folder name, so use only letters, "
                         "digits, '_', '-' and '.', not starting with '.' (e.g. my_{what.split()[0]})")
    return name


def safe_name(text: str, default: str = "catalog") -> str:
    """A valid name made from ``text`` (e.g. a file name): other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).lstrip(".")[:200]
    return name or default


def _build(cls, values: dict, where: str):
    if cls is IngestConfig:
        check_name(values.get("name"), f"{where}: catalog name")
    return cls(**typed_fields(cls, values, where))


@dataclass
class Settings:
    """Where things live. The data root defaults to ``../shared/data`` beside the repo when it exists;
    ``STFORECAST_DATA_ROOT`` or ``--data-root`` override it."""

    data_root: Path
    processed_dir: Path
    cache_dir: Path
    catalogs: dict[str, dict]
    config_file: Path

    def catalog(self, name: str, overrides: dict | None = None) -> IngestConfig:
        if name not in self.catalogs:
            raise KeyError(f"{self.config_file}: no catalog named {name!r}; known: {sorted(self.catalogs)}")
        values = deep_merge(self.catalogs[name], overrides or {})
        return _build(IngestConfig, {"name": name, **values}, f"{self.config_file} [catalogs.{name}]")

    def resolve(self, path: str) -> str:
        """A catalog path: URLs and absolute paths as they are, others under the data root."""
        if "://" in path or os.path.isabs(path):
            return path
        return str(self.data_root / path)

    def locate(self, path: str, flag: str = "--path") -> tuple[str, str]:
        """A path typed on the command line: ``(path, where)``. A relative path is looked for in the current
        directory first, then under the data root (``where`` says which: "current directory", "data root"; URLs
        and absolute paths: "as given"). Raises :class:`FileNotFoundError` naming both places when neither has it."""
        if "://" in path or os.path.isabs(os.path.expanduser(path)):
            return os.path.expanduser(path), "as given"
        here = Path.cwd() / path
        if here.exists():
            return str(here), "current directory"
        under_root = self.data_root / path
        if under_root.exists():
            return str(under_root), "data root"
        raise FileNotFoundError(f"{flag} {path}: no such file in the current directory ({here}) nor under the "
                                f"data root ({under_root}); give an absolute path, or set --data-root")


DEFAULT_CONFIG = REPO_ROOT / "data" / "catalogs.toml"


def load_settings(config_file: str | os.PathLike | None = None, data_root: str | None = None) -> Settings:
    config_file = Path(config_file or os.environ.get("STFORECAST_CONFIG", DEFAULT_CONFIG))
    doc = read_settings_file(config_file, ("settings", "catalogs"), home="settings")
    s = doc.get("settings", {})
    unknown = sorted(set(s) - {"data_root", "processed_dir", "cache_dir"})
    if unknown:
        raise ValueError(f"{config_file}: unknown setting(s) {unknown} in [settings]; allowed: "
                         "['cache_dir', 'data_root', 'processed_dir']")
    base = config_file.resolve().parent.parent  # paths in the file are relative to the repo root

    def rel(p: str) -> Path:
        p = Path(os.path.expanduser(p))
        return p if p.is_absolute() else (base / p).resolve()

    root = data_root or os.environ.get("STFORECAST_DATA_ROOT") or s.get("data_root", "../shared/data")
    return Settings(
        data_root=rel(root),
        processed_dir=rel(os.environ.get("STFORECAST_PROCESSED_DIR", s.get("processed_dir", "data/processed"))),
        cache_dir=rel(s.get("cache_dir", "data/cache")),
        catalogs=doc.get("catalogs", {}),
        config_file=config_file,
    )


def build_config(name: str, values: dict, where: str = "command line") -> IngestConfig:
    """An :class:`IngestConfig` from a plain dict (for catalogs that are not in the config file)."""
    return _build(IngestConfig, {"name": name, **values}, where)
