"""Dequantised locations (issue 22): grid-snapped coordinates spread within their source cell at ingestion, the
same for every model, recorded in the manifest and stated in the scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import run_ingest
from stforecast.clean import add_keys, dequantise
from stforecast.config import build_config
from stforecast.ingested import IngestedCatalog
from tests.test_bad_input import cfg_for, comcat

#: 140 events on only 7 distinct places (4 decimals), with one exact duplicate row
SNAPPED = [f"2020-01-{d:02d}T0{h}:00:00.000Z,35.{1000 + d % 7:04d},139.{2000 + d % 7:04d},10,3.{h},ml,ev{d}{h}"
           for d in range(1, 29) for h in range(0, 9, 2)]


def test_offsets_stay_in_the_cell_are_uniform_and_follow_the_content():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"event_id": [f"e{i}" for i in range(20000)], "time": np.arange(20000.0),
                          "x": np.round(rng.uniform(-88, -87, 20000), 4), "y": np.round(rng.uniform(41, 42, 20000), 4)})
    before = frame[["x", "y"]].to_numpy().copy()
    moved = dequantise(add_keys(frame.copy()), {"x": 1e-4, "y": 2e-4})
    dx, dy = (moved[["x", "y"]].to_numpy() - before).T
    assert np.abs(dx).max() <= 0.5e-4 and np.abs(dy).max() <= 1e-4
    assert abs(dx.mean()) < 2e-6 and dx.std() == pytest.approx(1e-4 / np.sqrt(12), rel=0.02)  # uniform in the cell
    assert abs(np.corrcoef(dx, dy)[0, 1]) < 0.03  # the two offsets are independent
    # the same rows in another order and chunking move the same way; an exact duplicate moves with its twin
    again = dequantise(add_keys(frame.iloc[::-1].copy()), {"x": 1e-4, "y": 2e-4}).iloc[::-1]
    assert np.array_equal(again[["x", "y"]].to_numpy(), moved[["x", "y"]].to_numpy())
    twin = dequantise(add_keys(pd.concat([frame.iloc[:1], frame.iloc[:1]], ignore_index=True)), {"x": 1e-4, "y": 1e-4})
    assert twin["x"].nunique() == 1 and twin["y"].nunique() == 1


def test_an_ingested_catalog_has_no_repeated_places_and_says_so(settings, tmp_path):
    rows = SNAPPED + [SNAPPED[5]]  # an exact duplicate row is still removed as one
    path = comcat(tmp_path, rows)
    plain = run_ingest(cfg_for(path), settings, out_root=tmp_path / "a", progress=False)
    spread = run_ingest(cfg_for(path, dequantise={"x": 1e-4, "y": 1e-4}), settings, out_root=tmp_path / "b",
                        progress=False)
    a, b = IngestedCatalog(plain.out_dir, plain.manifest), IngestedCatalog(spread.out_dir, spread.manifest)
    assert len(a.events) == len(b.events) == len(SNAPPED)
    assert len(a.events[["x", "y"]].drop_duplicates()) == 7 and len(b.events[["x", "y"]].drop_duplicates()) == 140
    # a cell of 1e-4 degrees is about 9 by 11 m here: no event moves further than half its diagonal
    shift = np.hypot(*(b.events[["x", "y"]].to_numpy() - a.events[["x", "y"]].to_numpy()).T)
    assert 0 < shift.max() <= 0.5 * np.hypot(9.2e-3, 11.2e-3)  # km
    assert a.dequantised == "" and "dequantised at ingestion" in b.dequantised and "0.0001°" in b.dequantised
    assert spread.manifest["config"]["dequantise"] == {"x": 1e-4, "y": 1e-4}
    assert "dequantise" not in plain.manifest["config"]  # off: the settings hash of catalogs without it is unchanged
    # chunking does not change the draw: the same catalog parsed in many small chunks is identical
    small = run_ingest(cfg_for(path, dequantise={"x": 1e-4, "y": 1e-4}), settings, out_root=tmp_path / "c",
                       progress=False, blocksize=2000)
    pd.testing.assert_frame_equal(IngestedCatalog(small.out_dir, small.manifest).events, b.events)
    # the test split ends at the configured end, or just after the last event where the settings leave it open
    assert b.split_end("test") == b.manifest["split"]["model_time"]["end"] and b.split_end("val") == b.split_start(
        "test")
    split = {**b.manifest["split"], "model_time": {**b.manifest["split"]["model_time"], "end": None}}
    open_end = IngestedCatalog(b.folder, {**b.manifest, "split": split})
    assert open_end.split_end("test") == np.nextafter(b.events["t"].max(), np.inf)


@pytest.mark.parametrize("cell, words", [({"x": 1e-4}, "exactly the keys x and y"),
                                         ({"x": 1e-4, "y": -1}, "dequantise.y must be a positive cell size"),
                                         ({"x": "small", "y": 1e-4}, "dequantise.x must be a positive cell size")])
def test_a_bad_dequantise_setting_is_named(cell, words):
    with pytest.raises(ValueError, match=words):
        build_config("t", {"kind": "crime", "dequantise": cell})


def test_dequantise_is_for_tables_not_recordings():
    with pytest.raises(ValueError, match="dequantise applies to tables of events"):
        build_config("t", {"kind": "spikes", "format": "spikes", "dequantise": {"x": 1.0, "y": 1.0}})
