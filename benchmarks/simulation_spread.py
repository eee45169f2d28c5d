"""Issue 22: where simulated catalogs go. For each checkpoint, ``--simulations`` continuations of the catalog from
its newest ``--history`` events before ``--at`` to ``--horizon`` later (:func:`stforecast.forecast.simulate_horizon`,
the path `stforecast report` takes), then: events simulated, the share farther than ``--far-km`` from every training
event (off the catalog's seismicity), in how many simulations, the simulated count's 2.5 / 50 / 97.5 % quantiles
and the time it took. Runaway simulations (a hallucinated event becoming the top-ranked parent of its successors)
show as few simulations holding many far events and a long upper count tail.

    python -m benchmarks.simulation_spread runs/benchmark/japan-*/best.pt
    python -m benchmarks.simulation_spread etas --at 2016-04-14T13:00 --horizon 3d

Prints one line per model (checkpoints, or baseline names fitted on the catalog's training period).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="checkpoints (best.pt) or baseline names")
    p.add_argument("--data", default="japan")
    p.add_argument("--at", default="2016-04-14T13:00", help="forecast time (default: the Kumamoto foreshock)")
    p.add_argument("--horizon", default="3d")
    p.add_argument("--simulations", type=int, default=200)
    p.add_argument("--history", type=int, default=128, help="observed events the simulations start from")
    p.add_argument("--far-km", type=float, default=100.0, help="distance from every training event that counts as far")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from scipy.spatial import cKDTree

    from stforecast.forecast import simulate_horizon
    from stforecast.ingested import as_catalog
    from stforecast.registry import load_forecaster

    torch.set_num_threads(1)
    catalog = as_catalog(args.data)
    events = catalog.events
    t0 = catalog.units.model_time_of(args.at)
    t_end = t0 + catalog.units.horizon(args.horizon)
    past = events[events["t"] < t0].iloc[-args.history:]
    marks = {"magnitude": past["magnitude"].to_numpy()} if "magnitude" in past else {}
    tree = cKDTree(events.loc[events["t"] < catalog.split_start("val"), ["x", "y"]].to_numpy())
    print(f"{catalog.name}: {args.simulations} simulations of {args.horizon} from {args.at}, starting from the newest "
          f"{len(past)} events; far = over {args.far_km:g} {catalog.units.spatial_unit} from every training event")
    for name in args.models:
        model = load_forecaster(name, catalog)
        began = time.perf_counter()
        hf = simulate_horizon(model, past["t"].to_numpy(), past[["x", "y"]].to_numpy(), t_end, args.simulations,
                              marks=marks, seed=args.seed)
        seconds = time.perf_counter() - began
        sims = hf.events
        counts = np.bincount(sims["simulation"].to_numpy(), minlength=args.simulations)
        far = tree.query(sims[["x", "y"]].to_numpy())[0] > args.far_km if len(sims) else np.zeros(0, bool)
        q = np.quantile(counts, [0.025, 0.5, 0.975])
        print(f"{name}: {len(sims):,} events, {far.mean() if len(sims) else 0:.1%} far, in "
              f"{len(np.unique(sims['simulation'].to_numpy()[far]))} of {args.simulations} simulations; count "
              f"2.5/50/97.5 %: {q[0]:g} / {q[1]:g} / {q[2]:g}; {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
