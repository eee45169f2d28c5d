"""Ingest crime catalogs: `python -m pipelines.ingest_crime [CATALOG] [options]` (same as `stforecast ingest crime`)."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "crime", *sys.argv[1:]]))
