"""stforecast.io.remote against a local HTTP server that imitates a FDSN event service, a Socrata dataset and
hosts that fail in the ways real ones do. Nothing here leaves 127.0.0.1: a guard fails any other connection."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from stforecast.catalog import CatalogError
from stforecast.io import remote
from stforecast.io.remote import (
    COMCAT_CSV_COLUMNS,
    download_fdsn_catalog,
    download_socrata,
    fdsn_event_query_url,
    fetch,
    is_url,
    socrata_query_url,
)

FDSN_PATH = "/fdsnws/event/1/query"
SOCRATA_PATH = "/resource/crimes.csv"
SOCRATA_COLUMNS = ["id", "date", "primary_type", "description", "latitude", "longitude"]
FDSN_SERVICE_CAP = 30  # like USGS's 20,000: a query without a limit that matches more gets HTTP 400
CATALOG_START = datetime(2020, 1, 1, tzinfo=timezone.utc)
CHUNK_DAYS = 10
BOUNDARY_TIME = CATALOG_START + timedelta(days=CHUNK_DAYS)  # where the first 10-day query window ends
TRIPLE_TIME = datetime(2020, 2, 2, 2, 2, 2, tzinfo=timezone.utc)  # three events at one instant: cannot be split
# Tiny waits: the retry logic runs for real without slowing the suite.
FAST = {"backoff_s": 0.001, "timeout_s": 5}


# --------------------------------------------------------------------------------------------------------------------
# Test data


def comcat_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def make_comcat_events(seed: int = 7) -> list[dict[str, str]]:
    """A small ComCat-style catalog over 50 days: scattered events, a dense burst (forces repeated splits), one
    event exactly on a query-window boundary and three at one instant."""
    rng = random.Random(seed)
    times = [CATALOG_START + timedelta(seconds=rng.uniform(0, 50 * 86400)) for _ in range(40)]
    burst_start = datetime(2020, 1, 20, 6, tzinfo=timezone.utc)
    times += [burst_start + timedelta(seconds=rng.uniform(0, 3600)) for _ in range(12)]
    times += [BOUNDARY_TIME, TRIPLE_TIME, TRIPLE_TIME, TRIPLE_TIME]
    events = []
    for number, moment in enumerate(times):
        moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        values = {name: "" for name in COMCAT_CSV_COLUMNS}
        values.update({
            "time": comcat_time(moment),
            "latitude": f"{rng.uniform(32, 37):.4f}",
            "longitude": f"{rng.uniform(-121, -115):.4f}",
            "depth": f"{rng.uniform(0, 20):.2f}",
            "mag": f"{rng.uniform(1, 5):.2f}",
            "magType": "ml",
            "net": "ci",
            "id": f"ci{40000000 + number}",
            "updated": comcat_time(moment + timedelta(days=1)),
            "place": f"{rng.randint(1, 30)} km NE of Ridgecrest, CA",  # a comma inside a field: needs quoting
            "type": "earthquake",
            "status": "reviewed",
            "locationSource": "ci",
            "magSource": "ci",
        })
        events.append(values)
    return events


def make_socrata_rows(count: int = 23) -> list[dict[str, str]]:
    return [
        {"id": f"{1000 + i}", "date": f"2021-03-{1 + i % 28:02d}T12:00:00.000", "primary_type": "THEFT",
         "description": 'OVER $500, "RETAIL"' if i % 5 == 0 else "PETTY", "latitude": f"{41.8 + i / 1000:.4f}",
         "longitude": f"{-87.6 - i / 1000:.4f}"}
        for i in range(count)
    ]


def to_csv(columns, rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


# --------------------------------------------------------------------------------------------------------------------
# The fake web


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None  # larger than the body: the connection "drops" mid-response
    delay_s: float = 0.0


class FakeWeb:
    """State behind the handler: the data sets, scripted replies per path and a log of every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.scripts: dict[str, list[Reply]] = {}
        self.events = make_comcat_events()
        self.socrata_rows = make_socrata_rows()
        self.fdsn_empty_reply = "204"  # or "header": both are ways a service says "no events"
        self.fdsn_newest_first = False  # True: ignore orderby, like a service's default order
        self.release = threading.Event()  # set at teardown so delayed replies end at once
        self.server_errors: list[str] = []
        self.base_url = ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *replies: Reply) -> str:
        """Replies for ``path`` in order; the last one repeats. Returns the path's URL."""
        self.scripts[path] = list(replies)
        return self.url(path)

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for request in self.requests if urlsplit(request).path == path)

    def queries(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            found = [urlsplit(r) for r in self.requests]
        return [{k: v[0] for k, v in parse_qs(p.query).items()} for p in found if p.path == path]

    def reply_for(self, raw_path: str) -> Reply:
        parts = urlsplit(raw_path)
        with self.lock:
            self.requests.append(raw_path)
            script = self.scripts.get(parts.path)
            if script:
                return script.pop(0) if len(script) > 1 else script[0]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == FDSN_PATH:
            return self.fdsn(query)
        if parts.path == SOCRATA_PATH:
            return self.socrata(query)
        return Reply(404, b"not found")

    def fdsn(self, query: dict[str, str]) -> Reply:
        if query.get("format") != "csv":
            return Reply(400, b"only format=csv here")
        start, end = parse_time(query["starttime"]), parse_time(query["endtime"])
        min_mag = float(query.get("minmagnitude", "-inf"))
        # Both ends inclusive, as at USGS: neighbouring windows both return an event on their shared boundary.
        matches = sorted((e for e in self.events
                          if start <= parse_time(e["time"]) <= end and float(e["mag"]) >= min_mag),
                         key=lambda e: e["time"], reverse=self.fdsn_newest_first)
        if "limit" not in query and len(matches) > FDSN_SERVICE_CAP:
            return Reply(400, b"Error 400: exceeds search limit")
        matches = matches[: int(query.get("limit", len(matches)))]
        if not matches:
            return Reply(204) if self.fdsn_empty_reply == "204" else Reply(200, to_csv(COMCAT_CSV_COLUMNS, []))
        return Reply(200, to_csv(COMCAT_CSV_COLUMNS, matches), {"Content-Type": "text/csv"})

    def socrata(self, query: dict[str, str]) -> Reply:
        rows = sorted(self.socrata_rows, key=lambda r: r["id"]) if query.get("$order") == ":id" else self.socrata_rows
        offset, limit = int(query.get("$offset", "0")), int(query.get("$limit", "1000"))
        return Reply(200, to_csv(SOCRATA_COLUMNS, rows[offset:offset + limit]), {"Content-Type": "text/csv"})


class FakeHandler(BaseHTTPRequestHandler):
    web: FakeWeb
    timeout = 5  # per-request socket timeout: a stuck client cannot hold a server thread for long
    protocol_version = "HTTP/1.0"  # one request per connection, so a short body ends when the socket closes

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        reply = self.web.reply_for(self.path)
        if reply.delay_s:
            self.web.release.wait(reply.delay_s)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            length = reply.declared_length if reply.declared_length is not None else len(reply.body)
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(reply.body)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    web: FakeWeb

    def handle_error(self, request, client_address) -> None:
        # Clients that time out leave broken pipes behind; record instead of printing tracebacks.
        import traceback

        self.web.server_errors.append(traceback.format_exc())


@pytest.fixture
def web(request):
    state = FakeWeb()
    handler = type("BoundHandler", (FakeHandler,), {"web": state})
    server = QuietServer(("127.0.0.1", 0), handler)
    server.web = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)  # runs even when the test fails
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    return state


class NonLoopbackTraffic(AssertionError):
    """Not an OSError, so neither urllib nor fetch's retries can swallow it."""


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any name lookup or connection that is not to the loopback interface, and ignore proxy settings."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    loopback = {"127.0.0.1", "localhost", "::1"}
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in loopback:
            raise NonLoopbackTraffic(f"a test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in loopback:
            raise NonLoopbackTraffic(f"a test tried to connect to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def cache_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------------------------------
# fetch: paths and URLs


@pytest.mark.parametrize("value, expected", [
    ("https://example.org/a.csv", True), ("HTTP://example.org/a.csv", True), ("  http://x/a  ", True),
    ("data/raw/a.csv", False), ("/abs/a.csv", False), ("ftp://example.org/a.csv", False),
    ("C:\\data\\a.csv", False), (Path("http:/x"), False),
])
def test_is_url(value, expected):
    assert is_url(value) is expected


def test_local_paths_pass_through_without_cache(tmp_path):
    data = tmp_path / "events.csv"
    data.write_text("time,x,y\n")
    cache = tmp_path / "cache"
    assert fetch(str(data), cache) == data
    assert fetch(data, cache) == data
    assert not cache.exists()  # nothing downloaded, nothing created


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "events.csv"
    with pytest.raises(CatalogError, match="nope/events.csv"):
        fetch(missing, tmp_path / "cache")


def test_unsupported_scheme_is_not_taken_for_a_path(tmp_path):
    with pytest.raises(CatalogError, match="only http:// and https://"):
        fetch("s3://bucket/events.csv", tmp_path)


def test_download_lands_in_cache_with_meta(web, tmp_path):
    body = b"time,x,y\n2020-01-01T00:00:00Z,1,2\n"
    url = web.script("/files/events.csv", Reply(200, body))
    path = fetch(url, tmp_path / "cache", **FAST)
    assert path.read_bytes() == body
    assert path.parent == tmp_path / "cache"
    assert path.name == hashlib.sha256(url.encode()).hexdigest()[:16] + "-events.csv"
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
    assert meta["url"] == url
    assert meta["bytes"] == len(body)
    assert meta["sha256"] == hashlib.sha256(body).hexdigest()
    assert datetime.fromisoformat(meta["fetched_at"]).utcoffset() == timedelta(0)
    assert cache_listing(path.parent) == [path.name, path.name + ".meta.json"]  # no temp file left over


@pytest.mark.parametrize("path, suffix", [
    ("/files/quakes.csv.gz", "-quakes.csv.gz"),
    ("/files/my%20data%3F.csv", "-my_data_.csv"),
    ("/files/..%2F..%2Fescape.csv", "-_.._escape.csv"),
    ("/files/", "-download"),
    ("/files/" + "x" * 200 + ".csv.gz", ".csv.gz"),
])
def test_cache_names_keep_extension_and_stay_in_cache(web, tmp_path, path, suffix):
    url = web.script(path, Reply(200, b"payload"))
    cache = tmp_path / "cache"
    result = fetch(url, cache, **FAST)
    assert result.parent == cache and result.name.endswith(suffix)
    assert len(result.name) <= 16 + 1 + 80
    assert result.read_bytes() == b"payload"


def test_cached_copy_is_reused_and_refresh_downloads_again(web, tmp_path):
    url = web.script("/data.csv", Reply(200, b"a\n1\n"), Reply(200, b"a\n2\n"))
    first = fetch(url, tmp_path, **FAST)
    assert fetch(url, tmp_path, **FAST) == first
    assert web.hits("/data.csv") == 1  # the second call made no request
    assert fetch(url, tmp_path, refresh=True, **FAST).read_bytes() == b"a\n2\n"
    assert web.hits("/data.csv") == 2


def test_progress_bar_download(web, tmp_path):
    body = b"x\n" * 50_000
    url = web.script("/big.csv", Reply(200, body))
    assert fetch(url, tmp_path, progress=True, **FAST).read_bytes() == body


# --------------------------------------------------------------------------------------------------------------------
# fetch: failures


def test_503_twice_then_success(web, tmp_path):
    url = web.script("/flaky.csv", Reply(503), Reply(503), Reply(200, b"ok\n"))
    assert fetch(url, tmp_path, retries=3, **FAST).read_bytes() == b"ok\n"
    assert web.hits("/flaky.csv") == 3


def test_404_fails_at_once_naming_url_and_status(web, tmp_path):
    url = web.url("/missing.csv")
    with pytest.raises(CatalogError) as caught:
        fetch(url, tmp_path, retries=3, **FAST)
    message = str(caught.value)
    assert url in message and "404" in message and "1 attempt" in message
    assert web.hits("/missing.csv") == 1
    assert cache_listing(tmp_path) == []


def test_persistent_503_gives_up_naming_url_status_and_attempts(web, tmp_path):
    url = web.script("/down.csv", Reply(503))
    with pytest.raises(ConnectionError) as caught:
        fetch(url, tmp_path, retries=2, **FAST)
    message = str(caught.value)
    assert url in message and "503" in message and "3 attempt" in message
    assert web.hits("/down.csv") == 3
    assert cache_listing(tmp_path) == []


@pytest.mark.parametrize("retry_after, expected_wait", [("2", 2.0), ("3600", remote.RETRY_AFTER_CAP_S)])
def test_retry_after_is_honoured_and_capped(web, tmp_path, monkeypatch, retry_after, expected_wait):
    waits: list[float] = []
    monkeypatch.setattr(remote, "_sleep", waits.append)  # observe the wait without spending it
    url = web.script("/busy.csv", Reply(429, headers={"Retry-After": retry_after}), Reply(200, b"ok\n"))
    assert fetch(url, tmp_path, **FAST).read_bytes() == b"ok\n"
    assert waits == [expected_wait]
    assert web.hits("/busy.csv") == 2


def test_backoff_doubles_without_retry_after(web, tmp_path, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(remote, "_sleep", waits.append)
    url = web.script("/down.csv", Reply(500))
    with pytest.raises(ConnectionError):
        fetch(url, tmp_path, retries=3, backoff_s=0.5)
    assert waits == [0.5, 1.0, 2.0]  # no wait after the last attempt


def test_truncated_response_is_retried(web, tmp_path):
    body = b"time,x\n" + b"2020-01-01T00:00:00Z,1\n" * 10
    url = web.script("/cut.csv", Reply(200, body[:20], declared_length=len(body)), Reply(200, body))
    assert fetch(url, tmp_path, **FAST).read_bytes() == body
    assert web.hits("/cut.csv") == 2


def test_always_truncated_fails_without_partial_file(web, tmp_path):
    url = web.script("/cut.csv", Reply(200, b"time,x\n2020", declared_length=500))
    with pytest.raises(ConnectionError) as caught:
        fetch(url, tmp_path, retries=1, **FAST)
    assert url in str(caught.value) and "truncated" in str(caught.value) and "2 attempt" in str(caught.value)
    assert cache_listing(tmp_path) == []


@pytest.mark.parametrize("failure", [
    Reply(200, b"new,but,cut", declared_length=100),
    Reply(503),
    Reply(404),
])
def test_failed_refresh_keeps_previous_copy(web, tmp_path, failure):
    url = web.script("/data.csv", Reply(200, b"old\n"), failure)
    cached = fetch(url, tmp_path, **FAST)
    listing = cache_listing(tmp_path)
    assert listing == [cached.name, cached.name + ".meta.json"]
    with pytest.raises((ConnectionError, CatalogError)):
        fetch(url, tmp_path, refresh=True, retries=1, **FAST)
    assert cached.read_bytes() == b"old\n"
    assert cache_listing(tmp_path) == listing  # no '.part' file left behind


def test_timeout_is_retried_then_reported(web, tmp_path):
    url = web.script("/slow.csv", Reply(200, b"late\n", delay_s=3))
    with pytest.raises(ConnectionError) as caught:
        fetch(url, tmp_path, retries=1, backoff_s=0.001, timeout_s=0.2)
    assert url in str(caught.value) and "2 attempt" in str(caught.value)
    assert web.hits("/slow.csv") == 2


def test_connection_refused_is_retried_then_reported(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/events.csv"
    with pytest.raises(ConnectionError, match=r"no HTTP status.*2 attempt"):
        fetch(url, tmp_path, retries=1, **FAST)


def test_guard_blocks_other_hosts(tmp_path):
    with pytest.raises(NonLoopbackTraffic):
        fetch("https://earthquake.usgs.gov/fdsnws/event/1/query", tmp_path, retries=0, **FAST)


# --------------------------------------------------------------------------------------------------------------------
# FDSN


def test_fdsn_query_url():
    url = fdsn_event_query_url(
        starttime="2020-01-01", endtime=datetime(2020, 2, 1, 2, tzinfo=timezone(timedelta(hours=2))),
        minlatitude=32.5, maxlatitude=37, minmagnitude=2.5, limit=100,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://earthquake.usgs.gov/fdsnws/event/1/query"
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "format": "csv", "starttime": "2020-01-01T00:00:00", "endtime": "2020-02-01T00:00:00",  # UTC
        "minlatitude": "32.5", "maxlatitude": "37", "minmagnitude": "2.5", "orderby": "time-asc", "limit": "100",
    }


@pytest.mark.parametrize("kwargs, message", [
    ({"starttime": "2020-02-01", "endtime": "2020-01-01"}, "before endtime"),
    ({"starttime": "last tuesday", "endtime": "2020-01-01"}, "starttime"),
    ({"starttime": "2020-01-01", "endtime": "2020-02-01", "minmagnitude": 5, "maxmagnitude": 3}, "minmagnitude"),
    ({"starttime": "2020-01-01", "endtime": "2020-02-01", "limit": 0}, "limit"),
])
def test_fdsn_query_url_rejects_bad_input(kwargs, message):
    with pytest.raises(CatalogError, match=message):
        fdsn_event_query_url(**kwargs)


def expected_events(web: FakeWeb, start: datetime, end: datetime, min_mag: float = float("-inf")) -> set[str]:
    return {e["id"] for e in web.events if start <= parse_time(e["time"]) <= end and float(e["mag"]) >= min_mag}


@pytest.mark.parametrize("empty_reply, newest_first", [("204", False), ("header", True)])
def test_fdsn_download_splits_full_windows(web, tmp_path, empty_reply, newest_first):
    web.fdsn_empty_reply, web.fdsn_newest_first = empty_reply, newest_first
    start, end = CATALOG_START, CATALOG_START + timedelta(days=50)
    web.events = [e for e in web.events if parse_time(e["time"]) != TRIPLE_TIME]  # keep every window splittable
    path = download_fdsn_catalog(tmp_path, starttime=start, endtime=end, base_url=web.url(FDSN_PATH),
                                 max_events_per_query=4, chunk_days=CHUNK_DAYS, **FAST)
    assert path.parent == tmp_path and path.name.startswith("fdsn-") and path.suffix == ".csv"
    header, rows = read_csv(path)
    assert header == list(COMCAT_CSV_COLUMNS)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) and set(ids) == expected_events(web, start, end)  # each event exactly once
    times = [parse_time(row["time"]) for row in rows]
    assert times == sorted(times)
    assert any(parse_time(row["time"]) == BOUNDARY_TIME for row in rows)
    assert all(", CA" in row["place"] for row in rows)  # quoted fields survive the merge
    windows = [parse_time(q["endtime"]) - parse_time(q["starttime"]) for q in web.queries(FDSN_PATH)]
    assert min(windows) < timedelta(days=1)  # the burst forced repeated halving
    assert all(q["limit"] == "4" for q in web.queries(FDSN_PATH))


def test_fdsn_download_filters_and_reuses_merged_file(web, tmp_path):
    start, end = CATALOG_START, CATALOG_START + timedelta(days=50)
    kwargs = dict(starttime=start, endtime=end, base_url=web.url(FDSN_PATH), minmagnitude=3.0, chunk_days=20, **FAST)
    path = download_fdsn_catalog(tmp_path, **kwargs)
    _, rows = read_csv(path)
    assert {row["id"] for row in rows} == expected_events(web, start, end, 3.0)
    assert all(float(row["mag"]) >= 3.0 for row in rows)
    requests = web.hits(FDSN_PATH)
    assert download_fdsn_catalog(tmp_path, **kwargs) == path
    assert web.hits(FDSN_PATH) == requests  # merged file reused, no request
    download_fdsn_catalog(tmp_path, refresh=True, **kwargs)
    assert web.hits(FDSN_PATH) == 2 * requests


def test_fdsn_range_without_events_gives_header_only(web, tmp_path):
    path = download_fdsn_catalog(tmp_path, starttime="2019-01-01", endtime="2019-06-01",
                                 base_url=web.url(FDSN_PATH), chunk_days=100, **FAST)
    assert path.read_text().strip() == ",".join(COMCAT_CSV_COLUMNS)


def test_fdsn_events_at_one_instant_beyond_the_cap_fail_clearly(web, tmp_path):
    with pytest.raises(CatalogError, match="too many for one query"):
        download_fdsn_catalog(tmp_path, starttime=TRIPLE_TIME - timedelta(hours=1),
                              endtime=TRIPLE_TIME + timedelta(hours=1), base_url=web.url(FDSN_PATH),
                              max_events_per_query=2, **FAST)
    assert not any(name.startswith("fdsn-") for name in cache_listing(tmp_path))


def test_fdsn_service_error_is_reported(web, tmp_path):
    web.script(FDSN_PATH, Reply(400, b"Error 400: bad request"))
    with pytest.raises(CatalogError, match="400"):
        download_fdsn_catalog(tmp_path, starttime="2020-01-01", endtime="2020-01-05", base_url=web.url(FDSN_PATH),
                              **FAST)


def test_unknown_fetch_option_is_rejected(tmp_path):
    with pytest.raises(TypeError, match="retires"):
        download_fdsn_catalog(tmp_path, starttime="2020-01-01", endtime="2020-01-02", retires=2)
    with pytest.raises(TypeError, match="retires"):
        download_socrata("http://127.0.0.1:9/resource/x.csv", tmp_path, retires=2)


# --------------------------------------------------------------------------------------------------------------------
# Socrata


def test_socrata_query_url_encodes_parameters():
    where = "date > '2021-01-01' AND primary_type = 'THEFT' & x+y"
    url = socrata_query_url("https://data.cityofchicago.org/resource/ijzp-q8t2.csv", where=where,
                            select="id,date", order=":id", limit=500, offset=1000)
    parts = urlsplit(url)
    assert parts.path == "/resource/ijzp-q8t2.csv"
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "$where": where, "$select": "id,date", "$order": ":id", "$limit": "500", "$offset": "1000"}
    assert " " not in url and "+" not in parts.query


@pytest.mark.parametrize("page_size, expected_requests", [(5, 5), (23, 2), (100, 1)])
def test_socrata_pages_until_a_short_page(web, tmp_path, page_size, expected_requests):
    path = download_socrata(web.url(SOCRATA_PATH), tmp_path, page_size=page_size, **FAST)
    assert path.parent == tmp_path and path.name.startswith("socrata-") and path.suffix == ".csv"
    header, rows = read_csv(path)
    assert header == SOCRATA_COLUMNS
    assert rows == sorted(web.socrata_rows, key=lambda r: r["id"])  # all rows, once, quoted fields intact
    assert path.read_text().count("id,date,") == 1  # one header
    assert web.hits(SOCRATA_PATH) == expected_requests
    offsets = [int(q["$offset"]) for q in web.queries(SOCRATA_PATH)]
    assert offsets == [page_size * i for i in range(expected_requests)]


def test_socrata_max_rows(web, tmp_path):
    path = download_socrata(web.url(SOCRATA_PATH), tmp_path, page_size=5, max_rows=12, where="x = 1", **FAST)
    _, rows = read_csv(path)
    assert len(rows) == 12
    queries = web.queries(SOCRATA_PATH)
    assert [q["$limit"] for q in queries] == ["5", "5", "2"]
    assert all(q["$where"] == "x = 1" and q["$order"] == ":id" for q in queries)
    assert download_socrata(web.url(SOCRATA_PATH), tmp_path, page_size=5, max_rows=12, where="x = 1", **FAST) == path
    assert web.hits(SOCRATA_PATH) == 3  # merged file reused
