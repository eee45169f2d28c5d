"""The partition-wise ingestion (pipelines.ingest.partitioned) against the in-memory reference path (one task holding the
whole catalog): identical events and sequences, with partition edges placed inside runs of tied times and
duplicates on purpose, on a 2-worker cluster too; and its exact order statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import run_ingest
from pipelines.ingest.ranges import time_edges
from pipelines.ingest.spill import ChunkInfo, write_arrow
from pipelines.ingest.stats import content_hash, order_statistic, quantile

from .test_bad_input import cfg_for, comcat

TIED = "2020-01-05T06:00:00.000Z"


def tied_catalog(every: int = 1) -> list[str]:
    """Events every ``every`` hours with a run of 12 events at one time (4 of them exact duplicates of each other)
    split between two places far apart in the file, a run tied exactly on the val boundary, an event 30 s after
    the run (inside the tie resolution: it caps the run's spread, across a range edge when one falls between
    them), and exact repeats at the end of the file."""
    n = 24 * 28 // every
    rows = [f"2020-01-{2 + i * every // 24:02d}T{i * every % 24:02d}:00:00.000Z,35.{i % 7}{i % 3},139.{i % 5}{i % 4},10,"
            f"{3 + (i % 9) / 10:.1f},ml,ev{i}" for i in range(n)]
    run = [f"{TIED},35.{k},139.{k},10,3.{k},ml,tie{k}" for k in range(8)]
    run += [f"{TIED},35.9,139.9,10,3.9,ml,dup"] * 4  # exact duplicates inside the run: one is kept
    boundary = [f"2020-01-20T00:00:00.000Z,36.{k},140.{k},10,3.{k},ml,b{k}" for k in range(5)]
    boundary += ["2020-01-05T06:00:30.000Z,35.8,139.8,10,3.1,ml,close"]
    rows[n // 6:n // 6] = run[:6]
    rows[n * 3 // 5:n * 3 // 5] = run[6:] + boundary
    rows += [rows[10], rows[11], rows[n * 3 // 4]]
    return rows


def test_edges_fall_on_values_and_split_the_catalog_evenly():
    t = np.sort(np.r_[np.arange(1000.0), np.full(300, 500.0)])
    chunks = [ChunkInfo(i, len(c), c[0], c[-1], c[np.linspace(0, len(c) - 1, 64).round().astype(int)], None,
                        pd.DataFrame(), len(c), set()) for i, c in enumerate(np.array_split(t, 4))]
    edges = time_edges(chunks, 200)
    assert 5 <= len(edges) <= 7 and np.all(np.diff(edges) > 0) and edges[0] > t[0]
    counts = np.diff(np.searchsorted(t, np.r_[-np.inf, edges, np.inf], side="left"))
    assert counts.sum() == len(t) and counts.max() <= 200 + 300  # a tie run is never cut: one range holds it
    assert time_edges(chunks, 10_000).size == 0


# part_rows=1: an edge at every distinct time, so between the tied run and the event 30 s after it
@pytest.mark.parametrize("part_rows, blocksize, every", [(1, 700, 6), (3, 700, 2), (50, 2_000, 1),
                                                          (10**6, 64 * 2**20, 1)])
def test_partitioned_output_equals_the_in_memory_path(settings, tmp_path, part_rows, blocksize, every):
    path = comcat(tmp_path, tied_catalog(every))
    cfg = cfg_for(path, tie_resolution_s=60.0)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, progress=False,
                     scheduler="synchronous")
    new = run_ingest(cfg, settings, out_root=tmp_path / "new", blocksize=blocksize, part_rows=part_rows,
                     progress=False)
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)
    a, b = ref.manifest, new.manifest
    assert a["counts"]["rows_read"] == b["counts"]["rows_read"] and a["counts"]["events_kept"] == b["counts"]["events_kept"]
    assert a["counts"]["splits"] == b["counts"]["splits"]
    assert a["counts"]["events_per_split"] == b["counts"]["events_per_split"]
    assert sorted(map(str, a["counts"]["rejected"])) == sorted(map(str, b["counts"]["rejected"]))
    assert a["schema"] == b["schema"]
    for name, stats in a["normalisation"].items():
        for k, v in stats.items():
            assert b["normalisation"][name][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (name, k)
    events = pd.read_parquet(new.out_dir / "events.parquet")
    assert (events["event_id"] == "dup").sum() == 1 and (events["event_id"].str.startswith("tie")).sum() == 8
    assert np.all(np.diff(events["t"].to_numpy()) > 0)
    assert not (new.out_dir / "_work").exists()


def test_duplicate_ids_across_ranges_are_found_and_quarantined_alike(settings, tmp_path):
    rows = tied_catalog()
    rows.append("2020-01-27T03:30:00.000Z,35.5,139.5,10,3.3,ml,ev7")  # ev7's id again, three weeks later
    path = comcat(tmp_path, rows)
    cfg = cfg_for(path)
    with pytest.raises(Exception, match="duplicate event id"):
        run_ingest(cfg, settings, out_root=tmp_path / "strict", blocksize=900, part_rows=20, progress=False)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, quarantine=True, progress=False)
    new = run_ingest(cfg, settings, out_root=tmp_path / "new", blocksize=900, part_rows=20, quarantine=True,
                     progress=False)
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)
    rej = lambda r: pd.read_parquet(r.out_dir / "rejected.parquet").sort_values(["file", "row", "reason"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(rej(new), rej(ref))


def test_the_same_graph_on_a_two_worker_cluster(settings, tmp_path):
    from distributed import Client, LocalCluster

    path = comcat(tmp_path, tied_catalog())
    cfg = cfg_for(path)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, progress=False)
    # as `--scheduler ADDRESS` does: a client of a running scheduler (its workers share this file system)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster.scheduler_address) as client:
        new = run_ingest(cfg, settings, client=client, out_root=tmp_path / "new", blocksize=1_500, part_rows=40,
                         progress=False)
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)


@pytest.mark.parametrize("collect", [5, 10**6])
def test_order_statistics_and_quantiles_are_numpys(tmp_path, collect):
    rng = np.random.default_rng(0)
    values = np.r_[rng.standard_normal(5000), np.full(700, 0.25), rng.exponential(3, 2000), [np.nan, np.inf]]
    rng.shuffle(values)
    files = []
    for i, piece in enumerate(np.array_split(values, 7)):
        files.append(tmp_path / f"{i}.arrow")
        write_arrow(pd.DataFrame({"v": piece}), files[-1])
    finite = values[np.isfinite(values)]
    lo, hi = finite.min(), finite.max()
    for rank in (0, 1, 57, 3000, 5200, len(finite) - 1):
        assert order_statistic(files, "v", rank, lo, hi, bins=16, collect=collect) == np.sort(finite)[rank]
    for q in (0.01, 0.5, 0.99):
        assert quantile(files, "v", q, len(finite), lo, hi) == np.quantile(finite, q)


def test_part_rows_flag_is_accepted_and_bad_values_are_one_line(settings, tmp_path):
    from .test_ingest_errors import SPLIT, cli

    path = comcat(tmp_path, tied_catalog(6))
    bad = cli("ingest", "earthquakes", "--path", str(path), "--out", str(tmp_path / "o"), "--no-progress",
              "--workers", "1", "--part-rows", "0", *SPLIT)
    assert bad.returncode == 2 and "--part-rows must be at least 1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    ok = cli("ingest", "earthquakes", "--path", str(path), "--out", str(tmp_path / "o"), "--no-progress",
             "--workers", "1", "--part-rows", "7", *SPLIT)
    assert ok.returncode == 0, ok.stderr


def test_spikes_read_cluster_by_cluster_equal_the_whole_recording(settings, tmp_path):
    """The w-maze recording (518,352 spikes in 25 clusters, 89 % of them in one multi-unit cluster that the reader
    drops): groups of ≈ 60,000 spikes and ranges of 60,000, against the reader that holds every spike."""
    cfg = settings.catalog("wmaze")
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, progress=False, quarantine=True)
    new = run_ingest(cfg, settings, out_root=tmp_path / "new", part_rows=60_000, progress=False, quarantine=True)
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)
    a, b = ref.manifest, new.manifest
    assert a["spikes"] == b["spikes"] and a["counts"] == b["counts"]
    rej = lambda r: pd.read_parquet(r.out_dir / "rejected.parquet").reset_index(drop=True)
    pd.testing.assert_frame_equal(rej(new), rej(ref))
