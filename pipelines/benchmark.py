"""``stforecast benchmark``: for each catalog, ingest → train DSTPP (validation selects the checkpoint) → fit the
baselines on the training period → score every model on the same held-out test events → one Markdown and CSV
table, the settings and seeds used, and MLflow runs. ``--quick`` runs the same steps at toy sizes (CI).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.evaluation import (PAPER_JAPAN, evaluate_catalog, fit_catalog_baselines, log_evaluation, markdown_table,
                                  paper_comparison)
from stforecast.settings_files import check_layout, deep_merge, read_settings_file, typed_fields
from stforecast.defaults import SCORE_SAMPLES
from stforecast.io.atomic import atomic_write_text
from stforecast.registry import BASELINES

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "benchmark.toml"
#: the columns of the summary table, best value of each lower except coverage (closest to nominal)
SUMMARY = ["catalog", "model", "nll_joint", "nll_joint_se", "nll_dt", "nll_xy", "crps_dt", "energy_xy",
           "mae_dt_median", "rmse_dt_mean", "dist_xy_mean", "cover_dt_50", "cover_dt_80", "cover_dt_95",
           "cover_xy_50", "cover_xy_80", "cover_xy_95", "nll_kind"]
#: the crime catalogs' own measures, in their own table (stforecast.hotspots)
HOTSPOT_SUMMARY = ["catalog", "model", "pai_day_1", "pai_day_5", "hit_day_1", "hit_day_5", "pai_week_1", "pai_week_5",
                   "hit_week_1", "hit_week_5", "hotspot_days", "hotspot_weeks"]
COMPARED = ["nll_joint", "nll_dt", "nll_xy", "crps_dt", "energy_xy"]


#: the tables of data/benchmark.toml (the one layout: stforecast/settings_files.py), and those [quick] may hold
TABLES = ("benchmark", "train", "catalogs", "ablations", "quick")
QUICK_TABLES = ("benchmark", "train", "ablations")


@dataclass
class BenchmarkSettings:
    """The keys of data/benchmark.toml's ``[benchmark]`` table (checked by :func:`stforecast.settings_files.typed_fields`:
    an unknown key or a wrong type is an error naming it and the file)."""

    catalogs: list = field(default_factory=lambda: ["japan", "chicago", "wmaze"])
    seed: int = 0
    targets: int = 1000
    samples: int = SCORE_SAMPLES
    sampler: str = "ode"  # DSTPP's sampler for the scores from samples (stforecast.sampling.Sampling)
    sampler_steps: int = 10  # network evaluations of dpm / steps of ddim
    bound_repeats: int = 4
    ode_tolerance: float = 1e-4  # DSTPP's probability-flow ODE (sampling and exact likelihood): rtol = atol
    baselines: list = field(default_factory=lambda: list(BASELINES))
    baseline_fit_events: int | None = None
    # DSTPP and the baselines mixed (stforecast.models.ensemble), weights by maximum likelihood on validation events
    ensemble: bool = True
    # crime catalogs: hit rate and PAI of each model's hotspots (stforecast.hotspots) on this many days and weeks
    hotspot_periods: int = 60
    hotspot_samples: int = 500


@dataclass
class AblationSettings:
    """``[ablations]``: DSTPP variants (model settings over [train]) trained like the benchmark's model and scored
    with the baselines on the **validation** split, which is what chose the default."""

    catalogs: list = field(default_factory=list)
    targets: int = 500
    samples: int = 100
    variants: dict = field(default_factory=dict)  # name -> {ModelConfig field: value}
    only: dict = field(default_factory=dict)  # variant -> catalogs it applies to (e.g. magnitudes: earthquakes)


def benchmark_sampling(cfg: dict):
    """The :class:`~stforecast.sampling.Sampling` the benchmark's DSTPP is sampled and scored with."""
    from stforecast.sampling import Sampling

    return Sampling(sampler=cfg["sampler"], steps=cfg["sampler_steps"], tolerance=cfg["ode_tolerance"])


def load_benchmark_config(path=None, quick: bool = False) -> dict:
    """The benchmark's settings: ``[benchmark]``'s keys (:class:`BenchmarkSettings`), and ``train`` (``[train]``),
    ``catalog_train`` (catalog → its ``[catalogs.NAME.train]``), ``ablations`` and ``quick`` (the tables as they
    are). ``quick``: ``[quick]``'s tables merged over the file's first (:func:`stforecast.settings_files.deep_merge`)."""
    path = Path(path or DEFAULT_CONFIG)
    doc = read_settings_file(path, TABLES, home="benchmark")
    quick_doc = check_layout(doc.get("quick", {}), f"{path} [quick]", QUICK_TABLES, home="quick.benchmark")
    typed_fields(BenchmarkSettings, quick_doc.get("benchmark", {}), f"{path} [quick.benchmark]")
    for name, table in doc.get("catalogs", {}).items():
        if not isinstance(table, dict) or set(table) - {"train"}:
            raise ValueError(f"{path}: [catalogs.{name}] may hold only a [catalogs.{name}.train] table (training "
                             f"settings for that catalog, over [train]), not {table!r}")
    if quick:
        doc = deep_merge(doc, quick_doc)
    cfg = asdict(BenchmarkSettings(**typed_fields(BenchmarkSettings, doc.get("benchmark", {}), f"{path} [benchmark]")))
    cfg.update(train=doc.get("train", {}), ablations=doc.get("ablations", {}), quick=quick_doc,
               catalog_train={n: t.get("train", {}) for n, t in doc.get("catalogs", {}).items()})
    typed_fields(AblationSettings, cfg["ablations"], f"{path} [ablations]")
    return cfg


def catalog_settings(cfg: dict, name: str, quick: bool) -> dict:
    """Train settings for one catalog: [train], then [catalogs.NAME.train], then (quick) [quick.train], merged by
    :func:`stforecast.settings_files.deep_merge` (``model = {}`` drops [train.model]: dstpp_japan's paper model)."""
    train = deep_merge(cfg["train"], cfg["catalog_train"].get(name, {}))
    if quick:
        train = deep_merge(train, cfg["quick"].get("train", {}))
    return train


def resolve_catalog(entry: str, settings, processed_dir: Path | None = None):
    """One ``--catalogs`` entry → ``(name, what)``. ``what`` is the catalog's config when the config file names it
    (it is then ingested, or found up to date, as before), else the folder of an already-ingested catalog: an ad-hoc
    one from ``stforecast ingest table --name NAME`` under the processed directory, or any folder holding a
    manifest.json (its name is the folder's). Raises :class:`FileNotFoundError` saying where it looked."""
    from stforecast.ingested import IngestedCatalog

    if entry in settings.catalogs:
        return entry, settings.catalog(entry)
    try:
        folder = IngestedCatalog.open(entry, processed_dir or settings.processed_dir).folder.resolve()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"--catalogs {entry}: not a catalog of {settings.config_file} (known: "
            f"{', '.join(sorted(settings.catalogs))}) nor an ingested catalog ({e}); ingest it first, e.g. "
            f"`stforecast ingest table --name {Path(entry).name} --path FILE ...`") from None
    return folder.name, folder


def verdict(table: pd.DataFrame) -> list[str]:
    """Per catalog and metric: does DSTPP beat every baseline, and by how much (positive margin = DSTPP better)."""
    lines = []
    for catalog, rows in table.groupby("catalog", sort=False):
        others = rows[~rows.model.isin(["dstpp", "ensemble"])]  # the baselines (the ensemble contains DSTPP)
        if "dstpp" not in set(rows["model"]) or others.empty:
            continue
        d = rows[rows.model == "dstpp"].iloc[0]
        parts = []
        for metric in COMPARED:
            if pd.isna(d[metric]) or others[metric].isna().all():
                continue  # DSTPP's exact ODE likelihood is joint only: no time / space split to compare
            best = others.loc[others[metric].idxmin()]
            margin = best[metric] - d[metric]
            parts.append(f"{metric} {'beats' if margin > 0 else 'loses to'} best baseline {best['model']} by "
                         f"{abs(margin):.3g}")
        lines.append(f"- **{catalog}**: " + "; ".join(parts))
    return lines


def run_benchmark(catalogs: list[str], *, quick: bool = False, config_path=None, out: Path = Path("reports/benchmark"),
                  runs_dir: Path = Path("runs/benchmark"), processed_dir: Path | None = None, track: bool = True,
                  device: str = "auto", progress: bool = True, ablations: bool = False, log=print) -> pd.DataFrame:
    from pipelines.ingest import IngestResult, run_ingest
    from stforecast.config import load_settings
    from stforecast.ingested import IngestedCatalog
    from stforecast.checkpoints import load_model

    cfg = load_benchmark_config(config_path, quick)
    settings = load_settings()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record = {"catalogs": catalogs, "quick": quick, "config": cfg, "machine": platform.platform(),
              "python": platform.python_version(), "per_catalog": {}}
    tables, paper = [], None
    for entry in catalogs:
        t0 = time.perf_counter()
        name, cfg_or_folder = resolve_catalog(entry, settings, processed_dir)
        if isinstance(cfg_or_folder, Path):
            log(f"== {name}: already ingested in {cfg_or_folder} (not in {settings.config_file.name}, so used as is)")
            manifest = IngestedCatalog.open(cfg_or_folder, cfg_or_folder.parent).manifest
            ingested = IngestResult(cfg_or_folder, manifest, skipped=True)
        else:
            log(f"== {name}: ingest")
            ingested = run_ingest(cfg_or_folder, settings, out_root=processed_dir, progress=progress)
        train_values = catalog_settings(cfg, name, quick)
        log(f"== {name}: train DSTPP ({train_values.get('epochs')} epochs max, preset {train_values.get('preset')})")
        tc, result, uri = train_dstpp(train_values, ingested, runs_dir, name, track, device, progress)
        model = load_model(Path(tc.out_dir) / "best.pt")
        catalog = ingested.catalog
        log(f"== {name}: fit baselines")  # once: the validation ablations and the test scores share them
        baselines = fit_catalog_baselines(catalog, cfg["baselines"], cfg.get("baseline_fit_events"), log)
        if ablations and name in ablation_catalogs(cfg):
            record.setdefault("ablations", {})[name] = run_ablations(cfg, name, ingested, train_values, runs_dir,
                                                                     out, track, device, progress, baselines, log,
                                                                     catalog)
        scored = dict(baselines)
        if cfg["ensemble"] and baselines:
            from stforecast.models.ensemble import Ensemble

            scored["ensemble"] = Ensemble({"dstpp": model, **baselines})
        log(f"== {name}: evaluate")
        ev = evaluate_catalog(catalog, model, scored, "test", cfg["targets"] or None,
                              cfg["samples"], benchmark_sampling(cfg), cfg["seed"], cfg["bound_repeats"],
                              out_dir=out / name, log=log, hotspot_periods=cfg["hotspot_periods"],
                              hotspot_samples=cfg["hotspot_samples"])
        if track:
            log_evaluation(ev, f"benchmark-{name}", {"benchmark": "quick" if quick else "full", "model_uri": uri or ""},
                           experiment="stforecast-benchmark")
        if not ev.catalog.continuous:
            paper = ev.table
        tables.append(ev.table)
        record["per_catalog"][name] = {
            "train": tc.to_dict(), "best_val_loss": result.best_val, "best_step": result.best_step,
            "steps": result.steps, "train_events_per_s": result.events_per_second, "model_uri": uri,
            "test_targets": ev.n_targets, "units": [ev.catalog.units.time_unit, ev.catalog.units.spatial_unit],
            "input_hash": ev.catalog.input_hash, "gap": likelihood_gap(ev.table, ev.curves),
            "ensemble": ensemble_gains(ev.table, ev.curves), "dequantised": ev.catalog.dequantised,
            "seconds": round(time.perf_counter() - t0, 1)}
    table = pd.concat(tables, ignore_index=True)
    record["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "benchmark.csv", table.to_csv(index=False))
    atomic_write_text(out / "benchmark.json", json.dumps(record, indent=1, default=str))
    atomic_write_text(out / "benchmark.md", report(table, record, paper))
    if track:
        import mlflow

        from stforecast.tracking import tracked_run

        with tracked_run("stforecast-benchmark", "benchmark-summary",
                         {"benchmark": "quick" if quick else "full", "catalogs": ",".join(catalogs)}):
            for name in ("benchmark.csv", "benchmark.md", "benchmark.json"):
                mlflow.log_artifact(str(out / name))
    log(f"benchmark done in {record['seconds']:.0f} s: {out / 'benchmark.md'}")
    return table


def train_dstpp(train_values: dict, ingested, runs_dir: Path, name: str, track: bool, device: str, progress: bool):
    """Train (or resume, or find finished) DSTPP with these settings → (TrainConfig, TrainResult, model URI)."""
    from stforecast.train import TrainConfig, train

    # the folder is keyed by the settings, so a changed config trains afresh instead of resuming another run
    key = hashlib.sha256(json.dumps([train_values, ingested.catalog.input_hash], sort_keys=True,
                                    default=str).encode()).hexdigest()[:8]
    tc = TrainConfig(**{**train_values, "data": str(ingested.out_dir), "out_dir": str(runs_dir / f"{name}-{key}"),
                        "device": device, "progress": progress})
    if track:
        from stforecast.tracking import train_and_track

        result, uri = train_and_track(tc, resume=True, experiment="stforecast-benchmark",
                                      registered_name=None, run_name=f"benchmark-{name}")
    else:
        result, uri = train(tc, resume=True), None
    return tc, result, uri


def likelihood_gap(table: pd.DataFrame, curves: dict) -> dict | None:
    """DSTPP's joint NLL minus the best baseline's (positive: DSTPP worse), nats per event, with the standard error
    of the mean of the paired per-event differences (same events for both)."""
    import numpy as np

    others = table[~table.model.isin(["dstpp", "ensemble"])]
    if "dstpp" not in set(table["model"]) or others.empty:
        return None
    best = others.loc[others["nll_joint"].idxmin(), "model"]
    diff = np.asarray(curves["dstpp"]["nll_joint"]) - np.asarray(curves[best]["nll_joint"])
    return {"best_baseline": best, "gap": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff)))}


def ensemble_gains(table: pd.DataFrame, curves: dict) -> dict | None:
    """The ensemble's weights and its exact NLL minus each member's (negative: the ensemble better), nats per event,
    with the paired standard error on the same test events; None where no ensemble was scored."""
    import numpy as np

    if "ensemble" not in set(table["model"]):
        return None
    row = table.loc[table.model == "ensemble"].iloc[0]
    mine = np.asarray(curves["ensemble"]["nll_joint"])
    gains = {}
    for member in table.loc[table.model != "ensemble", "model"]:
        diff = mine - np.asarray(curves[member]["nll_joint"])
        gains[member] = {"gain": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff)))}
    return {"weights": str(row.get("ensemble_weights", "")), "nll_joint": float(row["nll_joint"]), "vs": gains}


def ablation_catalogs(cfg: dict) -> list[str]:
    return list(cfg.get("ablations", {}).get("catalogs", []))


def run_ablations(cfg: dict, name: str, ingested, train_values: dict, runs_dir: Path, out: Path, track: bool,
                  device: str, progress: bool, baselines: dict, log, catalog) -> list[dict]:
    """Each ``[ablations]`` variant of DSTPP trained with ``train_values`` and its own model settings, scored with
    the fitted ``baselines`` (name → Forecaster) on ``targets`` validation events (never test) of ``catalog`` (the
    ingested one, opened once by the caller). Rows: variant, exact and bound NLL, scores."""
    from stforecast.checkpoints import load_model

    ab = asdict(AblationSettings(**typed_fields(AblationSettings, cfg["ablations"], "[ablations]")))
    rows, baselines_done = [], False
    for variant, model_values in ab["variants"].items():
        if name not in ab["only"].get(variant, [name]):
            continue
        values = deep_merge(train_values, {"model": model_values})
        log(f"== {name}: ablation {variant!r} ({model_values})")
        t0 = time.perf_counter()
        tc, result, _ = train_dstpp(values, ingested, runs_dir, name, track, device, progress)
        train_s = time.perf_counter() - t0
        model = load_model(Path(tc.out_dir) / "best.pt")
        ev = evaluate_catalog(catalog, model, {} if baselines_done else baselines, "val",
                              ab["targets"], ab["samples"], benchmark_sampling(cfg), cfg["seed"], 1,
                              out_dir=out / name / "ablations" / variant, log=log,
                              hotspot_periods=cfg["hotspot_periods"], hotspot_samples=cfg["hotspot_samples"])
        for _, row in ev.table.iterrows():
            is_dstpp = row["model"] == "dstpp"
            rows.append({"catalog": name, "variant": variant if is_dstpp else "baseline", "model": row["model"],
                         "settings": json.dumps(model_values) if is_dstpp else "",
                         **{k: row.get(k) for k in ABLATION_COLUMNS},
                         "best_val_loss": result.best_val if is_dstpp else None,
                         # seconds of this call: training time when it trained now, else (reused) empty
                         "train_s": round(train_s, 1) if is_dstpp and result.trained_now else None,
                         "train_events_per_s": result.events_per_second if is_dstpp else None,
                         "steps": result.steps if is_dstpp else None})
        baselines_done = True
    frame = pd.DataFrame(rows)
    atomic_write_text(out / name / "ablations.csv", frame.to_csv(index=False))
    atomic_write_text(out / name / "ablations.md", f"# {name}: DSTPP ablations on the validation split\n\n"
                      + markdown_table(frame.drop(columns=["settings"])) + "\n")
    return rows


#: what an ablation row reports (validation split)
ABLATION_COLUMNS = ["nll_joint", "nll_joint_se", "nll_dt", "nll_xy", "nll_kind", "nll_bound", "crps_dt", "energy_xy",
                    "cover_dt_80", "cover_xy_80"]


def report(table: pd.DataFrame, record: dict, paper: pd.DataFrame | None) -> str:
    units = "; ".join(f"{k}: {v['units'][0]}, {v['units'][1]}" for k, v in record["per_catalog"].items())
    cfg = record["config"]
    lines = [f"# stforecast benchmark{' (quick: toy sizes, not a ranking)' if record['quick'] else ''}", "",
             f"Test split of each catalog's chronological split; {cfg['targets'] or 'all'} held-out events per "
             f"catalog (seed {cfg['seed']}), {cfg['samples']} samples per forecast. DSTPP is sampled with its "
             "probability-flow ODE and `nll_joint` is that ODE's exact density (`nll_kind` exact-ode; "
             f"`nll_bound` its variational upper bound, {cfg['bound_repeats']} Monte-Carlo draws). Units ({units}). "
             "NLL: nats per event (joint = waiting time + location; the ODE gives the joint only). Lower is "
             "better; coverage should match its nominal level. Settings and seeds: `benchmark.json`; per catalog "
             "tables and reliability plots in its folder.", "",
             markdown_table(table[[c for c in SUMMARY if c in table]]), ""]
    lines += [f"- {name}: {info['dequantised']}" for name, info in record["per_catalog"].items()
              if info.get("dequantised")]
    if "pai_day_5" in table and table["pai_day_5"].notna().any():
        from stforecast.hotspots import CELL_M

        crime = table[table["pai_day_5"].notna()]
        lines += ["", "## Hotspots (crime catalogs)", "",
                  f"Each model's forecast at the start of each day / week of the test split ranks {CELL_M:g}-m "
                  "cells by its next-event location samples; the hotspots are the top 1 % / 5 % of the study area (cells "
                  "with a training event). Hit rate: the share of the period's events inside them; PAI: hit rate / "
                  "area share (1 = chance). Pooled over the periods (`stforecast/hotspots.py`).", "",
                  markdown_table(crime[[c for c in HOTSPOT_SUMMARY if c in crime]])]
    lines += ["", "## DSTPP against the best baseline", ""]
    for name, info in record["per_catalog"].items():
        gap = info.get("gap")
        if gap:
            lines.append(f"- **{name}**: exact NLL gap to {gap['best_baseline']} {gap['gap']:+.3f} ± {gap['se']:.3f} "
                         "nats/event (DSTPP − baseline, paired standard error; negative = DSTPP better)")
    lines += verdict(table) or ["(no catalog with both DSTPP and a baseline)"]
    ensembles = {name: info["ensemble"] for name, info in record["per_catalog"].items() if info.get("ensemble")}
    if ensembles:
        lines += ["", "## Ensemble of DSTPP and the baselines", "",
                  "A mixture whose weights are fitted by maximum likelihood on validation events (never test); its "
                  "NLL is exact (log-sum-exp of the members' densities). Gain: ensemble − member, nats/event on the "
                  "same test events with the paired standard error (negative = the ensemble better).", ""]
        for name, info in ensembles.items():
            vs = "; ".join(f"{m} {g['gain']:+.3f} ± {g['se']:.3f}" for m, g in info["vs"].items())
            lines.append(f"- **{name}**: NLL {info['nll_joint']:.3f} (weights {info['weights']}); vs {vs}")
    for name, rows in record.get("ablations", {}).items():
        frame = pd.DataFrame(rows)
        lines += ["", f"## Ablations on {name} (validation split, never test)", "",
                  markdown_table(frame[[c for c in ["variant", "model", "nll_joint", "nll_joint_se", "nll_bound",
                                                    "crps_dt", "energy_xy", "cover_dt_80", "cover_xy_80",
                                                    "best_val_loss", "train_s"] if c in frame]])]
    if paper is not None:
        lines += ["", paper_comparison(paper)]
    lines += ["", f"Total time {record['seconds']:.0f} s on {record['machine']}."]
    return "\n".join(lines) + "\n"


__all__ = ["run_benchmark", "load_benchmark_config", "PAPER_JAPAN"]


# -------------------------------------------------------------------------------- the `stforecast benchmark` command
def add_parser(sub) -> None:
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
                "  stforecast benchmark --ablations                  # also the validation ablations of [ablations]\n"
                "  stforecast benchmark --quick --ablations          # toy sizes: proves the pipeline runs"))
    p.add_argument("--catalogs", help="comma-separated catalog names (default: the config's list)")
    p.add_argument("--quick", action="store_true", help="toy sizes for CI (a few training steps, few events)")
    p.add_argument("--config", help="benchmark settings (default data/benchmark.toml)")
    p.add_argument("--out", default=None, help="report folder (default reports/benchmark or reports/benchmark-quick)")
    p.add_argument("--runs", default=None, help="checkpoint folder (default runs/benchmark[-quick])")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--ablations", action="store_true",
                   help="also train and score the [ablations] variants on the validation split (the study that chose "
                        "the defaults: each variant's training and scoring, an hour or more on CPU)")


def run(args) -> int:
    from rich.console import Console

    console = Console()
    suffix = "-quick" if args.quick else ""
    catalogs = args.catalogs.split(",") if args.catalogs else load_benchmark_config(args.config)["catalogs"]
    table = run_benchmark(catalogs, quick=args.quick, config_path=args.config,
                          out=Path(args.out or f"reports/benchmark{suffix}"),
                          runs_dir=Path(args.runs or f"runs/benchmark{suffix}"), track=not args.no_track,
                          device=args.device, progress=not args.no_progress, ablations=args.ablations,
                          log=console.print)
    cols = ["catalog", "model", "nll_joint", "crps_dt", "energy_xy", "cover_dt_80", "cover_xy_80"]
    console.print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0
