"""``stforecast train``: train DSTPP on an ingested catalog, tracked in MLflow (the loop itself is
:func:`stforecast.train.train`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.common import open_catalog


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a DSTPP model on an ingested catalog (tracked in MLflow)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=("Train the diffusion point process on sequences made by `stforecast ingest`. Checkpoints are\n"
                     "selected on the validation split; the test split is never read. Every run is tracked in MLflow\n"
                     "(local SQLite store mlruns/mlflow.db by default, $MLFLOW_TRACKING_URI otherwise) and the best model\n"
                     "is registered. Uses CUDA with mixed precision when present; runs under torchrun with DDP."),
        epilog=("examples:\n"
                "  stforecast train --data dstpp_japan --preset paper --epochs 50\n"
                "  stforecast train --config my.toml --set model.steps=200 --set lr=3e-4\n"
                "  stforecast train --out runs/japan --resume          # continue an interrupted run\n"
                "  torchrun --nproc_per_node 2 -m pipelines.cli train --data japan --epochs 5"))
    p.add_argument("--config", help="TOML or YAML file with training settings (see stforecast/train.py TrainConfig)")
    p.add_argument("--data", help="an ingested catalog name (under data/processed) or folder")
    p.add_argument("--preset", choices=["default", "paper"], help="model configuration to start from")
    p.add_argument("--epochs", type=int, help="passes over the training sequences")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, help="sequences per batch")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--out", help="checkpoint folder (default runs/<data>-<preset>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. model.d_model=32 or lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt with the settings it was started with")
    p.add_argument("--force", action="store_true",
                   help="start over in an --out that already holds a run (its checkpoints are replaced)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--experiment", default="stforecast", help="MLflow experiment")
    p.add_argument("--register-as", default="dstpp", help="registered model name ('' to skip registering)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch instead (logs, cron)")


def run(args) -> int:
    from stforecast.config import check_name
    from stforecast.train import TrainConfig, load_train_config, train

    check_name(args.experiment, "--experiment", "experiment name")  # before any work: it becomes a folder
    overrides = list(args.set)
    base = None
    if args.resume and args.out and not args.config and (Path(args.out) / "last.pt").is_file():
        # `train --out DIR --resume`: continue with the settings the run was started with (CLI flags still win)
        base = _settings_of_checkpoint(Path(args.out) / "last.pt")
    if args.data:
        overrides.append(f'data="{open_catalog(args.data).folder}"')
    for flag, key in (("preset", "preset"), ("epochs", "epochs"), ("max_steps", "max_steps"),
                      ("batch_size", "batch_size"), ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_train_config(args.config, overrides, base=base)
    if args.out:
        cfg.out_dir = args.out
    elif cfg.out_dir == TrainConfig().out_dir:  # neither the file nor --set chose one
        cfg.out_dir = str(Path("runs") / f"{Path(cfg.data).name}-{cfg.preset}")
    if args.no_track:
        result, uri = train(cfg, resume=args.resume, force=args.force), None
    else:
        from stforecast.tracking import tracking_uri, train_and_track

        result, uri = train_and_track(cfg, resume=args.resume, force=args.force, experiment=args.experiment,
                                      registered_name=args.register_as or None)
    print(f"best validation loss {result.best_val:.4f} at step {result.best_step} of {result.steps}"
          f"{' (early stop)' if result.stopped_early else ''}; {result.events_per_second:,.0f} target events/s")
    print(f"checkpoints: {result.out_dir}/best.pt, last.pt")
    if uri:
        print(f"MLflow model: {uri}  (store {tracking_uri()})")
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        print(f"browse runs:  {mlflow_bin if mlflow_bin.exists() else 'mlflow'} ui --backend-store-uri "
              f"{tracking_uri()} --host 127.0.0.1   (then open http://127.0.0.1:5000)")
    return 0


def _settings_of_checkpoint(checkpoint: Path) -> dict:
    """The training settings a run was started with, as stored in its checkpoint."""
    import json

    from stforecast.checkpoints import load_checkpoint

    return json.loads(load_checkpoint(checkpoint)["train_config"])
