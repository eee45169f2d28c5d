"""DSTPP's exact next-event NLL on held-out events: seconds, function evaluations and the change against the
reference solve, per catalog.

    python -m benchmarks.likelihood_speed --data japan --model runs/benchmark/japan-c420c482/best.pt [--targets 1000]

For ``--targets`` validation events (seeded as the benchmark picks them) it runs, in this process:

* **fast**: what ``evaluate`` and ``benchmark`` run, the forecast's ``nll`` (the ODE's trace from the denoiser's own
  divergence, one forward pass carrying tangents; the solver error measured on the first 200 events at half the
  tolerance, reusing the main solve as its base);
* **fast, the solve alone**: the same without the solver-error solve, to compare with
* **reference**: the same solve (dopri5, tolerance 1e-4, float64 state, one batched solve) with the trace by
  vector-Jacobian products, as before issue 23, without the solver-error solve.

It prints the seconds and evaluations of each and the per-event change fast − reference (mean, mean |Δ|, max
|Δ|, nats). Wall-clock on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None) -> None:
    from stforecast.evaluate import next_event_targets
    from stforecast.ingested import as_catalog
    from stforecast.registry import load_forecaster

    from benchmarks.prepare import ensure_ingested, require_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="a DSTPP checkpoint (best.pt)")
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--split", default="val")
    args = ap.parse_args(argv)
    require_checkpoint(args.model, args.data)
    catalog = as_catalog(ensure_ingested(args.data))
    targets = next_event_targets(catalog, args.split, args.targets, 0)
    forecaster = load_forecaster(args.model, catalog)
    histories = targets.histories_for(catalog.events if catalog.continuous else None, forecaster.context)
    dist = forecaster.forecast(histories)
    model = dist.model
    truth = torch.as_tensor(np.asarray(targets.truth, float))
    _ = dist.cond  # the encoder, outside both timings
    flow = model.flow()
    t0 = time.perf_counter()
    fast = dist.nll(targets.truth)
    fast_s = time.perf_counter() - t0

    def bare():
        t0 = time.perf_counter()
        if model.mixture is None:
            nll, info = model.exact_nll(dist.batch, truth, cond=dist.cond)
        else:
            nll, info = model.mixture_exact_nll(dist.batch, truth, dist.cond)
        return nll, info, time.perf_counter() - t0

    _, bare_info, bare_s = bare()
    flow.trace = "autograd"
    try:
        ref, info, ref_s = bare()
    finally:
        flow.trace = "auto"
    delta = np.asarray(fast.joint_per_event) - ref.cpu().numpy()
    n = len(truth)
    print(f"{catalog.name}: {n:,} {args.split} events, {model.describe()}, {torch.get_num_threads()} threads")
    print(f"  fast (what evaluate runs, solver error on {min(dist.error_events, n)} events included): {fast_s:.1f} s "
          f"({1000 * fast_s / n:.0f} ms/event), {fast.extra['nll_ode_nfe']} evaluations, NLL "
          f"{np.mean(fast.joint_per_event):.4f}, solver error {fast.extra['nll_ode_solver_error']:.4f} nats")
    print(f"  fast, the solve alone (no solver-error solve): {bare_s:.1f} s ({1000 * bare_s / n:.0f} ms/event), "
          f"{bare_info['nfe']} evaluations")
    print(f"  reference (autograd trace, no solver-error solve): {ref_s:.1f} s ({1000 * ref_s / n:.0f} ms/event), "
          f"{info['nfe']} evaluations, NLL {float(ref.mean()):.4f}")
    print(f"  fast - reference per event: mean {delta.mean():+.5f}, mean |d| {np.abs(delta).mean():.5f}, max |d| "
          f"{np.abs(delta).max():.5f} nats")


if __name__ == "__main__":
    main()
