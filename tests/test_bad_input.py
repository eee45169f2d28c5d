"""Every class of bad input fails with a message naming file, row/line and field — or, with quarantine, is set
aside with its reason — and never damages output that is already there."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import run_ingest
from stforecast.catalog import CatalogError
from stforecast.config import build_config

HEADER = "time,latitude,longitude,depth,mag,magType,id"
GOOD_ROWS = [f"2020-01-{d:02d}T0{h}:00:00.000Z,35.{d}{h},139.{h}{d},10,{3 + h / 10:.1f},ml,ev{d}{h}"
             for d in range(1, 29) for h in range(0, 9, 2)]  # 140 events over 4 weeks


def comcat(tmp_path, rows, name="cat.csv"):
    p = tmp_path / name
    p.write_text("\n".join([HEADER, *rows]) + "\n")
    return p


def cfg_for(path, **over):
    values = {"kind": "earthquakes", "format": "comcat", "path": str(path), "time_unit": "days",
              "split": {"history_start": "2020-01-01", "train_start": "2020-01-02", "val_start": "2020-01-20",
                        "test_start": "2020-01-24", "end": "2020-02-01"},
              "sequences": {"mode": "windows", "window": 3.0, "history_events": 4}}
    values.update(over)
    return build_config("t", values)


def ingest(settings, tmp_path, rows, **kw):
    path = comcat(tmp_path, rows)
    return run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False, **kw)


def one_bad(rows, index, row):
    rows = list(rows)
    rows[index] = row
    return rows


@pytest.mark.parametrize("bad, line, field, words", [
    ("2020-01-05T02:00:00.000Z,,139.1,10,3.0,ml,x1", 20, "latitude", "missing coordinate"),
    ("2020-01-05T02:00:00.000Z,NaN,139.1,10,3.0,ml,x1", 20, "latitude", "missing coordinate"),
    ("2020-01-05T02:00:00.000Z,abc,139.1,10,3.0,ml,x1", 20, "latitude", "not a finite number"),
    ("2020-01-05T02:00:00.000Z,95.5,139.1,10,3.0,ml,x1", 20, "latitude", "out of range"),
    ("2020-01-05T02:00:00.000Z,35.5,239.1,10,3.0,ml,x1", 20, "longitude", "out of range"),
    ("yesterday at noon,35.5,139.1,10,3.0,ml,x1", 20, "time", "unparseable time"),
    ("2020-13-45T02:00:00.000Z,35.5,139.1,10,3.0,ml,x1", 20, "time", "unparseable time"),
    (",35.5,139.1,10,3.0,ml,x1", 20, "time", "missing time"),
    ("2020-01-05T02:00:00.000Z,35.5,139.1,10,big,ml,x1", 20, "mag", "magnitude is not a number"),
    ("2020-01-05T02:00:00.000Z,35.5,139.1,10,13.2,ml,x1", 20, "mag", "magnitude out of range"),
    ("2020-01-05T02:00:00.000Z,35.5,139.1,10,3.0,ml,ev12", 20, "id", "duplicate event id"),
    ("2020-01-05T02:00:00.000Z,35.5,139.1,10,3.0,ml,x1,extra,fields", 20, "*", "malformed row"),
])
def test_bad_rows_named_by_file_line_and_field(settings, tmp_path, bad, line, field, words):
    rows = one_bad(GOOD_ROWS, line - 2, bad)  # line 1 is the header
    with pytest.raises(CatalogError) as e:
        ingest(settings, tmp_path, rows)
    msg = str(e.value)
    assert f"cat.csv, line {line} (row {line - 1}), field '{field}'" in msg
    assert words in msg
    assert not (tmp_path / "out" / "t").exists()  # nothing half-written


def test_quarantine_sets_rows_aside_with_reasons(settings, tmp_path):
    rows = one_bad(GOOD_ROWS, 5, "2020-01-02T02:00:00.000Z,95,139.1,10,3.0,ml,q1")
    rows = one_bad(rows, 9, "not-a-date,35,139.1,10,3.0,ml,q2")
    r = ingest(settings, tmp_path, rows, quarantine=True)
    rej = pd.read_parquet(r.out_dir / "rejected.parquet")
    assert sorted(rej["line"].tolist()) == [7, 11]
    assert set(rej["field"]) == {"latitude", "time"}
    assert r.manifest["counts"]["events_kept"] == len(GOOD_ROWS) - 2


def test_wrong_columns_named(settings, tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("when,lat,lon,mag,id\n2020-01-01,1,2,3,a\n")
    with pytest.raises(CatalogError) as e:
        run_ingest(cfg_for(p), settings, out_root=tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "cat.csv: missing column(s) 'time' (for time)" in msg and "'latitude' (for y)" in msg
    assert "--time-col" in msg  # says how to map them


def test_empty_after_filters(settings, tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    cfg = cfg_for(path, filters={"magnitude_min": 9.0})
    with pytest.raises(CatalogError, match=r"no events left after cleaning and filters \(140 read\).*140 filtered: magnitude below 9.0"):
        run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)


def test_empty_file_and_header_only(settings, tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("")
    with pytest.raises(CatalogError, match="cat.csv: the file is empty"):
        run_ingest(cfg_for(p), settings, out_root=tmp_path / "out", progress=False)
    p.write_text(HEADER + "\n")
    with pytest.raises(CatalogError, match="no events left"):
        run_ingest(cfg_for(p), settings, out_root=tmp_path / "out", progress=False)


def test_out_of_order_times_in_given_sequences(settings, tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("sequence,t_days,longitude,latitude\n0,0.5,140,35\n0,0.9,140,35\n0,0.7,141,36\n1,0.2,140,35\n1,0.4,140,35\n")
    cfg = build_config("w", {"kind": "earthquakes", "format": "dstpp-windows", "split_files": {"train": str(p)},
                             "split": {"mode": "given"}, "sequences": {"mode": "given"}, "projection": {"crs": "none"}})
    with pytest.raises(CatalogError) as e:
        run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)
    assert "train.csv, line 4 (row 3), field 't_days': time out of order" in str(e.value)


def test_bad_row_in_a_later_chunk_has_its_true_line(settings, tmp_path):
    """Parallel chunks number their rows from the rows before them."""
    rows = [f"2020-01-{1 + i // 3000:02d}T00:00:{(i % 3000) // 60:02d}.{i % 60:03d}Z,35,139,10,3.0,ml,e{i}"
            for i in range(20_000)]
    rows[17_000] = rows[17_000].replace(",35,", ",-95,")
    path = comcat(tmp_path, rows)
    with pytest.raises(CatalogError, match=r"cat.csv, line 17002 \(row 17001\), field 'latitude'"):
        run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False, blocksize=64 * 1024)


def test_failed_rerun_keeps_previous_output(settings, tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    ok = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    before = (ok.out_dir / "manifest.json").read_text()
    comcat(tmp_path, one_bad(GOOD_ROWS, 3, "2020-01-02T02:00:00.000Z,35,139,10,3.0,ml"))  # short row: malformed
    with pytest.raises(CatalogError, match="field 'id': malformed row: fewer fields"):
        run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    assert (ok.out_dir / "manifest.json").read_text() == before
    assert pd.read_parquet(ok.out_dir / "events.parquet").shape[0] == len(GOOD_ROWS)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_interrupted_write_keeps_previous_output(settings, tmp_path, monkeypatch):
    import pipelines.ingest.ranges as ing  # where the partition-wise path writes sequences

    path = comcat(tmp_path, GOOD_ROWS)
    ok = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    before = json.loads((ok.out_dir / "manifest.json").read_text())

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if the operator pressed Ctrl-C mid-write

    monkeypatch.setattr(ing, "write_sequences", boom)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False, force=True)
    assert json.loads((ok.out_dir / "manifest.json").read_text()) == before
    assert (ok.out_dir / "sequences").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["t"]


def test_rerun_is_idempotent(settings, tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    first = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    mtime = (first.out_dir / "events.parquet").stat().st_mtime_ns
    again = run_ingest(cfg_for(path), settings, out_root=tmp_path / "out", progress=False)
    assert again.skipped and again.manifest["input_hash"] == first.manifest["input_hash"]
    assert (first.out_dir / "events.parquet").stat().st_mtime_ns == mtime
    changed = run_ingest(cfg_for(path, filters={"magnitude_min": 3.3}), settings, out_root=tmp_path / "out",
                         progress=False)
    assert not changed.skipped and changed.manifest["counts"]["events_kept"] < len(GOOD_ROWS)


def test_truncated_gzip_named(settings, tmp_path):
    import gzip

    raw = gzip.compress(("\n".join([HEADER, *GOOD_ROWS]) + "\n").encode())
    p = tmp_path / "cat.csv.gz"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CatalogError, match="cat.csv.gz: the gzip stream is truncated"):
        run_ingest(cfg_for(p), settings, out_root=tmp_path / "out", progress=False)


def test_truncated_trodes_file_named(settings, tmp_path, data_root):
    src = data_root / "neural_spikes" / "linear_track_hippocampus"
    shutil.copy(src / "spikes.mat", tmp_path / "spikes.mat")
    raw = (src / "trajectory.videoPositionTracking").read_bytes()
    (tmp_path / "pos.videoPositionTracking").write_bytes(raw[:-7])
    cfg = settings.catalog("linear_track", {"path": str(tmp_path / "spikes.mat"),
                                            "positions": str(tmp_path / "pos.videoPositionTracking")})
    with pytest.raises(CatalogError, match=r"pos.videoPositionTracking.*record \d+.*cut off in field"):
        run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)


def test_malformed_first_row_of_a_chunk_is_named_and_others_survive(settings, tmp_path):
    """A surplus field in the first row must not shift the columns of the whole chunk."""
    rows = one_bad(GOOD_ROWS, 0, "2020-01-01T00:00:00.000Z,35.1,139.1,10,3.0,ml,ev0,extra")
    r = ingest(settings, tmp_path, rows, quarantine=True)
    rej = pd.read_parquet(r.out_dir / "rejected.parquet")
    assert rej["line"].tolist() == [2] and rej["reason"].str.startswith("malformed row").all()
    assert r.manifest["counts"]["events_kept"] == len(GOOD_ROWS) - 1


def test_row_with_only_some_fields_is_validated_not_dropped(settings, tmp_path):
    rows = one_bad(GOOD_ROWS, 4, ",,,10,,ml,")
    r = ingest(settings, tmp_path, rows, quarantine=True)
    c = r.manifest["counts"]
    assert c["rows_read"] == len(GOOD_ROWS) and c["events_kept"] == len(GOOD_ROWS) - 1
    rej = pd.read_parquet(r.out_dir / "rejected.parquet")
    assert set(rej["field"]) == {"time", "latitude", "longitude", "mag", "id"}  # every problem of the row named
    assert set(rej["line"]) == {6}


def test_quarantine_switch_is_part_of_the_idempotency_hash(settings, tmp_path):
    rows = one_bad(GOOD_ROWS, 5, "2020-01-02T02:00:00.000Z,95,139.1,10,3.0,ml,q1")
    ingest(settings, tmp_path, rows, quarantine=True)
    with pytest.raises(CatalogError, match="latitude out of range"):
        ingest(settings, tmp_path, rows)  # not "up to date": without quarantine the bad row fails the run


def test_parquet_problems_name_rows_not_lines(settings, tmp_path):
    frame = pd.DataFrame({"time": ["2020-01-02T00:00:00Z", "2020-01-03T00:00:00Z", "2020-01-04T00:00:00Z"],
                          "latitude": [35.0, 36.0, 37.0], "longitude": [139.0, 139.5, 140.0], "mag": [3.0, 3.1, 3.2],
                          "id": ["a", "b", "a"]})
    frame.to_parquet(tmp_path / "c.parquet")
    with pytest.raises(CatalogError) as e:
        run_ingest(cfg_for(tmp_path / "c.parquet"), settings, out_root=tmp_path / "out", progress=False)
    assert "c.parquet (row 3), field 'id': duplicate event id" in str(e.value)
    assert "line" not in str(e.value).split("c.parquet", 1)[1]  # the problem names a row, not a file line


def test_split_files_with_the_same_name_are_kept_apart(settings, tmp_path):
    paths = {}
    for i, split in enumerate(("train", "val", "test")):
        (tmp_path / split).mkdir()
        p = tmp_path / split / "windows.csv"
        p.write_text("sequence,t_days,longitude,latitude\n0,0.1,140,35\n0,0.5,141,36\n0,0.9,142,37\n")
        paths[split] = str(p)
    cfg = build_config("w", {"kind": "earthquakes", "format": "dstpp-windows", "split_files": paths,
                             "split": {"mode": "given"}, "sequences": {"mode": "given"}, "projection": {"crs": "none"}})
    r = run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)
    s = r.manifest["counts"]["splits"]
    assert [s[k]["targets"] for k in ("train", "val", "test")] == [3, 3, 3]


def test_ties_inside_given_sequences_are_broken_not_rejected(settings, tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("sequence,t_days,longitude,latitude\n0,0.5,140,35\n0,0.5,141,36\n0,0.7,141,36\n")
    cfg = build_config("w", {"kind": "earthquakes", "format": "dstpp-windows", "split_files": {"train": str(p)},
                             "split": {"mode": "given"}, "sequences": {"mode": "given"}, "projection": {"crs": "none"}})
    r = run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)
    t = pd.read_parquet(r.out_dir / "events.parquet")["t"].to_numpy()
    assert r.manifest["counts"]["events_kept"] == 3 and np.all(np.diff(t) > 0) and t[0] == 0.5


def test_no_dedupe_keeps_exact_duplicates_of_sources_without_ids(settings, tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("date,loc_cat,longitude,latitude,district\n" + "2019-07-01 10:00,street,-87.6,41.8,1\n" * 2
                 + "".join(f"2019-07-{d:02d} 11:00,street,-87.7,41.9,1\n" for d in range(2, 28)))
    cfg = build_config("c", {"kind": "crime", "format": "chicago", "path": str(p), "time_unit": "hours",
                             "dedupe": False, "split": {"history_start": "2019-07-01", "train_start": "2019-07-01",
                                                        "val_start": "2019-07-20", "test_start": "2019-07-24",
                                                        "end": "2019-08-01"},
                             "sequences": {"mode": "chunks", "length": 5, "history_events": 2}})
    r = run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)
    assert r.manifest["counts"]["events_kept"] == 28


def test_a_number_as_a_calendar_split_date_is_refused(settings, tmp_path):
    path = comcat(tmp_path, GOOD_ROWS)
    cfg = cfg_for(path, split={"history_start": "2020-01-01", "train_start": 2020})
    with pytest.raises(ValueError, match="give a date like"):
        run_ingest(cfg, settings, out_root=tmp_path / "out", progress=False)
