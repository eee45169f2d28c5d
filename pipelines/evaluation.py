"""Score an ingested catalog's held-out split: DSTPP and the baselines, tables, a reliability plot, MLflow.

Used by ``stforecast evaluate`` and ``stforecast benchmark``. The library does the scoring
(:mod:`stforecast.evaluate`); this module chooses targets, fits baselines, writes files and logs runs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.common import add_model_guard, model_label, open_catalog
from stforecast.config import safe_name
from stforecast.defaults import HDR_EVENTS, SCORE_SAMPLES
from stforecast.ingested import IngestedCatalog
from stforecast.io.atomic import atomic_write_text
from stforecast.registry import BASELINES, load_forecaster
from stforecast.sampling import DEFAULT, Sampling
from stforecast.sampling import add_arguments as add_sampling_arguments
from stforecast.sampling import from_args as sampling_from_args

#: the paper's Japan numbers (DSTPP row of Tables 2 and 3), for the ``given``-split DSTPP windows
PAPER_JAPAN = {"paper_nll_xy_scaled": 0.308, "paper_nll_dt_scaled": -1.96, "dist_xy_single": 2.84,
               "rmse_dt_single": 0.149}


@dataclass
class Evaluation:
    table: pd.DataFrame
    curves: dict
    catalog: IngestedCatalog
    n_targets: int
    out_dir: Path


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (no extra dependency): numbers to 4 significant digits, missing as '–'."""
    def cell(v):
        if isinstance(v, float):
            return "–" if v != v else f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def fit_catalog_baselines(catalog, names=tuple(BASELINES), max_events: int | None = None, log=print) -> dict:
    """The named baselines that apply to ``catalog`` (an IngestedCatalog, folder or name), fitted on its events
    before the validation start (name → Forecaster; ``max_events``: only the latest ones, for quick runs; the full
    fits are read from :func:`~stforecast.registry.cached_baseline`'s cache when this catalog was fitted before). Empty
    for catalogs with the source's own (non-chronological) split: they have no continuous past to condition on."""
    from stforecast.ingested import as_catalog
    from stforecast.registry import fit_baselines

    catalog = as_catalog(catalog)
    if not names:
        return {}
    if not catalog.continuous:
        log(f"{catalog.name}: the source's own split is not one continuous catalog, so the baselines "
            "(which condition on the whole past) are skipped")
        return {}
    if max_events is None:  # the full fits: from the cache every command shares when this catalog was fitted before
        from stforecast.registry import applies, cached_baseline

        log(f"fitting baselines {list(names)} on events before the validation start (or reading their cached fits) "
            "...")
        return {n: cached_baseline(n, catalog, log=log) for n in names if applies(n, catalog.events)}
    log(f"fitting baselines {list(names)} on events before the validation start ...")
    return fit_baselines(catalog.events, catalog.split_start("val"), mc=catalog.completeness(),
                         max_events=max_events, names=names)


def evaluate_catalog(catalog, model=None, baselines=tuple(BASELINES), split: str = "test",
                     max_targets: int | None = 1000, samples: int = SCORE_SAMPLES, sampling: Sampling = DEFAULT,
                     seed: int = 0, bound_repeats: int = 4, out_dir: Path | None = None,
                     baseline_fit_events: int | None = None, hdr_events: int = HDR_EVENTS, log=print,
                     progress: bool = False, hotspot_periods: int = 60, hotspot_samples: int = 500) -> Evaluation:
    """Score ``model`` (any loaded :class:`~stforecast.models.base.Forecaster`, or None) and the baselines on
    ``split`` of ``catalog`` (an IngestedCatalog, folder or name). ``baselines``: names, fitted here by
    :func:`fit_catalog_baselines`, or what it returned before (name → Forecaster), scored as they are: a benchmark
    fits each catalog's baselines once for its validation ablations and its test scores. Every model is offered
    the validation events to calibrate on (DSTPP's bound variances). On a crime catalog the rows also hold the hit
    rate and PAI of each model's hotspots (:mod:`stforecast.hotspots`: ``hotspot_periods`` days and weeks of the
    split, ``hotspot_samples`` draws per forecast; 0 periods: not scored)."""
    from stforecast.evaluate import evaluate_next_event, next_event_targets, plot_reliability
    from stforecast.ingested import as_catalog

    catalog = as_catalog(catalog)
    folder, continuous = catalog.folder, catalog.continuous
    targets = next_event_targets(catalog, split, max_targets, seed)
    calibration = next_event_targets(catalog, "val", min(max_targets or 1000, 1000), seed + 1)
    models = {model.name: model} if model is not None else {}
    events = catalog.events if continuous else None
    if not isinstance(baselines, dict):
        baselines = fit_catalog_baselines(catalog, [b for b in baselines if b not in models], baseline_fit_events,
                                          log)
    models.update({name: fitted for name, fitted in baselines.items() if name not in models})
    models = {name: m.with_sampling(sampling).configure(bound_repeats=bound_repeats) for name, m in models.items()}
    n_hdr = min(hdr_events, len(targets.truth))
    log(f"scoring {len(targets.truth):,} held-out events x {samples} samples for {list(models)} "
        f"({'; '.join(m.describe() for m in models.values())}; location coverage from a KDE per event on the first "
        f"{n_hdr:,} of them) ...")
    table, curves = evaluate_next_event(targets, events, models, n=samples, seed=seed, calibration=calibration,
                                        hdr_events=hdr_events, progress=progress)
    if catalog.kind == "crime" and continuous and hotspot_periods > 0:
        from stforecast.hotspots import hotspot_scores

        log(f"hit rate and PAI of every model's hotspots on up to {hotspot_periods} days and weeks ...")
        hot = hotspot_scores(catalog, models, split, max_periods=hotspot_periods, samples=hotspot_samples, seed=seed)
        table = table.merge(hot, on="model", how="left")
    table["sampling"] = sampling.describe()
    table["hdr_events"] = n_hdr
    table.insert(0, "catalog", catalog.name)
    out = Path(out_dir or Path("reports") / f"{safe_name(folder.name)}-{split}")
    out.mkdir(parents=True, exist_ok=True)
    time_unit, space_unit = catalog.units.time_unit, catalog.units.spatial_unit
    describe = "; ".join(m.describe() for m in models.values())
    atomic_write_text(out / "next_event.csv", table.to_csv(index=False))
    header = (f"# Next-event forecasts: {catalog.name}, {split} split\n\n{len(targets.truth)} held-out events, "
              f"{samples} samples each, seed {seed}. Units: waiting time in {time_unit}, distances in {space_unit}; "
              "NLL in nats per event in those units (joint = waiting time + location; `nll_kind` says how it is "
              "computed: exact for the baselines, `exact-ode` for DSTPP, the exact density of its probability-flow "
              "ODE, joint only; `nll_bound` is DSTPP's variational upper bound, `nll_ode_solver_error` the change "
              "when the ODE tolerance is halved). Lower is better except coverage (nominal "
              f"0.5/0.8/0.95). Reliability diagram: `reliability.png`. Samplers: {describe}; the "
              f"location coverage (`cover_xy_*`) is computed on the first {n_hdr:,} events (a KDE per event)."
              + (f" Catalog: {catalog.dequantised}." if catalog.dequantised else "") + "\n\n")
    text = header + markdown_table(table) + "\n"
    if not continuous and "paper_nll_dt_scaled" in table and table["paper_nll_dt_scaled"].notna().any():
        text += "\n" + paper_comparison(table) + "\n"
    atomic_write_text(out / "next_event.md", text)
    plot_reliability(curves, out / "reliability.png", f"{catalog.name} {split}: calibration")
    atomic_write_text(out / "reliability.json", json.dumps(curves, indent=1))
    return Evaluation(table, curves, catalog, len(targets.truth), out)


def paper_comparison(table: pd.DataFrame) -> str:
    """The DSTPP row under the paper's own protocol next to its Table 2/3 numbers."""
    row = table.loc[table["paper_nll_dt_scaled"].notna()].iloc[0]
    lines = ["## The paper's protocol (DSTPP Japan windows)", "",
             "Its rescaled bound (fixed reverse variances, scaled [-1, 1] space, spatial = mean over x and y) and "
             "single-sample errors (RMSE of the waiting time in days, mean distance in degrees), with the model "
             "selected on the validation split (the published code selects on test).", "",
             "| metric | stforecast | paper (Tables 2/3) |", "|---|---|---|"]
    for key, label in (("paper_nll_xy_scaled", "NLL spatial (scaled, per coordinate)"),
                       ("paper_nll_dt_scaled", "NLL temporal (scaled)"),
                       ("dist_xy_single", "distance, single sample (°)"),
                       ("rmse_dt_single", "RMSE time, single sample (days)")):
        lines.append(f"| {label} | {row[key]:.4g} | {PAPER_JAPAN[key]} |")
    lines.append(f"| distance, sample mean (°) | {row['dist_xy_mean']:.4g} | – |")
    lines.append(f"| RMSE time, sample mean (days) | {row['rmse_dt_mean']:.4g} | – |")
    return "\n".join(lines)


def log_evaluation(ev: Evaluation, run_name: str, tags: dict | None = None, experiment: str = "stforecast-evaluate"):
    """One MLflow run: every number as ``<model>.<metric>``, the tables and the plot as artifacts."""
    import mlflow

    from stforecast.tracking import tracked_run

    with tracked_run(experiment, run_name, {"data.input_hash": ev.catalog.input_hash,
                                            "catalog": ev.catalog.name, **(tags or {})}) as run:
        for _, row in ev.table.iterrows():
            mlflow.log_metrics({f"{row['model']}.{k}": float(v) for k, v in row.items()
                                if k not in ("model", "catalog") and isinstance(v, (int, float)) and v == v})
        for name in ("next_event.csv", "next_event.md", "reliability.png", "reliability.json"):
            mlflow.log_artifact(str(ev.out_dir / name))
        return run.info.run_id


# -------------------------------------------------------------------------------- the `stforecast evaluate` command
def add_parser(sub) -> None:
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
    p.add_argument("--model", help=f"the model to score: a checkpoint path, an MLflow URI (models:/dstpp/1), a "
                                   f"baseline ({', '.join(BASELINES)}) or ensemble:A+B (their mixture, weights fitted "
                                   "on validation); none: the baselines only")
    p.add_argument("--split", default="test", choices=["val", "test"], help="held-out split to score (default test)")
    p.add_argument("--targets", type=int, default=1000, help="held-out events to score (random subset; 0 = all)")
    p.add_argument("--samples", type=int, default=SCORE_SAMPLES,
                   help=f"samples per forecast (default {SCORE_SAMPLES}, as in the benchmark)")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"baselines to compare with, comma-separated (default {','.join(BASELINES)}; '' for none)")
    p.add_argument("--hdr-events", type=int, default=HDR_EVENTS,
                   help=f"location coverage needs a KDE per event: compute it on this many events (default {HDR_EVENTS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", help="output folder (default reports/<data>-<split>-<model>)")
    add_model_guard(p)
    add_sampling_arguments(p)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")


def run(args) -> int:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # logs and CI: room for the whole table instead of 80 columns of ellipses
        console = Console(width=132)
    catalog = open_catalog(args.data)
    model = None
    if args.model and args.model.lower() != "none":
        model = load_forecaster(args.model, catalog, allow_other_catalog=args.allow_other_catalog, log=console.print,
                                track=not args.no_track, fit_ensemble=False)  # calibrated on validation below
    label = model_label(args.model) if model is not None else "baselines"
    out = Path(args.out or Path("reports") / f"{safe_name(catalog.folder.name)}-{args.split}-{label}")
    if out.exists():
        console.print(f"replacing the previous scores in {out}")
    ev = evaluate_catalog(catalog, model, [b for b in args.baselines.split(",") if b], args.split,
                          args.targets or None, args.samples, sampling_from_args(args), args.seed,
                          out_dir=out, hdr_events=args.hdr_events, log=console.print, progress=True)
    print_scores(console, ev)
    if not args.no_track:
        log_evaluation(ev, f"{catalog.folder.name}-{args.split}", {"model": args.model or "", "split": args.split})
    return 0


def print_scores(console, ev) -> None:
    from rich.table import Table

    time_unit, space_unit = ev.catalog.units.time_unit, ev.catalog.units.spatial_unit
    view = Table(title=f"{ev.catalog.name}: next-event scores on {ev.n_targets:,} held-out events "
                       f"({time_unit}, {space_unit})")
    cols = ["model", "nll_joint", "nll_dt", "nll_xy", "crps_dt", "energy_xy", "mae_dt_median", "dist_xy_mean",
            "cover_dt_80", "cover_xy_80"]
    labels = ["model", "NLL", "NLL dt", "NLL xy", "CRPS dt", "energy xy", "|dt| err", "xy err", "cov dt 80",
              "cov xy 80"]
    if "nll_magnitude" in ev.table and ev.table["nll_magnitude"].notna().any():  # earthquake catalogs
        cols.insert(4, "nll_magnitude")
        labels.insert(4, "NLL mag")
    if "pai_day_5" in ev.table and ev.table["pai_day_5"].notna().any():  # crime catalogs: the hotspot measures
        cols += ["hit_day_5", "pai_day_5", "pai_week_5"]
        labels += ["hit 5% day", "PAI 5% day", "PAI 5% week"]
    for label in labels:
        view.add_column(label, justify="right")
    for _, row in ev.table.iterrows():
        view.add_row(*[row["model"]] + [("–" if row.get(c) != row.get(c) else f"{row[c]:.4g}") for c in cols[1:]])
    console.print(view)
    console.print("NLL: nats per event, exact (DSTPP: its probability-flow ODE, joint only; its bound in "
                  "nll_bound); NLL mag: the magnitude's, per magnitude unit (DSTPP's head, ETAS's "
                  "Gutenberg-Richter law); CRPS/energy: sample scores; "
                  "|dt| err: median waiting-time error; xy err: distance of the sample mean; cov: share of truths "
                  "inside the 80 % interval/region (nominal 0.80; location coverage on the first "
                  f"{int(ev.table['hdr_events'].iloc[0]):,} events, --hdr-events to change)")
    console.print(f"tables and reliability plot: {ev.out_dir}/")
