"""Reductions over the partition-wise output: moments combined (Chan et al.), exact quantiles by histogram
refinement, Parquet streamed from intermediate files, and the content hash two ingestions are compared by."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.ingest.spill import open_arrow
from stforecast.sequences import SPLITS


def moments_of(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": 0.0, "m2": 0.0, "min": math.inf, "max": -math.inf}
    mean = float(v.mean())
    return {"n": int(len(v)), "mean": mean, "m2": float(((v - mean) ** 2).sum()), "min": float(v.min()),
            "max": float(v.max())}


def combine_moments(parts: list[dict]) -> dict:
    """Chan et al.'s pairwise update: count, mean and sum of squared deviations of the union."""
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    for p in parts:
        if not p["n"]:
            continue
        delta = p["mean"] - mean
        total = n + p["n"]
        mean += delta * p["n"] / total
        m2 += p["m2"] + delta * delta * n * p["n"] / total
        n = total
        lo, hi = min(lo, p["min"]), max(hi, p["max"])
    return {"n": n, "mean": mean, "m2": m2, "min": lo, "max": hi}


def order_statistic(files: list[Path], column: str, rank: int, lo: float, hi: float, bins: int = 4096,
                    collect: int = 2_000_000) -> float:
    """The ``rank``-th smallest finite value of ``column`` over ``files`` (0-based), exactly, holding at most
    ``collect`` values: histogram the candidates, keep the bin that holds the rank, repeat until it is small."""
    levels: list[tuple[float, float, int]] = []  # (lo, hi, bin): a value is a candidate if it lands in each

    def candidates(frame_values: np.ndarray) -> np.ndarray:
        v = frame_values[np.isfinite(frame_values)]
        for a, b, j in levels:
            v = v[(v >= a) & (v <= b)]
            v = v[_bin(v, a, b, bins) == j]
        return v

    while True:
        if lo == hi:
            return lo
        counts = np.zeros(bins, dtype=np.int64)
        for f in files:
            v = candidates(open_arrow(f, [column]).column(column).to_numpy())
            v = v[(v >= lo) & (v <= hi)]
            counts += np.bincount(_bin(v, lo, hi, bins), minlength=bins)
        cum = np.cumsum(counts)
        j = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[j - 1]) if j else 0
        levels.append((lo, hi, j))
        if counts[j] <= collect:
            v = np.concatenate([candidates(open_arrow(f, [column]).column(column).to_numpy()) for f in files])
            return float(np.partition(v, rank)[rank])
        width = (hi - lo) / bins
        lo, hi = lo + j * width, min(hi, lo + (j + 1) * width)  # a superset of the bin: `levels` decides


def _bin(v: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    if hi <= lo:
        return np.zeros(len(v), dtype=np.int64)
    return np.clip(((v - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)


def quantile(files: list[Path], column: str, q: float, n: int, lo: float, hi: float) -> float:
    """``np.quantile(values, q)`` (linear method) from exact order statistics, computed the way numpy does."""
    h = (n - 1) * q
    k = int(math.floor(h))
    a = order_statistic(files, column, k, lo, hi)
    b = order_statistic(files, column, k + 1, lo, hi) if k + 1 < n else a
    g = h - k
    return float(b - (b - a) * (1 - g)) if g >= 0.5 else float(a + (b - a) * g)


def normalisation_from_parts(stats_dir: Path, moments: list[dict]) -> dict:
    """:func:`stforecast.sequences.normalisation_stats` by reductions: moments combined, quantiles exact."""
    files = sorted(stats_dir.glob("*.arrow")) if stats_dir.exists() else []
    out = {}
    for name in ("dt", "log_dt", "x", "y"):
        m = combine_moments([p[name] for p in moments])
        if not m["n"]:
            raise ValueError("no training targets: normalisation statistics need at least one")
        q = {k: quantile(files, name, level, m["n"], m["min"], m["max"]) for k, level in (("q01", 0.01), ("q99", 0.99))}
        out[name] = {"mean": m["mean"], "std": math.sqrt(m["m2"] / m["n"]), "min": m["min"], "max": m["max"], **q,
                     "n": m["n"]}
    return out


def stream_parquet(files: list[Path], dest: Path) -> None:
    """One Parquet file (``events.parquet``, ``rejected.parquet``) from intermediate files, one at a time (the
    schema of the first; null columns cast to it)."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for f in files:
            table = open_arrow(f)
            if writer is None:
                writer = pq.ParquetWriter(dest, table.schema)
            elif not table.schema.equals(writer.schema, check_metadata=False):
                table = table.cast(writer.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def content_hash(out_dir: Path) -> dict[str, str]:
    """sha256 of the content of ``events.parquet`` and of each split's sequences: column names, Arrow types and
    values in row order (not the file layout, row groups or metadata), to compare two ingestions' outputs."""
    import hashlib

    import pyarrow.parquet as pq

    def digest(files: list[Path]) -> str:
        h = hashlib.sha256()
        tables = [pq.read_table(f) for f in files]
        if not tables:
            return h.hexdigest()
        schema = tables[0].schema
        h.update(repr([(f.name, str(f.type)) for f in schema]).encode())
        for table in tables:  # one 64-bit hash per row over all its columns: independent of how rows are split
            h.update(pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy().tobytes())
        return h.hexdigest()

    out = {"events": digest([out_dir / "events.parquet"])}
    for split in SPLITS:
        files = sorted((out_dir / "sequences" / f"split={split}").glob("*.parquet"))
        out[f"sequences/{split}"] = digest([f for f in files if pq.read_metadata(f).num_rows] or files[:1])
    return out


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def union_size(first: np.ndarray, stop: np.ndarray) -> int:
    """Size of the union of the row intervals [first, stop) (sorted by first)."""
    total, reach = 0, -1
    for a, b in zip(first.tolist(), stop.tolist()):
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total

