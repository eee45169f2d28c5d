"""The Dask graph end to end: CLI, column mapping, spatial windows, spikes, clusters, local time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.ingest import run_ingest
from stforecast.config import build_config
from stforecast.io.tables import TableSpec, parse_times


def test_wmaze_spikes_matched_to_positions(settings, out_root):
    r = run_ingest(settings.catalog("wmaze"), settings, out_root=out_root, progress=False)
    c = r.manifest["counts"]
    assert c["rows_read"] == 518_352  # data README: 518,352 spikes in 25 clusters
    reasons = {x["reason"].split(" (")[0]: x["rows"] for x in c["rejected"]}
    # default: the multi-unit cluster t09c14 is dropped and spikes at rest (< 5 px/s) with it
    assert sum(v for k, v in reasons.items() if k.startswith("multi-unit")) == 461_464
    assert c["events_kept"] == 26_767  # 518,352 - 461,464 multi-unit - 30,121 below 5 px/s; all others matched
    ev = pd.read_parquet(r.out_dir / "events.parquet")
    assert ev["x"].between(183, 525).all() and ev["y"].between(121, 479).all()  # camera pixels
    # 25 clusters - t09c14 (multi-unit) - t00c08 and t10c01, which fire only at rest (all their spikes < 5 px/s)
    assert ev["unit"].nunique() == 22 and not {"t09c14", "t00c08", "t10c01"} & set(ev["unit"])
    assert np.all(np.diff(ev["t"].to_numpy()) > 0)  # shared timestamps across units are broken apart
    assert r.manifest["schema"]["spatial_unit"] == "pixel" and r.manifest["schema"]["crs_model"] is None
    assert r.manifest["spikes"]["position_samples"] == 261_995
    s = c["splits"]  # running periods only (rest is removed by the speed filter): see data/catalogs.toml
    assert [s[k]["targets"] for k in ("train", "val", "test")] == [20_332, 2_986, 3_449]


def test_cli_generic_table_with_column_mapping(settings, tmp_path, capsys):
    """A user's own Parquet table, day-first local times, custom columns: no code needed."""
    rng = np.random.default_rng(1)
    n = 400
    times = pd.date_range("2021-06-01", periods=n, freq="37min")  # British Summer Time: UTC+1
    pd.DataFrame({
        "when": times.strftime("%d/%m/%Y %H:%M"), "lon": -0.1 + rng.normal(0, 0.02, n),
        "lat": 51.5 + rng.normal(0, 0.02, n), "kind": rng.choice(["burglary", "theft"], n), "ref": np.arange(n),
    }).to_parquet(tmp_path / "mine.parquet", row_group_size=100)
    rc = main(["ingest", "table", "--name", "mine", "--path", str(tmp_path / "mine.parquet"), "--out", str(tmp_path / "o"),
               "--time-col", "when", "--x-col", "lon", "--y-col", "lat", "--category-col", "kind", "--id-col", "ref",
               "--time-format", "%d/%m/%Y %H:%M", "--tz", "Europe/London", "--time-unit", "hours",
               "--length-unit", "m", "--history-start", "2021-06-01", "--train-start", "2021-06-02",
               "--val-start", "2021-06-08", "--test-start", "2021-06-09", "--end", "2021-06-12",
               "--seq-window", "24", "--no-progress", "--workers", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "read" in out and "400" in out and "sequences per split" in out
    m = json.loads((tmp_path / "o" / "mine" / "manifest.json").read_text())
    assert m["counts"]["rows_read"] == n and m["schema"]["marks"] == ["category"]
    assert m["schema"]["crs_model"].startswith("+proj=aeqd") and m["schema"]["spatial_unit"] == "m"
    ev = pd.read_parquet(tmp_path / "o" / "mine" / "events.parquet")
    assert ev["time"].iloc[0] == pd.Timestamp("2021-05-31 23:00", tz="UTC")  # 00:00 BST


def test_cli_reports_bad_input_without_traceback(settings, tmp_path, capsys):
    p = tmp_path / "bad.csv"
    p.write_text("time,latitude,longitude,mag,id\n2020-01-01T00:00:00Z,1,2,3,a\n2020-01-02T00:00:00Z,1,900,3,b\n")
    rc = main(["ingest", "earthquakes", "--path", str(p), "--out", str(tmp_path / "o"), "--no-progress",
               "--history-start", "2020-01-01", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad.csv, line 3 (row 2), field 'longitude': longitude out of range" in err
    assert "Traceback" not in err


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    out = capsys.readouterr().out
    for words in ("--quarantine", "--scheduler", "--time-col", "examples:", "targets never cross splits"):
        assert words in out


def test_spatial_window_polygon_and_filters(settings, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    poly = tmp_path / "kanto.geojson"
    gpd.GeoDataFrame(geometry=[box(138.5, 34.5, 141.0, 37.0)], crs="EPSG:4326").to_file(poly, driver="GeoJSON")
    cfg = settings.catalog("japan", {"filters": {"polygon": str(poly), "magnitude_min": 4.0}})
    r = run_ingest(cfg, settings, out_root=tmp_path / "o", progress=False)
    raw = pd.read_csv(settings.data_root / "earthquakes/japan_usgs/japan_catalog.csv")
    # `within` excludes the boundary (several events lie exactly on 141.0 E or 37.0 N)
    inside = raw.longitude.between(138.5, 141, inclusive="neither") & raw.latitude.between(34.5, 37, inclusive="neither")
    expected = int((inside & (raw.magnitude >= 4.0) & (raw.time < "2020-01-01")).sum())
    assert r.manifest["counts"]["events_kept"] == expected
    reasons = {x["reason"]: x["rows"] for x in r.manifest["counts"]["rejected"]}
    assert reasons["magnitude below 4.0"] == int((raw.magnitude < 4.0).sum())
    assert reasons["outside the spatial window"] == int(((raw.magnitude >= 4.0) & ~inside).sum())


def test_same_graph_on_an_existing_cluster(settings, tmp_path, capsys):
    """--scheduler ADDRESS runs the graph on a distributed cluster (a 2-worker LocalCluster here)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      processes=True) as cluster:
        rc = main(["ingest", "earthquakes", "ridgecrest", "--out", str(tmp_path / "o"), "--scheduler",
                   cluster.scheduler_address, "--no-progress"])
        assert rc == 0
        run_ingest(settings.catalog("ridgecrest"), settings, out_root=tmp_path / "local", progress=False)
    a = pd.read_parquet(tmp_path / "o" / "ridgecrest" / "sequences")
    b = pd.read_parquet(tmp_path / "local" / "ridgecrest" / "sequences")
    pd.testing.assert_frame_equal(a, b)  # same result whatever runs the graph
    rc = main(["ingest", "earthquakes", "ridgecrest", "--out", str(tmp_path / "o"), "--no-progress", "--workers", "1"])
    assert "Up to date" in capsys.readouterr().out


def test_chunked_and_whole_file_agree(settings, tmp_path):
    cfg = settings.catalog("japan")
    a = run_ingest(cfg, settings, out_root=tmp_path / "a", progress=False, blocksize=256 * 1024)
    b = run_ingest(cfg, settings, out_root=tmp_path / "b", progress=False, blocksize=None)
    pd.testing.assert_frame_equal(pd.read_parquet(a.out_dir / "events.parquet"),
                                  pd.read_parquet(b.out_dir / "events.parquet"))


@pytest.mark.parametrize("local, utc, note", [
    ("2019-11-03 01:30", "2019-11-03 06:30", "ambiguous: first occurrence (CDT, UTC-5)"),
    ("2019-03-10 02:30", "2019-03-10 08:00", "nonexistent: moved to 03:00 CDT"),
    ("2019-07-04 12:00", "2019-07-04 17:00", "summer: CDT"),
    ("2019-01-15 12:00", "2019-01-15 18:00", "winter: CST"),
])
def test_chicago_daylight_saving(local, utc, note):
    spec = TableSpec(time_col="date", x_col="x", y_col="y", time_format="%Y-%m-%d %H:%M", tz="America/Chicago")
    out, info = parse_times(pd.Series([local]), spec)
    assert out.iloc[0] == pd.Timestamp(utc, tz="UTC"), note


def test_zone_suffix_detection_only_for_iso_times():
    spec = TableSpec(time_col="t", x_col="x", y_col="y", time_format="%Y%m%d-%H%M", tz="America/Chicago")
    out, _ = parse_times(pd.Series(["20190115-1230"]), spec)
    assert out.iloc[0] == pd.Timestamp("2019-01-15 18:30", tz="UTC")  # '-1230' is the clock time, not a zone


def test_ties_never_cross_a_split_boundary(settings, tmp_path):
    rows = ["time,latitude,longitude,mag,id"] + [f"2020-01-{d:02d}T12:00:00Z,35,139,3,e{d}" for d in range(2, 31)]
    rows += ["2020-01-31T23:59:59.995Z,35,139,3,tie1", "2020-01-31T23:59:59.995Z,35.1,139,3,tie2"]
    p = tmp_path / "c.csv"
    p.write_text("\n".join(rows) + "\n")
    cfg = build_config("c", {"kind": "earthquakes", "format": "comcat", "path": str(p), "tie_resolution_s": 0.01,
                             "split": {"history_start": "2020-01-01", "train_start": "2020-01-02",
                                       "val_start": "2020-01-20", "test_start": "2020-01-25", "end": "2020-02-01"},
                             "sequences": {"mode": "windows", "window": 3.0, "history_events": 2, "min_targets": 1}})
    r = run_ingest(cfg, settings, out_root=tmp_path / "o", progress=False)
    ev = pd.read_parquet(r.out_dir / "events.parquet")
    assert set(ev["split"]) <= {"train", "val", "test"}  # nothing pushed past `end`
    assert (ev.loc[ev.event_id.isin(["tie1", "tie2"]), "split"] == "test").all()
    assert r.manifest["counts"]["splits"]["test"]["targets"] == int((ev["split"] == "test").sum())


def test_sf_zone_suffix_is_ignored():
    spec = TableSpec(time_col="t", x_col="x", y_col="y", tz="America/Los_Angeles", ignore_zone_suffix=True)
    out, _ = parse_times(pd.Series(["2019-01-01T19:50:00Z"]), spec)
    assert out.iloc[0] == pd.Timestamp("2019-01-02 03:50", tz="UTC")


def test_config_typo_is_named(settings):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['filters.magnitude_mn'\]"):
        settings.catalog("japan", {"filters": {"magnitude_mn": 3}})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['pathh'\]"):
        build_config("x", {"kind": "crime", "pathh": "a.csv"})
    with pytest.raises(ValueError, match="setting sequences.window must be a number, not 'long'"):
        build_config("x", {"kind": "crime", "sequences": {"window": "long"}})


# ------------------------------------------------------------------------------------------ network sources
import contextlib
import dataclasses
import http.server
import threading
import urllib.parse


@contextlib.contextmanager
def serve(respond):
    """A local HTTP server on 127.0.0.1 (ephemeral port) that stops when the block ends, even on failure.
    ``respond(path) -> bytes`` makes each GET's body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = respond(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_reader_takes_a_url(settings, tmp_path, data_root):
    body = (data_root / "earthquakes/ridgecrest_2019_sample/catalog.csv").read_bytes()
    hits = []

    def respond(path):
        hits.append(path)
        return body

    local = dataclasses.replace(settings, cache_dir=tmp_path / "cache")
    with serve(respond) as url:
        cfg = settings.catalog("ridgecrest", {"path": f"{url}/catalog.csv"})
        r = run_ingest(cfg, local, out_root=tmp_path / "o", progress=False)
        assert r.manifest["counts"]["events_kept"] == 829
        again = run_ingest(cfg, local, out_root=tmp_path / "o", progress=False)
    assert again.skipped and hits == ["/catalog.csv"]  # cached: the second run asked nothing


def test_fdsn_download_through_the_pipeline(settings, tmp_path):
    """`download = {service = "fdsn", ...}` pages a FDSN event service (here a local imitation) into ComCat CSV."""
    rng = np.random.default_rng(3)
    times = pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(np.sort(rng.uniform(0, 60, 300)), unit="D")
    catalog = pd.DataFrame({"time": times.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z",
                            "latitude": 35 + rng.normal(0, 1, 300), "longitude": -118 + rng.normal(0, 1, 300),
                            "depth": 8.0, "mag": np.round(2.5 + rng.exponential(0.4, 300), 2), "magType": "ml",
                            "id": [f"ci{i:06d}" for i in range(300)], "place": "somewhere, CA", "type": "earthquake"})
    queries = []

    def respond(path):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(path).query))
        queries.append(q)
        start, end = pd.Timestamp(q["starttime"], tz="UTC"), pd.Timestamp(q["endtime"], tz="UTC")
        t = pd.to_datetime(catalog["time"], utc=True)
        sel = catalog[(t >= start) & (t < end) & (catalog["mag"] >= float(q.get("minmagnitude", -9)))]
        return (sel.head(int(q["limit"])) if "limit" in q else sel).to_csv(index=False).encode()

    local = dataclasses.replace(settings, cache_dir=tmp_path / "cache")
    with serve(respond) as url:
        cfg = build_config("fdsn", {
            "kind": "earthquakes", "format": "comcat",
            "download": {"service": "fdsn", "base_url": f"{url}/fdsnws/event/1/query", "starttime": "2020-01-01",
                         "endtime": "2020-03-01", "minmagnitude": 2.5, "chunk_days": 20, "max_events_per_query": 100},
            "split": {"history_start": "2020-01-01", "train_start": "2020-01-05", "val_start": "2020-02-01",
                      "test_start": "2020-02-15", "end": "2020-03-01"},
            "sequences": {"mode": "windows", "window": 7.0, "history_events": 8}})
        r = run_ingest(cfg, local, out_root=tmp_path / "o", progress=False)
    assert r.manifest["counts"]["rows_read"] == 300 and r.manifest["counts"]["events_kept"] == 300
    assert len(queries) >= 3  # paged by time
    ev = pd.read_parquet(r.out_dir / "events.parquet")
    assert sorted(ev["event_id"]) == sorted(catalog["id"])  # every event exactly once
