"""Fetch event catalogs over HTTP(S) into a local cache.

:func:`fetch` turns a path or an ``http(s)`` URL into a local file: URLs are downloaded once into a cache folder,
written atomically, and retried on failures that are likely to pass (connection errors, timeouts, HTTP 429/5xx).
Two public services get helpers on top of it:

* the FDSN event web service (USGS ComCat and other FDSN nodes): :func:`download_fdsn_catalog` splits a long time
  range into queries small enough for the service's cap and merges them into one CSV;
* Socrata open-data portals (city crime data): :func:`download_socrata` pages through a dataset.

Only the standard library talks to the network, so the module works wherever Python does.
"""

from __future__ import annotations

import contextlib
import csv
import email.utils
import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Sequence

from stforecast import __version__
from stforecast.catalog import CatalogError, Problem
from stforecast.io.atomic import atomic_output

__all__ = [
    "is_url",
    "fetch",
    "fdsn_event_query_url",
    "download_fdsn_catalog",
    "socrata_query_url",
    "download_socrata",
]

log = logging.getLogger(__name__)

USGS_FDSN_EVENT_URL = "https://earthquake.usgs.gov/fdsnws/event/1/query"
COMCAT_CSV_COLUMNS = (
    "time", "latitude", "longitude", "depth", "mag", "magType", "nst", "gap", "dmin", "rms", "net", "id", "updated",
    "place", "type", "horizontalError", "depthError", "magError", "magNst", "status", "locationSource", "magSource",
)
USER_AGENT = f"stforecast/{__version__} (python-urllib)"

# A server may ask for a long pause (Retry-After: 3600); waiting that long inside a pipeline looks like a hang,
# so the wait is capped and the remaining attempts decide.
RETRY_AFTER_CAP_S = 60.0
MAX_BACKOFF_S = 60.0
# Below one second a FDSN window cannot usefully be split again: the service's times have millisecond resolution,
# and that many events in one second means the query itself must be narrowed (region, magnitude).
MIN_SPLIT_WINDOW = timedelta(seconds=1)
_READ_BLOCK_BYTES = 1 << 16
_FETCH_OPTIONS = frozenset({"retries", "backoff_s", "timeout_s", "refresh", "progress"})
_MAX_BASENAME_CHARS = 80

# Indirection so tests can observe waits without spending them.
_sleep = time.sleep


# --------------------------------------------------------------------------------------------------------------------
# fetch


def is_url(path_or_url: str | os.PathLike) -> bool:
    """True for an ``http://`` or ``https://`` URL (the schemes :func:`fetch` downloads); paths are never URLs."""
    if not isinstance(path_or_url, str):
        return False
    return urllib.parse.urlsplit(path_or_url.strip()).scheme.lower() in ("http", "https")


def fetch(
    path_or_url: str | os.PathLike,
    cache_dir: str | Path,
    *,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 60,
    refresh: bool = False,
    progress: bool = False,
) -> Path:
    """Return a local file for ``path_or_url``, downloading http(s) URLs into ``cache_dir`` once.

    ``retries`` counts attempts after the first (``retries=3``: up to 4 requests). Waits grow as
    ``backoff_s * 2**n`` unless the server sends ``Retry-After``. A cached copy is reused without any request unless
    ``refresh``; a failed download never replaces it. Next to each download, ``<file>.meta.json`` records
    ``url``, ``fetched_at``, ``bytes`` and ``sha256``.

    Raises :class:`CatalogError` for a missing local path or an HTTP client error (4xx other than 429, not retried),
    and :class:`ConnectionError` when all attempts failed; both messages name the URL, the HTTP status and the
    number of attempts.
    """
    if not is_url(path_or_url):
        return _local_path(path_or_url)
    url = path_or_url.strip()
    if retries < 0 or backoff_s < 0 or not timeout_s > 0:
        raise ValueError(f"need retries >= 0, backoff_s >= 0 and timeout_s > 0, "
                         f"got {retries}, {backoff_s} and {timeout_s}")
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / _cache_file_name(url)
    if target.exists() and not refresh:
        log.debug("using cached %s for %s", target, url)
        return target
    digest, size = _download_with_retries(url, target, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s,
                                          progress=progress)
    _write_meta(target, {"url": url, "fetched_at": _utc_now_iso(), "bytes": size, "sha256": digest})
    return target


def _local_path(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    # "s3://bucket/x.csv" is not a file name; saying so beats "file not found".
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", text):
        raise CatalogError(f"unsupported URL {text!r}: only http:// and https:// can be downloaded")
    local = Path(text).expanduser()
    if not local.exists():
        raise CatalogError(f"input not found: {local}")
    return local


def _cache_file_name(url: str) -> str:
    """``sha256(url)[:16]-<basename>``: the hash keeps URLs apart, the basename keeps the extension readable."""
    url_hash = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    basename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    # Only portable characters; no leading dots, so nothing becomes hidden or climbs out with "..".
    basename = re.sub(r"[^A-Za-z0-9._-]", "_", basename).lstrip(".") or "download"
    if len(basename) > _MAX_BASENAME_CHARS:
        suffix = "".join(s for s in Path(basename).suffixes[-2:] if len(s) <= 8)  # keep '.csv.gz' readable
        basename = basename[: _MAX_BASENAME_CHARS - len(suffix)] + suffix
    return f"{url_hash}-{basename}"


class _AttemptFailed(Exception):
    """One attempt failed in a way worth retrying; ``status`` is the HTTP status when there was one."""

    def __init__(self, status: int | None, description: str):
        super().__init__(description)
        self.status = status
        self.description = description


def _download_with_retries(url: str, target: Path, *, retries: int, backoff_s: float, timeout_s: float,
                           progress: bool) -> tuple[str, int]:
    attempts = retries + 1
    # A fresh opener per download so proxy settings come from the environment as it is now.
    opener = urllib.request.build_opener()
    description, last_error = "", None
    for attempt in range(1, attempts + 1):
        retry_after_s = None
        try:
            return _download_once(opener, url, target, timeout_s=timeout_s, progress=progress)
        except urllib.error.HTTPError as err:
            description, last_error = f"HTTP {err.code} {err.reason}", err
            retry_after_s = _retry_after_seconds(err.headers)
            err.close()
            if not _is_retryable_status(err.code):
                raise CatalogError(
                    f"download of {url} failed: {description} after {attempt} attempt(s); "
                    "client errors are not retried, check the URL and query parameters"
                ) from err
        except urllib.error.URLError as err:  # could not connect: refused, DNS, TLS handshake, connect timeout
            description, last_error = f"no HTTP status, {err.reason}", err
            if isinstance(err.reason, ssl.SSLCertVerificationError):
                break  # a bad certificate does not fix itself between attempts
        except _AttemptFailed as err:
            description, last_error = err.description, err
        if attempt == attempts:
            break
        wait = _wait_before_retry(attempt, backoff_s, retry_after_s)
        log.warning("download of %s failed (%s), attempt %d of %d; retrying in %.2f s",
                    url, description, attempt, attempts, wait)
        _sleep(wait)
    raise ConnectionError(f"download of {url} failed: {description} after {attempt} attempt(s)") from last_error


def _is_retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _wait_before_retry(attempt: int, backoff_s: float, retry_after_s: float | None) -> float:
    if retry_after_s is not None:
        return min(retry_after_s, RETRY_AFTER_CAP_S)
    return min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


def _retry_after_seconds(headers) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _download_once(opener: urllib.request.OpenerDirector, url: str, target: Path, *, timeout_s: float,
                   progress: bool) -> tuple[str, int]:
    """One GET into a temp file that replaces ``target`` only when the body is complete."""
    # identity: what is cached is exactly the bytes the server stores (a '.csv.gz' stays gzip).
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.URLError:
        raise  # HTTP errors and failed connections: the caller tells them apart
    except (http.client.HTTPException, OSError) as err:  # dropped or timed out before the status line
        raise _AttemptFailed(None, f"no HTTP status, {type(err).__name__}: {err}") from err
    with response:
        declared = response.headers.get("Content-Length")
        expected = int(declared) if declared and declared.strip().isdigit() else None
        hasher, received = hashlib.sha256(), 0
        with atomic_output(target, "wb") as out, _progress_bar(progress, expected, url) as advance:
            while True:
                # Only network errors are caught here: a full disk must not be retried as if the server failed.
                try:
                    block = response.read(_READ_BLOCK_BYTES)
                except (http.client.HTTPException, OSError) as err:
                    raise _AttemptFailed(response.status, f"HTTP {response.status}, body cut off after {received} "
                                         f"bytes ({type(err).__name__}: {err})") from err
                if not block:
                    break
                out.write(block)
                hasher.update(block)
                received += len(block)
                advance(len(block))
            # http.client returns a short body silently when the connection drops early, and a cut-off CSV
            # still parses, so the length is checked here.
            if expected is not None and received != expected:
                raise _AttemptFailed(response.status,
                                     f"HTTP {response.status}, truncated body ({received} of {expected} bytes)")
    return hasher.hexdigest(), received


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None, url: str) -> Iterator:
    if not enabled or total is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    label = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1] or url
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _write_meta(target: Path, meta: dict) -> None:
    with atomic_output(target.with_name(target.name + ".meta.json"), "w", encoding="utf-8") as out:
        json.dump(meta, out, indent=2)
        out.write("\n")


def _file_digest(path: Path) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK_BYTES):
            hasher.update(block)
            size += len(block)
    return hasher.hexdigest(), size


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------------
# Shared by the service helpers


def _check_fetch_options(fetch_kwargs: dict) -> None:
    # Checked up front: with a cached result fetch() is never called, so a typo would otherwise pass silently.
    unknown = sorted(set(fetch_kwargs) - _FETCH_OPTIONS)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}; fetch options are {sorted(_FETCH_OPTIONS)}")


def _query_hash(query: dict) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _with_query(base_url: str, params: Sequence[tuple[str, str]]) -> str:
    # ":" and "," are legal in a query and keep times and column lists readable; everything else is encoded.
    encoded = "&".join(f"{key}={urllib.parse.quote(value, safe=':,')}" for key, value in params)
    if not encoded:
        return base_url
    # A base URL may already carry parameters (an app token, say).
    joiner = "&" if "?" in base_url else "?"
    return f"{base_url}{joiner}{encoded}"


def _read_csv(path: Path, source: str) -> tuple[list[str] | None, list[list[str]]]:
    """Header and rows of a downloaded CSV; ``(None, [])`` for an empty body (HTTP 204)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if row]  # a trailing blank line is not a row
    if header is not None:
        for number, row in enumerate(rows, start=1):
            if len(row) != len(header):
                raise CatalogError(f"{source}: malformed CSV response", [Problem(
                    file=source, row=number, field="*", value=None,
                    reason=f"{len(row)} fields where the header has {len(header)}")])
    return header, rows


def _align(header: list[str], rows: list[list[str]], reference: list[str], source: str) -> list[list[str]]:
    """Rows reordered to the columns of ``reference``; a different set of columns is an error."""
    if header == reference:
        return rows
    if sorted(header) != sorted(reference):
        raise CatalogError(f"{source}: columns {header} differ from the earlier responses' {reference}")
    order = [header.index(name) for name in reference]
    return [[row[i] for i in order] for row in rows]


def _write_csv_output(target: Path, header: Sequence[str], rows, meta: dict) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    digest, size = _file_digest(target)
    _write_meta(target, {**meta, "fetched_at": _utc_now_iso(), "bytes": size, "sha256": digest})
    return target


# --------------------------------------------------------------------------------------------------------------------
# FDSN event service


def _as_utc(value, name: str) -> datetime:
    """A datetime, date or ISO 8601 string as an aware UTC datetime; naive values are taken as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise CatalogError(f"{name}: {value!r} is not an ISO 8601 time such as 2020-01-31T12:00:00Z") from None
    else:
        raise CatalogError(f"{name}: expected a datetime, date or ISO 8601 string, got {type(value).__name__}")
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _fdsn_time(moment: datetime) -> str:
    # No offset: FDSN times are UTC by definition, and not every node accepts a 'Z'.
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond:06d}" if moment.microsecond else text


def _fdsn_number(value, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogError(f"{name}: expected a number, got {value!r}")
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def fdsn_event_query_url(
    base_url: str = USGS_FDSN_EVENT_URL,
    *,
    starttime,
    endtime,
    minlatitude=None,
    maxlatitude=None,
    minlongitude=None,
    maxlongitude=None,
    minmagnitude=None,
    maxmagnitude=None,
    orderby: str = "time-asc",
    limit: int | None = None,
) -> str:
    """A FDSN ``event/1/query`` URL asking for CSV; times in UTC, parameters left as None are omitted."""
    start, end = _as_utc(starttime, "starttime"), _as_utc(endtime, "endtime")
    if start >= end:
        raise CatalogError(f"starttime {_fdsn_time(start)} must be before endtime {_fdsn_time(end)}")
    if orderby not in ("time", "time-asc", "magnitude", "magnitude-asc"):
        raise CatalogError(f"orderby must be time, time-asc, magnitude or magnitude-asc, not {orderby!r}")
    params = [("format", "csv"), ("starttime", _fdsn_time(start)), ("endtime", _fdsn_time(end))]
    bounds = {"minlatitude": minlatitude, "maxlatitude": maxlatitude, "minlongitude": minlongitude,
              "maxlongitude": maxlongitude, "minmagnitude": minmagnitude, "maxmagnitude": maxmagnitude}
    params += [(name, _fdsn_number(value, name)) for name, value in bounds.items() if value is not None]
    ranges = (("minlatitude", "maxlatitude"), ("minlongitude", "maxlongitude"), ("minmagnitude", "maxmagnitude"))
    for low, high in ranges:
        if bounds[low] is not None and bounds[high] is not None and bounds[low] > bounds[high]:
            raise CatalogError(f"{low} ({bounds[low]}) is larger than {high} ({bounds[high]})")
    params.append(("orderby", orderby))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise CatalogError(f"limit must be a positive integer, not {limit!r}")
        params.append(("limit", str(limit)))
    return _with_query(base_url, params)


def download_fdsn_catalog(
    cache_dir: str | Path,
    *,
    starttime,
    endtime,
    base_url: str = USGS_FDSN_EVENT_URL,
    minlatitude=None,
    maxlatitude=None,
    minlongitude=None,
    maxlongitude=None,
    minmagnitude=None,
    maxmagnitude=None,
    max_events_per_query: int = 20000,
    chunk_days: float = 365.0,
    **fetch_kwargs,
) -> Path:
    """Download a FDSN event catalog (ComCat CSV) for a time range into ``cache_dir/fdsn-<hash>.csv``.

    The range is queried in windows of ``chunk_days``; a window that returns ``max_events_per_query`` rows may have
    been cut off by the service's cap (20,000 at USGS, so keep it at or below that), so it is split in half until
    every window fits. Rows are merged with one header, de-duplicated by ``id`` (windows share their boundary
    instant) and sorted by time. ``fetch_kwargs`` go to :func:`fetch`; the merged file is reused unless ``refresh``.
    """
    _check_fetch_options(fetch_kwargs)
    if isinstance(max_events_per_query, bool) or not isinstance(max_events_per_query, int) or max_events_per_query < 1:
        raise CatalogError(f"max_events_per_query must be a positive integer, not {max_events_per_query!r}")
    if not chunk_days > 0:
        raise CatalogError(f"chunk_days must be positive, not {chunk_days!r}")
    start, end = _as_utc(starttime, "starttime"), _as_utc(endtime, "endtime")
    filters = {"minlatitude": minlatitude, "maxlatitude": maxlatitude, "minlongitude": minlongitude,
               "maxlongitude": maxlongitude, "minmagnitude": minmagnitude, "maxmagnitude": maxmagnitude}
    whole_query_url = fdsn_event_query_url(base_url, starttime=start, endtime=end, **filters)  # also validates
    target = Path(cache_dir).expanduser() / f"fdsn-{_query_hash({'service': 'fdsn', 'url': whole_query_url})}.csv"
    if target.exists() and not fetch_kwargs.get("refresh", False):
        return target

    header: list[str] | None = None
    by_id: dict[str, list[str]] = {}
    queries = 0

    def collect(window_start: datetime, window_end: datetime) -> None:
        nonlocal header, queries
        url = fdsn_event_query_url(base_url, starttime=window_start, endtime=window_end, orderby="time-asc",
                                   limit=max_events_per_query, **filters)
        queries += 1
        chunk_header, rows = _read_csv(fetch(url, cache_dir, **fetch_kwargs), url)
        if len(rows) >= max_events_per_query:
            # Possibly cut off at the cap: ask again in two halves (they share the midpoint; duplicates go below).
            if window_end - window_start < MIN_SPLIT_WINDOW:
                raise CatalogError(
                    f"{len(rows)} or more events between {_fdsn_time(window_start)} and {_fdsn_time(window_end)}: "
                    "too many for one query even after splitting; narrow the region or raise minmagnitude")
            middle = _split_point(window_start, window_end)
            collect(window_start, middle)
            collect(middle, window_end)
            return
        if chunk_header is None:
            return  # HTTP 204 / empty body: no events in this window
        missing = [name for name in ("time", "id") if name not in chunk_header]
        if missing:
            raise CatalogError(f"{url}: response has no column(s) {missing} (columns {chunk_header}); "
                               "is this a FDSN event service returning format=csv?")
        header = header or chunk_header
        rows = _align(chunk_header, rows, header, url)
        id_col = header.index("id")
        updated_col = header.index("updated") if "updated" in header else None
        for row in rows:
            key = row[id_col] or "\x00" + ",".join(row)  # rows without an id are only merged when identical
            previous = by_id.get(key)
            # The same event fetched at different times may have been revised: keep the newest version.
            if previous is None or (updated_col is not None and row[updated_col] > previous[updated_col]):
                by_id[key] = row

    window_start = start
    while window_start < end:
        window_end = min(window_start + timedelta(days=chunk_days), end)
        collect(window_start, window_end)
        window_start = window_end

    header = header or list(COMCAT_CSV_COLUMNS)
    time_col, id_col = header.index("time"), header.index("id")
    keyed = []
    for number, row in enumerate(by_id.values(), start=1):
        try:
            moment = _as_utc(row[time_col], "time")
        except CatalogError:
            raise CatalogError(f"{whole_query_url}: unreadable event time", [Problem(
                file=target.name, row=number, field="time", value=row[time_col],
                reason=f"not an ISO 8601 time (event id {row[id_col]!r})")]) from None
        keyed.append((moment, row[id_col], row))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return _write_csv_output(target, header, (row for _, _, row in keyed),
                             {"url": whole_query_url, "queries": queries, "rows": len(keyed)})


def _split_point(start: datetime, end: datetime) -> datetime:
    middle = start + (end - start) / 2
    whole_second = middle.replace(microsecond=0)
    # Whole seconds keep the query URLs tidy; fall back to the exact middle when rounding leaves the window.
    return whole_second if start < whole_second < end else middle


# --------------------------------------------------------------------------------------------------------------------
# Socrata (SODA) datasets


def socrata_query_url(
    base_url: str,
    *,
    where: str | None = None,
    select: str | None = None,
    order: str | None = None,
    limit: int = 50000,
    offset: int = 0,
) -> str:
    """A Socrata SODA query URL (``.../resource/<id>.csv``) with ``$select``, ``$where``, ``$order``, ``$limit``,
    ``$offset``; values are percent-encoded, parameters left as None are omitted."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise CatalogError(f"limit must be a positive integer, not {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise CatalogError(f"offset must be a non-negative integer, not {offset!r}")
    params = [(key, value) for key, value in (("$select", select), ("$where", where), ("$order", order))
              if value is not None]
    params += [("$limit", str(limit)), ("$offset", str(offset))]
    return _with_query(base_url, params)


def download_socrata(
    base_url: str,
    cache_dir: str | Path,
    *,
    where: str | None = None,
    select: str | None = None,
    order: str | None = ":id",
    page_size: int = 50000,
    max_rows: int | None = None,
    **fetch_kwargs,
) -> Path:
    """Page through a Socrata dataset into ``cache_dir/socrata-<hash>.csv`` (one header) and return its path.

    Pages of ``page_size`` rows are fetched (and cached) until one comes back short or ``max_rows`` are in hand.
    Keep an ``order`` (``:id`` by default): without one Socrata does not promise a stable order, and pages could
    overlap or skip rows. ``fetch_kwargs`` go to :func:`fetch`; the merged file is reused unless ``refresh``.
    """
    _check_fetch_options(fetch_kwargs)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise CatalogError(f"page_size must be a positive integer, not {page_size!r}")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise CatalogError(f"max_rows must be a positive integer or None, not {max_rows!r}")
    query = {"service": "socrata", "url": base_url, "where": where, "select": select, "order": order,
             "max_rows": max_rows}
    target = Path(cache_dir).expanduser() / f"socrata-{_query_hash(query)}.csv"
    if target.exists() and not fetch_kwargs.get("refresh", False):
        return target

    header: list[str] | None = None
    pages: list[list[list[str]]] = []
    total = 0
    while max_rows is None or total < max_rows:
        limit = page_size if max_rows is None else min(page_size, max_rows - total)
        url = socrata_query_url(base_url, where=where, select=select, order=order, limit=limit, offset=total)
        page_header, rows = _read_csv(fetch(url, cache_dir, **fetch_kwargs), url)
        if page_header is not None:
            header = header or page_header
            rows = _align(page_header, rows, header, url)
        pages.append(rows)
        total += len(rows)
        if len(rows) < limit:
            break
    if header is None:
        raise CatalogError(f"{base_url}: every page came back empty, without even a CSV header; "
                           "is this a Socrata .csv resource URL?")
    first_url = socrata_query_url(base_url, where=where, select=select, order=order, limit=page_size)
    return _write_csv_output(target, header, (row for page in pages for row in page),
                             {"url": first_url, "queries": len(pages), "rows": total})
