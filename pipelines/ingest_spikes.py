"""Ingest spikes catalogs: `python -m pipelines.ingest_spikes [CATALOG] [options]` (same as `stforecast ingest spikes`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "spikes", *sys.argv[1:]]))
