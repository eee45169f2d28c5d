"""Issue 20: DSTPP's bounded location (the region's box mapped onto the plane, then asinh of the displacement from
the newest event) against today's relative one, on each catalog's **validation** split (never test).

For every catalog: both variants trained with the benchmark's settings for that catalog (`data/benchmark.toml`,
`[train]` + `[catalogs.NAME.train]`; the folders are keyed by the settings, so a finished run is reused), then on
the same validation events (a seeded subset):

* the exact next-event NLL of each (the probability-flow ODE, tolerance as the benchmark's), its standard error,
  and the paired difference bounded − relative with the standard error of the per-event differences;
* where the samples land: ``--samples`` next-event draws on the first ``--sample-events`` events, the share
  outside the catalog's region box and outside it widened by 10 % of its size, and the farthest sample from
  the box (model length units).

    python -m benchmarks.location_support                       # japan, chicago, wmaze
    python -m benchmarks.location_support --catalogs wmaze --targets 200

Writes ``reports/location_support/summary.{md,csv}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

VARIANTS = {"relative (before)": {"location": "relative"}, "bounded": {"location": "bounded"}}


def outside_shares(xy: np.ndarray, box: tuple, pad: float = 0.1) -> tuple[float, float, float]:
    """Share of the (..., 2) locations outside ``box``, outside it widened by ``pad`` of its size, and the largest
    distance of one from the box."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dx = np.maximum(np.maximum(x0 - xy[..., 0], xy[..., 0] - x1), 0)
    dy = np.maximum(np.maximum(y0 - xy[..., 1], xy[..., 1] - y1), 0)
    far = np.hypot(dx, dy)
    wide = (dx > pad * w) | (dy > pad * h)
    return float((far > 0).mean()), float(wide.mean()), float(far.max())


def run(catalogs, targets: int, samples: int, sample_events: int, out: Path, runs: Path, seed: int = 0) -> pd.DataFrame:
    from pipelines.benchmark import benchmark_sampling, catalog_settings, load_benchmark_config, train_dstpp
    from pipelines.evaluation import markdown_table
    from pipelines.ingest import run_ingest
    from stforecast.config import load_settings
    from stforecast.settings_files import deep_merge
    from stforecast.evaluate import next_event_targets
    from stforecast.ingested import IngestedCatalog
    from stforecast.io.atomic import atomic_write_text
    from stforecast.checkpoints import load_model

    torch.set_num_threads(1)
    cfg, settings = load_benchmark_config(), load_settings()
    rows = []
    for name in catalogs:
        ingested = run_ingest(settings.catalog(name), settings, progress=False)
        catalog = IngestedCatalog.open(ingested.out_dir)
        box = catalog.region
        val = next_event_targets(ingested.out_dir, "val", targets, seed)
        check = next_event_targets(ingested.out_dir, "val", sample_events, seed + 1)
        events = catalog.events if catalog.continuous else None
        base = catalog_settings(cfg, name, quick=False)
        per_event = {}
        for variant, model_values in VARIANTS.items():
            t0 = time.perf_counter()
            tc, result, _ = train_dstpp(deep_merge(base, {"model": model_values}), ingested, runs, name, False, "cpu",
                                        True)
            train_s = time.perf_counter() - t0
            model = load_model(Path(tc.out_dir) / "best.pt").with_sampling(benchmark_sampling(cfg))
            dist = model.forecast(val.histories_for(events, model.context))
            t0 = time.perf_counter()
            nll, info = model.exact_nll(dist.batch, torch.as_tensor(val.truth), cond=dist.cond)
            nll_s = time.perf_counter() - t0
            per_event[variant] = nll = nll.double().cpu().numpy()
            draws = model.forecast(check.histories_for(events, model.context)).sample(
                samples, np.random.default_rng(seed)).events
            share, share_wide, farthest = outside_shares(draws[..., 1:3], box)
            rows.append({"catalog": name, "variant": variant, "location": model.cfg.location,
                         "val_events": len(nll), "nll_joint": float(nll.mean()),
                         "nll_se": float(nll.std(ddof=1) / math.sqrt(len(nll))),
                         "nfe_per_event": info["nfe"], "samples_outside_region": share,
                         "samples_outside_region_plus_10pct": share_wide, "farthest_sample_from_region": farthest,
                         "best_val_loss": result.best_val, "steps": result.steps,
                         "train_min": round(train_s / 60, 1) if result.trained_now else None,
                         "nll_min": round(nll_s / 60, 1)})
            print(json.dumps(rows[-1]), flush=True)
        diff = per_event["bounded"] - per_event["relative (before)"]
        rows[-1]["paired_diff_vs_relative"] = float(diff.mean())
        rows[-1]["paired_diff_se"] = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.csv", frame.to_csv(index=False))
    atomic_write_text(out / "summary.md", "# Bounded vs relative location, validation split (exact NLL, nats/event)\n\n"
                      + markdown_table(frame) + "\n")
    print(markdown_table(frame))
    return frame


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogs", nargs="+", default=["japan", "chicago", "wmaze"])
    p.add_argument("--targets", type=int, default=500, help="validation events scored per catalog (default 500)")
    p.add_argument("--samples", type=int, default=100, help="next-event samples per event for the support check")
    p.add_argument("--sample-events", type=int, default=200, help="events sampled for the support check")
    p.add_argument("--out", default="reports/location_support")
    p.add_argument("--runs", default="runs/benchmark", help="training folders (shared with the benchmark)")
    a = p.parse_args(argv)
    run(a.catalogs, a.targets, a.samples, a.sample_events, Path(a.out), Path(a.runs))


if __name__ == "__main__":
    main()
