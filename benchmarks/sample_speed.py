"""Next-event sampling throughput of DSTPP: DDPM (all K steps) and DDIM (50 and 20 steps).

    python -m benchmarks.sample_speed [--preset paper] [--histories 1000] [--samples 100] [--checkpoint best.pt]

Draws ``samples`` next events for each of ``histories`` histories (prefixes of the DSTPP Japan test windows,
chosen at random with a fixed seed) as one batched call per sampler, and prints samples/s (wall time, encoder
included), peak memory (CUDA: per sampler; CPU: the process peak so far, so run one sampler per call to
separate them), and — with a trained ``--checkpoint`` — how the samplers differ in quality against the
held-out next events: mean absolute error of the sample mean and median waiting time (days), distance of the
sample mean location (degrees, as the paper), and the spread (std) of the samples.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from stforecast.batch import load_manifest, load_split
from stforecast.train import TrainConfig, build_model, load_model, pick_device

from benchmarks.prepare import ensure_ingested, require_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper", choices=["paper", "default"])
    ap.add_argument("--checkpoint", help="a trained best.pt (its own configuration is used)")
    ap.add_argument("--histories", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--samplers", default="ddpm,ddim50,ddim20")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="dstpp_japan", help="catalog name (under the processed directory) or folder")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    if args.checkpoint:
        require_checkpoint(args.checkpoint, args.data, "--checkpoint")
    args.data = str(ensure_ingested(args.data))
    device = pick_device(args.device)
    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint).to(device)
    else:
        model = build_model(TrainConfig(preset=args.preset).model_config(), load_manifest(args.data)).to(device)
    model.eval()
    data = load_split(args.data, args.split)
    rng = np.random.default_rng(0)
    seq = rng.integers(0, len(data), args.histories)
    cut = 1 + (rng.random(args.histories) * (data.lengths[seq] - 1)).astype(int)
    hist, truth = data.prefixes(seq, cut)
    batch = hist.collate(np.arange(len(hist))).to(device)
    print(f"device {device}; model K={model.cfg.steps} ({'trained: ' + args.checkpoint if args.checkpoint else 'untrained ' + args.preset}); "
          f"{args.histories} histories x {args.samples} samples = {args.histories * args.samples:,} next events per call")
    for name in args.samplers.split(","):
        kind, steps = ("ddpm", model.cfg.steps) if name == "ddpm" else ("ddim", int(name[4:]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        gen = torch.Generator(device=device).manual_seed(1)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model.sample_next(batch, args.samples, sampler=kind, steps=steps, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        s = out.float().cpu().numpy()
        mean = s.mean(1)
        line = (f"{name:>7} ({steps:>3} steps): {s.shape[0] * s.shape[1] / seconds:9,.0f} samples/s  "
                f"({seconds:6.1f} s, peak memory {peak:,.0f} MB)")
        if args.checkpoint:
            dt_mae = np.abs(mean[:, 0] - truth[:, 0]).mean()
            dt_med = np.abs(np.median(s[:, :, 0], 1) - truth[:, 0]).mean()
            dist = np.hypot(mean[:, 1] - truth[:, 1], mean[:, 2] - truth[:, 2]).mean()
            line += (f" | dt MAE mean {dt_mae:.3f} median {dt_med:.3f}; sample dt std {s[:, :, 0].std(1).mean():.3f}; "
                     f"location error of mean {dist:.2f}; spread {np.hypot(s[:, :, 1].std(1), s[:, :, 2].std(1)).mean():.2f}")
        print(line)


if __name__ == "__main__":
    main()
