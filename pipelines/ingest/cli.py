"""The ``stforecast ingest`` command: a catalog of the settings file, or an ad-hoc one from flags, through
:func:`pipelines.ingest.graph.run_ingest`, with a summary table of what was kept and removed."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.cluster import dask_client
from pipelines.ingest.graph import run_ingest
from stforecast.settings_files import deep_merge, parse_overrides


KINDS = ("earthquakes", "crime", "spikes", "table")


DEFAULT_CATALOG = {"earthquakes": "japan", "crime": "chicago", "spikes": "wmaze", "table": None}


FORMATS = {"earthquakes": ["comcat", "japan", "pycsep", "dstpp-windows", "table"],
           "crime": ["chicago", "sf", "table"], "spikes": ["spikes"], "table": ["table"]}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ingest", help="read, validate, clean, split and window a catalog into Parquet sequences",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Turn a raw event catalog into model-ready sequences.\n\n"
            "Steps: read (file or URL) -> validate every row (bad rows are named by file, line and field) -> clean\n"
            "(drop exact duplicates, sort, spread tied times inside one clock tick, filters, spatial window) ->\n"
            "project to a local metric CRS -> split by date into train/val/test (targets never cross splits) ->\n"
            "sequences -> Parquet + manifest.json under data/processed/NAME. Re-running with unchanged inputs does\n"
            "nothing. Runs on a local Dask cluster; --scheduler uses an existing one."),
        epilog=(
            "examples:\n"
            "  stforecast ingest earthquakes japan\n"
            "  stforecast ingest earthquakes dstpp_japan\n"
            "  stforecast ingest crime chicago --quarantine\n"
            "  stforecast ingest spikes wmaze --speed-min 0\n"
            "  stforecast ingest earthquakes --name socal --format comcat --path https://example.org/q.csv \\\n"
            "      --history-start 2020-01-01 --train-start 2020-02-01 --val-start 2023-01-01 --test-start 2023-07-01 \\\n"
            "      --end 2024-01-01 --magnitude-min 2.5\n"
            "  stforecast ingest table --name mine --path events.csv --time-col when --x-col lon --y-col lat \\\n"
            "      --crs EPSG:4326 --time-format '%d/%m/%Y %H:%M' --tz Europe/London --category-col type \\\n"
            "      --encoding latin-1 --title 'My events 2021' --licence CC-BY-4.0 --source https://example.org ...\n\n"
            "paths: a relative --path/--positions/--window is looked for in the current directory first, then\n"
            "under the data root (the command says which it used); paths inside the config file start from the\n"
            "data root. NAME (--name, or the file name) may hold letters, digits, '_', '-' and '.'.\n"
            "bad input: each problem is named by file, line (row) and field; --quarantine sets invalid rows\n"
            "(bad values, malformed rows, undecodable bytes) aside in OUT/NAME/rejected.parquet. A failed or\n"
            "interrupted run keeps the previous output."))
    p.add_argument("kind", choices=KINDS, help="what the events are; sets defaults (units, format)")
    p.add_argument("catalog", nargs="?", help="a catalog named in the config file (default: japan, chicago, wmaze)")
    p.add_argument("--list", action="store_true", help="list the catalogs in the config file and exit")
    g = p.add_argument_group("where")
    g.add_argument("--config", help="catalog config file (default data/catalogs.toml, or $STFORECAST_CONFIG)")
    g.add_argument("--data-root", help="folder relative catalog paths start from (default ../shared/data)")
    g.add_argument("--out", help="output root (default data/processed); the catalog goes to OUT/NAME")
    g = p.add_argument_group("a catalog that is not in the config file (or overrides for one that is)")
    g.add_argument("--name", help="output name for an ad-hoc catalog (default: the file name); letters, digits, "
                                  "'_', '-', '.'")
    g.add_argument("--path", help="input file (CSV, CSV.gz, Parquet) or http(s) URL; relative: current directory "
                                  "first, then the data root")
    g.add_argument("--format", help="input preset: comcat, japan, pycsep, dstpp-windows, chicago, sf, table, spikes")
    g.add_argument("--positions", help="spikes: Trodes .videoPositionTracking file")
    g.add_argument("--encoding", dest="table.encoding", metavar="CODEC",
                   help="text encoding of a CSV file (default utf-8), e.g. latin-1 or cp1252")
    g.add_argument("--title", help="a title for the catalog, stored in manifest.json")
    g.add_argument("--licence", help="the data's licence or terms of use, stored in manifest.json")
    g.add_argument("--source", dest="source_url", metavar="URL",
                   help="where the data comes from (URL or citation), stored in manifest.json")
    g = p.add_argument_group("column mapping (format 'table' or to override a preset)")
    for flag, key, what in (("--time-col", "time_col", "event times"), ("--x-col", "x_col", "x (longitude)"),
                            ("--y-col", "y_col", "y (latitude)"), ("--id-col", "id_col", "the source's event ids"),
                            ("--magnitude-col", "magnitude_col", "magnitudes (a mark)"),
                            ("--category-col", "category_col", "categories such as crime types (a mark)"),
                            ("--unit-col", "unit_col", "neural unit ids (a mark)"),
                            ("--sequence-col", "sequence_col", "sequence ids, for given sequences")):
        g.add_argument(flag, dest=f"table.{key}", metavar="COL", help=f"the column holding {what}")
    g.add_argument("--crs", dest="table.crs", metavar="CRS",
                   help="CRS of x/y: EPSG:4326 (lon/lat, default) or e.g. EPSG:32616; 'none' for a local frame such "
                        "as pixels")
    g.add_argument("--time-format", dest="table.time_format", metavar="FORMAT",
                   help="strftime pattern or ISO8601 (default); for numeric times use --time-is")
    g.add_argument("--time-is", dest="table.time_unit", choices=["seconds", "minutes", "hours", "days"],
                   help="times are numbers in this unit (lab clocks) rather than dates")
    g.add_argument("--tz", dest="table.tz", metavar="ZONE",
                   help="zone of times written without one, e.g. America/Chicago (default UTC)")
    g.add_argument("--sep", dest="table.sep", metavar="CHAR", help="field separator (default ',')")
    g = p.add_argument_group("cleaning and filters")
    g.add_argument("--magnitude-min", dest="filters.magnitude_min", type=float, metavar="M",
                   help="drop events below this magnitude")
    g.add_argument("--magnitude-max", dest="filters.magnitude_max", type=float, metavar="M",
                   help="drop events above this magnitude")
    g.add_argument("--categories", dest="filters.categories", type=lambda s: s.split(","), metavar="LIST",
                   help="keep only these, comma-separated")
    g.add_argument("--exclude-categories", dest="filters.exclude_categories", type=lambda s: s.split(","),
                   metavar="LIST", help="drop these categories, comma-separated")
    g.add_argument("--bbox", dest="filters.bbox", type=lambda s: [float(v) for v in s.split(",")],
                   metavar="MINX,MINY,MAXX,MAXY", help="keep events inside this box (input CRS)")
    g.add_argument("--window", dest="filters.polygon", metavar="FILE", help="keep events inside this polygon (GeoJSON/GPKG)")
    g.add_argument("--no-dedupe", dest="dedupe", action="store_const", const=False, help="keep exact duplicates")
    g.add_argument("--tie-resolution", dest="tie_resolution_s", type=float, metavar="SECONDS",
                   help="clock tick: events sharing a time are spread inside one tick")
    g.add_argument("--speed-min", dest="spikes.speed_min", type=float, metavar="PX_PER_S",
                   help="spikes: drop spikes below this speed (px/s; 0 keeps all)")
    g.add_argument("--max-unit-fraction", dest="spikes.max_unit_fraction", type=float, metavar="SHARE",
                   help="spikes: drop clusters holding more than this share of spikes (multi-unit activity); 1 keeps all")
    g = p.add_argument_group("split (dates in the catalog's zone, or seconds for recordings)")
    for k, what in (("history-start", "first event kept (history only: conditions, never a target); the time origin"),
                    ("train-start", "first training target"), ("val-start", "first validation target"),
                    ("test-start", "first test target"), ("end", "end of the test period (exclusive)")):
        g.add_argument(f"--{k}", dest=f"split.{k.replace('-', '_')}", metavar="DATE", help=what)
    g = p.add_argument_group("sequences and units")
    g.add_argument("--sequence-mode", dest="sequences.mode", choices=["windows", "chunks", "given"],
                   help="time windows, runs of --seq-length events, or the source's own sequences")
    g.add_argument("--seq-window", dest="sequences.window", type=float, metavar="T",
                   help="window length in model time units")
    g.add_argument("--seq-stride", dest="sequences.stride", type=float, metavar="T",
                   help="window stride (default: window)")
    g.add_argument("--seq-length", dest="sequences.length", type=int, metavar="N", help="chunk length in target events")
    g.add_argument("--history-events", dest="sequences.history_events", type=int, metavar="N",
                   help="context events before each sequence")
    g.add_argument("--time-unit", dest="time_unit", choices=["seconds", "minutes", "hours", "days"], help="model time unit")
    g.add_argument("--projection", dest="projection.crs", metavar="CRS",
                   help="aeqd (default), none, or a CRS such as EPSG:26916")
    g.add_argument("--length-unit", dest="projection.unit", choices=["m", "km"], help="model length unit")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any catalog setting, as in the config file's [catalogs.NAME] table (dotted for nested "
                        "tables), e.g. --set sequences.history_events=64 --set filters.magnitude_min=3.0; repeatable; "
                        "given after the flags above, it wins over them (the same --set as `stforecast train`)")
    g = p.add_argument_group("running")
    g.add_argument("--quarantine", action="store_true",
                   help="set invalid rows aside in rejected.parquet (with reasons) instead of failing")
    g.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:8786)")
    g.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    g.add_argument("--blocksize", type=int, default=64, metavar="MB", help="chunk size for parallel parsing (default 64 MB)")
    g.add_argument("--part-rows", type=int, default=None, metavar="N",
                   help="events per time range in the ordering, splitting and sequence steps; peak memory grows "
                        "with it (default 500,000: about 1.1 GB in all with 2 workers)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args) -> dict:
    """Dotted argparse destinations → a nested override dict (only the flags the user gave)."""
    out: dict = {}
    for key, value in vars(args).items():
        if value is None or key in _NOT_CONFIG:
            continue
        if key.startswith("table.") and key.endswith(".crs") and str(value).lower() == "none":
            value = None
        if key == "spikes.speed_min" and value == 0:
            value = None
        if key == "spikes.max_unit_fraction" and value >= 1:
            value = None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    for k in ("path", "format", "positions"):
        if getattr(args, k, None):
            out[k] = getattr(args, k)
    return deep_merge(out, parse_overrides(args.set, example="sequences.history_events=64"))


_NOT_CONFIG = {"command", "kind", "catalog", "list", "config", "data_root", "out", "name", "path", "format",
               "positions", "set", "quarantine", "force", "scheduler", "workers", "blocksize", "part_rows", "no_progress", "verbose"}


def run(args) -> int:
    from rich.console import Console

    from stforecast.config import build_config, load_settings

    console = Console()
    settings = load_settings(args.config, args.data_root)
    if args.list:
        for name, c in settings.catalogs.items():
            console.print(f"[bold]{name}[/] ({c.get('kind')}): {c.get('title', '')}")
        return 0
    from stforecast.config import check_name, safe_name

    if args.name is not None:
        check_name(args.name, "--name")
    overrides = _overrides(args)
    # paths typed here start from the current directory, then the data root (paths in the config file: data root)
    for flag, keys in (("--path", ("path",)), ("--positions", ("positions",)), ("--window", ("filters", "polygon"))):
        node = overrides
        for k in keys[:-1]:
            node = node.get(k, {})
        if node.get(keys[-1]):
            typed = node[keys[-1]]
            node[keys[-1]], where = settings.locate(typed, flag)
            if where != "as given":
                console.print(f"{flag} {typed}: using {node[keys[-1]]} (found in the {where})", soft_wrap=True,
                              markup=False, highlight=False)
    name = args.catalog or (None if (args.path or args.name) else DEFAULT_CATALOG[args.kind])
    if name:
        cfg = settings.catalog(name, overrides)
        if cfg.kind != args.kind and args.kind != "table":
            raise ValueError(f"catalog {name!r} holds {cfg.kind}, not {args.kind}: run `stforecast ingest "
                             f"{cfg.kind} {name}`")
        if args.name:  # a named catalog written under another output name
            import dataclasses

            cfg = dataclasses.replace(cfg, name=args.name)
    else:
        if not args.path:
            raise ValueError("give a catalog name from the config (see --list) or --path with a column mapping/format")
        fmt = args.format or {"earthquakes": "comcat", "crime": "table", "spikes": "spikes", "table": "table"}[args.kind]
        units = {"earthquakes": ("days", "km"), "crime": ("hours", "m"), "spikes": ("seconds", None), "table": ("days", "km")}
        time_unit, length = units[args.kind]
        base = {"kind": args.kind, "format": fmt, "time_unit": time_unit,
                "projection": {"crs": "none"} if length is None else {"crs": "aeqd", "unit": length}}
        name = args.name or safe_name(Path(args.path.split("?")[0]).name.split(".")[0])
        cfg = build_config(name, deep_merge(base, overrides))
    with dask_client(args.scheduler, args.workers) as client:
        result = run_ingest(cfg, settings, client=client, out_root=args.out, quarantine=args.quarantine,
                            force=args.force, blocksize=args.blocksize * 2**20, progress=not args.no_progress,
                            part_rows=args.part_rows)
    print_summary(console, result)
    return 0


def print_summary(console, result) -> None:
    from rich.table import Table

    m = result.manifest
    if result.skipped:
        console.print(f"[green]Up to date[/]: {result.out_dir} already holds this input and configuration "
                      f"(hash {m['input_hash'][:12]}); nothing to do. Use --force to rebuild.")
    c = m["counts"]
    t = Table(title=f"{m['name']}: {m.get('title', '')}", min_width=72)
    t.add_column("events", justify="left")
    t.add_column("rows", justify="right")
    t.add_row("read", f"{c['rows_read']:,}")
    t.add_row("kept", f"{c['events_kept']:,}")
    for r in c["rejected"]:  # per reason; "invalid" rows only appear here with --quarantine
        t.add_row(f"  {r['kind']}: {r['field']}: {r['reason']}", f"{r['rows']:,}")
    rejected = c["rows_read"] - c["events_kept"]
    if rejected:
        t.add_row("removed / rejected (rows)", f"{rejected:,}")
    console.print(t)
    s = Table(title="sequences per split", min_width=72)
    for col in ("split", "sequences", "target events", "history rows", "events in split"):
        s.add_column(col, justify="right")
    for name, v in c["splits"].items():
        s.add_row(name, f"{v['sequences']:,}", f"{v['targets']:,}", f"{v['history_rows']:,}",
                  f"{c['events_per_split'].get(name, 0):,}")
    console.print(s)
    extra = f" in {result.seconds:.1f} s" if not result.skipped else ""
    console.print(f"Output: {result.out_dir}{extra}  (manifest.json, events.parquet, sequences/)")
    if result.order and not result.skipped:
        console.print(order_note(result.order))
    if m["files"].get("rejected"):
        console.print(f"Rejected rows with reasons: {result.out_dir / m['files']['rejected']}")


def order_note(order: dict) -> str:
    """One line on how the partition-wise run cut its time ranges (``IngestResult.order``)."""
    if order["path"] == "chunks":
        return (f"Input in time order: {order['ranges']} time ranges followed the parsed chunks "
                f"({order['one_chunk']} read a single chunk)")
    return (f"{order['ranges']} time ranges cut from the parsed chunks' times, each merged from the chunks that "
            f"overlap it ({order['one_chunk']} read a single chunk)")
