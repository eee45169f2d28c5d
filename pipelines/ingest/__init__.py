"""Ingestion: a raw catalog → validated, cleaned, split and windowed Parquet sequences with a manifest.

    inputs.py       what is read: files (local, fetched, downloaded), their hash, the reader's settings, split times
    tasks.py        per-chunk tasks: parse + validate + filter, extent, projection; writing sequences
    spill.py        parsed chunks (or a recording's clusters) sorted and spilled for the global steps
    ranges.py       per time range: order, de-duplicate, break ties, split; sequences by batches of rows
    stats.py        reductions: moments, exact quantiles, Parquet streamed from parts, content hashes
    partitioned.py  the global steps planned partition-wise (memory bounded by a time range)
    reference.py    the same steps in one in-memory task (the source's own sequences; the tests' reference)
    manifest.py     the Manifest written beside the output (read back by stforecast.ingested alone)
    graph.py        run_ingest: the Dask graph from inputs to the atomic output folder
    cli.py          the `stforecast ingest` command
"""

from pipelines.ingest.cli import add_parser, run
from pipelines.ingest.graph import IngestResult, run_ingest

__all__ = ["IngestResult", "add_parser", "run", "run_ingest"]
