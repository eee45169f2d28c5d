"""The ``stforecast`` command line.

    stforecast ingest earthquakes japan            # a catalog named in data/catalogs.toml
    stforecast ingest crime --path my.csv --format chicago --train-start 2015-01-01 ...
    stforecast ingest table --path events.parquet --time-col ts --x-col lon --y-col lat --crs EPSG:4326 ...
    stforecast demo                                # the main job on embedded defaults
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from stforecast.defaults import HDR_EVENTS, SAMPLER_STEPS, SCORE_SAMPLES
from stforecast.model.registry import BASELINES

KINDS = ("earthquakes", "crime", "spikes", "table")
DEMO_TRAIN_CONFIG = Path(__file__).resolve().parent.parent / "data" / "train_demo.toml"
DEFAULT_CATALOG = {"earthquakes": "japan", "crime": "chicago", "spikes": "wmaze", "table": None}
FORMATS = {"earthquakes": ["comcat", "japan", "pycsep", "dstpp-windows", "table"],
           "crime": ["chicago", "sf", "table"], "spikes": ["spikes"], "table": ["table"]}


def _ingest_parser(sub) -> None:
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
    g = p.add_argument_group("running")
    g.add_argument("--quarantine", action="store_true",
                   help="set invalid rows aside in rejected.parquet (with reasons) instead of failing")
    g.add_argument("--force", action="store_true", help="re-run even if the output is up to date")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:8786)")
    g.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    g.add_argument("--blocksize", type=int, default=64, metavar="MB", help="chunk size for parallel parsing (default 64 MB)")
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
    return out


_NOT_CONFIG = {"command", "kind", "catalog", "list", "config", "data_root", "out", "name", "path", "format", "positions",
               "quarantine", "force", "scheduler", "workers", "blocksize", "no_progress", "verbose"}


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int = 2):
    """A distributed client: the given scheduler, or a LocalCluster bound to 127.0.0.1 without a dashboard.

    The local workers are started with Ctrl-C (SIGINT) ignored: a terminal sends it to the whole process group,
    and only this process should act on it (the run is cancelled, its temp folder removed, the cluster closed
    here) instead of every worker process printing its own KeyboardInterrupt traceback. Started processes inherit
    an ignored signal; the handler of this process is restored at once. Closing (a second or so) ignores Ctrl-C
    too: an interrupt there would only leave the cluster half-closed, and when the work has finished, its output
    is already in place."""
    import signal
    import threading

    from distributed import Client, LocalCluster

    @contextlib.contextmanager
    def no_sigint():
        if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
            yield
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with no_sigint():
        # no dashboard; the scheduler's HTTP server (health checks) on a free local port: with the default 8787
        # busy, distributed would warn on stderr
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = None
    try:
        client = Client(cluster)
        yield client
    finally:
        with no_sigint():
            if client is not None:
                client.close()
            cluster.close()


def cmd_ingest(args) -> int:
    from rich.console import Console

    from pipelines.ingest import run_ingest
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
        from stforecast.config import deep_merge

        name = args.name or safe_name(Path(args.path.split("?")[0]).name.split(".")[0])
        cfg = build_config(name, deep_merge(base, overrides))
    with dask_client(args.scheduler, args.workers) as client:
        result = run_ingest(cfg, settings, client=client, out_root=args.out, quarantine=args.quarantine,
                            force=args.force, blocksize=args.blocksize * 2**20, progress=not args.no_progress)
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
    if m["files"].get("rejected"):
        console.print(f"Rejected rows with reasons: {result.out_dir / m['files']['rejected']}")


def cmd_demo(args) -> int:
    """The main job on embedded defaults: ingest the primary catalogs, train a small DSTPP on the Japan catalog
    (EarthquakeNPP's chronological split) on whatever device there is, tracked in MLflow, forecast, score it
    against the baselines on held-out test events, and draw a report (offline map, NetCDF, PNG)."""
    from rich.console import Console

    console = Console()
    console.rule("stforecast demo 1/6: ingest the primary catalogs")
    for kind, name in (("earthquakes", "japan"), ("earthquakes", "dstpp_japan"), ("crime", "chicago"), ("spikes", "wmaze")):
        console.print(f"[bold]stforecast ingest {kind} {name}[/]")
        cmd_ingest(build_parser().parse_args(["ingest", kind, name, *(["--force"] if args.force else [])]))
    console.rule("stforecast demo 2/6: train DSTPP on the Japan catalog (validation split selects the model)")
    train_args = ["train", "--config", str(DEMO_TRAIN_CONFIG), "--data", "japan", "--out", "runs/demo-japan"]
    console.print("[bold]stforecast " + " ".join(train_args) + "[/]")
    cmd_train(build_parser().parse_args(train_args))
    console.rule("stforecast demo 3/6: forecast the week after the catalog ends")
    fc_args = ["forecast", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--horizon", "7d",
               "--simulations", "200", "--out", "reports/forecast-japan"]
    console.print("[bold]stforecast " + " ".join(fc_args) + "[/]")
    cmd_forecast(build_parser().parse_args(fc_args))
    console.rule("stforecast demo 4/6: score DSTPP against Poisson, Hawkes and ETAS on the held-out test years")
    eval_args = ["evaluate", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--targets", "500"]
    console.print("[bold]stforecast " + " ".join(eval_args) + "[/]")
    cmd_evaluate(build_parser().parse_args(eval_args))
    console.rule("stforecast demo 5/6: report - the 2016 Kumamoto sequence, 3 days from its first shock")
    rep_args = ["report", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--at", "2016-04-14T13:00",
                "--horizon", "3d", "--lead-bins", "3", "--out", "reports/map-japan"]
    console.print("[bold]stforecast " + " ".join(rep_args) + "[/]")
    cmd_report(build_parser().parse_args(rep_args))
    console.rule("stforecast demo 6/6: a scheduled batch forecast (data/batch.toml), so the risk map has one to show")
    console.print("[bold]stforecast batch[/]")
    status = cmd_batch(build_parser().parse_args(["batch"]))
    console.rule("done")
    console.print("open the risk map:        stforecast serve   (then http://127.0.0.1:8765/)")
    console.print("open the Kumamoto report: reports/map-japan/map.html (works offline)")
    return status


def open_catalog(name: str):
    """An ingested catalog by name (under the processed directory) or folder."""
    from stforecast.config import load_settings
    from stforecast.ingested import IngestedCatalog

    return IngestedCatalog.open(name, load_settings().processed_dir)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a DSTPP model on an ingested catalog (tracked in MLflow)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Train the diffusion point process on sequences made by `stforecast ingest`. Checkpoints are\n"
                     "selected on the validation split; the test split is never read. Every run is tracked in MLflow\n"
                     "(local SQLite store mlruns/mlflow.db by default, $MLFLOW_TRACKING_URI otherwise) and the best model\n"
                     "is registered. Uses CUDA with mixed precision when present; runs under torchrun with DDP."),
        epilog=("examples:\n"
                "  stforecast train --data dstpp_japan --preset paper --epochs 50\n"
                "  stforecast train --config my.toml --set model.steps=200 --set lr=3e-4\n"
                "  stforecast train --out runs/japan --resume          # continue an interrupted run\n"
                "  torchrun --nproc_per_node 2 -m pipelines.cli train --data japan --epochs 5"))
    p.add_argument("--config", help="TOML or YAML file with training settings (see stforecast/train.py TrainConfig)")
    p.add_argument("--data", help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--preset", choices=["default", "paper"], help="model configuration to start from")
    p.add_argument("--epochs", type=int, help="passes over the training sequences")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, help="sequences per batch")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--out", help="checkpoint folder (default runs/<data>-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. model.d_model=32 or lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt with the settings it was started with")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--experiment", default="stforecast", help="MLflow experiment")
    p.add_argument("--register-as", default="dstpp", help="registered model name ('' to skip registering)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch instead (logs, cron)")


def cmd_train(args) -> int:
    from stforecast.train import TrainConfig, load_train_config, train

    overrides = list(args.set)
    base = None
    if args.resume and args.out and not args.config and (Path(args.out) / "last.pt").is_file():
        # `train --out DIR --resume`: continue with the settings the run was started with (CLI flags still win)
        base = _settings_of_checkpoint(Path(args.out) / "last.pt")
    if args.data:
        overrides.append(f'data="{open_catalog(args.data).folder}"')
    for flag, key in (("preset", "preset"), ("epochs", "epochs"), ("max_steps", "max_steps"),
                      ("batch_size", "batch_size"), ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_train_config(args.config, overrides, base=base)
    if args.out:
        cfg.out_dir = args.out
    elif cfg.out_dir == TrainConfig().out_dir:  # neither the file nor --set chose one
        cfg.out_dir = str(Path("runs") / f"{Path(cfg.data).name}-{cfg.preset}")
    if args.no_track:
        result, uri = train(cfg, resume=args.resume), None
    else:
        from stforecast.tracking import tracking_uri, train_and_track

        result, uri = train_and_track(cfg, resume=args.resume, experiment=args.experiment,
                                      registered_name=args.register_as or None)
    print(f"best validation loss {result.best_val:.4f} at step {result.best_step} of {result.steps}"
          f"{' (early stop)' if result.stopped_early else ''}; {result.events_per_second:,.0f} target events/s")
    print(f"checkpoints: {result.out_dir}/best.pt, last.pt")
    if uri:
        print(f"MLflow model: {uri}  (store {tracking_uri()})")
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        print(f"browse runs:  {mlflow_bin if mlflow_bin.exists() else 'mlflow'} ui --backend-store-uri "
              f"{tracking_uri()} --host 127.0.0.1   (then open http://127.0.0.1:5000)")
    return 0


def _settings_of_checkpoint(checkpoint: Path) -> dict:
    """The training settings a run was started with, as stored in its checkpoint."""
    import json

    from stforecast.train import load_checkpoint

    return json.loads(load_checkpoint(checkpoint)["train_config"])


def load_checked_model(spec: str, catalog, allow_other: bool, log=print, track: bool = False):
    """The model a command was given: a baseline's name (fitted on this catalog, or its cached fit), a checkpoint
    path or an MLflow URI (checked against the catalog's units and frame)."""
    from stforecast.model.registry import load_forecaster

    return load_forecaster(spec, catalog, allow_other_catalog=allow_other, log=log, track=track)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score next-event forecasts of DSTPP and the baselines on held-out time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Draws samples of the next event for held-out events of a split (default test) from a trained\n"
                     "DSTPP and from Poisson x KDE, Hawkes and (with magnitudes) ETAS fitted on the data before the\n"
                     "validation start, and scores all of them the same way: CRPS of the waiting time, energy score of\n"
                     "the location, point errors, interval/region coverage, and the exact NLL where a model has one.\n"
                     "Writes next_event.csv and next_event.md to --out and logs them to MLflow."),
        epilog="example:\n  stforecast evaluate --data japan --model runs/demo-japan/best.pt --targets 1000")
    p.add_argument("--data", required=True, help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--model", help=f"the model to score: a checkpoint path, an MLflow URI (models:/dstpp/1) or a "
                                   f"baseline ({', '.join(BASELINES)}); none: the baselines only")
    p.add_argument("--split", default="test", choices=["val", "test"], help="held-out split to score (default test)")
    p.add_argument("--targets", type=int, default=1000, help="held-out events to score (random subset; 0 = all)")
    p.add_argument("--samples", type=int, default=SCORE_SAMPLES,
                   help=f"samples per forecast (default {SCORE_SAMPLES}, as in the benchmark)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"baselines to compare with, comma-separated (default {','.join(BASELINES)}; '' for none)")
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help=f"DDIM steps for DSTPP (default {SAMPLER_STEPS})")
    p.add_argument("--hdr-events", type=int, default=HDR_EVENTS,
                   help=f"location coverage needs a KDE per event: compute it on this many events (default {HDR_EVENTS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/<data>-<split>)")
    p.add_argument("--allow-other-catalog", action="store_true",
                   help="run a model on a catalog in other units or another frame than it was trained on (warns)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def cmd_evaluate(args) -> int:
    from rich.console import Console

    from pipelines.evaluation import evaluate_catalog, log_evaluation

    console = Console()
    if not console.is_terminal:  # logs and CI: room for the whole table instead of 80 columns of ellipses
        console = Console(width=132)
    catalog = open_catalog(args.data)
    model = None
    if args.model and args.model.lower() != "none":
        model = load_checked_model(args.model, catalog, args.allow_other_catalog, console.print, not args.no_track)
    ev = evaluate_catalog(catalog, model, [b for b in args.baselines.split(",") if b], args.split,
                          args.targets or None, args.samples, args.steps, args.seed,
                          out_dir=Path(args.out) if args.out else None, hdr_events=args.hdr_events, log=console.print)
    print_scores(console, ev)
    if not args.no_track:
        log_evaluation(ev, f"{catalog.folder.name}-{args.split}", {"model": args.model or "", "split": args.split})
    return 0


def print_scores(console, ev) -> None:
    from rich.table import Table

    time_unit, space_unit = ev.manifest["schema"]["time_unit"], ev.manifest["schema"]["spatial_unit"]
    view = Table(title=f"{ev.manifest['name']}: next-event scores on {ev.n_targets:,} held-out events "
                       f"({time_unit}, {space_unit})")
    cols = ["model", "nll_joint", "nll_dt", "nll_xy", "crps_dt", "energy_xy", "mae_dt_median", "dist_xy_mean",
            "cover_dt_80", "cover_xy_80"]
    labels = ["model", "NLL", "NLL dt", "NLL xy", "CRPS dt", "energy xy", "|dt| err", "xy err", "cov dt 80",
              "cov xy 80"]
    for label in labels:
        view.add_column(label, justify="right")
    for _, row in ev.table.iterrows():
        view.add_row(*[row["model"]] + [("–" if row.get(c) != row.get(c) else f"{row[c]:.4g}") for c in cols[1:]])
    console.print(view)
    console.print("NLL: nats per event, exact for baselines, an upper bound for DSTPP; CRPS/energy: sample scores; "
                  "|dt| err: median waiting-time error; xy err: distance of the sample mean; cov: share of truths "
                  "inside the 80 % interval/region (nominal 0.80; location coverage on the first "
                  f"{int(ev.table['hdr_events'].iloc[0]):,} events, --hdr-events to change)")
    console.print(f"tables and reliability plot: {ev.out_dir}/")


def _forecast_parser(sub) -> None:
    p = sub.add_parser(
        "forecast", help="sample the next event and simulate continuations over a horizon",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Forecast from a trained DSTPP, conditioned on an ingested catalog up to --at (default: its\n"
                     "last event). Writes next-event samples and, with --horizon, simulated continuations with the\n"
                     "distribution of the number of events, in UTC time and lon/lat. --format csep writes daily\n"
                     "pyCSEP catalog forecasts (magnitudes from a fitted Gutenberg-Richter law)."),
        epilog=("examples:\n"
                "  stforecast forecast --data japan --model models:/dstpp/1 --horizon 7d --simulations 500\n"
                "  stforecast forecast --data japan --model runs/demo-japan/best.pt --at 2011-03-01 --samples 2000\n"
                "  stforecast forecast --data japan --model runs/demo-japan/best.pt --format csep --at 2019-07-01 \\\n"
                "      --days 3 --simulations 1000 --csep-test     # needs: pip install '.[csep]'"))
    p.add_argument("--data", required=True, help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--model", required=True, help=f"checkpoint path, MLflow URI (models:/dstpp/1, runs:/ID/model) or "
                                                  f"a baseline ({', '.join(BASELINES)})")
    p.add_argument("--at", help="forecast time: a UTC date/time (or a number for lab clocks); default: the last event")
    p.add_argument("--samples", type=int, default=1000, help="next-event samples (default 1000)")
    p.add_argument("--horizon", help="simulate continuations this far ahead: 24h, 7d, 90min (or model units)")
    p.add_argument("--simulations", type=int, default=200, help="continuations / catalogs per forecast (default 200)")
    p.add_argument("--max-events", type=int, default=1000, help="cap on events per simulation (default 1000)")
    p.add_argument("--max-history", type=int, default=None,
                   help="events each draw conditions on (default: the model's own context: DSTPP 128, Hawkes 200, "
                        "ETAS 300, Poisson 1)")
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help=f"DDIM denoising steps (default {SAMPLER_STEPS})")
    p.add_argument("--format", dest="fmt", default="parquet", choices=["parquet", "csv", "csep"],
                   help="output files: parquet (default), csv, or csep (daily pyCSEP catalog forecasts)")
    p.add_argument("--days", type=int, default=1, help="csep: consecutive daily forecasts from --at")
    p.add_argument("--csep-test", action="store_true", help="csep: run pyCSEP's number and spatial tests per day")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/forecast-<data>)")
    p.add_argument("--allow-other-catalog", action="store_true",
                   help="run a model on a catalog in other units or another frame than it was trained on (warns)")


def cmd_forecast(args) -> int:
    from rich.console import Console

    from pipelines.forecasting import ForecastRequest, run_forecast

    console = Console()
    catalog = open_catalog(args.data)
    model = load_checked_model(args.model, catalog, args.allow_other_catalog, console.print)
    req = ForecastRequest(at=args.at, samples=args.samples, horizon=args.horizon, simulations=args.simulations,
                          max_events=args.max_events, max_history=args.max_history, steps=args.steps, fmt=args.fmt,
                          days=args.days, csep_test=args.csep_test, seed=args.seed)
    out = Path(args.out or Path("reports") / f"forecast-{catalog.folder.name}")
    summary = run_forecast(catalog, model, req, out, log=console.print)
    if "next_event" in summary:
        lo, hi = summary["next_event"]["dt_q10_q90"]
        console.print(f"next event: median wait {summary['next_event']['dt_median']:.4g} {summary['units'][0]} "
                      f"(80 % interval {lo:.4g}-{hi:.4g})")
    if "horizon" in summary:
        h = summary["horizon"]
        console.print(f"events in the next {args.horizon}: mean {h['mean']:.2f}, median {h['median']:.0f}, 80 % "
                      f"interval {h['q10']:.0f}-{h['q90']:.0f}, P(at least one) {h['p_at_least_one']:.2f}"
                      + (f"; {h['capped']} simulations hit the cap" if h["capped"] else ""))
    console.print(f"written to {out}/ (summary.json lists the files)")
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="forecast map (offline HTML), gridded forecast (NetCDF + PNG), logged to MLflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Draw a forecast: regions holding 50/80/95 % of the next event's location and of the events\n"
                     "in the horizon on a Folium map that works offline (Natural Earth basemap; pixel frame for\n"
                     "spikes), the recent observed events and, when --at is inside the catalog, the events that\n"
                     "happened; expected counts per cell and lead time as CF NetCDF and a PNG."),
        epilog=("examples:\n"
                "  stforecast report --data japan --model runs/demo-japan/best.pt --horizon 7d\n"
                "  stforecast report --data japan --model models:/dstpp/1 --at 2016-04-14T13:00 --horizon 3d"))
    p.add_argument("--data", required=True, help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--model", required=True, help=f"checkpoint path, MLflow URI or a baseline ({', '.join(BASELINES)})")
    p.add_argument("--at", help="forecast time (default: after the catalog's last event)")
    p.add_argument("--horizon", default="7d", help="e.g. 24h, 7d (default 7d)")
    p.add_argument("--lead-bins", type=int, default=7, help="lead-time bins in the NetCDF (default 7)")
    p.add_argument("--samples", type=int, default=2000, help="next-event samples for its regions (default 2000)")
    p.add_argument("--simulations", type=int, default=200,
                   help="continuations simulated over the horizon (default 200)")
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help=f"DDIM denoising steps (default {SAMPLER_STEPS})")
    p.add_argument("--levels", default="0.5,0.8,0.95", help="probability levels of the regions")
    p.add_argument("--show-samples", action="store_true", help="add a (hidden) layer with the samples")
    p.add_argument("--online-tiles", action="store_true", help="offer OpenStreetMap tiles (needs internet)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/map-<data>)")
    p.add_argument("--allow-other-catalog", action="store_true",
                   help="run a model on a catalog in other units or another frame than it was trained on (warns)")
    p.add_argument("--no-track", action="store_true", help="do not log the report to MLflow")


def cmd_report(args) -> int:
    from rich.console import Console

    from pipelines.report import ReportRequest, run_report

    console = Console()
    catalog = open_catalog(args.data)
    model = load_checked_model(args.model, catalog, args.allow_other_catalog, console.print, not args.no_track)
    req = ReportRequest(at=args.at, horizon=args.horizon, lead_bins=args.lead_bins, samples=args.samples,
                        simulations=args.simulations, levels=tuple(float(v) for v in args.levels.split(",")),
                        show_samples=args.show_samples, online_tiles=args.online_tiles, steps=args.steps, seed=args.seed)
    out = Path(args.out or Path("reports") / f"map-{catalog.folder.name}")
    summary = run_report(catalog, model, req, out, model_uri=args.model, track=not args.no_track,
                         log=console.print)
    console.print(f"expected events in the next {args.horizon}: {summary['expected_events']:.2f}")
    console.print(f"map (open in a browser, works offline): {out / 'map.html'}")
    console.print(f"gridded forecast: {out / 'forecast.nc'} (NetCDF), {out / 'forecast.png'}")
    if "mlflow_run_id" in summary:
        console.print(f"MLflow run: {summary['mlflow_run_id']} (experiment stforecast-reports)")
    return 0


def _batch_parser(sub) -> None:
    p = sub.add_parser(
        "batch", help="scheduled forecasts for the jobs in a config (idempotent, atomic, on Dask)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Run every [[job]] of the batch config (default data/batch.toml): optionally refresh the catalog,\n"
                     "forecast with the given model, and write map, NetCDF, PNG and a manifest into\n"
                     "OUT/<forecast date>/<job>/. Jobs whose inputs are unchanged are skipped; a failed job leaves no\n"
                     "partial output and makes the command exit 1. Meant for cron or a systemd timer (see README)."),
        epilog="examples:\n  stforecast batch\n  stforecast batch --config ops/batch.toml --scheduler tcp://10.0.0.5:8786")
    p.add_argument("--config", help="batch config (default data/batch.toml)")
    p.add_argument("--out", help="output root (default: the config's `out`, reports/batch)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    p.add_argument("--no-track", action="store_true", help="do not log the jobs to MLflow")


def cmd_batch(args) -> int:
    from pipelines.batch_forecast import load_jobs, run_batch, track_results

    jobs, out = load_jobs(args.config)
    out = Path(args.out) if args.out else out
    if not jobs:
        raise ValueError(f"no [[job]] in {args.config or 'data/batch.toml'}")
    with dask_client(args.scheduler, args.workers) as client:
        results = run_batch(jobs, out, client)
    if not args.no_track:
        track_results(results)
    for r in results:
        print(f"{r.name}: {r.status}{' -> ' + r.folder if r.folder else ''} {r.message.splitlines()[0] if r.message else ''}")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"error: job {r.name!r} failed: {r.message}", file=sys.stderr)
        if args.verbose and r.detail:
            print(r.detail, file=sys.stderr)
    return 1 if failed else 0


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="the interactive risk map of the latest batch forecasts (local server or static file)",
                       description=("Serve the interactive risk map: the newest forecast of every `stforecast batch` job,\n"
                                    "with a picker for region, horizon and contour level, on http://127.0.0.1:8765/ (this\n"
                                    "machine only unless --host says otherwise). The page is rebuilt on each load, works\n"
                                    "offline, and --static writes it once as one file to share. `make demo` leaves one\n"
                                    "batch forecast ready to show."),
                       epilog="examples:\n  stforecast serve\n  stforecast serve --static reports/riskmap.html",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="reports/batch", help="batch output root (default reports/batch)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--static", metavar="FILE", help="write the page to FILE instead of serving it")


def cmd_serve(args) -> int:
    from pipelines.serve import serve, write_static

    if args.static:
        print(f"risk map written to {write_static(args.root, args.static)} (self-contained, works offline)")
        return 0
    serve(args.root, args.host, args.port)
    return 0


def _benchmark_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="train, fit and score DSTPP and the baselines on several catalogs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("For each catalog: ingest, train DSTPP (checkpoint chosen on validation), fit Poisson x KDE,\n"
                     "Hawkes and (earthquakes) ETAS on the training period, and score all of them on the same\n"
                     "held-out test events. Writes OUT/benchmark.{md,csv,json} and per-catalog tables and plots, and\n"
                     "logs MLflow runs (experiment stforecast-benchmark). Settings: data/benchmark.toml."),
        epilog=("examples:\n"
                "  stforecast benchmark                              # japan, chicago, wmaze (tens of minutes on CPU)\n"
                "  stforecast benchmark --catalogs japan,chicago,wmaze,dstpp_japan\n"
                "  stforecast benchmark --quick                      # toy sizes: proves the pipeline runs"))
    p.add_argument("--catalogs", help="comma-separated catalog names (default: the config's list)")
    p.add_argument("--quick", action="store_true", help="toy sizes for CI (a few training steps, few events)")
    p.add_argument("--config", help="benchmark settings (default data/benchmark.toml)")
    p.add_argument("--out", default=None, help="report folder (default reports/benchmark or reports/benchmark-quick)")
    p.add_argument("--runs", default=None, help="checkpoint folder (default runs/benchmark[-quick])")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_benchmark(args) -> int:
    from rich.console import Console

    from pipelines.benchmark import load_benchmark_config, run_benchmark

    console = Console()
    suffix = "-quick" if args.quick else ""
    catalogs = args.catalogs.split(",") if args.catalogs else load_benchmark_config(args.config)["catalogs"]
    table = run_benchmark(catalogs, quick=args.quick, config_path=args.config,
                          out=Path(args.out or f"reports/benchmark{suffix}"),
                          runs_dir=Path(args.runs or f"runs/benchmark{suffix}"), track=not args.no_track,
                          device=args.device, progress=not args.no_progress, log=console.print)
    cols = ["catalog", "model", "nll_joint", "crps_dt", "energy_xy", "cover_dt_80", "cover_xy_80"]
    console.print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stforecast", description="Forecast the next events of spatio-temporal processes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _ingest_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _forecast_parser(sub)
    _benchmark_parser(sub)
    _report_parser(sub)
    _batch_parser(sub)
    _serve_parser(sub)
    d = sub.add_parser("demo", help="run the main job on embedded defaults",
                       description=("The main job on embedded defaults: ingest the four bundled catalogs, train a small DSTPP\n"
                                    "on the Japan earthquakes (tracked in MLflow), forecast the week after the catalog,\n"
                                    "score it against Poisson x KDE, Hawkes and ETAS on held-out years, draw the Kumamoto\n"
                                    "2016 report, and run one batch forecast so `stforecast serve` has a risk map to show.\n"
                                    "Steps whose inputs are unchanged are skipped."))
    d.add_argument("--force", action="store_true", help="redo steps that are up to date")
    return parser


COMMANDS = {"ingest": "cmd_ingest", "train": "cmd_train", "evaluate": "cmd_evaluate", "forecast": "cmd_forecast",
            "benchmark": "cmd_benchmark", "report": "cmd_report", "batch": "cmd_batch", "serve": "cmd_serve",
            "demo": "cmd_demo"}


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user sees one line per error (what, where, what to do), never a traceback; ``-v``
    shows the traceback. Ctrl-C says what was kept."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    from pipelines.messages import error_line
    from stforecast.errors import TrainingInterrupted

    try:
        return globals()[COMMANDS[args.command]](args)
    except TrainingInterrupted as e:
        if args.verbose:
            raise
        where = (f"{e.out_dir}/last.pt holds step {e.checkpoint_step}" if e.checkpoint_step is not None
                 else "no checkpoint was written yet")
        print(f"interrupted at step {e.step}; {where}; resume with `stforecast train --out {e.out_dir} --resume`",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print("interrupted; previous output kept", file=sys.stderr)
        return 130
    except SystemExit as e:  # raise SystemExit("message"): the same one line as other errors
        if isinstance(e.code, str):
            print(f"error: {e.code}", file=sys.stderr)
            return 2
        raise
    except Exception as e:  # noqa: BLE001 - the one place that turns any failure into one line for a person
        if args.verbose:
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
