"""``stforecast csep-eval``: daily catalog forecasts over a test period scored the CSEP way, DSTPP beside ETAS.

For every model and every day of [``--start``, ``--start`` + ``--days``): condition on every event before the day,
simulate ``--catalogs`` catalogs of the next 24 hours (:func:`stforecast.csep.forecast_day`, streamed to pyCSEP's
CSV), and run pyCSEP's catalog-based number, magnitude, spatial and pseudo-likelihood tests against what happened
(:func:`stforecast.csep.run_csep_tests`, events above the training period's Mc, on a lon/lat grid over the
catalog's region). Then, per model: the share of days each test passes at 5 %, the mean quantile score, and
pyCSEP-style calibration plots (the quantile scores' empirical CDF over days against the uniform diagonal).

Days fan out over the Dask cluster (a LocalCluster on 127.0.0.1, or ``--scheduler ADDRESS``), one task per model
and day. Like ``stforecast batch`` each day is idempotent and atomic: its inputs (catalog input hash, model file
hash or name, settings, day) hash to a key; ``OUT/<model>/<day>/day.json`` with the same key is left alone, and a
day's folder appears complete or not at all. The summary goes to ``OUT/summary.{md,json}``, the calibration plots
beside it, and one MLflow run per model (experiment ``stforecast-csep``).

    stforecast csep-eval --data japan --model runs/demo-japan/best.pt --start 2016-04-01 --days 30
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipelines.batch_forecast import model_identity
from pipelines.cluster import dask_client
from pipelines.common import model_label
from stforecast.defaults import CSEP_CHUNK, CSEP_MAX_EVENTS
from stforecast.registry import REFERENCE
from stforecast.sampling import CATALOGS, Sampling
from stforecast.sampling import add_arguments as add_sampling_arguments
from stforecast.sampling import from_args as sampling_from_args

DAY_RECORD = "day.json"
TESTS = ("number", "magnitude", "spatial", "pseudolikelihood")  # pyCSEP's catalog-based tests, as stforecast.csep


@dataclass
class DayTask:
    catalog: str  # name or folder
    model: str  # checkpoint / MLflow URI / baseline name
    label: str  # folder name of the model's results
    day: str  # YYYY-MM-DD (UTC)
    catalogs: int = 10_000
    sampler: str = CATALOGS.sampler  # DSTPP's sampling (stforecast.sampling.Sampling; CSEP's default: CATALOGS)
    steps: int = CATALOGS.steps
    ode_tolerance: float = CATALOGS.tolerance
    magnitudes: str = CATALOGS.magnitudes
    max_events: int = CSEP_MAX_EVENTS
    chunk: int = CSEP_CHUNK
    seed: int = 0
    allow_other_catalog: bool = False
    baseline_mc: float | None = None  # a baseline is fitted on the events above this (the tests' Mc)


@dataclass
class DayResult:
    label: str
    day: str
    status: str  # done, skipped, failed
    record: dict | None = None
    message: str = ""
    detail: str = ""


def task_key(task: DayTask, input_hash: str) -> str:
    settings = {k: v for k, v in asdict(task).items() if v is not None}  # (a field added later keeps old keys)
    return hashlib.sha256(json.dumps({"task": settings, "model": model_identity(task.model),
                                      "catalog": input_hash}, sort_keys=True).encode()).hexdigest()


def run_day(task: DayTask, out_root: str, settings_env: dict | None = None) -> DayResult:
    """One model's forecast and tests for one day (on a Dask worker; a failure is returned, not raised)."""
    import os

    os.environ.update(settings_env or {})
    try:
        return _run_day(task, Path(out_root))
    except Exception as e:  # noqa: BLE001 - reported per day; the command exits non-zero
        from pipelines.messages import error_line

        return DayResult(task.label, task.day, "failed", message=error_line(e), detail=traceback.format_exc(limit=6))


def _run_day(task: DayTask, out_root: Path) -> DayResult:
    import torch

    from pipelines.common import open_catalog
    from stforecast.csep import catalog_forecaster, forecast_day, run_csep_tests
    from stforecast.io.atomic import atomic_dir, sweep_stale
    from stforecast.registry import load_forecaster

    torch.set_num_threads(1)  # one task per worker core
    catalog = open_catalog(task.catalog)
    key = task_key(task, catalog.input_hash)
    final = out_root / task.label / task.day
    sweep_stale(final)  # what killed runs left beside it, also when this day turns out to be up to date
    if (final / DAY_RECORD).exists() and json.loads((final / DAY_RECORD).read_text()).get("key") == key:
        return DayResult(task.label, task.day, "skipped", json.loads((final / DAY_RECORD).read_text()))
    model = load_forecaster(task.model, catalog, allow_other_catalog=task.allow_other_catalog, log=lambda *a: None,
                            mc=task.baseline_mc)
    # as `forecast --format csep` draws them: the same sampling, the same b-value, the same magnitudes
    sampling = Sampling(task.sampler, task.steps, task.ode_tolerance, task.magnitudes)
    model, magnitudes, (mc, b) = catalog_forecaster(catalog, model, sampling)
    with atomic_dir(final, kind="csep day", record=DAY_RECORD) as staging:
        record = forecast_day(catalog, model, pd.Timestamp(task.day, tz="UTC"), task.catalogs, staging,
                              magnitudes=magnitudes, chunk=task.chunk, max_events=task.max_events, seed=task.seed,
                              gr=(mc, b))
        units, events = catalog.units, catalog.events
        lonlat = units.to_original(events[["t", "x", "y"]])
        observed = events.assign(lon=lonlat["lon"], lat=lonlat["lat"])
        record["csep"] = run_csep_tests(record["file"], task.catalogs, observed, record["start"], record["end"], mc,
                                        catalog.region_lonlat(), out_dir=staging)
        record["file"] = Path(record["file"]).name
        record.update(key=key, task=asdict(task), model_identity=model_identity(task.model))
        (staging / DAY_RECORD).write_text(json.dumps(record, indent=1, default=str))
    return DayResult(task.label, task.day, "done", record)


def run_period(tasks: list[DayTask], out_root: Path, client=None, progress: bool = True) -> list[DayResult]:
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith(("STFORECAST_", "MLFLOW_"))}
    root = str(Path(out_root).absolute())
    if client is None:
        results = []
        for t in _bar(tasks, progress):
            results.append(run_day(t, root, env))
        return results
    from distributed import as_completed

    futures = [client.submit(run_day, t, root, env, key=f"csep-{t.label}-{t.day}", pure=False) for t in tasks]
    done = []
    bar = _bar(None, progress, total=len(futures))
    for f in as_completed(futures):
        done.append(f.result())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    order = {(t.label, t.day): i for i, t in enumerate(tasks)}
    return sorted(done, key=lambda r: order[(r.label, r.day)])


def _bar(items, progress: bool, total: int | None = None):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc="model-days forecast and tested", unit="day")


def results_on_disk(out: Path, results: list[DayResult]) -> list[DayResult]:
    """Every complete model-day folder under ``out`` (``<model>/<day>/day.json``: this run's and earlier runs'),
    plus this run's failures, in (model, day) order: what the summary describes is exactly the folders beside
    it."""
    found = {}
    for record_file in sorted(out.glob(f"*/*/{DAY_RECORD}")):
        try:
            record = json.loads(record_file.read_text())
        except (OSError, ValueError):
            continue  # a damaged record: the day is redone by the next run that asks for it
        label, day = record_file.parent.parent.name, record_file.parent.name
        found[(label, day)] = DayResult(label, day, "done", record)
    for r in results:
        if r.status == "failed" and (r.label, r.day) not in found:
            found[(r.label, r.day)] = r
        elif (r.label, r.day) in found:
            found[(r.label, r.day)].status = r.status
    this_run = {(r.label, r.day) for r in results}
    for key, r in found.items():
        if r.status == "done" and key not in this_run:
            r.status = "earlier run"
    return [found[k] for k in sorted(found)]


def summarise(results: list[DayResult], out: Path) -> tuple[pd.DataFrame, dict]:
    """The summary table (per model and test: days scored, share passed at 5 %, mean quantile score, the
    calibration's KS p-value) and per model the calibration plots; written to ``out``."""
    from stforecast.csep import calibration_plot, summary_markdown, summary_table
    from stforecast.io.atomic import atomic_write_text

    days: dict[str, list[dict]] = {}
    for r in results:
        if r.record is not None:
            days.setdefault(r.label, []).append(r.record)
    table = summary_table(days)
    plots = {}
    for label, records in days.items():
        for test in TESTS:
            path = out / f"calibration_{label}_{test}.png"
            try:
                plots[f"{label}/{test}"] = calibration_plot(records, test, path, label=f"{label}: {test}")
            except ValueError as e:  # no day scored for this test
                plots[f"{label}/{test}"] = {"note": str(e)}
    per_day = pd.DataFrame([{"model": r.label, "day": r.day, "status": r.status,
                             "catalogs": ((r.record or {}).get("task") or {}).get("catalogs"),
                             "mean_events": (r.record or {}).get("mean_events"),
                             "observed_above_mc": (r.record or {}).get("csep", {}).get("observed_events"),
                             "seconds": (r.record or {}).get("seconds"),
                             "capped": (r.record or {}).get("capped"),
                             **{t: ((r.record or {}).get("csep", {}).get(f"{t}_test") or {}).get("passed")
                                for t in TESTS}}
                            for r in results])
    atomic_write_text(out / "summary.md", "# CSEP evaluation\n\n" + cap_note(results) + "\n\n"
                      + summary_markdown(table) + "\n\n## Days\n\n"
                      + summary_markdown(per_day))
    atomic_write_text(out / "summary.json", json.dumps({"table": table.to_dict("records"),
                                                        "days": per_day.to_dict("records"), "calibration": plots},
                                                       indent=1, default=str))
    return table, plots


def cap_note(results: list) -> str:
    """One sentence per model: the per-catalog event cap and how many simulated catalogs reached it."""
    lines = []
    for label in dict.fromkeys(r.label for r in results):
        records = [r.record for r in results if r.label == label and r.record]
        caps = sorted({rec.get("max_events") for rec in records if rec.get("max_events") is not None})
        if not caps:
            continue
        capped = sum(int(rec.get("capped") or 0) for rec in records)
        total = sum(int(rec.get("n_catalogs") or 0) for rec in records)
        lines.append(f"{label}: each simulated catalog is capped at {', '.join(f'{c:,}' for c in caps)} events; "
                     f"{capped:,} of {total:,} catalogs over {len(records)} days reached the cap (their counts are "
                     "lower bounds).")
    return "\n".join(lines)


def track(table: pd.DataFrame, out: Path, settings: dict) -> None:
    """One MLflow run per model (experiment ``stforecast-csep``): pass shares and mean scores, the folder."""
    import mlflow

    from stforecast.tracking import tracked_run

    for label, rows in table.groupby("model"):
        with tracked_run("stforecast-csep", f"csep-{label}-{settings['start']}", {"model": label, **settings}):
            for _, row in rows.iterrows():
                for col in ("passed_share", "mean_quantile_score"):
                    if pd.notna(row[col]):
                        mlflow.log_metric(f"{row['test']}.{col}", float(row[col]))
            mlflow.log_artifacts(str(out / label), artifact_path=label)
            for f in ("summary.md", "summary.json"):
                mlflow.log_artifact(str(out / f))
            for f in out.glob(f"calibration_{label}_*.png"):
                mlflow.log_artifact(str(f))


# -------------------------------------------------------------------------------- the `stforecast csep-eval` command
def add_parser(sub) -> None:
    from pipelines.common import add_model_guard

    p = sub.add_parser(
        "csep-eval", help="daily CSEP forecasts over a test period with pyCSEP's tests, DSTPP beside ETAS (on Dask)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Forecast every day of a period (--catalogs simulated catalogs per day), run pyCSEP's number,\n"
                     "magnitude, spatial and pseudo-likelihood tests against what happened, and summarise per model\n"
                     "(share of days passed at 5 %, mean quantile score, calibration plots). Days whose inputs are\n"
                     "unchanged are skipped; each day's folder appears complete or not at all. Needs the `csep` extra."),
        epilog=("examples:\n  stforecast csep-eval --data japan --model runs/demo-japan/best.pt "
                "--start 2016-04-01 --days 30\n  stforecast csep-eval --data japan --model best.pt --reference etas "
                "--start 2017-09-01 --days 30 --catalogs 1000 --scheduler tcp://10.0.0.5:8786"))
    p.add_argument("--data", required=True, help="an ingested earthquake catalog (name or folder)")
    p.add_argument("--model", required=True, help="DSTPP checkpoint or MLflow URI (or a baseline name)")
    p.add_argument("--reference", default=REFERENCE,
                   help=f"the model scored beside it (default {REFERENCE}; 'none' for none)")
    p.add_argument("--start", required=True, help="first forecast day (UTC date)")
    p.add_argument("--days", type=int, default=30, help="number of consecutive daily forecasts (default 30)")
    p.add_argument("--catalogs", type=int, default=10_000, help="simulated catalogs per day (CSEP's standard 10,000)")
    p.add_argument("--max-events", type=int, default=CSEP_MAX_EVENTS,
                   help=f"cap per simulated catalog, counted in the summary (default {CSEP_MAX_EVENTS})")
    p.add_argument("--chunk", type=int, default=CSEP_CHUNK,
                   help=f"catalogs simulated together in one lock-step (default {CSEP_CHUNK:,}; smaller bounds memory)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the first day (day d uses seed + d)")
    p.add_argument("--out", help="output folder (default reports/csep/<data>-<start>-<days>d)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    p.add_argument("--local", action="store_true", help="run the days in this process, without Dask")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    add_model_guard(p)
    add_sampling_arguments(p, CATALOGS)


def run(args) -> int:
    from pipelines.common import open_catalog
    from stforecast.config import safe_name
    from stforecast.registry import load_forecaster

    catalog = open_catalog(args.data)
    start = pd.Timestamp(args.start)
    if args.days < 1 or args.catalogs < 1:
        raise ValueError("--days and --catalogs must be at least 1")
    specs = [args.model] + ([] if args.reference in ("", "none") else [args.reference])
    sampling = sampling_from_args(args, CATALOGS)
    from stforecast.csep import completeness
    from stforecast.registry import is_baseline

    # a baseline is fitted on the events the tests count (above the training years' Mc), as CSEP's ETAS is; fitted
    # (and cached) once here, not once per worker
    mc = completeness(catalog)[0]
    for spec in specs:
        model = load_forecaster(spec, catalog, allow_other_catalog=args.allow_other_catalog,
                                mc=mc if is_baseline(spec) else None)
        if args.magnitudes == "model" and not is_baseline(spec) and "magnitude" not in model.forecast_marks:
            raise ValueError(f"{spec} forecasts no magnitudes (a DSTPP trained without mark_head); rerun with "
                             "`--magnitudes gutenberg-richter` to draw them from a Gutenberg-Richter law")
    out = Path(args.out or f"reports/csep/{safe_name(catalog.folder.name)}-{start:%Y-%m-%d}-{args.days}d")
    out.mkdir(parents=True, exist_ok=True)
    data = str(catalog.folder.absolute())
    tasks = [DayTask(data, str(Path(s).absolute()) if Path(s).is_file() else s, model_label(s),
                     f"{start + pd.Timedelta(days=d):%Y-%m-%d}", args.catalogs, sampling.sampler, sampling.steps,
                     sampling.tolerance, sampling.magnitudes, args.max_events, args.chunk, args.seed + d, args.allow_other_catalog,
                     mc if is_baseline(s) else None)
             for s in specs for d in range(args.days)]
    if args.local:
        results = run_period(tasks, out)
    else:
        with dask_client(args.scheduler, args.workers) as client:
            results = run_period(tasks, out, client)
    table, _ = summarise(results_on_disk(out, results), out)
    if not args.no_track:
        track(table, out, {"catalog": catalog.name, "start": f"{start:%Y-%m-%d}", "days": str(args.days),
                           "catalogs": str(args.catalogs)})
    _print_table(table)
    print(f"per day and plots: {out}/<model>/<day>/; summary: {out}/summary.md")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"error: {r.label} {r.day}: {r.message}", file=sys.stderr)
        if args.verbose and r.detail:
            print(r.detail, file=sys.stderr)
    return 1 if failed else 0


def _print_table(table: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="pyCSEP catalog tests: share of days passed at 5 % (mean quantile score)")
    t.add_column("test")
    models = list(dict.fromkeys(table["model"]))
    for m in models:
        t.add_column(m)
    for test in dict.fromkeys(table["test"]):
        cells = []
        for m in models:
            row = table[(table.model == m) & (table.test == test)]
            if not len(row) or pd.isna(row["passed_share"].iloc[0]):
                cells.append("-")
                continue
            r = row.iloc[0]
            cells.append(f"{r['passed_share']:.0%} of {int(r['days_scored'])} ({r['mean_quantile_score']:.2f})")
        t.add_row(test, *cells)
    Console().print(t)
