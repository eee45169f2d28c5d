"""Readers for tetrode spike recordings: MatClust ``spikes.mat`` plus a Trodes ``.videoPositionTracking`` track.

A spike becomes an event located at the animal's position at the spike time (place-cell activity), with the
unit (``t<tetrode>c<cluster>``) as its mark. Times are float64 seconds on the recording clock; coordinates are
camera pixels (no metric scale is known for these files).

Three public functions:

* :func:`read_trodes_positions` - the raw position track, one row per camera frame.
* :func:`read_matclust_spikes` - every spike of every non-empty cluster, sorted by (time, unit).
* :func:`read_spikes` - both combined: spikes at their interpolated position, filtered, with one reject row per
  dropped spike (see :data:`stforecast.catalog.REJECT_COLUMNS`).

Missing files raise :class:`FileNotFoundError`; malformed files raise :class:`stforecast.catalog.CatalogError`
naming the file and where in it the problem is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.io
from scipy.ndimage import gaussian_filter1d

from stforecast.catalog import CatalogError, Problem, empty_rejects, make_rejects

__all__ = ["read_trodes_positions", "read_matclust_spikes", "read_spikes"]

# --------------------------------------------------------------------------------------------------------------
# Trodes position tracking
# --------------------------------------------------------------------------------------------------------------

START_MARKER = b"<Start settings>"
END_MARKER = b"<End settings>"
DEFAULT_CLOCK_RATE = 30000.0  # Hz; Trodes' usual clock when the header does not say
# Record layout used when the header has no "Fields:" line (it is the layout of the shared data).
DEFAULT_FIELDS = (("time", "uint32"), ("xloc", "uint16"), ("yloc", "uint16"), ("xloc2", "uint16"), ("yloc2", "uint16"))
_TRODES_TYPES = {
    "uint8": "u1", "int8": "i1", "uint16": "u2", "int16": "i2", "uint32": "u4", "int32": "i4",
    "uint64": "u8", "int64": "i8", "single": "f4", "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FIELD_PATTERN = re.compile(rb"<\s*(\w+)\s+(\w+)\s*>")


def _header_value(text: str) -> object:
    """'199' -> 199, '0.5' -> 0.5, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _parse_trodes_header(name: str, header: bytes) -> dict:
    """Settings from the lines between the start and end markers.

    Keys are lower-case with underscores ("camera resolution" -> ``camera_resolution``); ``clockrate`` becomes
    ``clock_rate`` (float, Hz), ``camera resolution`` a ``(width, height)`` tuple, ``pixel scale`` a float in pix/cm
    (0 in the shared data: no metric scale), ``Fields`` a list of ``(name, type)`` pairs.
    """
    settings: dict = {}
    for raw_line in header.splitlines():
        line = raw_line.strip()
        if not line or line == START_MARKER:
            continue
        key_bytes, _, value_bytes = line.partition(b":")
        key = re.sub(r"[\s_]+", "_", key_bytes.decode("latin-1").strip().lower())
        if key == "fields":
            settings["fields"] = [(f.decode(), t.decode().lower()) for f, t in _FIELD_PATTERN.findall(value_bytes)]
            continue
        value = value_bytes.decode("latin-1").strip()
        if key in ("clockrate", "clock_rate"):
            try:
                settings["clock_rate"] = float(value)
            except ValueError:
                raise CatalogError(f"{name}: header setting 'clockrate' is not a number: {value!r}") from None
        elif key == "camera_resolution" and re.fullmatch(r"\d+\s*x\s*\d+", value):
            width, height = (int(v) for v in value.lower().split("x"))
            settings[key] = (width, height)
        elif key == "pixel_scale":
            number = re.match(r"[-+0-9.eE]+", value)
            settings[key] = float(number.group()) if number else value
        else:
            settings[key] = _header_value(value)
    return settings


def _record_dtype(name: str, fields: Sequence[tuple[str, str]]) -> np.dtype:
    unknown = [f"{f} {t}" for f, t in fields if t not in _TRODES_TYPES]
    if unknown:
        raise CatalogError(f"{name}: header 'Fields' has type(s) this reader does not know: {unknown}")
    dtype = np.dtype([(f, "<" + _TRODES_TYPES[t]) for f, t in fields])
    missing = [f for f in ("time", "xloc", "yloc") if f not in dtype.names]
    if missing:
        raise CatalogError(f"{name}: header 'Fields' lacks {missing}; it declares {list(dtype.names)}")
    return dtype


def read_trodes_positions(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read a Trodes ``.videoPositionTracking`` file.

    Layout: a text header between ``<Start settings>`` and ``<End settings>`` lines, then fixed-size little-endian
    records, by default 12 bytes ``<time uint32><xloc uint16><yloc uint16><xloc2 uint16><yloc2 uint16>`` (the
    header's ``Fields:`` line, when present, defines the layout).

    Returns ``(positions, settings)``:

    * ``positions``: one row per record (n_records rows, file order, nothing removed: tracking-loss frames are
      kept), columns ``time`` (float64 s = ticks / clock rate), ``x``, ``y`` (float64 camera pixels of the first LED).
    * ``settings``: the header as a dict (``clock_rate`` in Hz, default 30000; ``camera_resolution``,
      ``pixel_scale``, ``fields``, ...) plus ``data_offset`` (bytes before the first record), ``record_size``
      (bytes) and ``n_records``.

    Raises :class:`CatalogError` for a missing end marker, a cut-off last record (naming record index, byte offset
    and the field it stops in) and timestamps that go backwards (naming record and field ``time``). Repeated
    timestamps are legal here (the linear-track file holds one duplicated frame); :func:`read_spikes` collapses them.
    """
    name = os.fspath(path)
    raw = Path(path).read_bytes()
    if not raw.lstrip().startswith(START_MARKER):
        raise CatalogError(f"{name}: not a Trodes position file: it does not start with a '<Start settings>' line")
    end = raw.find(END_MARKER)
    if end < 0:
        raise CatalogError(f"{name}: no '<End settings>' line: the settings header is not terminated")
    settings = _parse_trodes_header(name, raw[:end])
    data_offset = end + len(END_MARKER)
    # Exactly one line terminator separates header and data; the first record may itself start with 0x0a/0x0d.
    if raw[data_offset:data_offset + 2] == b"\r\n":
        data_offset += 2
    elif raw[data_offset:data_offset + 1] == b"\n":
        data_offset += 1

    clock_rate = settings.setdefault("clock_rate", DEFAULT_CLOCK_RATE)
    if not clock_rate > 0:
        raise CatalogError(f"{name}: header clock rate must be positive, got {clock_rate}")
    dtype = _record_dtype(name, settings.setdefault("fields", list(DEFAULT_FIELDS)))

    n_bytes = len(raw) - data_offset
    n_records, leftover = divmod(n_bytes, dtype.itemsize)
    if leftover:
        # The field in which the cut-off record ends: the first one whose end lies beyond the bytes present.
        cut_field = next(f for f in dtype.names if dtype.fields[f][1] + dtype.fields[f][0].itemsize > leftover)
        raise CatalogError(
            f"{name}: truncated position data: record {n_records} (0-based) at byte "
            f"{data_offset + n_records * dtype.itemsize} is cut off in field '{cut_field}' "
            f"({leftover} of {dtype.itemsize} bytes present; {n_records} complete records)"
        )
    records = np.frombuffer(raw, dtype=dtype, count=n_records, offset=data_offset)

    ticks = records["time"].astype(np.float64)
    backwards = np.flatnonzero(np.diff(ticks) < 0) + 1
    if len(backwards):
        problems = [
            Problem(file=name, row=None, field="time", value=int(ticks[i]),
                    reason=f"record {i} (0-based) at byte {data_offset + i * dtype.itemsize} goes back in time from "
                           f"the previous record's {int(ticks[i - 1])} ticks")
            for i in backwards[:20]
        ]
        first = backwards[0]
        raise CatalogError(
            f"{name}: position timestamps go backwards at {len(backwards)} record(s), first at record {first} "
            f"(0-based), field 'time':", problems, total=len(backwards))

    positions = pd.DataFrame({
        "time": ticks / clock_rate,
        "x": records["xloc"].astype(np.float64),
        "y": records["yloc"].astype(np.float64),
    })
    settings.update(data_offset=data_offset, record_size=dtype.itemsize, n_records=int(n_records))
    return positions, settings


# --------------------------------------------------------------------------------------------------------------
# MatClust spikes
# --------------------------------------------------------------------------------------------------------------

def _is_cell(node: object) -> bool:
    return isinstance(node, np.ndarray) and node.dtype == object


def _is_struct(node: object) -> bool:
    return isinstance(node, (np.ndarray, np.void)) and node.dtype.names is not None


def _is_empty(node: object) -> bool:
    """MATLAB's [] (loadmat: a 0-size double array) or an empty cell."""
    return isinstance(node, np.ndarray) and node.size == 0


def _describe(node: object) -> str:
    """'a 1x13 cell array', 'a 1x1 struct with fields time, meanrate', 'a 3x3 float64 array' ..."""
    if not isinstance(node, (np.ndarray, np.void)):
        return f"a {type(node).__name__}"
    shape = "x".join(str(n) for n in np.shape(node)) or "scalar"
    if _is_struct(node):
        return f"a {shape} struct with fields {', '.join(node.dtype.names)}"
    if _is_cell(node):
        return f"a {shape} cell array"
    return f"a {shape} {node.dtype} array"


def _cells(node: np.ndarray) -> list:
    """Elements in MATLAB's linear (column-major) order."""
    return list(node.ravel(order="F"))


def _tetrode_nodes(node: object, name: str) -> list:
    """Peel 1x1 cell wrappers (MatClust/Frank-lab day and epoch levels) down to the cell array of tetrodes.

    The first cell array with more than one element is taken as the tetrode list. A file whose only tetrode is a
    cell of clusters cannot be told apart from that by shape alone; it would be read as one tetrode per cluster.
    """
    if _is_cell(node) and node.size == 1:
        return _tetrode_nodes(node.flat[0], name)
    if _is_cell(node) and node.size > 1:
        return _cells(node)
    if _is_struct(node):  # a single tetrode holding a single cluster, fully unwrapped
        return [node]
    raise CatalogError(f"{name}: expected a cell array of tetrodes (each a cell array of cluster structs), "
                       f"found {_describe(node)}")


def _cluster_nodes(node: object, name: str, tetrode: int) -> list:
    """The clusters of one tetrode, in stored order, ``None`` for an empty slot (it keeps its index).

    Recursive because the nesting varies: a tetrode may be ``[]`` (no clusters), a cell of clusters, a 1x1 cell
    around either, or (for single-cluster tetrodes) the cluster struct itself one level shallower.
    """
    if _is_struct(node):
        return [node] if node.size == 1 else [node.flat[i] for i in range(node.size)]
    if _is_empty(node):
        return []
    if _is_cell(node):
        if node.size == 1:
            return _cluster_nodes(node.flat[0], name, tetrode)
        return [_cluster_struct(element, name, tetrode, index) for index, element in enumerate(_cells(node))]
    raise CatalogError(f"{name}: tetrode {tetrode}: expected a cell array of cluster structs, found {_describe(node)}")


def _cluster_struct(node: object, name: str, tetrode: int, cluster: int):
    """Unwrap 1x1 cells around one cluster: a 1x1 struct, or ``None`` when the slot is empty."""
    if _is_cell(node) and node.size == 1:
        return _cluster_struct(node.flat[0], name, tetrode, cluster)
    if _is_empty(node):
        return None
    if _is_struct(node) and node.size == 1:
        return node
    raise CatalogError(f"{name}: tetrode {tetrode}, cluster {cluster}: expected a cluster struct, "
                       f"found {_describe(node)}")


def _cluster_times(struct, name: str, tetrode: int, cluster: int) -> np.ndarray:
    """The ``time`` field of one cluster struct as a float64 vector (seconds)."""
    if "time" not in struct.dtype.names:
        raise CatalogError(f"{name}: tetrode {tetrode}, cluster {cluster}: cluster struct has no 'time' field, "
                           f"only {list(struct.dtype.names)}")
    times = struct["time"]
    while _is_cell(times) and times.size == 1:  # loadmat wraps struct fields in 1x1 object arrays
        times = times.flat[0]
    times = np.asarray(times)
    if times.size == 0:
        return np.empty(0)
    if times.dtype.kind not in "fiu":
        raise CatalogError(f"{name}: tetrode {tetrode}, cluster {cluster}: 'time' is {_describe(times)}, "
                           "not a numeric vector")
    times = times.astype(np.float64).ravel(order="F")
    bad = ~np.isfinite(times)
    if bad.any():
        raise CatalogError(f"{name}: tetrode {tetrode}, cluster {cluster}: {int(bad.sum())} spike time(s) are not "
                           f"finite, first at index {int(np.flatnonzero(bad)[0])}")
    return times


def _unit_name(tetrode: int, cluster: int) -> str:
    return f"t{tetrode:02d}c{cluster:02d}"


def _unit_codes(tetrodes: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer unit code per spike (n,), the unit names by code (n_units,), and the spikes per unit (n_units,).

    Per-unit work then runs on small integers; unit strings are built once per unit, never once per spike.
    """
    keys, codes, counts = np.unique(tetrodes * 1_000_000 + clusters, return_inverse=True, return_counts=True)
    names = [_unit_name(int(k // 1_000_000), int(k % 1_000_000)) for k in keys]
    return codes, names, counts


def iter_matclust_clusters(path: str | os.PathLike):
    """The non-empty clusters of a MatClust ``spikes.mat`` export, one at a time: ``(tetrode, cluster, times)``
    in (tetrode, cluster) order, ``times`` (float64 s) as stored. The file is read whole (MATLAB v5 through
    :func:`scipy.io.loadmat`: 8 bytes a spike); nothing per spike is built for all units at once."""
    name = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name}: no such file")
    try:
        content = scipy.io.loadmat(name)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, ... for corrupt files
        raise CatalogError(f"{name}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from exc
    variables = [k for k in content if not k.startswith("__")]
    if "spikes" in variables:
        root = content["spikes"]
    elif len(variables) == 1:
        root = content[variables[0]]
    else:
        raise CatalogError(f"{name}: expected a variable 'spikes' (or a single variable); found {variables or 'none'}")

    found = False
    for tetrode, tetrode_node in enumerate(_tetrode_nodes(root, name)):
        for cluster, struct in enumerate(_cluster_nodes(tetrode_node, name, tetrode)):
            if struct is None:
                continue
            times = _cluster_times(struct, name, tetrode, cluster)
            if len(times) == 0:
                continue
            found = True
            yield tetrode, cluster, times
    if not found:
        raise CatalogError(f"{name}: no spikes: every cluster is empty")


def read_matclust_spikes(path: str | os.PathLike) -> pd.DataFrame:
    """Read a MatClust ``spikes.mat`` export (MATLAB v5, via :func:`scipy.io.loadmat`).

    Expected content: a variable (``spikes``, or the file's only variable) holding a cell array of tetrodes, each a
    cell array of clusters, each a struct with field ``time`` (spike times, s). Surrounding 1x1 cells (day, epoch)
    and the varying 1x1 wrapping of tetrodes and clusters are unwrapped recursively; a single-cluster tetrode stored
    one level shallower is kept. Empty clusters are skipped but keep their index.

    Returns one row per spike (n_spikes rows), columns ``time`` (float64 s), ``unit`` (str
    ``t{tetrode:02d}c{cluster:02d}``, 0-based indices as stored, e.g. ``t09c14``), ``tetrode``, ``cluster`` (int64);
    sorted by ``(time, unit)`` (index 0..n-1), which breaks the ties between units that share a timestamp.
    """
    time_parts, tetrode_parts, cluster_parts = [], [], []
    for tetrode, cluster, times in iter_matclust_clusters(path):
        time_parts.append(times)
        tetrode_parts.append(np.full(len(times), tetrode, dtype=np.int64))
        cluster_parts.append(np.full(len(times), cluster, dtype=np.int64))
    times = np.concatenate(time_parts)
    tetrodes = np.concatenate(tetrode_parts)
    clusters = np.concatenate(cluster_parts)
    # Numeric (tetrode, cluster) order equals the order of the zero-padded unit names (for indices < 100).
    order = np.lexsort((clusters, tetrodes, times))
    times, tetrodes, clusters = times[order], tetrodes[order], clusters[order]

    codes, names, _ = _unit_codes(tetrodes, clusters)
    return pd.DataFrame({"time": times, "unit": np.array(names)[codes], "tetrode": tetrodes, "cluster": clusters})


# --------------------------------------------------------------------------------------------------------------
# Spikes at positions
# --------------------------------------------------------------------------------------------------------------

# Gaussian smoothing (s) of the position track before differentiating it. Camera positions are whole pixels at
# ~60 Hz, so a single 1-px step reads as ~60 px/s unsmoothed; with sigma 0.1 s it peaks at 1/(sqrt(2 pi) 0.1)
# ~ 4 px/s and a one-frame flicker at < 1 px/s, below the usual 5 px/s rest threshold, while running speeds
# (tens to hundreds of px/s on the w-maze) keep their size.
SPEED_SMOOTHING_S = 0.1

_CONDITION = re.compile(r"^\s*([xy])\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_COMPARE = {"<=": np.less_equal, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal,
            "<": np.less, ">": np.greater}


def _invalid_position_mask(rule: str | None, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Evaluate a rule such as ``"y<=1"`` or ``"x<5 | y>470"`` (conditions on x/y joined by ``|`` or ``or``).

    A tiny parser rather than ``eval``: the rule may come from a config file. ``None`` or ``""`` adds nothing.
    """
    mask = np.zeros(len(x), dtype=bool)
    if rule is None or not rule.strip() or rule.strip().lower() == "none":
        return mask
    for condition in re.split(r"\|\|?|\bor\b", rule):
        match = _CONDITION.match(condition)
        if not match:
            raise ValueError(f"invalid_position: cannot parse {condition.strip()!r} in {rule!r}; "
                             "expected conditions like 'y<=1' joined by '|'")
        column, op, number = match.groups()
        mask |= _COMPARE[op](x if column == "x" else y, float(number))
    return mask


def _smoothed_speed(t: np.ndarray, x: np.ndarray, y: np.ndarray, sigma_s: float, max_gap_s: float) -> np.ndarray:
    """Speed (px/s) at each sample of a track sampled at times ``t`` (s, strictly increasing), shape (n,).

    Positions are smoothed with a Gaussian whose width is ``sigma_s`` converted to samples at the median frame
    interval (frames are near-regular; a dropped frame only widens the kernel locally), then differentiated against
    the true sample times. Each stretch between gaps longer than ``max_gap_s`` is smoothed on its own, so that the
    positions before a tracking gap do not leak into the speed after it.
    """
    speed = np.zeros(len(t))
    sigma_samples = sigma_s / np.median(np.diff(t))
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(t) > max_gap_s) + 1, [len(t)]))
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # a loop over tracking gaps (few), not samples
        if hi - lo < 2:
            continue  # a lone sample between gaps: no motion can be measured
        seg_x, seg_y = x[lo:hi], y[lo:hi]
        if sigma_samples > 0:
            seg_x = gaussian_filter1d(seg_x, sigma_samples, mode="nearest")
            seg_y = gaussian_filter1d(seg_y, sigma_samples, mode="nearest")
        speed[lo:hi] = np.hypot(np.gradient(seg_x, t[lo:hi]), np.gradient(seg_y, t[lo:hi]))
    speed[speed < 1e-9] = 0.0  # round-off of the filter on a still track, not motion
    return speed


def read_spikes(
    spikes_path: str | os.PathLike,
    positions_path: str | os.PathLike,
    *,
    speed_min: float | None = None,
    max_gap_s: float = 1.0,
    exclude_units: Sequence[str] = (),
    max_unit_fraction: float | None = 0.5,
    invalid_position: str = "y<=1",
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Spikes located at the animal's (linearly interpolated) position at the spike time.

    Parameters
    ----------
    speed_min:
        Drop spikes where the animal moves slower than this (px/s); ``None`` keeps all. Rest periods otherwise
        collapse the spatial distribution onto the rest spots.
    max_gap_s:
        Drop spikes that fall between two valid position samples more than this many seconds apart.
    exclude_units:
        Unit names (``t09c14``) to drop. An unknown name raises :class:`ValueError` (it is most likely a typo).
    max_unit_fraction:
        Drop any unit holding more than this fraction of all spikes read: such a cluster is multi-unit activity,
        not one neuron. The default 0.5 drops the w-maze cluster ``t09c14`` (89% of spikes). ``None`` keeps all.
    invalid_position:
        Rule marking position samples as tracking loss, besides ``x == 0 and y == 0`` which always is; the default
        ``"y<=1"`` matches the linear-track data. Invalid samples are removed before interpolation.

    Returns ``(events, rejects, info)``:

    * ``events`` (n_kept rows, in the reader's (time, unit) order): ``time`` (float64 s), ``x``, ``y`` (float64 px),
      ``unit`` (str), ``speed`` (float64 px/s, from the position track smoothed by :data:`SPEED_SMOOTHING_S`),
      ``_file`` (spikes file name), ``_row`` (int64, 1-based index in the sorted spike list).
    * ``rejects``: :data:`~stforecast.catalog.REJECT_COLUMNS`, kind ``filtered``, one row per dropped spike, sorted
      by row. Each spike is charged to the first filter that drops it, in this order: excluded unit, multi-unit
      cluster (field ``unit``); outside the tracked range, in a tracking gap (field ``time``); too slow (``speed``).
    * ``info``: counts - ``spikes_read``, ``spikes_kept``, ``units`` (all units read), ``units_kept``,
      ``position_samples`` (records in the file), ``position_samples_invalid``, ``position_duplicate_times``
      (repeated timestamps collapsed to their first sample), ``position_time_range`` (s, of the valid samples),
      ``clock_rate`` (Hz), ``dropped`` (reason -> count) and one ``dropped_<filter>`` count per filter.
    """
    reading = prepare_spikes(spikes_path, positions_path, speed_min=speed_min, max_gap_s=max_gap_s,
                             exclude_units=exclude_units, max_unit_fraction=max_unit_fraction,
                             invalid_position=invalid_position)
    time_parts, code_parts = [], []
    for code, (tetrode, cluster, times) in enumerate(reading.clusters):
        time_parts.append(times)
        code_parts.append(np.full(len(times), code, dtype=np.int64))
    times, codes = np.concatenate(time_parts), np.concatenate(code_parts)
    order = np.lexsort((codes, times))  # unit codes follow (tetrode, cluster): the reader's (time, unit) order
    times, codes = times[order], codes[order]
    x, y, speed, drop = reading.classify(times, codes)
    rows = np.arange(1, len(times) + 1, dtype=np.int64)
    events, rejects = reading.rows_to_events(times, codes, x, y, speed, drop, rows)
    return events, rejects, reading.info(codes, drop)


DROPPED_BY = ("excluded_unit", "multi_unit", "outside_position_range", "in_position_gap", "slow")  # drop codes 1..5


@dataclass
class SpikeReading:
    """One recording prepared for the per-spike work: its clusters' spike times (in unit order), the unit table,
    the valid position track and the filter settings. :meth:`classify` and :meth:`rows_to_events` work on any
    subset of spikes, so a recording can be processed cluster by cluster (the partition-wise ingestion) or whole
    (:func:`read_spikes`) with the same result."""

    file_name: str
    clusters: list  # [(tetrode, cluster, times (n_u,) float64 s)], unit code = index
    units: list  # unit names by code
    unit_counts: np.ndarray  # (n_units,) spikes read per unit
    pos_t: np.ndarray
    pos_x: np.ndarray
    pos_y: np.ndarray
    pos_speed: np.ndarray
    max_gap_s: float
    speed_min: float | None
    excluded: np.ndarray  # (n_units,) bool
    multi_unit: dict  # unit code -> reason
    positions: dict  # position-track counts for the info

    @property
    def n_spikes(self) -> int:
        return int(self.unit_counts.sum())

    def reasons(self) -> dict:
        t_first, t_last = self.positions["position_time_range"]
        return {3: ("time", f"outside the tracked position range [{t_first:.2f}, {t_last:.2f}] s"),
                4: ("time", f"in a position-tracking gap longer than {self.max_gap_s} s"),
                5: ("speed", f"speed below {self.speed_min:g} px/s" if self.speed_min is not None else "")}

    def classify(self, times: np.ndarray, codes: np.ndarray):
        """Per spike: position ``x, y`` and ``speed`` (interpolated), and the first filter that drops it (0: kept;
        1..5: :data:`DROPPED_BY`)."""
        pos_t = self.pos_t
        x = np.interp(times, pos_t, self.pos_x)
        y = np.interp(times, pos_t, self.pos_y)
        speed = np.interp(times, pos_t, self.pos_speed)
        outside = (times < pos_t[0]) | (times > pos_t[-1])
        # Bracketing samples pos_t[before] <= t <= pos_t[after]; a spike on a sample has a zero-length bracket.
        before = np.clip(np.searchsorted(pos_t, times, side="right") - 1, 0, len(pos_t) - 1)
        after = np.clip(np.searchsorted(pos_t, times, side="left"), 0, len(pos_t) - 1)
        in_gap = ~outside & (pos_t[after] - pos_t[before] > self.max_gap_s)
        multi = np.zeros(len(self.units), dtype=bool)
        multi[list(self.multi_unit)] = True
        drop = np.zeros(len(times), dtype=np.int8)
        # in precedence order: each spike is charged to the first filter that drops it
        for code, mask in ((1, self.excluded[codes]), (2, multi[codes]), (3, outside), (4, in_gap),
                           (5, speed < self.speed_min if self.speed_min is not None else None)):
            if mask is not None:
                drop[(drop == 0) & mask] = code
        return x, y, speed, drop

    def rows_to_events(self, times, codes, x, y, speed, drop, rows):
        """Spikes in the reader's (time, unit) order with their 1-based ``rows`` → ``(events, rejects)`` as
        :func:`read_spikes` returns them (rejects sorted by row)."""
        units = np.array(self.units, dtype=object)
        lineage = pd.DataFrame({"_file": np.full(len(rows), self.file_name, dtype=object), "_row": rows})
        parts = []
        reasons = self.reasons()
        for code in (1, 2, 3, 4, 5):
            mask = drop == code
            if not mask.any():
                continue
            if code == 1:
                parts.append(make_rejects(lineage, mask, "unit", units[codes], "excluded unit", kind="filtered",
                                          line_offset=None))
            elif code == 2:
                for unit in sorted(self.multi_unit):  # a loop over units (tens), not spikes
                    m = mask & (codes == unit)
                    if m.any():
                        parts.append(make_rejects(lineage, m, "unit", units[codes], self.multi_unit[unit],
                                                  kind="filtered", line_offset=None))
            else:
                field, reason = reasons[code]
                parts.append(make_rejects(lineage, mask, field, speed if code == 5 else times, reason,
                                          kind="filtered", line_offset=None))
        keep = drop == 0
        events = pd.DataFrame({"time": times[keep], "x": x[keep], "y": y[keep], "unit": units[codes[keep]],
                               "speed": speed[keep], "_file": lineage["_file"].to_numpy()[keep],
                               "_row": rows[keep]})
        rejects = (pd.concat(parts, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)
                   if parts else empty_rejects())
        return events, rejects

    def info(self, codes: np.ndarray, drop: np.ndarray) -> dict:
        """The reader's counts (``info`` of :func:`read_spikes`) for all the recording's spikes, given at once; a
        recording classified in parts sums its (unit, drop code) counts and calls :meth:`info_from_counts`."""
        counts = np.zeros((len(self.units), 6), dtype=np.int64)
        np.add.at(counts, (codes, drop), 1)
        return self.info_from_counts(counts)

    def info_from_counts(self, counts: np.ndarray) -> dict:
        """``counts``: (n_units, 6) spikes per unit and drop code (0 = kept)."""
        drop_counts: dict[str, int] = {}
        reasons = self.reasons()
        excluded = int(counts[:, 1].sum())
        if excluded:
            drop_counts["excluded unit"] = excluded
        for unit in sorted(self.multi_unit):
            if counts[unit, 2]:
                drop_counts[self.multi_unit[unit]] = int(counts[unit, 2])
        for code in (3, 4, 5):
            if counts[:, code].sum():
                drop_counts[reasons[code][1]] = int(counts[:, code].sum())
        return {
            "spikes_read": self.n_spikes,
            "spikes_kept": int(counts[:, 0].sum()),
            "units": list(self.units),
            "units_kept": [self.units[u] for u in np.flatnonzero(counts[:, 0])],
            **{k: self.positions[k] for k in ("position_samples", "position_samples_invalid",
                                              "position_duplicate_times", "position_time_range", "clock_rate")},
            "dropped": drop_counts,
            **{f"dropped_{name}": int(counts[:, code].sum()) for code, name in enumerate(DROPPED_BY, start=1)},
        }


def prepare_spikes(
    spikes_path: str | os.PathLike,
    positions_path: str | os.PathLike,
    *,
    speed_min: float | None = None,
    max_gap_s: float = 1.0,
    exclude_units: Sequence[str] = (),
    max_unit_fraction: float | None = 0.5,
    invalid_position: str = "y<=1",
) -> SpikeReading:
    """Read the clusters and the position track, validate the settings (see :func:`read_spikes`)."""
    if not max_gap_s > 0:
        raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")
    if max_unit_fraction is not None and not 0 < max_unit_fraction <= 1:
        raise ValueError(f"max_unit_fraction must be in (0, 1] or None, got {max_unit_fraction}")
    if speed_min is not None and not speed_min >= 0:
        raise ValueError(f"speed_min must be >= 0 or None, got {speed_min}")

    clusters = list(iter_matclust_clusters(spikes_path))
    positions, settings = read_trodes_positions(positions_path)
    file_name = Path(spikes_path).name
    units = [_unit_name(tetrode, cluster) for tetrode, cluster, _ in clusters]
    unit_counts = np.array([len(times) for _, _, times in clusters], dtype=np.int64)

    if isinstance(exclude_units, str):  # one name, not a sequence of one-letter names
        exclude_units = [exclude_units]
    unknown = sorted(set(exclude_units) - set(units))
    if unknown:
        raise ValueError(f"exclude_units: {unknown} not in {file_name}; its units are {units}")

    # --- the valid position track: tracking loss removed, repeated timestamps collapsed -------------------------
    pos_t, pos_x, pos_y = (positions[c].to_numpy() for c in ("time", "x", "y"))
    invalid = ((pos_x == 0) & (pos_y == 0)) | _invalid_position_mask(invalid_position, pos_x, pos_y)
    pos_t, pos_x, pos_y = pos_t[~invalid], pos_x[~invalid], pos_y[~invalid]
    # np.interp needs strictly increasing sample times; a repeated frame carries no new information.
    first_of_time = np.concatenate(([True], np.diff(pos_t) > 0))
    n_duplicates = int((~first_of_time).sum())
    pos_t, pos_x, pos_y = pos_t[first_of_time], pos_x[first_of_time], pos_y[first_of_time]
    if len(pos_t) < 2:
        raise CatalogError(f"{os.fspath(positions_path)}: fewer than 2 valid position samples "
                           f"({int(invalid.sum())} of {len(positions)} are tracking loss by "
                           f"'x==0 and y==0' or {invalid_position!r})")
    pos_speed = _smoothed_speed(pos_t, pos_x, pos_y, SPEED_SMOOTHING_S, max_gap_s)

    n_spikes = int(unit_counts.sum())
    multi_unit = {}
    if max_unit_fraction is not None:
        for code, count in enumerate(unit_counts):
            fraction = count / n_spikes
            if fraction > max_unit_fraction:
                multi_unit[code] = (f"multi-unit cluster (holds {fraction:.0%} of spikes > max_unit_fraction "
                                    f"{max_unit_fraction:.0%})")
    return SpikeReading(
        file_name=file_name, clusters=clusters, units=units, unit_counts=unit_counts, pos_t=pos_t, pos_x=pos_x,
        pos_y=pos_y, pos_speed=pos_speed, max_gap_s=max_gap_s, speed_min=speed_min,
        excluded=np.array([u in set(exclude_units) for u in units], dtype=bool), multi_unit=multi_unit,
        positions={"position_samples": len(positions), "position_samples_invalid": int(invalid.sum()),
                   "position_duplicate_times": n_duplicates,
                   "position_time_range": (float(pos_t[0]), float(pos_t[-1])),
                   "clock_rate": settings["clock_rate"]})
