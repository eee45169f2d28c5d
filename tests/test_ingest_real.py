"""Ingesting the real catalogs gives exact, known counts (numbers checked against the data README and pandas)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import run_ingest


def _ingest(settings, name, out_root, **kw):
    return run_ingest(settings.catalog(name), settings, out_root=out_root, progress=False, **kw)


def _sequences(out_dir):
    return pd.read_parquet(out_dir / "sequences")


def test_japan_catalog_counts_and_split(settings, out_root):
    r = _ingest(settings, "japan", out_root)
    c = r.manifest["counts"]
    assert c["rows_read"] == 37_581  # data README: 37,581 events 1990-2019
    assert c["events_kept"] == 37_581  # all have M >= 2.7 > 2.5, no duplicates
    assert c["events_per_split"] == {"history": 1007, "train": 16230, "val": 4976, "test": 15368}
    s = c["splits"]
    assert (s["train"]["targets"], s["val"]["targets"], s["test"]["targets"]) == (16230, 4976, 15368)
    events = pd.read_parquet(r.out_dir / "events.parquet")
    # EarthquakeNPP split dates: targets of each split lie inside its own date range
    seqs = _sequences(r.out_dir)
    targets = seqs[seqs.is_target].assign(time=events["time"].to_numpy()[seqs.loc[seqs.is_target, "event_index"]])
    rng = {"train": ("1992-01-01", "2007-01-01"), "val": ("2007-01-01", "2011-01-01"), "test": ("2011-01-01", "2020-01-01")}
    for split, (a, b) in rng.items():
        t = targets.loc[targets.split.astype(str) == split, "time"]
        assert t.min() >= pd.Timestamp(a, tz="UTC") and t.max() < pd.Timestamp(b, tz="UTC")
    # projected to km about the catalog centre: Japan spans roughly ±1,500 km
    assert r.manifest["schema"]["spatial_unit"] == "km"
    assert events["x"].abs().max() < 2500 and events["y"].abs().max() < 2500
    # normalisation is fitted on train targets only
    n = r.manifest["normalisation"]
    assert n["x"]["n"] == 16230
    # times strictly increase after tie-breaking
    assert np.all(np.diff(events["t"].to_numpy()) > 0)


def test_dstpp_windows_exact(settings, out_root):
    r = _ingest(settings, "dstpp_japan", out_root)
    s = r.manifest["counts"]["splits"]
    assert [s[k]["sequences"] for k in ("train", "val", "test")] == [950, 50, 50]
    assert [s[k]["targets"] for k in ("train", "val", "test")] == [82_657, 4_130, 5_110]
    seqs = _sequences(r.out_dir)
    # the paper's windows keep their own time axis (days since window start) and raw degrees
    first = seqs[(seqs.split.astype(str) == "train") & (seqs.sequence == 0)].sort_values("position")
    assert first["t"].iloc[0] == pytest.approx(0.24379178240724286)
    assert first["x"].iloc[0] == pytest.approx(140.039)
    assert r.manifest["schema"]["crs_model"] is None


def test_chicago_local_time_duplicates_and_splits(settings, out_root):
    r = _ingest(settings, "chicago", out_root)
    c = r.manifest["counts"]
    assert c["rows_read"] == 148_636  # data README
    dups = {(x["kind"], x["reason"]): x["rows"] for x in c["rejected"]}
    assert dups == {("duplicate", "exact duplicate event"): 111}  # 111 identical records (125 share only t,x,y)
    assert c["events_kept"] == 148_636 - 111
    events = pd.read_parquet(r.out_dir / "events.parquet")
    # local midnight of 2010-01-01 in Chicago is 06:00 UTC; the first assault was 00:05 local
    assert events["time"].min() == pd.Timestamp("2010-01-01 06:05", tz="UTC")
    # the year ends at local midnight: nothing is cut at UTC midnight
    assert events["time"].max() < pd.Timestamp("2020-01-01 06:00", tz="UTC")
    assert c["events_per_split"] == {"history": 1223, "train": 101548, "val": 15013, "test": 30741}
    assert r.manifest["schema"]["spatial_unit"] == "m"
    assert "www.cityofchicago.org" in r.manifest["source"]["notice"]
    assert np.all(np.diff(events["t"].to_numpy()) > 0)  # 9,934 shared minutes are spread inside their minute
    # block-level places (62,884 for 148 k assaults) spread within their 4-decimal cell: no exact repeats remain
    assert r.manifest["config"]["dequantise"] == {"x": 1e-4, "y": 1e-4}
    assert len(events[["x", "y"]].drop_duplicates()) == len(events)


def test_small_catalogs(settings, out_root):
    sf = _ingest(settings, "sf_robbery", out_root).manifest["counts"]
    assert (sf["rows_read"], sf["events_kept"]) == (951, 951)  # distinct uids are distinct records
    rc = _ingest(settings, "ridgecrest", out_root).manifest["counts"]
    assert (rc["rows_read"], rc["events_kept"]) == (829, 829)


def test_manifest_is_complete_json(settings, out_root):
    r = _ingest(settings, "ridgecrest", out_root)
    m = json.loads((r.out_dir / "manifest.json").read_text())
    for key in ("source", "input_hash", "inputs", "counts", "schema", "normalisation", "config", "split"):
        assert key in m
    assert m["inputs"][0]["sha256"] and m["schema"]["crs_model"].startswith("+proj=aeqd")
    assert "public domain" in m["source"]["licence"]


@pytest.mark.parametrize("name", ["japan", "dstpp_japan", "ridgecrest", "chicago", "sf_robbery", "wmaze", "linear_track"])
def test_every_local_catalog_has_targets_in_every_split(settings, out_root, name):
    """The configured split dates fit the data: no empty validation or test split."""
    s = _ingest(settings, name, out_root).manifest["counts"]["splits"]
    assert all(s[k]["targets"] > 0 and s[k]["sequences"] > 0 for k in ("train", "val", "test")), s
