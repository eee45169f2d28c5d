"""``stforecast forecast``: next-event samples and horizon simulations from a trained model, in the catalog's
own units (UTC time, lon/lat), as tables; optionally pyCSEP catalog forecasts for whole days.

The history is the ingested catalog (``events.parquet``) strictly before the forecast time ``at``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.common import add_model_guard, model_label, open_catalog, warn_clamped
from stforecast.config import safe_name
from stforecast.forecast import count_summary, history_of, next_event, simulate_horizon
from stforecast.ingested import as_catalog
from stforecast.io.atomic import atomic_path, atomic_write_text
from stforecast.registry import BASELINES, load_forecaster
from stforecast.sampling import CATALOGS, DEFAULT, Sampling
from stforecast.sampling import add_arguments as add_sampling_arguments
from stforecast.sampling import from_args as sampling_from_args


@dataclass
class ForecastRequest:
    at: str | None = None  # forecast time (default: just after the catalog's last event)
    samples: int = 1000  # next-event samples
    horizon: str | None = None  # e.g. "7d", "24h"; None: next event only
    simulations: int = 200
    max_events: int = 1000
    max_history: int | None = None  # events each draw conditions on (default: the model's own context)
    sampling: Sampling | None = None  # how DSTPP samples; None: the default (catalog forecasts: CATALOGS)
    fmt: str = "parquet"  # parquet, csv, or csep (daily catalog forecasts)
    days: int = 1  # csep: consecutive daily forecasts from `at`
    csep_test: bool = False
    seed: int = 0
    notes: list = field(default_factory=list)


def default_sampling(fmt: str) -> Sampling:
    """How a forecast in output format ``fmt`` samples unless told otherwise: catalog forecasts (csep) the fast
    sampler they need (:data:`~stforecast.sampling.CATALOGS`), everything else the exact ODE."""
    return CATALOGS if fmt == "csep" else DEFAULT


def write_table(frame: pd.DataFrame, path: Path, fmt: str) -> Path:
    path = path.with_suffix(".csv" if fmt == "csv" else ".parquet")
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def run_forecast(catalog, model, req: ForecastRequest, out: Path, log=print) -> dict:
    """Forecasts for ``catalog`` (an :class:`~stforecast.ingested.IngestedCatalog`, a folder or a name) from any
    forecaster; writes tables under ``out`` and returns a summary dict."""
    catalog = as_catalog(catalog)
    catalog.require_continuous("forecasting")
    units, events = catalog.units, catalog.events
    t_at = units.model_time_of(req.at) if req.at else float(events["t"].iloc[-1])
    sampling = req.sampling or default_sampling(req.fmt)
    model = model.with_sampling(sampling)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"catalog": catalog.name, "model": model.describe(), "at_model_time": t_at,
               "units": [units.time_unit, units.spatial_unit], "sampling": sampling.to_dict(),
               "request": {k: v for k, v in req.__dict__.items() if k not in ("notes", "sampling")}, "files": {}}
    if req.fmt == "csep":
        summary.update(csep_days(catalog, model, req, t_at, out, log))
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
        return summary
    past = catalog.before(t_at) if req.at else events
    if len(past) == 0:
        raise ValueError(f"no events before {req.at} in {catalog.folder}")
    keep = req.max_history or model.context
    t_hist, xy_hist, marks = history_of(past, keep)
    log(f"history: {len(past):,} events up to {units.time_of(past['t'].iloc[-1])}; "
        f"{model.describe()} conditions on the last {len(t_hist)}")
    nxt = units.to_original(next_event(model, t_hist, xy_hist, req.samples, marks=marks, max_history=keep,
                                       seed=req.seed))
    summary["files"]["next_event"] = str(write_table(nxt, out / "next_event", req.fmt))
    summary["next_event"] = {"dt_median": float(nxt["dt"].median()),
                             "dt_q10_q90": [float(v) for v in nxt["dt"].quantile([0.1, 0.9])],
                             "clamped_share": nxt.attrs.get("clamped_share")}
    warn_clamped(nxt.attrs.get("clamped_share"), "next-event samples", summary, log)
    if req.horizon:
        t_end = t_at + units.horizon(req.horizon)
        hf = simulate_horizon(model, t_hist, xy_hist, t_end, req.simulations, marks=marks, max_events=req.max_events,
                              max_history=keep, seed=req.seed, progress=True)
        sims = units.to_original(hf.events)  # (the columns even when no simulated event falls in the horizon)
        summary["files"]["horizon_events"] = str(write_table(sims, out / "horizon_events", req.fmt))
        per_sim = pd.DataFrame({"simulation": np.arange(req.simulations), "events": hf.counts, "capped": hf.capped})
        summary["files"]["horizon_counts"] = str(write_table(per_sim, out / "horizon_counts", "csv"))
        counts = count_summary(hf)
        summary["files"]["horizon_summary"] = str(write_table(counts, out / "horizon_summary", "csv"))
        summary["horizon"] = {"end_model_time": t_end, **counts.iloc[0].to_dict(), "clamped_share": hf.clamped_share}
        warn_clamped(hf.clamped_share, "simulated events' values", summary, log)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def csep_days(catalog, model, req: ForecastRequest, t_at: float, out: Path, log) -> dict:
    """``req.days`` daily catalog forecasts from ``at``: each day conditions on every event before its start,
    simulates ``req.simulations`` catalogs for 24 h (streamed to a pyCSEP CSV, :func:`stforecast.csep.forecast_day`)
    with the model's own magnitudes where it forecasts them, else a Gutenberg–Richter fill-in (said in the log)."""
    from stforecast.catalog import SECONDS_PER
    from stforecast.csep import catalog_forecaster, forecast_day, run_csep_tests

    units, events = catalog.units, catalog.events
    if not units.calendar or "magnitude" not in events:
        raise ValueError("--format csep needs an earthquake catalog with calendar times and magnitudes")
    model, magnitudes, (mc, b) = catalog_forecaster(catalog, model, model.sampling)
    log(f"magnitudes: {'the model' + chr(39) + 's own' if magnitudes == 'model' else 'Gutenberg-Richter fill-in'}; "
        f"tests count events above Mc = {mc:.1f} (maximum curvature + 0.2; b = {b:.3f} by Aki's MLE on the "
        "training period)")
    day = SECONDS_PER["days"] / units.seconds
    result = {"gutenberg_richter": {"b": b, "mc": mc}, "magnitudes": magnitudes,
              "sampling": model.sampling.to_dict(), "days": []}
    for d in range(req.days):
        start = units.time_of(t_at + d * day)
        entry = forecast_day(catalog, model, start, req.simulations, out, magnitudes=magnitudes,
                             max_events=req.max_events, max_history=req.max_history, seed=req.seed + d, gr=(mc, b))
        if req.csep_test:
            lonlat = units.to_original(events[["t", "x", "y"]])
            observed = events.assign(lon=lonlat["lon"], lat=lonlat["lat"])
            entry["csep"] = run_csep_tests(entry["file"], req.simulations, observed, entry["start"], entry["end"], mc,
                                           catalog.region_lonlat(), out_dir=out)
        log(f"{pd.Timestamp(entry['start']):%Y-%m-%d}: {entry['mean_events']:.2f} events per simulated catalog "
            f"(observed {entry['observed_events']}) -> {entry['file']}")
        result["days"].append(entry)
    return result


# -------------------------------------------------------------------------------- the `stforecast forecast` command
def add_parser(sub) -> None:
    p = sub.add_parser(
        "forecast", help="sample the next event and simulate continuations over a horizon",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Forecast with any model (a trained DSTPP, or a baseline: ETAS, Hawkes, Poisson x KDE),\n"
                     "conditioned on an ingested catalog up to --at (default: its last event). Writes next-event\n"
                     "samples and, with --horizon, simulated continuations with the distribution of the number of\n"
                     "events, in UTC time and lon/lat. --format csep writes daily pyCSEP catalog forecasts\n"
                     "(magnitudes: the model's own where it forecasts them, else a Gutenberg-Richter fill-in)."),
        epilog=("examples:\n"
                "  stforecast forecast --data japan --model models:/dstpp/1 --horizon 7d --simulations 500\n"
                "  stforecast forecast --data japan --model runs/demo-japan/best.pt --at 2011-03-01 --samples 2000\n"
                "  stforecast forecast --data japan --model runs/demo-japan/best.pt --format csep --at 2019-07-01 \\\n"
                "      --days 3 --simulations 1000 --csep-test"))
    p.add_argument("--data", required=True, help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--model", required=True, help=f"checkpoint path, MLflow URI (models:/dstpp/1, runs:/ID/model), "
                                                  f"a baseline ({', '.join(BASELINES)}) or ensemble:A+B")
    p.add_argument("--at", help="forecast time: a UTC date/time (or a number for lab clocks); default: the last event")
    p.add_argument("--samples", type=int, default=1000, help="next-event samples (default 1000)")
    p.add_argument("--horizon", help="simulate continuations this far ahead: 24h, 7d, 90min (or model units)")
    p.add_argument("--simulations", type=int, default=200, help="continuations / catalogs per forecast (default 200)")
    p.add_argument("--max-events", type=int, default=1000, help="cap on events per simulation (default 1000)")
    p.add_argument("--max-history", type=int, default=None,
                   help="events each draw conditions on (default: the model's own context: DSTPP 128, Hawkes 200, "
                        "ETAS 300, Poisson 1)")
    p.add_argument("--format", dest="fmt", default="parquet", choices=["parquet", "csv", "csep"],
                   help="output files: parquet (default), csv, or csep (daily pyCSEP catalog forecasts)")
    p.add_argument("--days", type=int, default=1, help="csep: consecutive daily forecasts from --at")
    p.add_argument("--csep-test", action="store_true", help="csep: run pyCSEP's number, magnitude, spatial and pseudo-likelihood tests per day")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/forecast-<data>-<model>)")
    add_model_guard(p)
    add_sampling_arguments(p, None)


def run(args) -> int:
    from rich.console import Console

    console = Console()
    catalog = open_catalog(args.data)
    model = load_forecaster(args.model, catalog, allow_other_catalog=args.allow_other_catalog, log=console.print)
    req = ForecastRequest(at=args.at, samples=args.samples, horizon=args.horizon, simulations=args.simulations,
                          max_events=args.max_events, max_history=args.max_history,
                          sampling=sampling_from_args(args, default_sampling(args.fmt)), fmt=args.fmt,
                          days=args.days, csep_test=args.csep_test, seed=args.seed)
    out = Path(args.out or Path("reports") / f"forecast-{safe_name(catalog.folder.name)}-{model_label(args.model)}")
    summary = run_forecast(catalog, model, req, out, log=console.print)
    if "next_event" in summary:
        lo, hi = summary["next_event"]["dt_q10_q90"]
        console.print(f"next event: median wait {summary['next_event']['dt_median']:.4g} {summary['units'][0]} "
                      f"(80 % interval {lo:.4g}-{hi:.4g})")
    if "horizon" in summary:
        h = summary["horizon"]
        # the numbers summary.json stores, as stored (no rounding that would make the two disagree)
        console.print(f"events in the next {args.horizon}: mean {h['mean']:g}, median {h['median']:g}, 80 % "
                      f"interval {h['q10']:g}-{h['q90']:g}, P(at least one) {h['p_at_least_one']:g}"
                      + (f"; {h['capped']} simulations hit the cap" if h["capped"] else ""))
    console.print(f"sampled with {Sampling(**summary['sampling']).describe()}")
    console.print(f"written to {out}/ (summary.json lists the files)")
    return 0
