"""Tables (CSV, gzipped CSV, Parquet) → validated event tables, one chunk at a time.

A :class:`TableSpec` maps a file's columns onto the event contract (:mod:`stforecast.catalog`); every
supported text format (ComCat, pyCSEP, the EarthquakeNPP Japan table, Chicago and SF crime tables, the DSTPP
windows) is a preset spec, and a user's own table needs only a spec built from command-line flags.

Files are read in *chunks* (byte ranges aligned to line ends, or Parquet row groups) so that a scheduler can
parse them in parallel. A chunk knows the data row number of its first row, so every problem is reported
with its file, line, row and field. Chunking assumes no newline inside quoted fields (true for all formats
here; a quote left open on its line is reported as a malformed row). Rows with undecodable bytes (see
``TableSpec.encoding``), or with more or fewer fields than the header, are rejected by row like bad values.
Pass ``blocksize=None`` to read a file as one chunk.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import warnings
from dataclasses import dataclass, asdict

import numpy as np
import pandas as pd

from stforecast.catalog import (
    GEOGRAPHIC_CRS, MARK_COLUMNS, SECONDS_PER, CatalogError, check_columns, empty_rejects, make_rejects,
)



@dataclass
class TableSpec:
    """How a table's columns map onto events.

    ``time_format``: a strftime pattern, ``"ISO8601"`` (mixed precision, optional zone), or ``None`` to let
    pandas infer. ``time_unit``: set for numeric times (``"seconds"``, ``"days"``, ...): the times are then kept
    as numbers in that unit (lab clocks, or times relative to a window start). ``tz``: the zone of times written
    without one (Chicago's local clock); ``ignore_zone_suffix``: drop a zone suffix that is known to be wrong
    (SF writes ``Z`` on local times).
    """

    time_col: str
    x_col: str
    y_col: str
    crs: str | None = GEOGRAPHIC_CRS
    time_format: str | None = "ISO8601"
    time_unit: str | None = None
    tz: str = "UTC"
    ignore_zone_suffix: bool = False
    id_col: str | None = None
    magnitude_col: str | None = None
    category_col: str | None = None
    unit_col: str | None = None
    sequence_col: str | None = None
    sep: str = ","
    encoding: str = "utf-8"  # text encoding of CSV files: utf-8, latin-1, cp1252, ... (ASCII-compatible ones)

    def __post_init__(self) -> None:
        if self.time_unit is not None and self.time_unit not in SECONDS_PER:
            raise ValueError(f"time_unit must be one of {sorted(SECONDS_PER)}, not {self.time_unit!r}")
        check_encoding(self.encoding)

    @property
    def mark_cols(self) -> dict[str, str]:
        """Mark name → source column, for the marks this table has."""
        cols = {"magnitude": self.magnitude_col, "category": self.category_col, "unit": self.unit_col}
        return {k: v for k, v in cols.items() if v}

    def roles(self) -> dict[str, str]:
        roles = {"time": self.time_col, "x": self.x_col, "y": self.y_col, **self.mark_cols}
        if self.id_col:
            roles["id"] = self.id_col
        if self.sequence_col:
            roles["sequence"] = self.sequence_col
        return roles

    def to_dict(self) -> dict:
        return asdict(self)


def check_encoding(encoding: str) -> None:
    """Refuse unknown encodings and those that are not ASCII-compatible (UTF-16/32): rows are found by their
    newline bytes and fields by their separator bytes."""
    import codecs

    where = "text encoding (--encoding, or `encoding` in a catalog's [table] settings)"
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"{where}: unknown encoding {encoding!r}; use e.g. utf-8, latin-1 or cp1252") from None
    sample = '\n\r,;\t|" 0aZ'
    if info.name != "utf-8-sig" and sample.encode(info.name, errors="replace") != sample.encode("ascii"):
        raise ValueError(f"{where}: {encoding!r} is not ASCII-compatible; convert the file to UTF-8 first "
                         f"(e.g. iconv -f {encoding} -t utf-8)")


# Presets for the formats in ../shared/data and the public services.
PRESETS: dict[str, TableSpec] = {
    # USGS ComCat / FDSN event service CSV.
    "comcat": TableSpec(time_col="time", x_col="longitude", y_col="latitude", magnitude_col="mag", id_col="id"),
    # EarthquakeNPP's Japan table: naive UTC times; its own x/y (km, x = northing) are ignored, we project ourselves.
    "japan": TableSpec(time_col="time", x_col="longitude", y_col="latitude", magnitude_col="magnitude", id_col="id"),
    # pyCSEP catalog CSV (event_id often empty, so not used as id).
    "pycsep": TableSpec(time_col="time_string", x_col="lon", y_col="lat", magnitude_col="M"),
    # Chicago police: local wall-clock minutes, no zone.
    "chicago": TableSpec(time_col="date", x_col="longitude", y_col="latitude", time_format="%Y-%m-%d %H:%M",
                         tz="America/Chicago", category_col="loc_cat"),
    # SFPD: the 'Z' suffix is wrong, values are local time.
    "sf": TableSpec(time_col="date_time", x_col="longitude", y_col="latitude", tz="America/Los_Angeles",
                    ignore_zone_suffix=True, id_col="uid", category_col="offense_type"),
    # The DSTPP paper's windows: days since each window's start, sequences given.
    "dstpp-windows": TableSpec(time_col="t_days", x_col="longitude", y_col="latitude", time_format=None,
                               time_unit="days", sequence_col="sequence"),
}


# ----------------------------------------------------------------------------------------------- chunking
@dataclass(frozen=True)
class Chunk:
    """A piece of one file. Text: bytes [start, end). Parquet: one row group (``start`` = its index)."""

    path: str
    start: int
    end: int | None
    kind: str  # "text", "gzip", "parquet"


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_header(path: str, sep: str = ",", encoding: str = "utf-8") -> tuple[list[str], int]:
    """Column names and the byte offset just after the header line of a (possibly gzipped) CSV."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        try:
            line = f.readline(1 << 20)
        except (EOFError, OSError) as e:
            raise CatalogError(f"{path}: the gzip stream is truncated or corrupt ({e})") from e
    if not line.strip():
        raise CatalogError(f"{path}: the file is empty (no header line)")
    if b"\x00" in line:
        nul = line.index(b"\x00")
        raise CatalogError(f"{path}, line 1 (header): NUL byte at byte offset {nul}: this is a "
                           "binary file, not CSV text; give a CSV, CSV.gz or Parquet file")
    if not line.endswith(b"\n") and len(line) == 1 << 20:
        raise CatalogError(f"{path}, line 1 (header): no line end in the first MiB: this is not a CSV table")
    try:
        text = line.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as e:
        raise CatalogError(f"{path}, line 1 (header): not valid {encoding} text (byte 0x{line[e.start]:02x} at "
                           f"byte offset {e.start}); if the file is text in another encoding pass --encoding "
                           "(e.g. latin-1), otherwise give a CSV, CSV.gz or Parquet file") from None
    names = next(csv.reader([text.rstrip("\r\n")], delimiter=sep))
    return [n.strip() for n in names], len(line)


def plan_chunks(path: str | os.PathLike, blocksize: int | None = 64 * 2**20, sep: str = ",",
                encoding: str = "utf-8") -> list[Chunk]:
    """Split a file into chunks that can be parsed independently. The header is checked here, before any chunk
    is read, so that a binary or wrongly encoded file fails at once, naming the file."""
    path = str(path)
    if not os.path.exists(path):
        raise CatalogError(f"{path}: no such file")
    if path.endswith(".parquet") or path.endswith(".pq"):
        import pyarrow.parquet as pq

        try:
            n = pq.ParquetFile(path).metadata.num_row_groups
        except Exception as e:  # pyarrow's ArrowInvalid/OSError: not a Parquet file, or a damaged one
            raise CatalogError(f"{path}: cannot read it as Parquet ({e})") from None
        return [Chunk(path, i, None, "parquet") for i in range(max(n, 1))]
    _, data_start = read_header(path, sep, encoding)
    if _is_gzip(path):
        return [Chunk(path, 0, None, "gzip")]  # not splittable
    size = os.path.getsize(path)
    if not blocksize or size - data_start <= blocksize:
        return [Chunk(path, data_start, size, "text")]
    bounds = [data_start]
    with open(path, "rb") as f:
        pos = data_start + blocksize
        while pos < size:
            f.seek(pos)
            f.readline()  # move to the next line start so no row is split
            pos = f.tell()
            if pos >= size:
                break
            bounds.append(pos)
            pos += blocksize
    bounds.append(size)
    return [Chunk(path, a, b, "text") for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def count_rows(chunk: Chunk) -> int:
    """Rows (lines) in a chunk; used to number the rows of the chunks after it."""
    if chunk.kind == "parquet":
        import pyarrow.parquet as pq

        md = pq.ParquetFile(chunk.path).metadata
        return md.row_group(chunk.start).num_rows if md.num_row_groups else 0
    data = _read_bytes(chunk)
    n = data.count(b"\n")
    return n + (1 if data and not data.endswith(b"\n") else 0)


def _read_bytes(chunk: Chunk) -> bytes:
    if chunk.kind == "gzip":
        with gzip.open(chunk.path, "rb") as f:
            f.readline()  # header
            try:
                return f.read()
            except (EOFError, OSError) as e:
                raise CatalogError(f"{chunk.path}: the gzip stream is truncated or corrupt ({e})") from e
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        return f.read(chunk.end - chunk.start)


# ----------------------------------------------------------------------------------------------- parsing
def read_chunk(chunk: Chunk, first_row: int, spec: TableSpec, source: str,
               name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse and validate one chunk.

    Returns ``(events, rejects)``: events follow :data:`stforecast.catalog.EVENT_COLUMNS` (marks that the table
    lacks are absent) plus ``_file``, ``_row`` (and ``sequence`` when the spec has one); rejects follow
    :data:`stforecast.catalog.REJECT_COLUMNS`. ``first_row`` is the 1-based data row of the chunk's first row;
    ``name`` is how messages and lineage name the file (default: its base name).
    """
    name = name or os.path.basename(chunk.path)
    rejects = []
    if chunk.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(chunk.path)
        check_columns(name, pf.schema_arrow.names, spec.roles())
        raw = pf.read_row_group(chunk.start, columns=list(dict.fromkeys(spec.roles().values()))).to_pandas() \
            if pf.metadata.num_row_groups else pd.DataFrame(columns=list(spec.roles().values()))
        raw = raw.astype({c: str for c in _string_cols(spec) if c in raw})
        line_offset = None
    else:
        header, header_len = read_header(chunk.path, spec.sep, spec.encoding)
        check_columns(name, header, spec.roles())
        data_offset = header_len if chunk.kind == "gzip" else chunk.start  # of the chunk in the (unpacked) file
        raw, bad = _parse_text(_read_bytes(chunk), header, spec, name, first_row, data_offset)
        rejects.append(bad)
        line_offset = 1
    raw["_file"] = name
    raw["_row"] = np.arange(first_row, first_row + len(raw), dtype="int64") if "_row" not in raw else raw["_row"]
    events, bad = to_events(raw, spec, source, line_offset)
    rejects.append(bad)
    return events, pd.concat([r for r in rejects if len(r)] or [empty_rejects()], ignore_index=True)


def _string_cols(spec: TableSpec) -> list[str]:
    cols = [spec.id_col, spec.category_col, spec.unit_col]
    if spec.time_unit is None:
        cols.append(spec.time_col)
    return [c for c in cols if c]


def _parse_text(data: bytes, header: list[str], spec: TableSpec, name: str, first_row: int, data_offset: int = 0):
    """Parse a chunk with the C parser; unless it is regular (see :func:`_parse_regular`), check every line's
    bytes first and parse only the good lines.

    A line is rejected by row, naming file, line and field, when its bytes are not valid text in the spec's
    encoding, when it has more or fewer fields than the header (a short row is malformed, not a row with
    missing values; a long one may have its values shifted), or when it has an unclosed quote (chunking
    assumes no newline inside quoted fields, so a quote left open would swallow the rows after it). The checks
    are vectorised over the chunk's bytes; only lines holding a quote character go through the csv module.

    All columns are parsed (not only the used ones) because pandas ignores surplus fields when ``usecols`` is
    given. ``data_offset`` is the byte offset of ``data`` in the (unpacked) file, for messages."""
    usecols = list(dict.fromkeys(spec.roles().values()))
    # index_col=False: never turn a surplus first field into an index (which shifts every column silently)
    kw = dict(sep=spec.sep, header=None, names=header, index_col=False, skip_blank_lines=False,
              dtype={c: str for c in _string_cols(spec)}, keep_default_na=True, encoding=spec.encoding)
    starts, ends = _line_bounds(data)
    long_rows = _long_rows(data, starts, ends, header, spec)  # set aside before the parser sees them
    frame = None if long_rows else _parse_regular(data, kw, header, spec)
    if frame is not None:
        frame["_row"] = np.arange(first_row, first_row + len(frame), dtype="int64")
        return _drop_blank(frame)[usecols + ["_row"]], empty_rejects()
    bad = _bad_lines(data, starts, ends, header, spec, data_offset, skip=long_rows)
    bad.update(long_rows)
    n_lines = len(starts)
    if bad:
        keep = np.setdiff1d(np.arange(n_lines), np.fromiter(bad, dtype="int64", count=len(bad)))
        body = b"".join(data[starts[i]:ends[i]] + b"\n" for i in keep)
    else:
        keep, body = np.arange(n_lines), data
    if len(keep):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warnings.simplefilter("error", pd.errors.ParserWarning)  # "more fields than names" must not pass
                frame = pd.read_csv(io.BytesIO(body), **kw)
        except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as e:
            # the line checks above should have caught every case the C parser refuses; if not, name the range
            raise CatalogError(f"{name}, lines {first_row + 1}-{first_row + n_lines}: cannot parse these lines "
                               f"as CSV ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if len(frame) != len(keep):  # e.g. a lone carriage return that the C parser takes for a line end
            raise CatalogError(f"{name}, lines {first_row + 1}-{first_row + n_lines}: {len(keep)} lines but "
                               f"{len(frame)} rows parsed (a stray carriage return or quote?); check these lines")
    else:
        frame = pd.DataFrame(columns=header)
    frame["_row"] = keep.astype("int64") + first_row
    rows = np.asarray(sorted(bad), dtype="int64") + first_row
    problems = [bad[i] for i in sorted(bad)]
    rejects = pd.DataFrame({"file": name, "row": rows, "line": rows + 1,
                            "field": [p[0] for p in problems], "value": [p[1] for p in problems],
                            "reason": [p[2] for p in problems], "kind": "invalid"})
    return _drop_blank(frame)[usecols + ["_row"]], rejects if len(rejects) else empty_rejects()


def _parse_regular(data: bytes, kw: dict, header: list[str], spec: TableSpec) -> pd.DataFrame | None:
    """The common case at the C parser's speed: a chunk without quotes, without undecodable bytes and with every
    field on every line. ``None`` when that cannot be shown cheaply; the lines are then checked one by one.

    Sound because the C parser refuses a line with a field too many: when none has one, the separators add up
    to (fields - 1) x lines only if no line has a field too few (an empty line counts as short here)."""
    sep = spec.sep.encode(spec.encoding) if len(spec.sep) == 1 else b""
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if len(sep) != 1 or not n_lines or b'"' in data or data.count(sep) != (len(header) - 1) * n_lines:
        return None
    try:
        data.decode(spec.encoding)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", pd.errors.ParserWarning)  # "more fields than names" must not pass
            frame = pd.read_csv(io.BytesIO(data), **kw)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.ParserWarning):
        return None
    return frame if len(frame) == n_lines else None  # a stray carriage return splits a line in two


def _line_bounds(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the line end and a carriage return before it) of every line; the
    lines are those :func:`count_rows` counts."""
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    ends = nl if data.endswith(b"\n") or not data else np.append(nl, len(data))
    starts = np.concatenate([[0], nl + 1])[: len(ends)].astype("int64")
    ends = ends.astype("int64")
    cr = np.zeros(len(ends), dtype=bool)
    nonempty = ends > starts
    cr[nonempty] = arr[ends[nonempty] - 1] == 13
    return starts, ends - cr


#: the longest row (bytes) and field (characters) a table may hold: a catalog row is a few hundred bytes, and
#: a runaway field (a missing quote, a binary blob) would otherwise be parsed whole (640 MB for a 100 MB field)
MAX_ROW_BYTES = MAX_FIELD_CHARS = 65_536


def _long_rows(data: bytes, starts: np.ndarray, ends: np.ndarray, header: list[str],
               spec: TableSpec) -> dict[int, tuple[str, str, str]]:
    """Line index → (field, value, reason) for lines longer than :data:`MAX_ROW_BYTES`, naming the longest
    field (separators counted without regard to quotes: a best guess for a line that will not be parsed)."""
    out = {}
    sep = spec.sep.encode("latin-1", "replace") if len(spec.sep) == 1 else b","
    for i in np.flatnonzero(ends - starts > MAX_ROW_BYTES).tolist():
        line = data[starts[i]:ends[i]]
        sizes = [len(f) for f in line.split(sep)]
        k = int(np.argmax(sizes))
        out[i] = (header[k] if k < len(header) else "*", f"{sizes[k]:,} bytes",
                  f"row of {len(line):,} bytes, longer than the {MAX_ROW_BYTES:,} a row may hold (a field left "
                  "unterminated, or binary data?)")
    return out


def _bad_lines(data: bytes, starts: np.ndarray, ends: np.ndarray, header: list[str], spec: TableSpec,
               data_offset: int, skip=()) -> dict[int, tuple[str, str, str]]:
    """Line index → (field, value, reason) for lines that cannot be parsed as a row of this table (lines in
    ``skip`` are not looked at)."""
    bad: dict[int, tuple[str, str, str]] = {i: ("", "", "") for i in skip}
    n_header = len(header)
    enc = spec.encoding
    try:
        data.decode(enc)
    except UnicodeDecodeError:
        for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            if i in bad:
                continue
            try:
                data[a:b].decode(enc)
            except UnicodeDecodeError as e:
                field = _field_at(data[a:a + e.start], spec.sep.encode("latin-1", "replace"), header)
                bad[i] = (field, f"byte 0x{data[a + e.start]:02x} at byte offset {data_offset + a + e.start}",
                          f"not valid {enc} text (if the file uses another encoding, pass --encoding, e.g. latin-1)")
    sep = spec.sep
    if len(sep) != 1 or len(sep.encode(enc)) != 1 or not len(starts):
        return bad  # a regular-expression separator: the C parser cannot be checked line by line
    sep_byte = sep.encode(enc)
    arr = np.frombuffer(data, dtype=np.uint8)
    blank = ends == starts
    sep_pos = np.flatnonzero(arr == sep_byte[0])
    fields = np.searchsorted(sep_pos, ends) - np.searchsorted(sep_pos, starts) + 1  # separators per line, plus one
    check = np.zeros(len(starts), dtype=bool)  # lines the csv module must read (quotes it cannot judge here)
    if b'"' in data:
        fields, check = _unquoted_fields(arr, sep_pos, starts, ends, fields, sep_byte[0])
    for i in np.flatnonzero(check & ~blank).tolist():
        if i in bad:
            continue
        text = data[starts[i]:ends[i]].decode(enc)
        try:
            fields[i] = len(next(csv.reader([text], delimiter=sep, strict=True)))
        except csv.Error as e:
            if "unexpected end of data" in str(e):  # an unclosed quote
                at = _first_open_quote(text, sep)
                bad[i] = (_field_at(text[:at].encode(enc), sep_byte, header),
                          text[at:at + 40],
                          "malformed row: unclosed quote (quoted fields may not span lines)")
                continue
            fields[i] = len(next(csv.reader([text], delimiter=sep)))  # e.g. "ab"c: as lenient as the C parser
    for i in np.flatnonzero(~blank & (fields != n_header)).tolist():
        if i in bad:
            continue
        n = int(fields[i])
        if n > n_header:
            bad[i] = ("*", f"{n} fields", f"malformed row: more fields than the {n_header} in the header")
        else:
            bad[i] = (header[n], f"{n} fields",
                      f"malformed row: fewer fields than the {n_header} in the header (it ends before this one)")
    return {i: problem for i, problem in bad.items() if i not in skip}


def _unquoted_fields(arr, sep_pos, starts, ends, fields, sep: int):
    """Correct per-line field counts for separators inside quoted fields, vectorised.

    Quotes of a line pair up (open, close); an escaped quote ``""`` inside a field splits it into two such pairs,
    which is harmless. A pair is regular when its opening quote starts a field (line start, separator, or a quote
    before it) and its closing quote ends one (line end, separator, or a quote after it). Lines with an odd number
    of quotes (an unclosed quote, or a stray one) or an irregular pair are returned in ``check``, for the csv
    module to judge one by one."""
    q = np.flatnonzero(arr == 34)
    line = np.searchsorted(ends, q)  # a quote is never at a line end, so this is the line holding it
    n = len(starts)
    check = np.bincount(line, minlength=n) % 2 == 1
    even = ~check[line]
    q, line = q[even], line[even]
    opens, closes, pair_line = q[0::2], q[1::2], line[0::2]
    before = np.where(opens > starts[pair_line], arr[np.maximum(opens - 1, 0)], sep)
    after = np.where(closes + 1 < ends[pair_line], arr[np.minimum(closes + 1, len(arr) - 1)], sep)
    regular = ((before == sep) | (before == 34)) & ((after == sep) | (after == 34))
    check[pair_line[~regular]] = True
    if len(opens):
        inside = np.searchsorted(sep_pos, closes) - np.searchsorted(sep_pos, opens)  # separators in [open, close)
        fields = fields - np.bincount(pair_line, weights=inside, minlength=n).astype(np.int64)
    return fields, check


def _field_at(prefix: bytes, sep: bytes, header: list[str]) -> str:
    """The column holding the byte after ``prefix`` (the line's bytes before it), by separator count (quoted
    separators are counted too: a best guess for a line that cannot be parsed)."""
    k = prefix.count(sep) if len(sep) == 1 else -1
    return header[k] if 0 <= k < len(header) else "*"


def _first_open_quote(text: str, sep: str) -> int:
    """Index of the quote that opens the field left unclosed at the end of ``text``."""
    at, inside = 0, False
    for j, ch in enumerate(text):
        if ch == '"' and (inside or j == 0 or text[j - 1] == sep):
            if not inside:
                at = j
            inside = not inside
    return at


def _drop_blank(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop empty lines (every field empty). A row with some fields filled is kept and validated."""
    blank = frame.drop(columns="_row").isna().all(axis=1).to_numpy()
    return frame[~blank].reset_index(drop=True) if blank.any() else frame


#: the times pandas can hold (nanosecond timestamps): about 1677-09-21 to 2262-04-11
TIME_RANGE = (pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC"))


def _in_ns_range(times: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Parsed UTC timestamps (of whatever resolution pandas inferred) as nanosecond ones, and the mask of those
    outside pandas' nanosecond range (1677 to 2262), which become NaT instead of aborting the whole chunk."""
    outside = ((times < TIME_RANGE[0]) | (times > TIME_RANGE[1])).to_numpy(dtype=bool)
    if outside.any():
        times = times.where(~outside)
    return times.astype("datetime64[ns, UTC]"), outside


def parse_times(values: pd.Series, spec: TableSpec) -> tuple[pd.Series, dict]:
    """Strings → UTC timestamps (or numbers in ``spec.time_unit``). Unparseable values become NaT/NaN, and so do
    times outside pandas' nanosecond range (``info["out_of_range"]``, a boolean mask, marks those).

    Local times are localised with the spec's zone: a wall-clock time that occurs twice at the end of
    daylight saving is taken as its first occurrence, one that does not exist (the spring gap) is moved
    forward to the first valid time. Both are counted in the returned info.
    """
    info = {"ambiguous_local_times": 0, "nonexistent_local_times": 0, "out_of_range": np.zeros(len(values), bool)}
    if spec.time_unit is not None:
        return pd.to_numeric(values, errors="coerce").astype("float64"), info
    s = values.astype("str") if values.dtype != object else values
    if spec.ignore_zone_suffix:
        s = s.str.replace(r"(Z|[+-]\d\d:?\d\d)$", "", regex=True)
    fmt = spec.time_format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec.tz.upper() == "UTC":
            out, info["out_of_range"] = _in_ns_range(pd.to_datetime(s, format=fmt, errors="coerce", utc=True))
            return out, info
        if fmt is None or fmt == "ISO8601":
            aware = s.str.contains(r"(Z|[+-]\d\d:?\d\d)$", regex=True, na=False).to_numpy()
        else:  # an explicit pattern says itself whether it carries a zone
            aware = np.full(len(s), "%z" in fmt or "%Z" in fmt)
        naive = pd.to_datetime(s.where(~aware), format=fmt, errors="coerce")
    # localising near the ends of the range could overflow: those times are set aside first
    naive, outside = _in_ns_range(naive.dt.tz_localize("UTC"))
    naive = naive.dt.tz_localize(None)
    local_first = naive.dt.tz_localize(spec.tz, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="shift_forward")
    local_other = naive.dt.tz_localize(spec.tz, ambiguous=np.zeros(len(naive), dtype=bool), nonexistent="NaT")
    info["ambiguous_local_times"] = int(((local_first != local_other) & local_other.notna()).sum())
    info["nonexistent_local_times"] = int((local_other.isna() & naive.notna()).sum())
    out = local_first.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if aware.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed, outside_aware = _in_ns_range(pd.to_datetime(s[aware], format=fmt, errors="coerce", utc=True))
        out[aware] = parsed
        outside[aware] = outside_aware
    info["out_of_range"] = outside
    return out, info


def to_events(raw: pd.DataFrame, spec: TableSpec, source: str, line_offset: int | None = 1):
    """Validate mapped columns and build the event table. Returns ``(events, rejects)``."""
    rejects = []
    bad = np.zeros(len(raw), dtype=bool)

    def reject(mask, col, reason, kind="invalid"):
        nonlocal bad
        mask = np.asarray(mask, dtype=bool)  # every problem of a row is named, not only its first
        if mask.any():
            rejects.append(make_rejects(raw, mask, col, raw[col], reason, kind, line_offset))
            bad |= mask

    for col in dict.fromkeys(c for c in _string_cols(spec) + [spec.time_col] if c in raw):  # (Parquet inputs)
        text = raw[col]
        if text.dtype == object or pd.api.types.is_string_dtype(text):
            reject(text.astype("str").str.len().to_numpy() > MAX_FIELD_CHARS, col,
                   f"field longer than the {MAX_FIELD_CHARS:,} characters a field may hold")
    time, info = parse_times(raw[spec.time_col], spec)
    missing_time = raw[spec.time_col].isna().to_numpy()
    reject(missing_time, spec.time_col, "missing time")
    reject(info["out_of_range"], spec.time_col, f"time outside the range stforecast can hold "
           f"({TIME_RANGE[0]:%Y-%m-%d} to {TIME_RANGE[1]:%Y-%m-%d})")
    reject(time.isna().to_numpy() & ~missing_time & ~info["out_of_range"], spec.time_col,
           f"unparseable time (expected {spec.time_format or 'a number in ' + str(spec.time_unit)})")

    coords = {}
    for role, col in (("x", spec.x_col), ("y", spec.y_col)):
        num = pd.to_numeric(raw[col], errors="coerce").astype("float64").to_numpy()
        coords[role] = num
        missing = raw[col].isna().to_numpy()
        reject(missing, col, "missing coordinate")
        reject(~np.isfinite(num) & ~missing, col, "coordinate is not a finite number")
    if spec.crs == GEOGRAPHIC_CRS:
        reject(np.abs(coords["x"]) > 180, spec.x_col, "longitude out of range [-180, 180]")
        reject(np.abs(coords["y"]) > 90, spec.y_col, "latitude out of range [-90, 90]")

    # .array keeps tz-aware times as one int64 block (to_numpy would build a Timestamp object per row)
    events = pd.DataFrame({"time": time.array, "x": coords["x"], "y": coords["y"]})
    if spec.magnitude_col:
        col = spec.magnitude_col
        mag = pd.to_numeric(raw[col], errors="coerce").astype("float64").to_numpy()
        missing = raw[col].isna().to_numpy()
        reject(missing, col, "missing magnitude")
        reject(~np.isfinite(mag) & ~missing, col, "magnitude is not a number")
        reject((mag < -3) | (mag > 10), col, "magnitude out of range [-3, 10]")
        events["magnitude"] = mag
    for mark in ("category", "unit"):
        col = spec.mark_cols.get(mark)
        if col:
            vals = raw[col]
            reject(vals.isna().to_numpy() | (vals.astype("str").str.strip() == "").to_numpy(), col, f"missing {mark}")
            events[mark] = vals.astype("str").str.strip().to_numpy()
    if spec.sequence_col:
        col = spec.sequence_col
        seq = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype="float64")
        reject(~np.isfinite(seq) | (seq != np.round(seq)), col, "sequence id is not an integer")
        events["sequence"] = np.nan_to_num(seq).astype("int64")
    if spec.id_col:
        ids = raw[spec.id_col]
        reject(ids.isna().to_numpy() | (ids.astype("str").str.strip() == "").to_numpy(), spec.id_col, "missing id")
        events["event_id"] = ids.astype("str").str.strip().to_numpy()
    # constant per chunk: a categorical costs one code per row, not one string
    events["source"] = pd.Categorical.from_codes(np.zeros(len(events), dtype="int8"), [source])
    events["_file"] = raw["_file"].to_numpy()
    events["_row"] = raw["_row"].to_numpy()
    events = events[~bad].reset_index(drop=True)
    if "event_id" not in events:
        events["event_id"] = content_ids(events, source)
    cols = ["event_id", "time", "x", "y", *[m for m in MARK_COLUMNS if m in events], "source",
            *(["sequence"] if spec.sequence_col else []), "_file", "_row"]
    return events[cols], pd.concat(rejects or [empty_rejects()], ignore_index=True)


def content_ids(events: pd.DataFrame, source: str) -> np.ndarray:
    """Stable ids for sources without their own: a hash of the event's content, so the same event keeps
    its id when the file is re-downloaded or re-ordered (exact duplicates share one and are removed)."""
    cols = [c for c in ("time", "x", "y", *MARK_COLUMNS, "sequence") if c in events]
    if "sequence" in events:
        cols.append("_file")  # window ids repeat across split files
    h = pd.util.hash_pandas_object(events[cols], index=False).to_numpy()
    return np.char.add(f"{source}:", np.char.mod("%016x", h.astype("uint64")))
