"""``stforecast batch``: scheduled forecasts for a list of catalogs, fanned out over a Dask cluster.

For each ``[[jobs]]`` table of the config (``data/batch.toml``): optionally refresh the catalog (ingestion is itself
idempotent), load the model, and — unless an identical forecast already exists — run :func:`run_report` into
``OUT/<forecast date>/<job>/`` with a ``forecast.json`` record naming every input. A job's inputs hash to a key (the
catalog's input hash, the model file's SHA-256 or MLflow URI, the settings and the forecast time); a folder whose
manifest has the same key is left alone. Each job writes into a temporary folder renamed into place at the end,
so a failure leaves no partial output and the previous forecast intact. Any failed job makes the command exit 1
with its message. Jobs run on a LocalCluster (127.0.0.1, 2 workers) or ``--scheduler ADDRESS``.
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

from pipelines.cluster import dask_client
from stforecast.sampling import DEFAULT, Sampling

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "batch.toml"
#: a finished job's record in its folder: key, inputs, summary and the SHA-256 of every output
JOB_RECORD = "forecast.json"


@dataclass
class Job:
    name: str
    catalog: str
    model: str
    horizon: str = "7d"
    simulations: int = 200
    samples: int = 2000
    at: str | None = None
    max_events: int = 1000  # cap per simulation
    refresh: bool = False
    seed: int = 0
    allow_other_catalog: bool = False  # run a model trained on a catalog in other units/frame (else refused)
    # how DSTPP samples (stforecast.sampling.Sampling; the defaults are every command's)
    sampler: str = DEFAULT.sampler
    steps: int = DEFAULT.steps
    ode_tolerance: float = DEFAULT.tolerance
    magnitudes: str = DEFAULT.magnitudes

    def sampling(self) -> Sampling:
        return Sampling(self.sampler, self.steps, self.ode_tolerance, self.magnitudes)


@dataclass
class JobResult:
    name: str
    status: str  # "done", "skipped" or "failed"
    folder: str | None = None
    message: str = ""  # one line for a person
    detail: str = ""  # the traceback of a failure (shown with `stforecast -v batch`)


@dataclass
class BatchSettings:
    """The ``[batch]`` table of a batch config."""

    out: str = "reports/batch"  # output root: OUT/<forecast date>/<job>/


def load_jobs(path=None) -> tuple[list[Job], Path]:
    """The jobs of a batch config: a ``[batch]`` table (:class:`BatchSettings`) and ``[[jobs]]`` tables whose keys
    are :class:`Job` fields (an unknown key or a wrong type is an error naming the job and the key)."""
    from stforecast.config import check_name
    from stforecast.settings_files import read_settings_file, typed_fields

    path = Path(path or DEFAULT_CONFIG)
    cfg = read_settings_file(path, ("batch", "jobs"), home="batch")
    batch = BatchSettings(**typed_fields(BatchSettings, cfg.get("batch", {}), f"{path} [batch]"))
    if not isinstance(cfg.get("jobs", []), list):
        raise ValueError(f"{path}: jobs are [[jobs]] tables (an array of tables), not one [jobs] table")
    jobs = []
    for i, raw in enumerate(cfg.get("jobs", [])):
        where = f"{path}: [[jobs]] number {i + 1}"
        missing = [k for k in ("name", "catalog", "model") if k not in raw]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        job = Job(**typed_fields(Job, raw, where))
        check_name(job.name, f"{where}: name", "job name")  # OUT/<date>/<name>: never `..`, never a path
        try:
            job.sampling()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        jobs.append(job)
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: job names must be unique, got {names}")
    return jobs, Path(batch.out)


def model_identity(model: str) -> str:
    """A file's SHA-256 (so a retrained checkpoint at the same path counts as new), or the URI itself; an
    ensemble's is its members' identities."""
    from stforecast.registry import ENSEMBLE_PREFIX, ensemble_members

    members = ensemble_members(model)
    if members:
        return ENSEMBLE_PREFIX + "+".join(model_identity(m) for m in members)
    p = Path(model)
    if "://" not in model and p.is_file():
        return "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return model


def run_job(job: Job, out_root: str, settings_env: dict | None = None) -> JobResult:
    """One job, start to finish (runs on a Dask worker; returns a result instead of raising)."""
    import os

    os.environ.update(settings_env or {})
    try:
        return _run_job(job, Path(out_root))
    except Exception as e:  # noqa: BLE001 - reported per job, the command exits non-zero
        from pipelines.messages import error_line

        return JobResult(job.name, "failed", message=error_line(e), detail=traceback.format_exc(limit=5))


def _run_job(job: Job, out_root: Path) -> JobResult:
    from pipelines.report import ReportRequest, write_report
    from stforecast.config import load_settings
    from stforecast.ingested import IngestedCatalog
    from stforecast.io.atomic import atomic_dir, sweep_stale

    settings = load_settings()
    if job.refresh:
        from pipelines.ingest import run_ingest

        run_ingest(settings.catalog(job.catalog), settings, progress=False)
    catalog = IngestedCatalog.open(job.catalog, settings.processed_dir)
    t_at = catalog.units.model_time_of(job.at) if job.at else float(catalog.events["t"].iloc[-1])
    when = catalog.units.time_of(t_at)
    day = f"{when:%Y-%m-%d}" if isinstance(when, pd.Timestamp) else f"t{float(when):.0f}"
    key = hashlib.sha256(json.dumps({"catalog": catalog.input_hash, "model": model_identity(job.model),
                                     "job": asdict(job), "t_at": t_at}, sort_keys=True).encode()).hexdigest()
    final = out_root / day / job.name
    sweep_stale(final)  # what killed runs left beside it, also when this job turns out to be up to date
    if (final / JOB_RECORD).exists() and json.loads((final / JOB_RECORD).read_text()).get("key") == key:
        return JobResult(job.name, "skipped", str(final), "inputs unchanged")
    from stforecast.registry import load_forecaster

    warnings: list[str] = []
    model = load_forecaster(job.model, catalog, allow_other_catalog=job.allow_other_catalog, log=warnings.append)
    warnings = [w for w in warnings if w.startswith("warning")]  # not the baseline's "fitting ..." line
    req = ReportRequest(at=job.at, horizon=job.horizon, simulations=job.simulations, samples=job.samples,
                        max_events=job.max_events, seed=job.seed, sampling=job.sampling())
    with atomic_dir(final, kind="batch job", record=JOB_RECORD) as staging:  # the report and its manifest appear together, or not at all
        # MLflow is written by the parent, one job at a time (SQLite stores do not like concurrent writers)
        summary = write_report(catalog, model, req, staging, model_uri=job.model, log=lambda *a: None)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(staging.iterdir())}
        (staging / JOB_RECORD).write_text(json.dumps(
            {"key": key, "job": asdict(job), "catalog": catalog.name, "catalog_input_hash": catalog.input_hash,
             "model": job.model, "model_kind": model.name, "model_identity": model_identity(job.model),
             "forecast_time": str(when),
             "summary": summary, "files_sha256": files}, indent=1, default=str))
    return JobResult(job.name, "done", str(final),
                     "; ".join([f"{summary['expected_events']:.2f} expected events", *warnings,
                                *summary.get("warnings", [])]))


def run_batch(jobs: list[Job], out_root: Path, client=None) -> list[JobResult]:
    """All jobs, in parallel on ``client`` (a distributed Client) or one after another without one."""
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith(("STFORECAST_", "MLFLOW_"))}
    root = str(Path(out_root).absolute())
    # workers may run elsewhere: pass absolute paths for local files
    jobs = [Job(**{**asdict(j), "model": str(Path(j.model).absolute())}) if Path(j.model).is_file() else j
            for j in jobs]
    if client is None:
        return [run_job(j, root, env) for j in jobs]
    from distributed import as_completed
    from tqdm.auto import tqdm

    futures = [client.submit(run_job, j, root, env, key=f"batch-{j.name}", pure=False) for j in jobs]
    with tqdm(total=len(futures), desc="batch jobs", unit="job", disable=None) as bar:  # (a terminal only)
        for _ in as_completed(futures):
            bar.update(1)
    return client.gather(futures)


def track_results(results: list[JobResult]) -> None:
    """One MLflow run per finished job (experiment stforecast-batch), its folder as artifacts."""
    import mlflow

    from stforecast.tracking import tracked_run

    for r in results:
        if r.status != "done":
            continue
        record = json.loads((Path(r.folder) / JOB_RECORD).read_text())
        with tracked_run("stforecast-batch", f"batch-{r.name}",
                         {"model_uri": record["model"], "catalog": record["catalog"],
                          "forecast_time": record["forecast_time"], "batch.key": record["key"]}):
            mlflow.log_metric("expected_events", record["summary"]["expected_events"])
            mlflow.log_artifacts(r.folder)


# -------------------------------------------------------------------------------- the `stforecast batch` command
def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch", help="scheduled forecasts for the jobs in a config (idempotent, atomic, on Dask)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Run every [[jobs]] of the batch config (default data/batch.toml): optionally refresh the\n"
                     "catalog, forecast with the given model, and write map, NetCDF, PNG and a manifest into\n"
                     "OUT/<forecast date>/<job>/. Jobs whose inputs are unchanged are skipped; a failed job leaves no\n"
                     "partial output and makes the command exit 1. Meant for cron or a systemd timer (see README)."),
        epilog="examples:\n  stforecast batch\n  stforecast batch --config ops/batch.toml --scheduler tcp://10.0.0.5:8786")
    p.add_argument("--config", help="batch config (default data/batch.toml)")
    p.add_argument("--out", help="output root (default: the config's [batch] out, reports/batch)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    p.add_argument("--local", action="store_true",
                   help="run the jobs one after another in this process, without Dask (their progress shows)")
    p.add_argument("--no-track", action="store_true", help="do not log the jobs to MLflow")


def run(args) -> int:

    jobs, out = load_jobs(args.config)
    out = Path(args.out) if args.out else out
    if not jobs:
        raise ValueError(f"no [[jobs]] in {args.config or 'data/batch.toml'}")
    if args.local:
        results = run_batch(jobs, out)
    else:
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
