"""Seconds per CSEP day: ``--catalogs`` one-day catalogs (10,000 by default) from DSTPP and ETAS for each day of a
month, what ``stforecast csep-eval`` simulates before pyCSEP's tests (which are not timed here).

    python -m benchmarks.csep_speed --model runs/benchmark/japan-c420c482/best.pt --start 2016-04-01 --days 30

Each day runs :func:`stforecast.csep.forecast_day` as ``csep-eval`` does (DSTPP with the catalog sampling,
DPM-Solver++(2M) with 10 evaluations and its magnitude head; ETAS fitted on the events above the tests' Mc), in
this process, on ``torch.get_num_threads()`` threads, one day after the other. It prints per day and model the
wall seconds, the mean count and its 95 % interval, the catalogs that reached the per-catalog cap
(``--max-events``) and the process's peak RSS so far, then the slowest day per model. The catalog files are
written to a temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import pandas as pd


def main(argv=None) -> None:
    from stforecast.csep import catalog_forecaster, completeness, forecast_day
    from stforecast.defaults import CSEP_CHUNK, CSEP_MAX_EVENTS
    from stforecast.ingested import as_catalog
    from stforecast.registry import load_forecaster
    from stforecast.sampling import CATALOGS

    from benchmarks.prepare import ensure_ingested, require_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="japan")
    ap.add_argument("--model", required=True, help="a DSTPP checkpoint (best.pt)")
    ap.add_argument("--start", default="2016-04-01")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--only", help="comma-separated days (YYYY-MM-DD) instead of --start/--days")
    ap.add_argument("--catalogs", type=int, default=10_000)
    ap.add_argument("--max-events", type=int, default=CSEP_MAX_EVENTS)
    ap.add_argument("--chunk", type=int, default=CSEP_CHUNK)
    ap.add_argument("--no-etas", action="store_true", help="DSTPP only")
    args = ap.parse_args(argv)
    require_checkpoint(args.model, args.data)
    catalog = as_catalog(ensure_ingested(args.data))
    mc, b = completeness(catalog)
    models = {"dstpp": load_forecaster(args.model, catalog)}
    if not args.no_etas:
        models["etas"] = load_forecaster("etas", catalog, mc=mc, log=lambda *a: None)
    days = (args.only.split(",") if args.only
            else [str(d.date()) for d in pd.date_range(args.start, periods=args.days, freq="D")])
    import torch

    print(f"{args.catalogs:,} catalogs per day, cap {args.max_events:,} events per catalog, lock-step chunks of "
          f"{args.chunk:,}, {torch.get_num_threads()} torch threads; Mc {mc:.2f}, b {b:.2f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for day in days:
            for name, forecaster in models.items():
                model, magnitudes, gr = catalog_forecaster(catalog, forecaster, CATALOGS)
                t0 = time.perf_counter()
                rec = forecast_day(catalog, model, day, args.catalogs, f"{tmp}/{name}-{day}", magnitudes=magnitudes,
                                   chunk=args.chunk, max_events=args.max_events, gr=gr)
                seconds = time.perf_counter() - t0
                q = rec["count_quantiles"]
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
                rows.append({"day": day, "model": name, "seconds": seconds, "mean": rec["mean_events"],
                             "capped": rec["capped"], "observed": rec["observed_events_above_mc"]})
                print(f"{day} {name:5s} {seconds:6.1f} s  mean {rec['mean_events']:7.2f} (95 %: {q['0.025']:.0f}-"
                      f"{q['0.975']:.0f})  capped {rec['capped']:5d}  observed >= Mc {rec['observed_events_above_mc']:3d}"
                      f"  peak RSS {rss:.2f} GB", flush=True)
    table = pd.DataFrame(rows)
    for name, part in table.groupby("model"):
        worst = part.loc[part["seconds"].idxmax()]
        print(f"{name}: {len(part)} days, slowest {worst['seconds']:.1f} s on {worst['day']}, median "
              f"{part['seconds'].median():.1f} s, days over 60 s: {int((part['seconds'] > 60).sum())}")


if __name__ == "__main__":
    main()
