"""Ingestion throughput and memory: the Dask pipeline against a plain single-threaded pandas run of the same steps.

    python -m benchmarks.ingest [--rows 5000000] [--workers 2] [--modes read_csv,pandas,dask-in-memory,dask]
    python -m benchmarks.ingest --rows 50000000 --modes dask      # the out-of-core goal (pandas would need ~30 GB)
    python -m benchmarks.ingest --compare                         # every real catalog: both paths, content hashes
    python -m benchmarks.ingest --spikes 20000000                 # a synthetic tetrode recording, both paths

Generates a ComCat-style CSV (22 columns, as the USGS FDSN service writes them) once into data/cache/bench/,
then runs, each in a fresh subprocess so memory is measured cleanly:

* ``dask``:   ``run_ingest`` on a LocalCluster (N worker processes, 1 thread each, 64 MB chunks);
* ``dask``: the global steps partition-wise (time ranges of 500,000 events; ``pipelines.ingest.partitioned``;
  the generated file is in time order, so the ranges follow the parsed chunks: the run prints which path ran);
* ``dask-in-memory``: the same parse on Dask, the global steps in one task holding the catalog (before issue 13);
* ``pandas``: the same ``run_ingest`` steps on the synchronous scheduler with the file as one chunk: one
  ``pandas.read_csv`` and the same validation/cleaning/windowing, single-threaded;
* ``read_csv only``: bare ``pandas.read_csv`` of the 5 used columns, for scale.

Runs use ``--quarantine``: at 50 M rows the generated Gutenberg-Richter magnitudes include a few above 10, which
validation rejects (they are set aside, as in any quarantine run). It prints wall time, rows/s and peak RSS (the process plus its child processes, sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("time,latitude,longitude,depth,mag,magType,nst,gap,dmin,rms,net,id,updated,place,type,horizontalError,"
          "depthError,magError,magNst,status,locationSource,magSource")


def generate(path: Path, rows: int, seed: int = 0, block: int = 500_000) -> None:
    """A synthetic ComCat CSV: clustered epicentres around Japan, Gutenberg-Richter magnitudes, sorted times."""
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    start = np.datetime64("1990-01-01T00:00:00", "ms")
    span_ms = 30 * 365 * 86400 * 1000
    times = np.sort(rng.integers(0, span_ms, rows))
    with open(tmp, "w") as f:
        f.write(HEADER + "\n")
        for a in range(0, rows, block):
            n = min(block, rows - a)
            t = (start + times[a:a + n].astype("timedelta64[ms]")).astype(str)
            lat = np.round(35 + 5 * rng.standard_normal(n), 4)
            lon = np.round(140 + 5 * rng.standard_normal(n), 4)
            mag = np.round(2.5 + rng.exponential(1 / np.log(10), n), 1)
            depth = np.round(rng.uniform(0, 60, n), 2)
            frame = pd.DataFrame({
                "time": np.char.add(t, "Z"), "latitude": lat, "longitude": lon, "depth": depth, "mag": mag,
                "magType": "mb", "nst": "", "gap": "", "dmin": "", "rms": 0.9, "net": "us",
                "id": np.char.add("us", np.char.zfill(np.arange(a, a + n).astype(str), 9)),
                "updated": "2020-01-01T00:00:00.000Z", "place": "near the coast of Honshu, Japan", "type": "earthquake",
                "horizontalError": "", "depthError": 1.8, "magError": "", "magNst": "", "status": "reviewed",
                "locationSource": "us", "magSource": "us"})
            frame.to_csv(f, header=False, index=False)
    os.replace(tmp, path)


def generate_spikes(folder: Path, spikes: int, seed: int = 0) -> None:
    """A synthetic tetrode recording: 4 h of 60 Hz positions (a random walk on a 640x480 camera) and ``spikes``
    spikes in 32 clusters on 8 tetrodes (one multi-unit cluster with 40 % of them), MatClust + Trodes layouts."""
    import scipy.io

    rng = np.random.default_rng(seed)
    duration, rate, clock = 4 * 3600.0, 60.0, 30000
    frames = int(duration * rate)
    ticks = (np.arange(frames) * (clock / rate)).astype(np.uint32) + clock
    steps = rng.normal(0, 2.0, (frames, 2)).cumsum(axis=0)
    x = (320 + 250 * np.sin(steps[:, 0] / 200)).astype(np.uint16)
    y = (240 + 200 * np.sin(steps[:, 1] / 200)).astype(np.uint16)
    records = np.zeros(frames, dtype=[("time", "<u4"), ("xloc", "<u2"), ("yloc", "<u2"), ("xloc2", "<u2"),
                                      ("yloc2", "<u2")])
    records["time"], records["xloc"], records["yloc"] = ticks, x, y
    header = ("<Start settings>\nclockrate: 30000\ncamera resolution: 640x480\n"
              "Fields: <time uint32><xloc uint16><yloc uint16><xloc2 uint16><yloc2 uint16>\n<End settings>\n")
    (folder / "trajectory.videoPositionTracking").write_bytes(header.encode() + records.tobytes())
    share = np.r_[0.4, np.full(31, 0.6 / 31)]
    counts = rng.multinomial(spikes, share)

    def cell(items):
        out = np.empty((1, len(items)), dtype=object)
        for i, item in enumerate(items):
            out[0, i] = item
        return out

    tetrodes = []
    for tet in range(8):
        clusters = []
        for k in range(4):
            n = counts[tet * 4 + k]
            times = np.sort(rng.uniform(1.0, 1.0 + duration, n)).round(5).reshape(-1, 1)
            clusters.append({"time": times, "meanrate": n / duration})
        tetrodes.append(cell(clusters))
    scipy.io.savemat(folder / "spikes.mat", {"spikes": cell([cell([cell(tetrodes)])])})


def _spikes_config(folder: Path):
    from stforecast.config import build_config

    return build_config("bench_spikes", {
        "kind": "spikes", "format": "spikes", "path": str(folder / "spikes.mat"),
        "positions": str(folder / "trajectory.videoPositionTracking"), "time_unit": "seconds",
        "tie_resolution_s": 1 / 30000, "spikes": {"speed_min": 5.0, "max_unit_fraction": 0.3},
        "split": {"history_start": 0.0, "train_start": 60.0, "val_start": 10000.0, "test_start": 12000.0,
                  "end": 14500.0},
        "sequences": {"mode": "windows", "window": 20.0, "history_events": 32}, "projection": {"crs": "none"}})


def _config(path: Path):
    from stforecast.config import build_config

    return build_config("bench", {
        "kind": "earthquakes", "format": "comcat", "path": str(path), "time_unit": "days",
        "split": {"history_start": "1990-01-01", "train_start": "1991-01-01", "val_start": "2010-01-01",
                  "test_start": "2015-01-01", "end": "2020-01-01"},
        "sequences": {"mode": "windows", "window": 30.0, "history_events": 32},
        "projection": {"crs": "aeqd", "unit": "km"}})


def run_one(mode: str, path: str, workers: int) -> dict:
    """One measured run (called in a subprocess); its output folder is removed afterwards."""
    import shutil

    out = Path(tempfile.mkdtemp(prefix="stf-bench-"))
    try:
        return _run_one(mode, path, workers, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _run_one(mode: str, path: str, workers: int, out: Path) -> dict:
    from stforecast.config import load_settings
    from pipelines.ingest import run_ingest

    settings = load_settings()
    t0 = time.perf_counter()
    if mode == "compare":
        return compare_real(settings, out)
    if mode == "read_csv":
        frame = pd.read_csv(path, usecols=["time", "latitude", "longitude", "mag", "id"])
        return {"mode": mode, "rows": len(frame), "seconds": time.perf_counter() - t0}
    spikes = mode.startswith("spikes")
    cfg = _spikes_config(Path(path)) if spikes else _config(Path(path))
    # CSV runs quarantine (the generated 50 M-row file holds a few magnitudes above 10); a recording's dropped
    # spikes would otherwise all be written to rejected.parquet
    kw = dict(out_root=out, progress=False, force=True, quarantine=not spikes)
    if mode in ("pandas", "spikes-in-memory"):
        r = run_ingest(cfg, settings, client=None, blocksize=None, scheduler="synchronous", **kw)
        return {"mode": mode, "rows": r.manifest["counts"]["rows_read"], "seconds": time.perf_counter() - t0}
    from pipelines.cluster import dask_client

    with dask_client(None, workers) as client:
        t0 = time.perf_counter()  # cluster start-up and shut-down (≈1 s each) are not ingestion
        r = run_ingest(cfg, settings, client=client, in_memory=mode == "dask-in-memory", **kw)
        seconds = time.perf_counter() - t0
    return {"mode": mode, "rows": r.manifest["counts"]["rows_read"], "seconds": seconds, "stages": r.stages,
            "order": r.order}


def compare_real(settings, out: Path) -> dict:
    """Every catalog of the configuration whose inputs are on disk: ingested by the in-memory reference path and
    partition-wise (1 MB chunks, time ranges of 20,000 events so the larger ones span several), content hashes.
    Where the ranges followed the chunks (input in time order), also with ranges cut from the t-samples."""
    from pipelines.ingest import partitioned, run_ingest
    from pipelines.ingest.stats import content_hash

    rows = []
    for name in settings.catalogs:
        cfg = settings.catalog(name)
        if cfg.download or cfg.split.mode == "given":  # the source's own windows always take the in-memory path
            rows.append({"catalog": name, "result": "not compared: " + ("a remote query" if cfg.download else
                                                                        "the source's own windows (in-memory path)")})
            continue
        try:
            ref = run_ingest(cfg, settings, out_root=out / "ref", blocksize=None, progress=False,
                             scheduler="synchronous")
        except (FileNotFoundError, OSError) as e:
            rows.append({"catalog": name, "result": f"skipped ({str(e)[:60]})"})
            continue
        t0 = time.perf_counter()
        new = run_ingest(cfg, settings, out_root=out / "new", blocksize=2**20, part_rows=20_000, progress=False)
        seconds = time.perf_counter() - t0
        a, b = content_hash(ref.out_dir), content_hash(new.out_dir)
        if new.order and new.order["path"] == "chunks":  # sorted input: also ranges cut from the t-samples
            partitioned.FOLLOW_SORTED_CHUNKS = False
            try:
                merged = run_ingest(cfg, settings, out_root=out / "merged", blocksize=2**20, part_rows=20_000,
                                    progress=False)
            finally:
                partitioned.FOLLOW_SORTED_CHUNKS = True
            b = b if content_hash(merged.out_dir) == b else {}
        rows.append({"catalog": name, "events": ref.manifest["counts"]["events_kept"],
                     "path": f"{new.order['path']} ({new.order['ranges']} ranges)" if new.order else "",
                     "seq files": len(list((new.out_dir / "sequences").rglob("*.parquet"))),
                     "seconds": round(seconds, 1), "events.parquet": a["events"][:12],
                     "identical": a == b})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"mode": "compare", "catalogs": rows}


def measure(mode: str, path: Path, workers: int) -> dict:
    import psutil

    cmd = [sys.executable, "-m", "benchmarks.ingest", "--child", mode, "--file", str(path), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak = 0
    ps = psutil.Process(proc.pid)

    def sample():
        nonlocal peak
        while proc.poll() is None:
            try:
                total = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = peak / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000, help="rows of the generated ComCat-style CSV")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (1 thread each)")
    ap.add_argument("--modes", default="read_csv,pandas,dask-in-memory,dask",
                    help="comma-separated: read_csv, pandas, dask-in-memory, dask")
    ap.add_argument("--compare", action="store_true",
                    help="ingest every real catalog by both paths and compare the content hashes of their outputs")
    ap.add_argument("--spikes", type=int, default=0, metavar="N",
                    help="instead: a synthetic recording of N spikes, read whole (one thread) and cluster by cluster")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.file, args.workers)))
        return
    if args.compare:

        res = run_one("compare", "", args.workers)
        print(f"{'catalog':<22}{'events':>10}{'seq files':>11}{'s':>7}  {'ranges':<20}events.parquet  "
              "identical (events and sequences)")
        for r in res["catalogs"]:
            if "identical" not in r:
                print(f"{r['catalog']:<22}{r['result']}")
                continue
            print(f"{r['catalog']:<22}{r['events']:>10,}{r['seq files']:>11}{r['seconds']:>7}  {r['path']:<20}"
                  f"{r['events.parquet']}    {r['identical']}")
        if not all(r.get("identical", True) for r in res["catalogs"]):
            raise SystemExit("the two paths differ on at least one catalog")
        return
    if args.spikes:
        folder = ROOT / "data" / "cache" / "bench" / f"spikes_{args.spikes}"
        if not (folder / "spikes.mat").exists():
            folder.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            print(f"generating {args.spikes:,} spikes → {folder} ...", flush=True)
            generate_spikes(folder, args.spikes)
            print(f"  {time.perf_counter() - t:.1f} s", flush=True)
        size = (folder / "spikes.mat").stat().st_size / 2**20
        print(f"recording: {folder} (spikes.mat {size:,.0f} MB, {args.spikes:,} spikes); peak RSS = the process and "
              "all its children, sampled every 50 ms")
        print(f"{'path':<40}{'seconds':>9}{'spikes/s':>12}{'peak RSS MB':>13}")
        names = {"spikes-in-memory": "whole recording, one thread",
                 "spikes": f"cluster by cluster, Dask {args.workers} workers"}
        for m in ("spikes-in-memory", "spikes"):
            r = measure(m, folder, args.workers)
            print(f"{names[m]:<40}{r['seconds']:>9.1f}{r['rows'] / r['seconds']:>12,.0f}{r['peak_rss_mb']:>13,.0f}",
                  flush=True)
            if r.get("stages"):
                print("  where the time goes: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stages"].items()))
        return
    path = ROOT / "data" / "cache" / "bench" / f"comcat_{args.rows}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        t = time.perf_counter()
        print(f"generating {args.rows:,} rows → {path} ...", flush=True)
        generate(path, args.rows)
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)
    size = path.stat().st_size / 2**20
    print(f"file: {path} ({size:,.0f} MB, {args.rows:,} rows); machine: {os.cpu_count()} cores; peak RSS = the "
          "process and all its children (workers, scheduler), sampled every 50 ms")
    modes = args.modes.split(",")
    results = {m: measure(m, path, args.workers) for m in modes}
    print(f"{'path':<36}{'seconds':>9}{'rows/s':>14}{'MB/s':>9}{'peak RSS MB':>13}")
    names = {"read_csv": "pandas.read_csv only", "pandas": "pipeline, pandas 1 thread",
             "dask-in-memory": f"Dask {args.workers} workers, global in memory", "dask": f"Dask {args.workers} workers, partition-wise"}
    for m, r in results.items():
        print(f"{names[m]:<36}{r['seconds']:>9.1f}{r['rows'] / r['seconds']:>14,.0f}"
              f"{size / r['seconds']:>9.1f}{r['peak_rss_mb']:>13,.0f}")
    if results.get("dask", {}).get("stages"):
        print("partition-wise, where the time goes: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in results["dask"]["stages"].items()))
    if results.get("dask", {}).get("order"):
        from pipelines.ingest.cli import order_note

        print("partition-wise, time ranges: " + order_note(results["dask"]["order"]))
    if "pandas" in results:
        for m in ("dask-in-memory", "dask"):
            if m in results:
                speedup = results["pandas"]["seconds"] / results[m]["seconds"]
                print(f"{names[m]} vs single-threaded pandas pipeline: {speedup:.2f}x")


if __name__ == "__main__":
    main()
