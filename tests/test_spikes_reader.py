"""Tests for stforecast.io.spikes: MatClust spikes + Trodes position tracking.

Synthetic files (written into tmp_path) check the mechanics exactly; the shared real recordings check the facts
stated in shared/data/README.md ("Neural spikes"). Real-data tests are skipped when the data is not beside the
checkout (``../shared/data``). The w-maze files are read once per module to keep the run short.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from stforecast.catalog import REJECT_COLUMNS, CatalogError
from stforecast.io.spikes import read_matclust_spikes, read_spikes, read_trodes_positions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "neural_spikes"
WMAZE = DATA / "wmaze_hippocampus"
LINEAR = DATA / "linear_track_hippocampus"
needs_data = pytest.mark.skipif(not (WMAZE / "spikes.mat").is_file(), reason=f"shared data not found at {DATA}")

CLOCK_RATE = 30000
TRODES_DTYPE = np.dtype([("time", "<u4"), ("xloc", "<u2"), ("yloc", "<u2"), ("xloc2", "<u2"), ("yloc2", "<u2")])


# ------------------------------------------------------------------------------------------------ helpers

def write_trodes(path: Path, ticks, x, y, *, end_marker: bool = True) -> Path:
    """A .videoPositionTracking file in the layout of the shared data (header as in the real files)."""
    header = (
        "<Start settings>\nthreshold: 199\ndark: 0\nclockrate: 30000\ncamera resolution: 640x480\n"
        "pixel scale: 0 pix/cm\nFields: <time uint32><xloc uint16><yloc uint16><xloc2 uint16><yloc2 uint16>\n"
    )
    if end_marker:
        header += "<End settings>\n"
    records = np.zeros(len(ticks), dtype=TRODES_DTYPE)
    records["time"], records["xloc"], records["yloc"] = ticks, x, y
    path.write_bytes(header.encode() + records.tobytes())
    return path


def cell(*items) -> np.ndarray:
    """A 1xN MATLAB cell array for scipy.io.savemat."""
    out = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        out[0, i] = item
    return out


def cluster(*times: float) -> dict:
    """A MatClust cluster struct (savemat writes a dict as a struct)."""
    return {"time": np.asarray(times, dtype=float).reshape(-1, 1), "meanrate": 1.0}


def write_spikes_mat(path: Path, tetrodes: np.ndarray) -> Path:
    """spikes{day}{epoch}{tetrode}{cluster}, with 1x1 day and epoch levels as in the shared files."""
    scipy.io.savemat(path, {"spikes": cell(cell(tetrodes))})
    return path


# ------------------------------------------------------------------------------------------------ synthetic track

FRAME_TICKS = 500  # 60 Hz at 30 kHz


@pytest.fixture
def synthetic(tmp_path):
    """Two tracked stretches with a 2 s tracking gap between them.

    Stretch 1: frames k = 0..119 at t = 1 + k/60 s moving linearly, x = 100 + k, y = 300 - 2k px, i.e. velocity
    (60, -120) px/s; frame 30 is tracking loss by the y<=1 rule and frame 60 by x == y == 0. Stretch 2: still at
    (400, 100) from t = 5 s to 7 s.
    """
    k = np.arange(120)
    ticks1, x1, y1 = CLOCK_RATE + k * FRAME_TICKS, 100 + k, 300 - 2 * k
    x1[30], y1[30] = 130, 1
    x1[60], y1[60] = 0, 0
    ticks2 = 5 * CLOCK_RATE + np.arange(121) * FRAME_TICKS
    positions = write_trodes(tmp_path / "track.videoPositionTracking",
                             np.concatenate([ticks1, ticks2]), np.concatenate([x1, np.full(121, 400)]),
                             np.concatenate([y1, np.full(121, 100)]))
    last_frame_1 = (CLOCK_RATE + 119 * FRAME_TICKS) / CLOCK_RATE  # computed as the reader does: ticks / rate
    spikes = write_spikes_mat(tmp_path / "spikes.mat", cell(
        cell(cluster(0.5, 1 + 10.5 / 60, 2.0), cluster(1 + 30.25 / 60, 4.0)),
        cell(cluster(1 + 45.5 / 60, last_frame_1, 6.5, 8.0)),
    ))
    return spikes, positions


def test_synthetic_positions_header_and_values(synthetic):
    _, positions_path = synthetic
    positions, settings = read_trodes_positions(positions_path)
    assert list(positions.columns) == ["time", "x", "y"]
    assert (positions.dtypes == "float64").all()
    assert len(positions) == 241 == settings["n_records"]
    assert settings["clock_rate"] == 30000
    assert settings["camera_resolution"] == (640, 480)
    assert settings["record_size"] == 12
    assert positions["time"].iloc[0] == 1.0 and positions["time"].iloc[-1] == 7.0
    assert positions.loc[60, ["x", "y"]].tolist() == [0.0, 0.0]  # the raw reader keeps tracking-loss frames


def test_synthetic_interpolation_is_exact(synthetic):
    spikes_path, positions_path = synthetic
    events, rejects, info = read_spikes(spikes_path, positions_path)

    assert list(events.columns) == ["time", "x", "y", "unit", "speed", "_file", "_row"]
    expected = {  # spike time -> (x, y) on the known linear motion
        1 + 10.5 / 60: (110.5, 279.0),
        1 + 30.25 / 60: (130.25, 239.5),  # the frame at 30 (y = 1) is skipped, motion still linear
        1 + 45.5 / 60: (145.5, 209.0),
        2.0: (160.0, 180.0),  # exactly on the removed (0, 0) frame: interpolated from its neighbours
        (CLOCK_RATE + 119 * FRAME_TICKS) / CLOCK_RATE: (219.0, 62.0),  # last frame before the gap: kept
        6.5: (400.0, 100.0),
    }
    assert events["time"].tolist() == sorted(expected)
    np.testing.assert_allclose(events[["x", "y"]].to_numpy(), [expected[t] for t in sorted(expected)],
                               rtol=0, atol=1e-9)
    assert info["position_samples"] == 241 and info["position_samples_invalid"] == 2
    assert info["position_time_range"] == (1.0, 7.0)

    # Speed: 60 * sqrt(5) px/s in the middle of the moving stretch; zero where the animal is still.
    speed = dict(zip(events["time"], events["speed"]))
    assert speed[1 + 45.5 / 60] == pytest.approx(60 * np.sqrt(5), rel=0.01)
    assert speed[6.5] == 0.0

    # Lineage: _row is the 1-based index in the reader's (time, unit)-sorted list.
    sorted_spikes = read_matclust_spikes(spikes_path)
    assert (events["_file"] == "spikes.mat").all()
    assert events["_row"].dtype == np.int64
    np.testing.assert_array_equal(sorted_spikes["time"].to_numpy()[events["_row"] - 1], events["time"])

    # Rejects: before the first frame, after the last, inside the 2 s gap.
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    assert (rejects["kind"] == "filtered").all() and (rejects["field"] == "time").all()
    by_time = dict(zip(rejects["value"].astype(float), rejects["reason"]))
    assert by_time == {
        0.5: "outside the tracked position range [1.00, 7.00] s",
        4.0: "in a position-tracking gap longer than 1.0 s",
        8.0: "outside the tracked position range [1.00, 7.00] s",
    }
    assert info["dropped_outside_position_range"] == 2 and info["dropped_in_position_gap"] == 1
    assert len(events) + len(rejects) == info["spikes_read"] == 9


def test_synthetic_speed_filter_drops_still_spikes(synthetic):
    spikes_path, positions_path = synthetic
    events, rejects, info = read_spikes(spikes_path, positions_path, speed_min=5)
    slow = rejects[rejects["field"] == "speed"]
    assert slow["value"].astype(float).tolist() == [0.0]
    assert slow["reason"].tolist() == ["speed below 5 px/s"]
    assert 6.5 not in events["time"].tolist()
    assert (events["speed"] >= 5).all()
    assert info["dropped_slow"] == 1


def test_synthetic_gap_threshold_is_configurable(synthetic):
    spikes_path, positions_path = synthetic
    events, rejects, info = read_spikes(spikes_path, positions_path, max_gap_s=3.0)
    assert info["dropped_in_position_gap"] == 0
    assert 4.0 in events["time"].tolist()


def test_exclude_units(synthetic):
    spikes_path, positions_path = synthetic
    events, rejects, info = read_spikes(spikes_path, positions_path, exclude_units=["t01c00"])
    assert "t01c00" not in set(events["unit"])
    excluded = rejects[rejects["reason"] == "excluded unit"]
    assert len(excluded) == info["dropped_excluded_unit"] == 4  # all its spikes, charged to the unit filter first
    assert set(excluded["field"]) == {"unit"} and set(excluded["value"]) == {"t01c00"}
    with pytest.raises(ValueError, match="t07c03"):
        read_spikes(spikes_path, positions_path, exclude_units=["t07c03"])


def test_invalid_position_rule(synthetic):
    spikes_path, positions_path = synthetic
    # Without the y<=1 rule the y = 1 frame is used: the spike beside it no longer sits on the straight line.
    events, _, info = read_spikes(spikes_path, positions_path, invalid_position="")
    assert info["position_samples_invalid"] == 1  # (0, 0) is always tracking loss
    assert events.set_index("time").loc[1 + 30.25 / 60, "y"] != 239.5
    with pytest.raises(ValueError, match="cannot parse"):
        read_spikes(spikes_path, positions_path, invalid_position="__import__('os')")


# ------------------------------------------------------------------------------------------------ MatClust nesting

def test_matclust_nesting_variants(tmp_path):
    path = write_spikes_mat(tmp_path / "nested.mat", cell(
        cell(cluster(1.0, 3.0), np.zeros((1, 0)), cluster(2.0)),  # usual: cell of clusters, an empty slot
        cluster(2.5),  # single cluster one level shallower: the struct itself
        cell(cluster(0.5)),  # single cluster in a 1x1 cell
        np.zeros((1, 0)),  # no clusters
        cell(cell(cluster(4.0), cluster(5.0))),  # an extra 1x1 wrapper around the cluster list
        cell(cluster(), cluster(6.0)),  # a struct with no spikes is an empty cluster
    ))
    spikes = read_matclust_spikes(path)
    assert list(spikes.columns) == ["time", "unit", "tetrode", "cluster"]
    assert spikes["unit"].tolist() == ["t02c00", "t00c00", "t00c02", "t01c00", "t00c00", "t04c00", "t04c01", "t05c01"]
    assert spikes["time"].tolist() == [0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0]
    assert spikes["tetrode"].dtype == np.int64 and spikes["cluster"].dtype == np.int64


def test_matclust_ties_are_broken_by_unit(tmp_path):
    path = write_spikes_mat(tmp_path / "ties.mat", cell(cell(cluster(1.0), cluster(1.0, 2.0)), cell(cluster(1.0))))
    spikes = read_matclust_spikes(path)
    assert spikes["unit"].tolist() == ["t00c00", "t00c01", "t01c00", "t00c01"]


def test_matclust_corrupt_file(tmp_path):
    path = tmp_path / "broken.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    with pytest.raises(CatalogError, match=re.escape(str(path))):
        read_matclust_spikes(path)


def test_matclust_wrong_structure(tmp_path):
    path = tmp_path / "matrix.mat"
    scipy.io.savemat(path, {"spikes": np.eye(3)})
    with pytest.raises(CatalogError) as error:
        read_matclust_spikes(path)
    assert str(path) in str(error.value) and "3x3 float64 array" in str(error.value)

    path = write_spikes_mat(tmp_path / "no_time.mat", cell(cell({"spiketimes": np.ones((2, 1))}, cluster(1.0))))
    with pytest.raises(CatalogError, match=r"tetrode 0, cluster 0: cluster struct has no 'time' field"):
        read_matclust_spikes(path)


# ------------------------------------------------------------------------------------------------ Trodes errors

def test_trodes_missing_end_marker(tmp_path):
    path = write_trodes(tmp_path / "open.videoPositionTracking", [0, 500], [1, 2], [3, 4], end_marker=False)
    with pytest.raises(CatalogError, match=re.escape(str(path)) + r".*<End settings>"):
        read_trodes_positions(path)


def test_trodes_backwards_time(tmp_path):
    path = write_trodes(tmp_path / "back.videoPositionTracking", [0, 500, 1000, 900, 1500], [1] * 5, [2] * 5)
    with pytest.raises(CatalogError) as error:
        read_trodes_positions(path)
    message = str(error.value)
    assert str(path) in message and "record 3" in message and "field 'time'" in message


def test_trodes_truncated_synthetic(tmp_path):
    path = write_trodes(tmp_path / "cut.videoPositionTracking", [0, 500, 1000], [1, 2, 3], [4, 5, 6])
    path.write_bytes(path.read_bytes()[:-3])  # 9 of the last record's 12 bytes: stops inside xloc2
    with pytest.raises(CatalogError, match=r"record 2 \(0-based\) at byte \d+ is cut off in field 'xloc2'"):
        read_trodes_positions(path)


# ------------------------------------------------------------------------------------------------ real data

@pytest.fixture(scope="module")
def wmaze_spikes():
    return read_matclust_spikes(WMAZE / "spikes.mat")


@pytest.fixture(scope="module")
def wmaze_positions():
    return read_trodes_positions(WMAZE / "trajectory.videoPositionTracking")


@pytest.fixture(scope="module")
def wmaze_default():
    return read_spikes(WMAZE / "spikes.mat", WMAZE / "trajectory.videoPositionTracking")


@needs_data
def test_wmaze_spikes_match_readme(wmaze_spikes):
    spikes = wmaze_spikes
    assert len(spikes) == 518_352
    assert spikes["unit"].nunique() == 25
    assert (spikes["unit"] == "t09c14").sum() == 461_464
    assert spikes["time"].min() == pytest.approx(64.4, abs=0.05)
    assert spikes["time"].max() == pytest.approx(4371.2, abs=0.05)
    # Sorted by (time, unit): the tie-break makes the order reproducible.
    order = np.lexsort((spikes["unit"].to_numpy(), spikes["time"].to_numpy()))
    np.testing.assert_array_equal(order, np.arange(len(spikes)))


@needs_data
def test_wmaze_single_cluster_tetrodes_kept(wmaze_spikes):
    # Tetrodes 3, 8 and 12 hold one cluster each, nested one level shallower than the others.
    clusters_per_tetrode = wmaze_spikes.groupby("tetrode")["cluster"].nunique()
    single = sorted(clusters_per_tetrode[clusters_per_tetrode == 1].index)
    assert single == [3, 8, 12]
    assert {"t03c00", "t08c00", "t12c00"} <= set(wmaze_spikes["unit"])


@needs_data
def test_wmaze_positions_match_readme(wmaze_positions):
    positions, settings = wmaze_positions
    assert len(positions) == 261_995
    assert settings["clock_rate"] == 30000
    assert positions["time"].iloc[0] == pytest.approx(5.36, abs=0.005)
    assert positions["time"].iloc[-1] == pytest.approx(4371.32, abs=0.005)
    assert (positions["time"].diff().iloc[1:] > 0).all()
    assert positions["x"].between(183, 525).all() and positions["y"].between(121, 479).all()


@needs_data
def test_wmaze_default_read(wmaze_default):
    events, rejects, info = wmaze_default
    # 518,352 spikes - 461,464 of the multi-unit cluster t09c14 = 56,888: every other spike lies inside the
    # tracked range (spikes 64.4 ... 4371.2 s, positions 5.36 ... 4371.32 s) and the track has no gap > 1 s
    # (longest frame interval 0.11 s), so nothing else is dropped. Observed with the default arguments.
    assert len(events) == 56_888 == info["spikes_kept"]
    assert info["spikes_read"] == 518_352 and len(info["units"]) == 25
    assert info["position_samples"] == 261_995 and info["position_samples_invalid"] == 0
    assert events["x"].between(183, 525).all() and events["y"].between(121, 479).all()
    assert "t09c14" not in set(events["unit"])

    assert list(rejects.columns) == list(REJECT_COLUMNS)
    assert len(rejects) == info["dropped_multi_unit"] == 461_464
    assert set(rejects["reason"]) == {"multi-unit cluster (holds 89% of spikes > max_unit_fraction 50%)"}
    assert set(rejects["value"]) == {"t09c14"} and set(rejects["field"]) == {"unit"}
    assert (rejects["line"] == -1).all()  # a binary file has no text lines
    # Every spike read is either an event or exactly one reject.
    rows = np.sort(np.concatenate([events["_row"].to_numpy(), rejects["row"].to_numpy()]))
    np.testing.assert_array_equal(rows, np.arange(1, 518_353))


@needs_data
def test_wmaze_speed_filter_and_keeping_multi_unit():
    events, rejects, info = read_spikes(WMAZE / "spikes.mat", WMAZE / "trajectory.videoPositionTracking",
                                        speed_min=5, max_unit_fraction=None)
    assert info["dropped_multi_unit"] == 0 and "t09c14" in set(events["unit"])
    slow = rejects[rejects["field"] == "speed"]
    assert len(slow) == info["dropped_slow"] == len(rejects)
    assert set(slow["reason"]) == {"speed below 5 px/s"}
    assert (slow["value"].astype(float) < 5).all() and (events["speed"] >= 5).all()
    # Rest periods hold a large share of the session, but the animal runs for much of it too.
    assert 0.2 < info["dropped_slow"] / info["spikes_read"] < 0.8


@needs_data
def test_wmaze_truncated_copy(tmp_path):
    truncated = tmp_path / "trajectory.videoPositionTracking"
    shutil.copyfile(WMAZE / "trajectory.videoPositionTracking", truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size - 5)  # 7 of the last record's 12 bytes remain
    with pytest.raises(CatalogError) as error:
        read_trodes_positions(truncated)
    message = str(error.value)
    # The header is 197 bytes; record 261,994 (the last) starts at 197 + 261,994 * 12 = 3,144,125.
    assert str(truncated) in message
    assert "record 261994 (0-based) at byte 3144125 is cut off in field 'yloc'" in message


@needs_data
def test_linear_track():
    spikes = read_matclust_spikes(LINEAR / "spikes.mat")
    assert len(spikes) == 28_829 and spikes["unit"].nunique() == 31
    events, rejects, info = read_spikes(LINEAR / "spikes.mat", LINEAR / "trajectory.videoPositionTracking")
    # One y = 1 tracking-loss frame, one repeated timestamp (a duplicated frame), 4 spikes after the track ends.
    assert info["position_samples_invalid"] == 1 and info["position_duplicate_times"] == 1
    assert info["dropped_multi_unit"] == 0  # the largest cluster holds 28% of the spikes
    assert info["dropped_outside_position_range"] == len(rejects) == 4
    assert len(events) == 28_825
    assert (events["y"] > 1).all()
