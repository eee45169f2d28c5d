"""Ingestion of a catalog already in time order: the time ranges follow the parsed chunks (each range reads one
spilled chunk, nothing to merge) and the output's content hashes equal those of the ranges cut from the t-samples
(the path any input took before) and of the in-memory reference, with tied times, an exact duplicate and a
duplicated id across chunk boundaries; a file newest first follows its chunks too; input whose chunks overlap in
time keeps the merging path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pipelines.ingest.partitioned as partitioned
from pipelines.ingest import run_ingest
from pipelines.ingest.ranges import _ascending
from pipelines.ingest.stats import content_hash
from stforecast.io import tables

from .test_bad_input import HEADER, cfg_for, comcat

BLOCK = 20 * 60 - 1  # bytes per chunk: 20 rows of 60 bytes (a chunk ends with the line holding its last byte)


def row(t: pd.Timestamp, i: int, ident: str | None = None) -> str:
    """A fixed-width row (60 bytes with its newline), so chunk boundaries do not move when its content does."""
    return (f"{t.strftime('%Y-%m-%dT%H:%M:%S')}.000Z,35.{(i * 37) % 10_000:04d},139.{(i * 91) % 10_000:04d},10,"
            f"{3 + (i % 9) / 10:.1f},ml,{ident or f'ev{i:05d}'}")


def boundaries(path) -> list[int]:
    """Index (among data rows) of the first row of every chunk after the first."""
    counts = [tables.count_rows(c) for c in tables.plan_chunks(path, BLOCK)]
    return list(np.cumsum(counts)[:-1])


def sorted_catalog(tmp_path, dup_id: bool = False, swap_inside: bool = False):
    """Events every 2 h through January 2020, in time order, with: six tied events across one chunk boundary, the
    two beside it exact duplicates of each other; three tied events ending a chunk and the next chunk starting
    30 s later (inside the 60 s tie resolution: the next range's first time caps their spread); three tied on the
    val boundary. ``dup_id``: a later event reuses an early id (invalid). ``swap_inside``: two rows inside one
    chunk swapped, then each repeated in that order (the chunks' extents still do not overlap; that chunk must
    be put back in input order for its rejects and sorted by time for its events)."""
    times = list(pd.date_range("2020-01-01", periods=360, freq="2h"))
    path = comcat(tmp_path, [row(t, i) for i, t in enumerate(times)])
    b = boundaries(path)
    assert b == list(range(20, 360, 20))  # 18 chunks
    k = b[3]
    for i in range(k - 3, k + 3):
        times[i] = times[k - 3]
    k2 = b[6]
    for i in range(k2 - 3, k2):
        times[i] = times[k2 - 3]
    times[k2] = times[k2 - 3] + pd.Timedelta(seconds=30)
    val = times.index(pd.Timestamp("2020-01-20"))
    times[val + 1] = times[val + 2] = times[val]
    rows = [row(t, i) for i, t in enumerate(times)]
    rows[k] = rows[k - 1]  # an exact duplicate, in the next chunk
    if dup_id:
        rows[300] = row(times[300], 300, "ev00007")
    if swap_inside:
        j = b[10] + 4
        rows[j], rows[j + 1] = rows[j + 1], rows[j]
        rows[j + 2], rows[j + 3] = rows[j], rows[j + 1]  # rejected in this (input) order, not in time order
    path = comcat(tmp_path, rows)
    assert boundaries(path) == b  # fixed width: the chunks are where they were planned
    return path


def ingest_three_ways(settings, tmp_path, path, part_rows, monkeypatch):
    """The in-memory reference, the ranges cut from t-samples (the old path, forced) and the ranges following the
    chunks, for each ``part_rows``: their results."""
    cfg = cfg_for(path, tie_resolution_s=60.0)
    kw = dict(progress=False)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, scheduler="synchronous", **kw)
    monkeypatch.setattr(partitioned, "FOLLOW_SORTED_CHUNKS", False)
    old = run_ingest(cfg, settings, out_root=tmp_path / "old", blocksize=BLOCK, part_rows=part_rows[0], **kw)
    monkeypatch.setattr(partitioned, "FOLLOW_SORTED_CHUNKS", True)
    new = [run_ingest(cfg, settings, out_root=tmp_path / f"new{n}", blocksize=BLOCK, part_rows=n, **kw)
           for n in part_rows]
    return ref, old, new


def test_sorted_catalog_follows_the_chunks_with_the_same_content(settings, tmp_path, monkeypatch):
    path = sorted_catalog(tmp_path)
    # 50: ranges of two whole chunks; 13: each chunk cut in two by its own t-sample
    ref, old, new = ingest_three_ways(settings, tmp_path, path, part_rows=(50, 13), monkeypatch=monkeypatch)
    expected = content_hash(ref.out_dir)
    assert content_hash(old.out_dir) == expected and old.order["path"] == "merge"
    for r in new:
        assert r.order["path"] == "chunks", r.order
        assert content_hash(r.out_dir) == expected, r.order
        assert r.manifest["counts"] == old.manifest["counts"] == ref.manifest["counts"]
        assert r.manifest["schema"] == ref.manifest["schema"]
    events = pd.read_parquet(new[0].out_dir / "events.parquet")
    assert len(events) == 359 and np.all(np.diff(events["t"].to_numpy()) > 0)  # one duplicate dropped, ties spread
    rejected = {(r["reason"], r["rows"]) for r in new[0].manifest["counts"]["rejected"]}
    assert ("exact duplicate event", 1) in rejected


def test_ranges_follow_the_chunks_and_read_one_each(settings, tmp_path):
    """part_rows of one chunk: every range is a chunk, except that the tied rows ending chunk 3 go with chunk 4."""
    path = sorted_catalog(tmp_path)
    chunks = len(boundaries(path)) + 1  # of 20 rows each
    r = run_ingest(cfg_for(path, tie_resolution_s=60.0), settings, out_root=tmp_path / "o", blocksize=BLOCK,
                   part_rows=20, progress=False)
    assert r.order == {"path": "chunks", "ranges": chunks, "one_chunk": chunks - 1}
    from rich.console import Console

    from pipelines.ingest.cli import print_summary

    console = Console(record=True, width=200)
    print_summary(console, r)
    assert f"Input in time order: {chunks} time ranges followed the parsed chunks" in console.export_text()


def test_duplicated_id_is_set_aside_alike_on_the_sorted_path(settings, tmp_path):
    path = sorted_catalog(tmp_path, dup_id=True)
    with pytest.raises(Exception, match="duplicate event id"):
        run_ingest(cfg_for(path), settings, out_root=tmp_path / "strict", blocksize=BLOCK, part_rows=50,
                   progress=False)
    cfg = cfg_for(path, tie_resolution_s=60.0)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, scheduler="synchronous",
                     progress=False, quarantine=True)
    new = run_ingest(cfg, settings, out_root=tmp_path / "new", blocksize=BLOCK, part_rows=50, progress=False,
                     quarantine=True)
    assert new.order["path"] == "chunks"
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)
    rej = lambda r: (pd.read_parquet(r.out_dir / "rejected.parquet").sort_values(["file", "row", "reason"])
                     .reset_index(drop=True))
    pd.testing.assert_frame_equal(rej(new), rej(ref))
    assert "duplicate event id" in set(rej(new)["reason"])


@pytest.mark.parametrize("case, path_taken", [("overlapping", "merge"), ("unsorted inside a chunk", "chunks"),
                                              ("newest first", "chunks")])
def test_other_orders_keep_their_results(settings, tmp_path, case, path_taken):
    """Overlapping chunks (the first 25 rows moved to the end of the file) take the merging path; chunks in order
    whose rows are not (two swapped, and repeated), and a file newest first (ComCat's default), follow the
    chunks and are sorted: all equal the in-memory reference, the rejects in input order as there."""
    path = sorted_catalog(tmp_path, swap_inside=case == "unsorted inside a chunk")
    lines = path.read_text().splitlines()
    if case == "overlapping":
        path.write_text("\n".join([HEADER, *lines[26:], *lines[1:26]]) + "\n")
    elif case == "newest first":
        path.write_text("\n".join([HEADER, *lines[:0:-1]]) + "\n")
    cfg = cfg_for(path, tie_resolution_s=60.0)
    ref = run_ingest(cfg, settings, out_root=tmp_path / "ref", blocksize=None, progress=False,
                     scheduler="synchronous", quarantine=True)
    new = run_ingest(cfg, settings, out_root=tmp_path / "new", blocksize=BLOCK, part_rows=50, progress=False,
                     quarantine=True)
    assert new.order["path"] == path_taken
    assert content_hash(new.out_dir) == content_hash(ref.out_dir)
    rejected = pd.read_parquet(new.out_dir / "rejected.parquet")
    assert list(rejected["reason"]) == ["exact duplicate event"] * (3 if case == "unsorted inside a chunk" else 1)
    pd.testing.assert_frame_equal(rejected, pd.read_parquet(ref.out_dir / "rejected.parquet"))


def test_ascending_is_what_a_stable_lexsort_leaves_in_place():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 8))
        keys = [rng.integers(0, 3, n).astype(float) for _ in range(3)]
        if n and rng.random() < 0.2:
            keys[0][rng.integers(n)] = np.nan
        identity = np.array_equal(np.lexsort(keys[::-1]), np.arange(n))
        if np.isnan(keys[0]).any():  # never trusted to be in order, except alone
            assert identity or not _ascending(*keys), keys
            assert n < 2 or not _ascending(*keys), keys
        else:
            assert _ascending(*keys) == identity, keys
