"""The ``stforecast`` command line: a short dispatcher. Each command's sub-parser and runner live in the pipeline
module that does its work (``add_parser(sub)`` and ``run(args)``); only the command being run is imported, so
``stforecast --help`` stays quick although some commands import torch.

    stforecast ingest earthquakes japan            # a catalog named in data/catalogs.toml
    stforecast ingest table --path events.parquet --time-col ts --x-col lon --y-col lat --crs EPSG:4326 ...
    stforecast forecast --data japan --model etas --horizon 7d
    stforecast demo                                # the main job on embedded defaults
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from pathlib import Path

DEMO_TRAIN_CONFIG = Path(__file__).resolve().parent.parent / "data" / "train_demo.toml"

#: command → (the module that owns its sub-parser and runner, one line for `stforecast --help`)
COMMANDS = {
    "ingest": ("pipelines.ingest", "read, validate, clean, split and window a catalog into Parquet sequences"),
    "train": ("pipelines.training", "train a DSTPP model on an ingested catalog (tracked in MLflow)"),
    "evaluate": ("pipelines.evaluation", "score next-event forecasts of a model and the baselines on held-out time"),
    "forecast": ("pipelines.forecasting", "sample the next event and simulate continuations over a horizon"),
    "benchmark": ("pipelines.benchmark", "train, fit and score DSTPP and the baselines on several catalogs"),
    "report": ("pipelines.report", "forecast map (offline HTML), gridded forecast (NetCDF + PNG), logged to MLflow"),
    "batch": ("pipelines.batch_forecast", "scheduled forecasts for the jobs in a config (idempotent, atomic, on Dask)"),
    "csep-eval": ("pipelines.csep_eval", "daily CSEP forecasts over a period with pyCSEP's tests, DSTPP beside ETAS"),
    "serve": ("pipelines.serve", "the interactive risk map of the latest batch forecasts (local server or static file)"),
    "demo": (__name__, "run the main job on embedded defaults"),
}


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help=COMMANDS["demo"][1],
                       description=("The main job on embedded defaults: ingest the four bundled catalogs, train a small DSTPP\n"
                                    "on the Japan earthquakes (tracked in MLflow), forecast the week after the catalog,\n"
                                    "score it against Poisson x KDE, Hawkes and ETAS on held-out years, draw the Kumamoto\n"
                                    "2016 report, and run one batch forecast so `stforecast serve` has a risk map to show.\n"
                                    "Steps whose inputs are unchanged are skipped."))
    d.add_argument("--force", action="store_true", help="redo steps that are up to date")


def run_demo(args) -> int:
    """The main job on embedded defaults: ingest the primary catalogs, train a small DSTPP on the Japan catalog
    (EarthquakeNPP's chronological split) on whatever device there is, tracked in MLflow, forecast, score it
    against the baselines on held-out test events, and draw a report (offline map, NetCDF, PNG)."""
    from rich.console import Console

    console = Console()
    console.rule("stforecast demo 1/6: ingest the primary catalogs")
    for kind, name in (("earthquakes", "japan"), ("earthquakes", "dstpp_japan"), ("crime", "chicago"), ("spikes", "wmaze")):
        console.print(f"[bold]stforecast ingest {kind} {name}[/]")
        _run(["ingest", kind, name, *(["--force"] if args.force else [])])
    console.rule("stforecast demo 2/6: train DSTPP on the Japan catalog (validation split selects the model)")
    # a finished run is kept ("--resume" of a finished run trains nothing); --force starts it over
    train_args = ["train", "--config", str(DEMO_TRAIN_CONFIG), "--data", "japan", "--out", "runs/demo-japan",
                  "--force" if args.force else "--resume"]
    console.print("[bold]stforecast " + " ".join(train_args) + "[/]")
    _run(train_args)
    console.rule("stforecast demo 3/6: forecast the week after the catalog ends")
    fc_args = ["forecast", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--horizon", "7d",
               "--simulations", "200", "--out", "reports/forecast-japan"]
    console.print("[bold]stforecast " + " ".join(fc_args) + "[/]")
    _run(fc_args)
    console.rule("stforecast demo 4/6: score DSTPP against Poisson, Hawkes and ETAS on the held-out test years")
    eval_args = ["evaluate", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--targets", "500",
                 "--out", "reports/japan-test"]
    console.print("[bold]stforecast " + " ".join(eval_args) + "[/]")
    _run(eval_args)
    console.rule("stforecast demo 5/6: report - the 2016 Kumamoto sequence, 3 days from its first shock")
    rep_args = ["report", "--data", "japan", "--model", "runs/demo-japan/best.pt", "--at", "2016-04-14T13:00",
                "--horizon", "3d", "--lead-bins", "3", "--out", "reports/map-japan"]
    console.print("[bold]stforecast " + " ".join(rep_args) + "[/]")
    _run(rep_args)
    from stforecast.registry import LABELS, REFERENCE

    ref_args = [*rep_args[:4], REFERENCE, *rep_args[5:-1], f"reports/map-japan-{REFERENCE}"]
    console.print("[bold]stforecast " + " ".join(ref_args) + f"[/]  (the same report from {LABELS[REFERENCE]})")
    _run(ref_args)
    print_report_comparison(console, {"DSTPP": Path("reports/map-japan"),
                                      LABELS[REFERENCE]: Path(f"reports/map-japan-{REFERENCE}")})
    console.rule("stforecast demo 6/6: a scheduled batch forecast (data/batch.toml), so the risk map has one to show")
    console.print("[bold]stforecast batch --local[/]  (one job, in this process: its progress shows)")
    status = _run(["batch", "--local"])
    console.rule("done")
    console.print("open the risk map:        .venv/bin/stforecast serve   (then http://127.0.0.1:8765/)")
    console.print("open the Kumamoto report: reports/map-japan/map.html, and ETAS's: reports/map-japan-etas/map.html "
                  "(both work offline)")
    return status


def print_report_comparison(console, reports: dict) -> None:
    """The simulated count's 95 % interval beside the observed count, and the share of the observed events inside
    each horizon region, for each model's report (``summary.json``)."""
    import json

    from rich.table import Table

    table = Table(title="3 days after the Kumamoto foreshock: forecast vs what happened")
    for col in ("model", "expected", "count 2.5-97.5 %", "observed", "inside 50 / 80 / 95 % regions"):
        table.add_column(col)
    for model, folder in reports.items():
        s = json.loads((folder / "summary.json").read_text())
        q = s.get("simulated_count_quantiles") or {}
        inside = s.get("share_of_held_out_events_inside_horizon_regions") or {}
        table.add_row(model, f"{s['expected_events']:.1f}", f"{q.get('0.025', float('nan')):.0f}-"
                      f"{q.get('0.975', float('nan')):.0f}", str(s.get("observed_events_in_horizon")),
                      " / ".join(f"{inside.get(k, float('nan')):.0%}" for k in ("0.50", "0.80", "0.95")))
    console.print(table)


def _run(argv: list[str]) -> int:
    """Run one command from its words (the demo's steps), as `stforecast WORDS` would."""
    return _runner(argv[0])(build_parser(argv[0]).parse_args(argv))


def run(args) -> int:
    return run_demo(args)


def _runner(command: str):
    return importlib.import_module(COMMANDS[command][0]).run


def _command_in(argv: list[str]) -> str | None:
    """The command word of a command line (the first word that is not a global flag), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser: every command's full sub-parser (``"*"``), or only ``command``'s (the others listed by name,
    so ``stforecast --help`` stays quick)."""
    parser = argparse.ArgumentParser(prog="stforecast", description="Forecast the next events of spatio-temporal processes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if command in ("*", name):
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user sees one line per error (what, where, what to do), never a traceback; ``-v``
    shows the traceback. Ctrl-C says what was kept."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for stream in (sys.stdout, sys.stderr):  # a log file gets each line as it is printed (a killed run keeps them)
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    from pipelines.messages import error_line
    from stforecast.errors import TrainingInterrupted

    try:
        return _runner(args.command)(args)
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
