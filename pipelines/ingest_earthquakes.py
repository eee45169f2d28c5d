"""Ingest earthquakes catalogs: `python -m pipelines.ingest_earthquakes [CATALOG] [options]` (same as `stforecast ingest earthquakes`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "earthquakes", *sys.argv[1:]]))
