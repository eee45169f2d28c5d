"""Cleaning a validated event table: filters, de-duplication, ordering, tie-breaking and projection.

Every function returns the rows it removes as rejects (:data:`stforecast.catalog.REJECT_COLUMNS`), so the
pipeline can count them per reason and quarantine them. Filters act row by row and can run on each chunk in
parallel; ordering, de-duplication and tie-breaking need the whole table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stforecast.catalog import GEOGRAPHIC_CRS, MARK_COLUMNS, SECONDS_PER, CatalogError, empty_rejects, make_rejects
from stforecast.config import FilterConfig, ProjectionConfig



def apply_filters(events: pd.DataFrame, filters: FilterConfig, window=None,
                  time_range: tuple | None = None, line_offset: int | None = 1):
    """Configured row filters. ``window``: a shapely geometry in the events' CRS; ``time_range``: ``(start, end)``
    in the events' time type, end exclusive. Returns ``(kept, rejects)`` with rejects of kind ``filtered``."""
    keep = np.ones(len(events), dtype=bool)
    rejects = []

    def drop(mask, field, values, reason):
        nonlocal keep
        mask = np.asarray(mask, dtype=bool) & keep
        if mask.any():
            rejects.append(make_rejects(events, mask, field, values, reason, "filtered", line_offset))
            keep &= ~mask

    if time_range is not None:
        start, end = time_range
        t = events["time"]
        if start is not None:
            drop((t < start).to_numpy(), "time", t, f"before {start}")
        if end is not None:
            drop((t >= end).to_numpy(), "time", t, f"at or after {end}")
    if "magnitude" in events:
        m = events["magnitude"].to_numpy()
        if filters.magnitude_min is not None:
            drop(m < filters.magnitude_min, "magnitude", m, f"magnitude below {filters.magnitude_min}")
        if filters.magnitude_max is not None:
            drop(m > filters.magnitude_max, "magnitude", m, f"magnitude above {filters.magnitude_max}")
    if "category" in events:
        c = events["category"]
        if filters.categories:
            drop(~c.isin(filters.categories).to_numpy(), "category", c, "category not selected")
        if filters.exclude_categories:
            drop(c.isin(filters.exclude_categories).to_numpy(), "category", c, "category excluded")
    x, y = events["x"].to_numpy(), events["y"].to_numpy()
    if filters.bbox:
        x0, y0, x1, y1 = filters.bbox
        drop((x < x0) | (x > x1) | (y < y0) | (y > y1), "x,y", [f"{a}, {b}" for a, b in zip(x, y)],
             "outside the bounding box")
    if window is not None:
        import geopandas as gpd

        inside = gpd.GeoSeries(gpd.points_from_xy(x, y)).within(window).to_numpy()
        drop(~inside, "x,y", [f"{a}, {b}" for a, b in zip(x, y)], "outside the spatial window")
    kept = events[keep].reset_index(drop=True)
    return kept, pd.concat(rejects or [empty_rejects()], ignore_index=True)


def load_window(path: str, crs: str | None):
    """The union of a polygon file's geometries (GeoJSON, GPKG, shapefile), in ``crs``."""
    import geopandas as gpd

    try:
        frame = gpd.read_file(path)
    except Exception as e:  # pyogrio raises several types; the user needs the path either way
        raise CatalogError(f"{path}: cannot read the spatial window polygon ({e})") from e
    if frame.empty:
        raise CatalogError(f"{path}: the spatial window file holds no geometry")
    if crs and frame.crs is not None:
        frame = frame.to_crs(crs)
    return frame.geometry.union_all()


CONTENT_COLUMNS = ("event_id", "time", "x", "y", *MARK_COLUMNS, "sequence")


def add_keys(events: pd.DataFrame) -> pd.DataFrame:
    """Per-chunk (parallel) preparation for the global step: 64-bit hashes of each event's content (``_hash``)
    and of its id (``_idhash``), so de-duplication compares one integer column instead of every field."""
    cols = [c for c in CONTENT_COLUMNS if c in events]
    if "sequence" in events:
        cols.append("_file")  # sequence numbers are per file: the same window id in two files is two windows
    events["_hash"] = pd.util.hash_pandas_object(events[cols], index=False).to_numpy()
    events["_idhash"] = pd.util.hash_pandas_object(events["event_id"], index=False).to_numpy()
    return events


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """A well-mixed uint64 of each uint64 (SplitMix64's finaliser): a counter-free, order-free random stream."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dequantise(events: pd.DataFrame, cell: dict) -> pd.DataFrame:
    """Each location moved uniformly within ± half its ``cell`` ({"x": dx, "y": dy}, the events' coordinate units):
    the continuous locations a grid-snapped source rounded. The offsets are drawn from each row's content hash
    (``_hash``, :func:`add_keys`), so they do not depend on chunking or order and exact duplicates move together."""
    if not cell or events.empty:
        return events
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        a = _splitmix64(events["_hash"].to_numpy(np.uint64))
        b = _splitmix64(a)
    unit = 2.0 ** -64
    events["x"] = events["x"].to_numpy(float) + (a.astype(np.float64) * unit - 0.5) * float(cell["x"])
    events["y"] = events["y"].to_numpy(float) + (b.astype(np.float64) * unit - 0.5) * float(cell["y"])
    return events


def _repeats(events: pd.DataFrame, key: str, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose ``key`` hash repeats an earlier row's *and* whose ``cols`` are equal to it (so a hash collision
    can never drop an event). Returns (mask, index of the first row)."""
    h = events[key].to_numpy()
    dup = np.array(pd.Series(h).duplicated(keep="first"), dtype=bool)
    first = np.arange(len(h))
    if dup.any():
        first = pd.Series(first).groupby(h, sort=False).transform("first").to_numpy()
        rows, firsts = np.flatnonzero(dup), first[dup]
        same = np.ones(len(rows), dtype=bool)
        for c in cols:
            col = events[c]
            # tz-aware times as datetime64 (to_numpy() alone would build one Timestamp object per row)
            v = col.to_numpy(dtype="datetime64[ns]") if isinstance(col.dtype, pd.DatetimeTZDtype) else col.to_numpy()
            same &= (v[rows] == v[firsts]) | (pd.isna(v[rows]) & pd.isna(v[firsts]))
        dup[rows[~same]] = False
    return dup, first


def deduplicate(events: pd.DataFrame, line_offset: int | None = 1):
    """Drop exact repeats of an event (same id, time, place, marks and sequence), keeping the first in file order.
    The id is part of the key: two records the source gave different ids (two victims of one robbery) stay.
    Returns ``(kept, rejects)``; the reject's value names the row it repeats."""
    if "_hash" not in events:
        events = add_keys(events)
    dup, first = _repeats(events, "_hash", [c for c in (*CONTENT_COLUMNS, "_file") if c in events
                                            and (c != "_file" or "sequence" in events)])
    if not dup.any():
        return events, empty_rejects()
    first_row = events["_row"].to_numpy()[first]
    rej = make_rejects(events, dup, "*", [f"same as row {r}" for r in first_row], "exact duplicate event",
                       "duplicate", line_offset)
    return events[~dup].reset_index(drop=True), rej


def check_unique_ids(events: pd.DataFrame, line_offset: int | None = 1, id_col: str = "event_id") -> pd.DataFrame:
    """Two different events with one id: invalid (which one is right cannot be decided here)."""
    if "_idhash" not in events:
        events = add_keys(events)
    dup, first = _repeats(events, "_idhash", ["event_id"])
    if not dup.any():
        return empty_rejects()
    first_row = events["_row"].to_numpy()[first]
    return make_rejects(events, dup, id_col, [f"{i} (also row {r})" for i, r in zip(events["event_id"], first_row)],
                        "duplicate event id", "invalid", line_offset)


def check_sequence_order(events: pd.DataFrame, time_col: str, line_offset: int | None = 1) -> pd.DataFrame:
    """For sources that define sequences themselves: times must not decrease within a sequence, in file order
    (equal times are ties, broken later like any others)."""
    ordered = events.sort_values(["_file", "_row"], kind="stable")
    prev = ordered.groupby(["_file", "sequence"], sort=False)["time"].shift(1)
    bad = (ordered["time"] < prev).to_numpy()
    if not bad.any():
        return empty_rejects()
    return make_rejects(ordered, bad, time_col, [f"{t} (previous {p})" for t, p in zip(ordered["time"], prev)],
                        "time out of order: before the previous event of its sequence", "invalid", line_offset)


def to_model_time(time: pd.Series, origin, time_unit: str, source_unit: str = "seconds") -> np.ndarray:
    """Times → float64 in ``time_unit`` since ``origin``. Calendar times: ``origin`` is a UTC timestamp. Numeric
    times (lab clocks, window-relative times) are in ``source_unit`` and so is ``origin``."""
    scale = SECONDS_PER[time_unit]
    if pd.api.types.is_datetime64_any_dtype(time):
        delta = (time - pd.Timestamp(origin)).to_numpy().astype("timedelta64[ns]").astype("int64")
        return delta / (scale * 1e9)
    return (time.to_numpy(dtype="float64") - float(origin or 0.0)) * (SECONDS_PER[source_unit] / scale)


def break_ties(t: np.ndarray, resolution: float, barriers=(), after: float = np.inf) -> np.ndarray:
    """Spread events that share a time evenly inside one clock tick: the i-th of k tied events moves by
    ``i/k * tick`` (never past the next distinct time, nor past a ``barrier`` such as a split boundary), so
    inter-event times stay positive and the order is the input order. ``t`` must be sorted; ``resolution`` is in
    the same unit as ``t``. ``after``: the next time beyond ``t`` (when ``t`` is one time range of a longer
    sorted catalog), which caps the last group as the next distinct time caps the others."""
    t = np.asarray(t, dtype="float64")
    if len(t) < 2:
        return t.copy()
    new_group = np.r_[True, np.diff(t) > 0]
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.r_[starts, len(t)])
    if (sizes == 1).all():
        return t.copy()
    rank = np.arange(len(t)) - starts[group]
    next_time = np.r_[t[starts[1:]], after]
    b = np.sort(np.asarray([v for v in barriers if v is not None and np.isfinite(v)], dtype="float64"))
    if len(b):
        after = np.searchsorted(b, t[starts], side="right")  # first barrier strictly above the tied time
        next_time = np.minimum(next_time, np.r_[b, np.inf][after])
    tick = np.minimum(resolution, next_time - t[starts])  # a coarser clock than declared must not reorder events
    return t + tick[group] * rank / sizes[group]


#: a catalog whose events span more than this much longitude and reach this close to a pole is projected about
#: the pole (a polar azimuthal equidistant projection)
POLAR_SPAN_DEG, POLAR_LAT_DEG = 180.0, 80.0


def lonlat_centre(bounds: tuple[float, ...]) -> tuple[float, float]:
    """The centre of the azimuthal projection for events with extent ``bounds`` = (min lon, min lat, max lon,
    max lat[, min lon', max lon']) where lon' = lon mod 360: the middle of the shorter of the two longitude
    ranges (so a Fiji or Aleutian catalog, lon 175..180 and -180..-175, is centred on 180°, not on 0°), and the
    middle latitude. Events around a pole (spanning over 180° of longitude and reaching within 10° of the pole)
    are projected about the pole.

    Limits: the shorter of the two ranges is the smallest arc holding the events when the largest gap between
    them contains 0° or 180° (any regional catalog); a catalog spanning over 180° of longitude away from the
    poles (a band around the globe) has no good azimuthal centre: distances far from it are distorted."""
    lon_lo, lat_lo, lon_hi, lat_hi = bounds[:4]
    span, lon0 = lon_hi - lon_lo, (lon_lo + lon_hi) / 2
    if len(bounds) >= 6 and bounds[5] - bounds[4] < span:  # shorter across the antimeridian
        span, lon0 = bounds[5] - bounds[4], ((bounds[4] + bounds[5]) / 2 + 180.0) % 360.0 - 180.0
    if span > POLAR_SPAN_DEG and max(lat_hi, -lat_lo) >= POLAR_LAT_DEG:
        return 0.0, 90.0 if lat_hi >= -lat_lo else -90.0
    return lon0, (lat_lo + lat_hi) / 2


def projection_for(cfg: ProjectionConfig, bounds: tuple[float, ...] | None
                   ) -> tuple[str | None, list[float] | None]:
    """The model CRS as a PROJ string (or None when coordinates are kept) and the centre used.
    ``bounds``: (min lon, min lat, max lon, max lat[, min lon mod 360, max lon mod 360]) of the data, for the
    default ``aeqd`` centre (:func:`lonlat_centre`)."""
    kind = cfg.crs.lower()
    if kind == "none":
        return None, None
    if kind == "aeqd":
        if cfg.center:
            lon0, lat0 = cfg.center
        elif bounds is not None:
            lon0, lat0 = lonlat_centre(bounds)
        else:
            return None, None
        return f"+proj=aeqd +lat_0={lat0:.6f} +lon_0={lon0:.6f} +datum=WGS84 +units={cfg.unit} +no_defs", [lon0, lat0]
    return cfg.crs, None


def project(x: np.ndarray, y: np.ndarray, crs_from: str | None, crs_to: str | None) -> tuple[np.ndarray, np.ndarray]:
    if crs_to is None or crs_from is None:
        return np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64")
    from pyproj import Transformer

    tr = Transformer.from_crs(crs_from, crs_to, always_xy=True)
    return tr.transform(np.asarray(x, dtype="float64"), np.asarray(y, dtype="float64"))


def order_events(events: pd.DataFrame, *, time_unit: str, tie_resolution_s: float, dedupe: bool = True,
                 given_sequences: bool = False, time_col: str = "time", id_col: str | None = "event_id",
                 line_offset: int | None = 1, barriers=()):
    """The global cleaning step: de-duplicate, check ids (and sequence order), sort, break ties.

    ``events`` carries ``t`` (float64 model time, see :func:`to_model_time`); ties in ``t`` are broken in place,
    never across a value in ``barriers`` (split boundaries, in model time). Calendar catalogs are sorted by time;
    sources with their own sequences by (file, sequence, time), with ties broken inside each sequence.
    ``id_col``: the source's id column, whose values must be unique; None when ids are generated.
    Returns ``(events, rejects)``.
    """
    rejects = []
    if dedupe:
        events, rej = deduplicate(events, line_offset)
        rejects.append(rej)
    if given_sequences:
        rejects.append(check_sequence_order(events, time_col, line_offset))
    if id_col:
        rejects.append(check_unique_ids(events, line_offset, id_col))
    rejects = pd.concat([r for r in rejects if len(r)] or [empty_rejects()], ignore_index=True)
    invalid = rejects[rejects["kind"] == "invalid"]
    if len(invalid):  # quarantined rows leave the table
        bad = pd.MultiIndex.from_arrays([invalid["file"], invalid["row"]])
        events = events[~pd.MultiIndex.from_arrays([events["_file"], events["_row"]]).isin(bad)]
    file_code = pd.Categorical(events["_file"]).codes  # categories are sorted: codes order like names
    t = events["t"].to_numpy()
    if given_sequences:
        order = np.lexsort((events["_row"].to_numpy(), t, events["sequence"].to_numpy(), file_code))
    else:
        order = np.lexsort((events["_row"].to_numpy(), file_code, t))
    events = events.take(order).reset_index(drop=True)
    t = events["t"].to_numpy()
    res = tie_resolution_s / SECONDS_PER[time_unit]
    if given_sequences and len(t):
        # shift each sequence far from the others so one pass breaks ties inside all of them
        seq_key = events.groupby(["_file", "sequence"], sort=False).ngroup().to_numpy()
        span = (np.max(t) - np.min(t) + 1.0) * 2
        t = break_ties(t + seq_key * span, res) - seq_key * span
    else:
        t = break_ties(t, res, barriers)
    events["t"] = t
    return events.drop(columns=["_hash", "_idhash"], errors="ignore"), rejects


def geographic(crs: str | None) -> bool:
    return crs == GEOGRAPHIC_CRS
