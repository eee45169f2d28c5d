"""What a person sees when `stforecast ingest` meets bad input: exit code 2 and ONE `error:` line on stderr that names
the file, the line (row) and the field, with no traceback and no Dask worker log; and what is kept on disk.

The CLI tests run the real command in a subprocess, so the output of the Dask worker processes is captured too."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.ingest import run_ingest
from stforecast.io.atomic import atomic_dir
from stforecast.config import IngestConfig, check_name, load_settings, safe_name

from .test_bad_input import GOOD_ROWS, HEADER, cfg_for, comcat, one_bad

REPO = Path(__file__).resolve().parent.parent
SPLIT = ["--history-start", "2020-01-01", "--train-start", "2020-01-02", "--val-start", "2020-01-20",
         "--test-start", "2020-01-24", "--end", "2020-02-01", "--seq-window", "3"]


def cli(*args: str, cwd: Path = REPO, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ingest_cli(path, out, *extra, kind="earthquakes", cwd=REPO):
    return cli("ingest", kind, "--path", str(path), "--out", str(out), "--no-progress", "--workers", "1", *SPLIT,
               *extra, cwd=cwd)


def one_error_line(p: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 2, exactly one non-empty stderr line, starting `error:`, no traceback, no worker log."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-4000:])
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in p.stderr and "distributed.worker" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def write_bytes_rows(tmp_path, rows: list[bytes], name="cat.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(b"\n".join([HEADER.encode(), *rows]) + b"\n")
    return p


def good_bytes() -> list[bytes]:
    return [r.encode() for r in GOOD_ROWS]


def no_temp_folders(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------------------------ 1. bytes that are not UTF-8
def test_non_utf8_row_is_named_with_line_row_field_and_byte_offset(tmp_path):
    rows = good_bytes()
    rows[18] = rows[18].replace(b",ml,", b",m\xe9l,")  # line 20; magType column
    path = write_bytes_rows(tmp_path, rows)
    offset = len(HEADER) + 1 + sum(len(r) + 1 for r in rows[:18]) + rows[18].index(b"\xe9")
    line = one_error_line(ingest_cli(path, tmp_path / "out"),
                          "cat.csv, line 20 (row 19), field 'magType'", "not valid utf-8", "--encoding",
                          f"byte offset {offset}", "0xe9")
    assert "--quarantine" in line
    assert not (tmp_path / "out" / "cat").exists()


def test_binary_file_is_named(tmp_path):
    p = tmp_path / "junk.csv"
    p.write_bytes(bytes(range(256)) * 40)  # NUL in the first "line"
    one_error_line(ingest_cli(p, tmp_path / "out"), "junk.csv, line 1 (header)", "binary file", "byte offset 0")
    p.write_bytes(b"\xff\xfet\x00i\x00m\x00e\x00\n\x00")  # UTF-16 text: not ASCII-compatible
    one_error_line(ingest_cli(p, tmp_path / "out"), "junk.csv, line 1 (header)")
    p.write_bytes(b"t\xe9me,latitude,longitude\n2020-01-01,1,2\n")
    one_error_line(ingest_cli(p, tmp_path / "out"), "junk.csv, line 1 (header)", "not valid utf-8",
                   "byte offset 1", "--encoding")


def test_quarantine_sets_an_undecodable_row_aside(settings, tmp_path):
    rows = good_bytes()
    rows[4] = rows[4].replace(b",ml,", b",\xff\xfe,")  # line 6
    path = write_bytes_rows(tmp_path, rows)
    r = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False, quarantine=True)
    rej = pd.read_parquet(r.out_dir / "rejected.parquet")
    assert rej[["line", "row", "field"]].values.tolist() == [[6, 5, "magType"]]
    assert rej["reason"].iloc[0].startswith("not valid utf-8 text")
    assert "byte 0xff at byte offset" in rej["value"].iloc[0]
    assert r.manifest["counts"]["events_kept"] == len(GOOD_ROWS) - 1
    assert r.manifest["counts"]["rows_read"] == len(GOOD_ROWS)


def test_latin1_catalog_read_with_encoding_flag_and_config_key(settings, tmp_path):
    kinds = ["café", "théâtre", "Straße"]
    lines = ["when,lon,lat,kind"] + [f"2021-06-{1 + i // 24:02d}T{i % 24:02d}:00:00Z,{-0.1 + i / 1000:.4f},51.5,"
                                     f"{kinds[i % 3]}" for i in range(24 * 11)]
    p = tmp_path / "latin.csv"
    p.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    mapping = ["--time-col", "when", "--x-col", "lon", "--y-col", "lat", "--category-col", "kind",
               "--history-start", "2021-06-01", "--train-start", "2021-06-02", "--val-start", "2021-06-08",
               "--test-start", "2021-06-09", "--end", "2021-06-12", "--seq-window", "1"]
    common = ["ingest", "table", "--path", str(p), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1",
              *mapping]
    refused = cli(*common)  # without the flag: every row is named (one per line, a bounded list)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "latin.csv, line 2 (row 1), field 'kind': not valid utf-8 text" in refused.stderr
    done = cli(*common, "--encoding", "latin-1")
    assert done.returncode == 0, done.stderr
    ev = pd.read_parquet(tmp_path / "out" / "latin" / "events.parquet")
    assert sorted(ev["category"].unique()) == sorted(kinds)
    # the same as a catalog config key: [catalogs.NAME] table = { encoding = "latin-1", ... }
    conf = tmp_path / "data" / "catalogs.toml"
    conf.parent.mkdir()
    conf.write_text(f"""[catalogs.latin_cfg]
kind = "table"
path = "{p}"
table = {{ time_col = "when", x_col = "lon", y_col = "lat", category_col = "kind", encoding = "latin-1" }}
split = {{ history_start = "2021-06-01", train_start = "2021-06-02", val_start = "2021-06-08", test_start = "2021-06-09", end = "2021-06-12" }}
sequences = {{ window = 1.0 }}
""")
    s = load_settings(conf)
    r = run_ingest(s.catalog("latin_cfg"), s, out_root=tmp_path / "out", progress=False)
    assert sorted(pd.read_parquet(r.out_dir / "events.parquet")["category"].unique()) == sorted(kinds)


def test_unknown_or_wide_encoding_refused(tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    one_error_line(ingest_cli(path, tmp_path / "out", "--encoding", "latin-99"), "--encoding", "'latin-99'")
    one_error_line(ingest_cli(path, tmp_path / "out", "--encoding", "utf-16"), "--encoding", "not ASCII-compatible")


# ------------------------------------------------------------------------------------ 2. quotes and short rows
def test_unclosed_quote_is_named_by_file_and_line(tmp_path):
    rows = one_bad(GOOD_ROWS, 18, GOOD_ROWS[18].replace(",ml,", ',"ml,'))  # line 20
    line = one_error_line(ingest_cli(comcat(tmp_path, rows), tmp_path / "out"),
                          "cat.csv, line 20 (row 19), field 'magType'", "unclosed quote")
    assert "tokenizing" not in line


def test_quoted_fields_still_parse(settings, tmp_path):
    rows = [r.replace(",ml,", ',"m,l",') if i % 2 else r.replace(",ml,", ',"m""l",') for i, r in enumerate(GOOD_ROWS)]
    r = run_ingest(cfg_for(comcat(tmp_path, rows)), settings, out_root=tmp_path / "out", progress=False)
    assert r.manifest["counts"]["events_kept"] == len(GOOD_ROWS)


def test_vectorised_line_checks_agree_with_the_csv_module():
    """Field counts and unclosed quotes found over the chunk's bytes match Python's csv module line by line."""
    import csv
    import random

    from stforecast.io import tables

    rng = random.Random(3)
    header = ["a", "b", "c", "d"]
    spec = tables.TableSpec(time_col="a", x_col="b", y_col="c")
    pieces = ["x", "1.5", "", '"x,y"', '""', '"q""r"', '","', '"a,""b,"",c"', '5" pipe', '"open', 'a"b', '"x"y']
    lines = [",".join(rng.choice(pieces) for _ in range(rng.choice([1, 2, 3, 4, 4, 4, 5]))) for _ in range(4000)]
    data = ("\r\n".join(lines) + "\r\n").encode()
    starts, ends = tables._line_bounds(data)
    bad = tables._bad_lines(data, starts, ends, header, spec, 0)
    for i, text in enumerate(lines):
        try:
            n, unclosed = len(next(csv.reader([text], strict=True))), False
        except csv.Error as e:
            unclosed = "unexpected end of data" in str(e)
            n = None if unclosed else len(next(csv.reader([text])))
        if unclosed:
            assert "unclosed quote" in bad[i][2], text
        elif n == 4 or text == "":
            assert i not in bad, text
        else:
            assert bad[i][1] == f"{n} fields", text
    # blank lines are skipped, not malformed, and rows keep their numbers (regular chunks take the fast path)
    for body, rows in ((b"2020-01-01,1,2,x\n\n2020-01-02,1,2,y\n", [1, 3]), (b'2020-01-01,1,2,"x"\n\n2,1,2,y', [1, 3]),
                       (b"2020-01-01,1,2,x\n2020-01-02,1,2,y\n", [1, 2]), (b"a,1,2,x\r\nb,1,2,y", [1, 2])):
        if b"\n\n" in body:  # an empty line is short: the fast path must hand the chunk to the line checks
            assert tables._parse_regular(body, {}, header, spec) is None
        frame, rejects = tables._parse_text(body, header, spec, "f.csv", 1)
        assert frame["_row"].tolist() == rows and rejects.empty


def test_short_row_is_a_malformed_row_not_a_missing_value(tmp_path):
    short = ",".join(GOOD_ROWS[18].split(",")[:4])  # 4 of 7 fields, line 20
    one_error_line(ingest_cli(comcat(tmp_path, one_bad(GOOD_ROWS, 18, short)), tmp_path / "out"),
                   "cat.csv, line 20 (row 19), field 'mag'", "malformed row: fewer fields than the 7 in the header",
                   "4 fields")


# ------------------------------------------------------------------------------------ 3. worker logs
def test_worker_log_filter_drops_only_catalog_errors():
    from pipelines.worker_logging import CatalogErrorFilter

    def record(exc_text, msg="Compute Failed\nKey: %s\nState: %s\nTask: %s\nException: %r\nTraceback: %r\n"):
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg,
                                 ("k", "executing", "task", exc_text, "tb"), None)

    f = CatalogErrorFilter()
    assert not f.filter(record("CatalogError('cat.csv, line 3 ...')"))
    assert f.filter(record("RuntimeError('a bug')"))  # unexpected errors stay visible
    assert f.filter(record("ValueError('CatalogError(')"))
    assert f.filter(logging.LogRecord("distributed.worker", logging.WARNING, __file__, 1, "other %s", ("x",), None))


def test_unexpected_worker_errors_stay_visible(tmp_path):
    """On a real LocalCluster with the plugin installed: a RuntimeError is logged by the worker, a CatalogError not."""
    script = """
import logging
from distributed import Client, LocalCluster
from pipelines.worker_logging import install
from stforecast.catalog import CatalogError

def bad_input():
    raise CatalogError("cat.csv, line 3: expected")

def bug():
    raise RuntimeError("unexpected-bug")

if __name__ == "__main__":
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        install(client)
        for fn in (bad_input, bug):
            try:
                client.submit(fn, pure=False).result()
            except Exception as e:
                print("raised", type(e).__name__)
"""
    (tmp_path / "s.py").write_text(script)
    p = subprocess.run([sys.executable, str(tmp_path / "s.py")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "raised CatalogError" in p.stdout and "raised RuntimeError" in p.stdout
    assert p.stderr.count("Compute Failed") == 1 and "unexpected-bug" in p.stderr
    assert "CatalogError" not in p.stderr


# ------------------------------------------------------------------------------------ 4. relative paths
def test_relative_path_current_directory_first_then_data_root(tmp_path):
    here, root = tmp_path / "here", tmp_path / "root"
    here.mkdir(), root.mkdir()
    comcat(here, GOOD_ROWS[:100], "ev.csv")
    comcat(root, GOOD_ROWS, "ev.csv")
    comcat(root, GOOD_ROWS[:120], "only_root.csv")
    out = tmp_path / "out"
    p = ingest_cli("ev.csv", out, "--data-root", str(root), cwd=here)
    assert p.returncode == 0, p.stderr
    assert f"--path ev.csv: using {here / 'ev.csv'} (found in the current directory)" in p.stdout
    assert json.loads((out / "ev" / "manifest.json").read_text())["counts"]["rows_read"] == 100
    p = ingest_cli("only_root.csv", out, "--data-root", str(root), cwd=here)
    assert p.returncode == 0, p.stderr
    assert f"--path only_root.csv: using {root / 'only_root.csv'} (found in the data root)" in p.stdout
    assert json.loads((out / "only_root" / "manifest.json").read_text())["counts"]["rows_read"] == 120
    one_error_line(ingest_cli("nowhere.csv", out, "--data-root", str(root), cwd=here),
                   "--path nowhere.csv", str(here / "nowhere.csv"), str(root / "nowhere.csv"))


def test_catalog_paths_from_the_config_still_start_at_the_data_root(settings, tmp_path):
    (tmp_path / "earthquakes" / "ridgecrest_2019_sample").mkdir(parents=True)  # a same-named file in the cwd
    (tmp_path / "earthquakes" / "ridgecrest_2019_sample" / "catalog.csv").write_text("nothing,here\n")
    p = cli("ingest", "earthquakes", "ridgecrest", "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1",
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "out" / "ridgecrest" / "manifest.json").read_text())
    assert m["inputs"][0]["path"] == str(settings.data_root / "earthquakes/ridgecrest_2019_sample/catalog.csv")
    assert "found in the" not in p.stdout


# ------------------------------------------------------------------------------------ 5. names and atomic writes
@pytest.mark.parametrize("name", ["../escaped", "..", ".hidden", "a/b", ""])
def test_unsafe_names_refused(tmp_path, name):
    path = comcat(tmp_path, GOOD_ROWS)
    out = tmp_path / "deep" / "out"
    one_error_line(ingest_cli(path, out, "--name", name), "--name", repr(name), "letters, digits")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.csv"]  # nothing created, inside or outside OUT
    assert no_temp_folders(tmp_path)


def test_name_checks():
    for ok in ("japan", "my-cat_2.v1", "A"):
        assert check_name(ok) == ok
    for bad in ("..", ".", "../x", "x/y", "x\\y", ".x", "", "a b", None):
        with pytest.raises(ValueError, match="not a valid catalog name"):
            check_name(bad)
    assert safe_name("my events (2021)") == "my_events_2021_" and safe_name("..") == "catalog"
    with pytest.raises(ValueError, match="not a valid catalog name"):  # the library refuses it too
        run_ingest(IngestConfig(name="..", kind="table", path="x.csv"), load_settings(), progress=False)


@pytest.mark.parametrize("fail_on", ["tmp_to_target", "target_to_old"])
def test_atomic_dir_cleans_up_when_a_rename_fails(tmp_path, monkeypatch, fail_on):
    import stforecast.io.atomic as ing

    target = tmp_path / "out" / "cat"
    with atomic_dir(target) as tmp:  # a previous output, written by stforecast
        (tmp / "manifest.json").write_text("previous")
    real = os.replace

    def flaky(src, dst):
        src = Path(src)
        if (fail_on == "tmp_to_target" and ".tmp-" in src.name) or (fail_on == "target_to_old" and src == target):
            raise OSError(16, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(ing.os, "replace", flaky)
    with pytest.raises(OSError, match="busy"):
        with atomic_dir(target) as tmp:
            (tmp / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "previous"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat"]


def test_atomic_dir_refuses_dot_dot(tmp_path):
    with pytest.raises(ValueError, match="named folder"):
        with atomic_dir(tmp_path / "out" / ".."):
            pass
    assert no_temp_folders(tmp_path)


# ------------------------------------------------------------------------------------ 6. table metadata
def test_table_title_licence_source_reach_the_manifest(tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    p = cli("ingest", "table", "--name", "meta", "--path", str(path), "--out", str(tmp_path / "out"), "--no-progress",
            "--workers", "1", "--time-col", "time", "--x-col", "longitude", "--y-col", "latitude", *SPLIT,
            "--title", "My quakes", "--licence", "CC-BY-4.0", "--source", "https://example.org/quakes")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "out" / "meta" / "manifest.json").read_text())
    assert m["title"] == "My quakes"
    assert m["source"]["licence"] == "CC-BY-4.0" and m["source"]["url"] == "https://example.org/quakes"


def test_ingest_help_has_help_for_every_flag_and_no_dotted_metavars():
    import argparse

    from pipelines.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    ingest = sub.choices["ingest"]
    for action in ingest._actions:
        assert action.help, action.option_strings
    text = ingest.format_help()
    assert "SPLIT." not in text and "TABLE." not in text and "FILTERS." not in text and "SEQUENCES." not in text
    for flag in ("--encoding", "--title", "--licence", "--source", "--history-start DATE"):
        assert flag in text


# ------------------------------------------------------------------------------------ 7. benchmark an ad-hoc catalog
def test_adhoc_catalog_can_be_benchmarked(settings, tmp_path):
    from pipelines.benchmark import resolve_catalog, run_benchmark

    path = comcat(tmp_path, GOOD_ROWS)
    cfg = cfg_for(path, kind="table", format="table", name="adhoc",
                  table={"time_col": "time", "x_col": "longitude", "y_col": "latitude", "magnitude_col": "mag"})
    processed = tmp_path / "processed"
    run_ingest(cfg, settings, out_root=processed, progress=False)
    assert resolve_catalog("adhoc", settings, processed) == ("adhoc", (processed / "adhoc").resolve())
    assert resolve_catalog(str(processed / "adhoc"), settings)[0] == "adhoc"
    assert resolve_catalog("japan", settings, processed)[0] == "japan"  # config catalogs are still ingested
    with pytest.raises(FileNotFoundError, match="ingest it first"):
        resolve_catalog("nothing_here", settings, processed)
    table = run_benchmark(["adhoc"], quick=True, out=tmp_path / "bench", runs_dir=tmp_path / "runs",
                          processed_dir=processed, track=False, progress=False, log=lambda *a: None)
    assert set(table["catalog"]) == {"adhoc"} and "dstpp" in set(table["model"])
    assert (tmp_path / "bench" / "adhoc").is_dir() and (tmp_path / "bench" / "benchmark.md").exists()


# ------------------------------------------------------------------------------------ 8. Ctrl-C
# Runs `stforecast ingest` with its progress wait held open: the graph is submitted, then the main process waits 120 s
# before watching it, so the test's Ctrl-C lands deterministically while the run is in flight (a real run of this
# size finishes in under a second; timing a signal into it races the machine's load).
_HELD_OPEN = """
import pathlib, sys, time
import pipelines.cluster as cluster
from pipelines.cli import main
watch = cluster.wait_with_progress
def held_open(futures, progress, label):
    pathlib.Path(sys.argv[1]).touch()  # the staging folder exists and the graph is submitted
    # short sleeps: the kernel may hand the process's SIGINT to another thread (one of the client's), and then only
    # the main thread's next bytecode raises KeyboardInterrupt, never a sleep that is already under way
    for _ in range(1200):
        time.sleep(0.1)
    watch(futures, progress, label)
if __name__ == "__main__":  # the workers are spawned: they import this file again
    cluster.wait_with_progress = held_open
    sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_keeps_previous_output_and_leaves_no_temp_folder(settings, tmp_path):
    out = tmp_path / "out"
    before = run_ingest(cfg_for(comcat(tmp_path, GOOD_ROWS, "small.csv"), name="big"), settings, out_root=out,
                        progress=False)
    manifest = (before.out_dir / "manifest.json").read_text()
    rows = [f"2020-01-{1 + i // 1000:02d}T{(i % 1000) // 50:02d}:{(i % 50) // 10:02d}:0{i % 10}.000Z,35.1,"
            f"139.1,10,3.0,ml,e{i}" for i in range(20_000)]
    big = comcat(tmp_path, rows, "big.csv")
    script, submitted = tmp_path / "held_open.py", tmp_path / "submitted"
    script.write_text(_HELD_OPEN)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, str(script), str(submitted), "ingest", "earthquakes", "--path", str(big),
                          "--name", "big", "--out", str(out), "--no-progress", "--workers", "2", *SPLIT],
                         cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 120
        while not submitted.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert p.poll() is None and submitted.exists(), p.communicate()[1] if p.poll() is not None else "no start"
        assert list(out.glob(".big.tmp-*")), "the run's staging folder should exist while it runs"
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        # 5 s alone; the cluster's shutdown took over 120 s twice in full suites beside another heavy job
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "distributed" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == ["interrupted; previous output kept"], err
    assert (before.out_dir / "manifest.json").read_text() == manifest
    assert sorted(x.name for x in out.iterdir()) == ["big"]


def test_ingest_takes_set_overrides_like_train(tmp_path):
    """`--set KEY=VALUE` reaches any catalog setting (the same parser as `stforecast train --set`), and wins over the
    named flags; an unknown key is one line naming it."""
    path = comcat(tmp_path, GOOD_ROWS)
    done = ingest_cli(path, tmp_path / "out", "--name", "over", "--history-events", "2",
                      "--set", "sequences.history_events=3", "--set", "filters.magnitude_min=0.5")
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "over" / "manifest.json").read_text())
    assert manifest["config"]["sequences"]["history_events"] == 3
    assert manifest["config"]["filters"]["magnitude_min"] == 0.5
    one_error_line(ingest_cli(path, tmp_path / "out", "--name", "bad", "--set", "sequences.histroy_events=3"),
                   "sequences.histroy_events")
    one_error_line(ingest_cli(path, tmp_path / "out", "--name", "bad", "--set", "history_events"), "key=value")
