"""Training throughput of DSTPP on the DSTPP paper's Japan windows.

    python -m benchmarks.train_speed [--preset paper|default|both] [--steps 30] [--device auto]

Measures target events per second of wall time for collate + ``stforecast.train.train_step`` (forward +
backward + clip + AdamW step: the very function the training loop runs; length-bucketed batches of 64 sequences,
random order), after 3 warm-up steps, and the peak resident memory (CPU) or peak allocated memory (CUDA, bf16
autocast). Reads the ingested windows (``--data``: a catalog name under the processed directory, or a folder);
ingests them first when they are missing.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from stforecast import train as training
from stforecast.batch import padding_fraction
from stforecast.ingested import as_catalog
from stforecast.train import TrainConfig, build_model, pick_device

from benchmarks.prepare import ensure_ingested


def measure(preset: str, steps: int, device: torch.device, data: str, batch_size: int = 64,
            model_overrides: dict | None = None) -> dict:
    """Time ``steps`` calls of :func:`stforecast.train.train_step` (the training loop's own step, at the constant
    learning rate ``TrainConfig.lr``), each with its batch's collation, after 3 untimed warm-up steps.
    ``model_overrides``: ModelConfig fields over the preset (tests use a tiny model)."""
    cfg = TrainConfig(data=data, preset=preset, model=dict(model_overrides or {}))
    catalog = as_catalog(data)
    train = catalog.sequences("train")
    model = build_model(cfg.model_config(), catalog).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    amp = cfg.amp and device.type == "cuda"
    batches = []
    epoch = 0
    while len(batches) < steps + 3:
        batches += train.batches(batch_size, shuffle=True, seed=0, epoch=epoch)
        epoch += 1
    warm, timed = batches[:3], batches[3:steps + 3]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(index):  # what one iteration of stforecast.train.train's loop times
        batch = train.collate(index).to(device, non_blocking=True)
        training.train_step(model, model, batch, opt, cfg.lr, cfg.grad_clip, amp)
        return batch.num_targets

    for b in warm:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    events = sum(step(b) for b in timed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"preset": preset, "events": events, "seconds": seconds, "events_per_s": events / seconds,
            "params": model.num_parameters(), "padding": padding_fraction(train.lengths, timed), "peak_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="both", choices=["paper", "default", "both"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="dstpp_japan", help="catalog name (under the processed directory) or folder")
    args = ap.parse_args()
    args.data = str(ensure_ingested(args.data))
    device = pick_device(args.device)
    torch.manual_seed(0)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}; {args.steps} timed steps of 64 sequences after 3 warm-up steps")
    if args.preset == "both":  # one process per preset, so each peak-memory figure is its own
        import subprocess
        import sys

        for p in ("paper", "default"):
            run = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--preset", p, "--steps",
                                  str(args.steps), "--device", args.device, "--data", args.data],
                                 capture_output=True, text=True)
            if run.returncode:
                last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
                raise SystemExit(f"{p}: the measurement failed: {last}")
            print(run.stdout.strip().splitlines()[-1])
        return
    for p in [args.preset]:
        r = measure(p, args.steps, device, args.data)
        print(f"{p:>8}: {r['events_per_s']:8,.0f} target events/s  ({r['events']:,} events in {r['seconds']:.1f} s; "
              f"{r['params']:,} parameters; padding {r['padding']:.1%}; peak memory {r['peak_mb']:,.0f} MB)")


if __name__ == "__main__":
    main()
