"""How loose is DSTPP's likelihood bound? For a trained model and held-out events, compare per event:

* the variational bound with fitted reverse variances (what `stforecast evaluate` reports),
* the bound with DDPM's fixed variances,
* a sample-based estimate of the model's own density: a Gaussian KDE of 2,000 DSTPP samples per history, evaluated
  at the true event (log waiting time for the temporal part, Jacobian included). This is not a bound; KDE smoothing
  biases it upwards a little (more NLL), so the gap it shows is, if anything, an underestimate.

    python -m benchmarks.bound_gap --data japan --model runs/benchmark/japan-*/best.pt --targets 300

Prints nats per event in model units, with standard errors over events.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import gaussian_kde


def main(argv=None) -> None:
    from stforecast.config import load_settings
    from stforecast.evaluate import collate_all, next_event_targets
    from stforecast.train import load_model

    from benchmarks.prepare import ensure_ingested, require_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--targets", type=int, default=300)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    started = time.perf_counter()
    require_checkpoint(a.model, a.data)
    folder = ensure_ingested(a.data, load_settings())
    model = load_model(a.model)
    test = next_event_targets(folder, "test", a.targets, a.seed)
    val = next_event_targets(folder, "val", 1000, a.seed + 1)
    gen = torch.Generator().manual_seed(a.seed)
    truth = torch.as_tensor(test.truth)
    mse = model.reverse_variance_fit(collate_all(val.histories), torch.as_tensor(val.truth), generator=gen)
    fitted = model.nll_bound(collate_all(test.histories), truth, repeats=4, x0_mse=mse, generator=gen).per_event.numpy()
    fixed = model.nll_bound(collate_all(test.histories), truth, repeats=2, generator=gen).per_event.numpy()
    s = model.sample_next(collate_all(test.histories), a.samples, steps=50, generator=gen).double().numpy()
    kde_t, kde_xy = [], []
    for i, y in enumerate(test.truth):
        log_dt = np.log(np.clip(s[i, :, 0], 1e-12, None))
        kde_t.append(-(np.log(gaussian_kde(log_dt)([np.log(y[0])])[0] + 1e-300) - np.log(y[0])))
        kde_xy.append(-np.log(gaussian_kde(s[i, :, 1:3].T)(y[1:3, None])[0] + 1e-300))
    kde = np.column_stack([kde_t, kde_xy])
    n = len(truth)

    def row(name, dt, xy):
        joint = dt + xy
        print(f"{name:<42} {dt.mean():9.3f} {xy.mean():9.3f} {joint.mean():9.3f} ± {joint.std(ddof=1) / np.sqrt(n):.3f}")

    print(f"{a.data}: {n} held-out test events; nats per event in model units (lower is better)")
    print(f"{'':<42} {'time':>9} {'space':>9} {'joint':>9}")
    row("bound, reverse variances fitted on val", fitted[:, 0], fitted[:, 1:].sum(1))
    row("bound, DDPM fixed variances", fixed[:, 0], fixed[:, 1:].sum(1))
    row(f"KDE of {a.samples} samples (estimate, not a bound)", kde[:, 0], kde[:, 1])
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
