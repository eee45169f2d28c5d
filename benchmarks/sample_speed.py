"""Next-event sampling throughput of DSTPP, end to end (encoder included) and sampler only, for DDPM (all K
steps), DDIM-50 and DPM-Solver++(2M) with 10 evaluations (and the adaptive probability-flow ODE on request).

    python -m benchmarks.sample_speed [--preset paper] [--shapes 256x1,1000x100] [--checkpoint best.pt]
                                      [--samplers ddpm,ddim50,dpm10,ode] [--quality]

For each shape H x n it draws ``n`` next events for each of ``H`` histories (prefixes of the DSTPP Japan test
windows, chosen at random with a fixed seed) and prints:

* **encoder**: seconds to compute the H history states by one causal pass per window (what evaluation does) and,
  beside it, by encoding every prefix as its own sequence (what it did before issue 12);
* **sampler**: seconds for the H x n draws from those states, one batched call per sampler;
* **end to end**: encoder (one pass) + sampler, as samples/s, and its ratio to the public DSTPP code's 500-step
  figure measured on this machine in issue 12 (51.7 samples/s at 256 x 1; a constant here, not re-measured).

``--quality`` (needs ``--checkpoint``) scores each sampler's draws against the held-out next events (CRPS of the
waiting time, energy score of the location, with their standard errors over histories) and measures how far each
sampler's draws land from the adaptive ODE solution started from the **same** noise (mean |Δ| in the scaled
[-1, 1] coordinates): DDIM and DPM-Solver both discretise that ODE, whose exact density is the NLL DSTPP reports.
Timings are wall-clock, best of ``--repeats``, after one warm-up call, on ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stforecast.ingested import as_catalog
from stforecast.models.base import Histories
from stforecast.diffusion.schedule import make_sampler
from stforecast.checkpoints import load_model
from stforecast.train import TrainConfig, build_model, pick_device

from benchmarks.prepare import ensure_ingested, require_checkpoint

#: the public DSTPP code, paper configuration, 500 DDPM steps, 256 histories x 1 sample, encoder included, on this
#: 2-core machine (measured in issue 12, same Japan windows)
PUBLIC_DSTPP_SAMPLES_PER_S = 51.7


def sampler_for(model, name: str):
    if name == "ode":
        return model.flow()
    if name == "ddpm":
        return make_sampler(model.schedule, "ddpm")
    kind, steps = name[:4], int(name[4:])  # ddim50, dpm10 ...
    if kind.startswith("dpm"):
        return make_sampler(model.schedule, "dpm", int(name[3:]))
    return make_sampler(model.schedule, "ddim", min(steps, model.cfg.steps))


def timed(fn, device, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper", choices=["paper", "default"])
    ap.add_argument("--checkpoint", help="a trained best.pt (its own configuration is used)")
    ap.add_argument("--shapes", default="256x1,1000x100", help="histories x samples, comma-separated")
    ap.add_argument("--samplers", default="ddpm,ddim50,dpm10,ode",
                    help="which to time (the line of the one forecasts use by default says 'default')")
    ap.add_argument("--skip-ddpm-above", type=int, default=10_000,
                    help="skip DDPM for shapes with more draws than this (500 steps x 100,000 draws is minutes)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="dstpp_japan", help="catalog name (under the processed directory) or folder")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    if args.checkpoint:
        require_checkpoint(args.checkpoint, args.data, "--checkpoint")
    if args.quality and not args.checkpoint:
        ap.error("--quality needs --checkpoint (an untrained model's draws say nothing about quality)")
    args.data = str(ensure_ingested(args.data))
    device = pick_device(args.device)
    catalog = as_catalog(args.data)
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint).to(device)
    else:
        model = build_model(TrainConfig(preset=args.preset).model_config(), catalog).to(device)
    model.eval()
    data = catalog.sequences(args.split)
    print(f"device {device}, {torch.get_num_threads()} threads; model K={model.cfg.steps} "
          f"({'trained: ' + args.checkpoint if args.checkpoint else 'untrained ' + args.preset}); "
          f"best of {args.repeats} after a warm-up")
    for shape in args.shapes.split(","):
        H, n = (int(v) for v in shape.lower().split("x"))
        rng = np.random.default_rng(0)
        seq = rng.integers(0, len(data), H)
        cut = 1 + (rng.random(H) * (data.lengths[seq] - 1)).astype(int)
        prefixes, truth = data.prefixes(seq, cut)
        hist = Histories.from_sequences(prefixes)
        batch = model.history_batch(hist).to(device)
        with torch.no_grad():
            model.history_states(hist, batch)  # warm-up
            enc_s, cond = timed(lambda: model.history_states(hist, batch), device, args.repeats)
            each_s, _ = timed(lambda: model.last_states(batch), device, 1)
        ref = model.reference_location(batch)
        windows = len(np.unique(seq))
        print(f"\n{H} histories x {n} samples = {H * n:,} draws; encoder: one pass over {windows} windows "
              f"{enc_s:.3f} s (each prefix as its own sequence: {each_s:.3f} s, {each_s / enc_s:.1f}x)")
        odes = None
        for name in args.samplers.split(","):
            if name == "ddpm" and H * n > args.skip_ddpm_above:
                print(f"  {name:>7}: skipped ({H * n:,} draws > --skip-ddpm-above)")
                continue
            sampler = sampler_for(model, name)
            nfe = "adaptive" if name == "ode" else len(sampler.timesteps)

            def draw(seed=1):
                gen = torch.Generator(device=device).manual_seed(seed)
                with torch.no_grad():
                    return model.sample_from_condition_with(cond, n, sampler, gen, ref)

            draw()  # warm-up
            samp_s, out = timed(draw, device, args.repeats if name != "ddpm" else 1)
            e2e = H * n / (enc_s + samp_s)
            mark = "default" if name == default_name() else ""
            line = (f"  {name:>7} {mark:>7} ({nfe:>8} evals): sampler {samp_s:7.3f} s = {H * n / samp_s:11,.0f} draws/s | "
                    f"end to end {enc_s + samp_s:7.3f} s = {e2e:11,.0f} samples/s "
                    f"({e2e / PUBLIC_DSTPP_SAMPLES_PER_S:,.0f}x the public code's {PUBLIC_DSTPP_SAMPLES_PER_S}/s)")
            if args.quality:
                from stforecast.metrics import crps_from_samples, energy_score

                s = out.double().cpu().numpy()
                crps = crps_from_samples(s[..., 0], truth[:, 0])
                energy = energy_score(s[..., 1:3], truth[:, 1:3])
                line += (f"\n           CRPS dt {crps.mean():.4f} ± {crps.std(ddof=1) / np.sqrt(H):.4f}, "
                         f"energy xy {energy.mean():.2f} ± {energy.std(ddof=1) / np.sqrt(H):.2f}")
                if odes is None:  # the adaptive ODE from the same noise, once per shape
                    odes = draw_scaled(model, cond, n, model.flow(1e-5), device)
                mine = draw_scaled(model, cond, n, sampler, device)
                line += f"; mean |x0 - x0_ODE| (scaled) {(mine - odes).abs().mean():.4f}"
            print(line)


def default_name() -> str:
    """The --samplers name of what forecasts draw with unless told otherwise (stforecast.sampling.DEFAULT)."""
    from stforecast.sampling import DEFAULT

    return {"ode": "ode", "dpm": f"dpm{DEFAULT.steps}", "ddim": f"ddim{DEFAULT.steps}"}[DEFAULT.sampler]


def draw_scaled(model, cond, n, sampler, device) -> torch.Tensor:
    """(H, n, 3) draws in the scaled coordinates from noise seeded 7 (the same noise for every sampler)."""
    from stforecast.models.dstpp import OUTSIDE
    from stforecast.diffusion.ode import ProbabilityFlow
    from stforecast.diffusion.schedule import sample_loop

    gen = torch.Generator(device=device).manual_seed(7)
    with torch.no_grad():
        ctx = model.denoiser.prepare(cond.unsqueeze(1))
        x = torch.randn((cond.shape[0], n, 3), device=device, generator=gen)
        if isinstance(sampler, ProbabilityFlow):
            return sampler.sample(model.continuous_denoiser(ctx), x).clamp(-OUTSIDE, OUTSIDE).float()
        out = sample_loop(sampler, lambda x_k, k: model.denoiser(x_k, torch.tensor(k, device=device), ctx), x)
        return out.clamp(-OUTSIDE, OUTSIDE).float()


if __name__ == "__main__":
    main()
