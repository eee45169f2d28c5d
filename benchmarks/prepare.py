"""What the benchmarks read, made on demand: an ingested catalog (ingested on first use) and a checkpoint check.

A checkout where only ``make test`` ran has no ``data/processed``: each benchmark calls :func:`ensure_ingested`
for the catalog it reads, which ingests it once (printing one line) and afterwards finds it in place.
"""

from __future__ import annotations

import os
from pathlib import Path


def ensure_ingested(data: str | os.PathLike, settings=None, log=None) -> Path:
    """The folder of the ingested catalog ``data``, ingesting it first when it is missing.

    ``data`` is a catalog name (``dstpp_japan``: the folder under the processed directory, which
    ``STFORECAST_PROCESSED_DIR`` or ``[settings] processed_dir`` choose) or a folder (``data/processed/japan``).
    A folder that already holds a manifest is used as it is (never re-ingested: it may have been made with other
    settings on purpose). A missing one whose name is a catalog of ``data/catalogs.toml`` is ingested there with
    :func:`pipelines.ingest.run_ingest`, saying so in one line through ``log`` (default: print); anything else
    is a one-line :class:`SystemExit`."""
    from stforecast.config import load_settings
    from stforecast.ingested import IngestedCatalog

    settings = settings or load_settings()
    text = os.fspath(data)
    try:
        return IngestedCatalog.open(text, settings.processed_dir).folder
    except FileNotFoundError:
        pass
    by_name = "/" not in text and text not in (".", "..")
    folder = settings.processed_dir / text if by_name else Path(text)
    name = folder.name
    if name not in settings.catalogs:
        raise SystemExit(f"no ingested catalog at {folder} (no manifest.json), and {name!r} is not a catalog of "
                         f"{settings.config_file} (known: {', '.join(sorted(settings.catalogs))}); ingest it first "
                         "with `stforecast ingest`")
    (log or _say)(f"{folder} is not ingested yet: ingesting catalog {name!r} from {settings.data_root} (first run only)")
    from pipelines.ingest import run_ingest

    return run_ingest(settings.catalog(name), settings, out_root=folder.parent, progress=False).out_dir


def _say(line: str) -> None:
    print(line, flush=True)


def require_checkpoint(path: str | os.PathLike, catalog: str, flag: str = "--model") -> None:
    """Exit with one line naming the command that writes ``path`` when there is no checkpoint there."""
    if Path(path).is_file():
        return
    name = Path(os.fspath(catalog)).name
    raise SystemExit(f"{flag} {path}: no such checkpoint; train one first, e.g. `stforecast train --data {name}` "
                     f"(writes runs/{name}-default/best.pt) or `stforecast benchmark --catalogs {name}` "
                     f"(writes runs/benchmark/{name}-*/best.pt)")
