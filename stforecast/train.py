"""Training: one loop a reader can hold in their head.

    for each epoch: for each length-bucketed batch: loss → backward → clip → AdamW step → LR schedule
                    every `eval_every` epochs: validation loss (fixed noise) → keep the best → early stop

Selection and early stopping use the **validation** split only; the test split is never read here. The
normalisation comes from the ingestion manifest (fitted on train targets). Checkpoints (``last.pt``) hold the
model, optimiser, schedule, RNG state and position in the epoch; they are written atomically, and
``resume=True`` continues from them to the same result as an uninterrupted run. On CUDA the loop uses mixed
precision (bf16) and optionally ``torch.compile``; under ``torchrun`` it runs DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stforecast.batch import Batch, SequenceSet, load_split
from stforecast.checkpoints import (CONFIG_LIMITS, atomic_torch_save, claim_depth, claimed_run_folder,
                                    load_checkpoint)
from stforecast.distributed import Distributed
from stforecast.errors import TrainingInterrupted
from stforecast.ingested import IngestedCatalog
from stforecast.models.dstpp import DSTPP, PAPER, ModelConfig, Scaler
from stforecast.models.dstpp.modes import evaluating


@dataclass
class TrainConfig:
    data: str = "data/processed/dstpp_japan"  # an ingested catalog folder
    preset: str = "default"  # "default" or "paper": the model configuration the `model` overrides start from
    model: dict = field(default_factory=dict)  # ModelConfig fields overriding the preset
    epochs: int = 30
    batch_size: int = 64  # sequences per batch (length-bucketed)
    max_tokens: int | None = None  # optional cap on padded rows per batch
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_every: int = 1  # epochs
    patience: int = 8  # evaluations without improvement before stopping
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    checkpoint_every: int = 100  # steps
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model on CUDA
    out_dir: str = "runs/dstpp"
    progress: bool = True

    def model_config(self) -> ModelConfig:
        base = PAPER if self.preset == "paper" else ModelConfig()
        if self.preset not in ("paper", "default"):
            raise ValueError(f"preset must be 'default' or 'paper', not {self.preset!r}")
        cfg = dataclasses.replace(base, **self.model)
        for key, (lo, hi) in CONFIG_LIMITS.items():  # a typo must not ask for 480 GB
            if not lo <= getattr(cfg, key) <= hi:
                raise ValueError(f"setting model.{key} = {getattr(cfg, key)} is outside [{lo}, {hi}]")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def load_train_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                      base: dict | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML or YAML file plus ``key=value`` overrides (``model.d_model=32``).

    The file holds TrainConfig fields at its top level (``data/train_demo.toml``) or under ``[train]``
    (``data/benchmark.toml``, whose other tables belong to the benchmark and are ignored here). Every value is
    checked against the field's type (:func:`stforecast.config.typed_fields`), so ``--set lr=abc`` is an error
    naming the setting, not a crash later. ``base`` (instead of a file): settings as a dict, e.g. those stored in a
    checkpoint to resume it."""
    from stforecast.config import read_settings_file, typed_fields

    values: dict = json.loads(json.dumps(base)) if base else {}
    where = " + ".join(w for w in (str(path) if path else "", "--set" if overrides else "") if w) or "settings"
    if path:
        values = read_settings_file(path, table="train")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} must look like key=value, e.g. lr=3e-4 or model.d_model=32")
        node = values
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse_value(raw.strip())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown training setting(s) {unknown}; allowed: {sorted(known)}")
    cfg = TrainConfig(**typed_fields(TrainConfig, values, where))
    model_known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(cfg.model) - model_known)
    if bad:
        raise ValueError(f"{where}: unknown model setting(s) {bad}; allowed: {sorted(model_known)}")
    cfg.model = typed_fields(ModelConfig, cfg.model, where, prefix="model.")
    return cfg


def _parse_value(raw: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string


# ------------------------------------------------------------------------------------------------ helpers
def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_model(cfg: ModelConfig, data: IngestedCatalog | str | os.PathLike,
                train_set: SequenceSet | None = None) -> DSTPP:
    """A new model for the ingested catalog ``data`` (the catalog, or its folder), scaled by its manifest's train
    statistics; a bounded location's support is the catalog's region (:attr:`IngestedCatalog.region_box` with the
    margin); with ``mark_inputs`` or ``mark_head``, the magnitudes of ``train_set`` (the train split) set their
    standardisation and the Gutenberg-Richter law simulated events draw."""
    catalog = data if isinstance(data, IngestedCatalog) else IngestedCatalog.open(data, Path(data).parent)
    region = catalog.region_box if cfg.location == "bounded" else None
    if cfg.mark_inputs or cfg.mark_head:
        marks = None if train_set is None or train_set.mark is None else train_set.mark[np.isfinite(train_set.mark)]
        if marks is None or len(marks) < 2:
            raise ValueError("mark_inputs and mark_head need a catalog with magnitudes (an earthquake catalog)")
        from stforecast.models.marks import aki_b_value

        mc = float(marks.min())
        cfg = dataclasses.replace(cfg, mark_center=float(marks.mean()), mark_scale=float(marks.std()) or 1.0,
                                  mark_mc=mc, mark_b=float(aki_b_value(marks, mc)))
    if cfg.location == "parent":  # Omori's c: a tenth of the typical (geometric-mean) waiting time
        cfg = dataclasses.replace(cfg, parent_c=0.1 * math.exp(catalog.normalisation["log_dt"]["mean"]))
    scaler = Scaler.from_stats(catalog.normalisation, cfg.time_transform, cfg.range_margin, cfg.location,
                               cfg.location_scale, region)
    return DSTPP(cfg, scaler)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then linear decay to ``min_lr`` at ``total`` steps."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.lr - (cfg.lr - cfg.min_lr) * frac


@torch.no_grad()
def evaluate_loss(model: DSTPP, data: SequenceSet, batch_size: int, device: torch.device, seed: int = 0,
                  amp: bool = False) -> float:
    """Denoising loss over every target of ``data`` with fixed noise (seeded), so evaluations compare."""
    gen = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    with evaluating(model):
        for index in data.batches(batch_size, shuffle=False):
            batch = data.collate(index).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = model.loss(batch, generator=gen)
            total += float(loss) * batch.num_targets
            count += batch.num_targets
    return total / max(count, 1)


def train_step(net: torch.nn.Module, model: DSTPP, batch: Batch, opt: torch.optim.Optimizer, lr: float,
               grad_clip: float, amp: bool = False) -> float:
    """One optimiser step on one batch; returns its denoising loss (mean over the batch's targets).

    ``batch``: a collated :class:`~stforecast.batch.Batch` already on the model's device (``time``/``dt``/
    ``mask``/``target`` ``(B, L)``, ``xy`` ``(B, L, 2)``, ``lengths`` ``(B,)``). ``net`` is what runs the forward
    pass (``model`` itself, or it wrapped by DDP / ``torch.compile``); ``model`` owns the parameters whose gradient
    norm is clipped to ``grad_clip``. Sets every parameter group's learning rate to ``lr``, runs the forward pass
    under bf16 autocast when ``amp``, then zero_grad → backward → clip → ``opt.step()``. The float conversion of
    the loss waits for the step to finish (a device sync on CUDA). :func:`train` and
    ``benchmarks.train_speed`` both run this."""
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast(batch.time.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = net(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss.detach())


@dataclass
class TrainResult:
    best_val: float
    best_step: int
    steps: int
    epochs_run: int
    history: list[dict]
    out_dir: Path
    model: DSTPP
    stopped_early: bool
    events_per_second: float
    trained_now: bool = True  # False when a resumed run had already finished


# ------------------------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
          on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    """Train DSTPP on ``cfg.data``. ``on_eval(metrics)`` is called on rank 0 at the end of every epoch with the
    mean train loss and learning rate, plus ``val_loss`` when the epoch was evaluated (MLflow logging). The run
    folder is held for the run (:func:`claimed_run_folder`): a folder that already holds a run needs ``resume``
    or ``force``."""
    dist = Distributed(pick_device(cfg.device))
    out = Path(cfg.out_dir)
    claim = claimed_run_folder(out, resume=resume, force=force) if dist.rank == 0 else contextlib.nullcontext()
    with claim:
        if dist.rank == 0 and force and not resume and claim_depth(out) == 1:  # (the MLflow wrapper keeps its own)
            (out / "mlflow_run.json").unlink(missing_ok=True)
        if dist.on:
            dist.from_rank0(None)  # wait for the clean-up
        return _train(cfg, dist, resume, on_eval)


def _train(cfg: TrainConfig, dist: "Distributed", resume: bool, on_eval) -> TrainResult:
    device, rank = dist.device, dist.rank
    seed_everything(cfg.seed + rank)  # ranks draw different noise; each rank's RNG state is checkpointed
    out = Path(cfg.out_dir)
    last, best = out / "last.pt", out / "best.pt"
    catalog = IngestedCatalog.open(cfg.data, Path(cfg.data).parent)
    train_set, val_set = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    model_cfg = cfg.model_config()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(model_cfg, catalog, train_set).to(device)
    model_cfg = model.cfg  # with the statistics build_model filled in (magnitudes), as the checkpoint stores it
    torch.manual_seed(cfg.seed + rank)
    amp = cfg.amp and device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    n_batches = len(train_set.batches(cfg.batch_size, shuffle=False, max_tokens=cfg.max_tokens))
    if n_batches < dist.world:
        raise ValueError(f"{n_batches} training batches cannot feed {dist.world} processes; use a smaller batch_size")
    steps_per_epoch = n_batches // dist.world
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val": math.inf, "best_step": -1, "bad_evals": 0,
             "loss_sum": 0.0, "loss_n": 0, "finished": False, "stopped_early": False, "history": []}
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location="cpu")
        # settings added since the checkpoint was written count as their defaults
        if {**ModelConfig().to_dict(), **json.loads(ckpt["model_config"])} != model_cfg.to_dict():
            raise ValueError(f"{last} was written with another model configuration; not resuming it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        state["history"] = json.loads(state["history"])
        rng = ckpt["rng_cpu"]
        torch.set_rng_state(rng[rank] if isinstance(rng, list) else rng)
        if device.type == "cuda" and "rng_cuda" in ckpt:
            cuda_rng = ckpt["rng_cuda"]
            torch.cuda.set_rng_state((cuda_rng[rank] if isinstance(cuda_rng, list) else cuda_rng).cpu(), device)
        if state["finished"] and state["step"] < total_steps and not state["stopped_early"]:
            state["finished"] = False  # more epochs were asked for: carry on
    elif resume:
        print(f"no checkpoint at {last}; starting from scratch")

    net = model
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        net = torch.compile(net)

    saved = {"step": state["step"] if resume and last.exists() else None}  # the step last.pt holds

    def save(path: Path, full: bool = True) -> None:
        """Write a checkpoint from rank 0 (all ranks call it: the RNG states are gathered)."""
        rngs = dist.gather(torch.get_rng_state()) if full else None
        cuda_rngs = dist.gather(torch.cuda.get_rng_state(device)) if full and device.type == "cuda" else None
        if rank != 0:
            return
        if full:
            saved["step"] = state["step"]
        ckpt = {"model": model.state_dict(), "model_config": json.dumps(model_cfg.to_dict()),
                "train_config": json.dumps(cfg.to_dict(), default=str),
                "manifest_hash": catalog.input_hash, "catalog": json.dumps(catalog.identity)}
        if full:
            ckpt.update(optimizer=opt.state_dict(), state=dict(state, history=json.dumps(state["history"])),
                        rng_cpu=rngs)
            if cuda_rngs is not None:
                ckpt["rng_cuda"] = cuda_rngs
        atomic_torch_save(ckpt, path)

    def end_of_epoch(evaluate: bool) -> None:
        """Log the epoch (mean train loss, learning rate) and, when due, evaluate and keep the best."""
        metrics = {"epoch": state["epoch"], "step": state["step"],
                   "train_loss": state["loss_sum"] / max(state["loss_n"], 1), "lr": opt.param_groups[0]["lr"]}
        if evaluate:
            val = dist.from_rank0(evaluate_loss(model, val_set, cfg.batch_size, device, amp=amp) if rank == 0 else None)
            metrics["val_loss"] = val
            if val < state["best_val"]:
                state.update(best_val=val, best_step=state["step"], bad_evals=0)
                save(best, full=False)
            else:
                state["bad_evals"] += 1
                state["stopped_early"] = state["bad_evals"] >= cfg.patience
        state["history"].append(metrics)
        if on_eval is not None and rank == 0:
            on_eval(metrics)
        if rank == 0 and bar is None and cfg.progress is False:  # logs and cron: one line per epoch
            rate = speed["events"] / speed["busy"] if speed["busy"] else math.nan
            val = (f", validation loss {metrics['val_loss']:.4f} (best {state['best_val']:.4f} at step "
                   f"{state['best_step']})" if "val_loss" in metrics else "")
            print(f"epoch {state['epoch']}/{cfg.epochs} step {state['step']}/{total_steps}: train loss "
                  f"{metrics['train_loss']:.4f}{val}, {rate:,.0f} events/s", flush=True)
            speed.update(events=0, busy=0.0)

    events, busy = 0, 0.0
    bar = None
    speed = {"events": 0, "busy": 0.0}  # since the last epoch line
    if cfg.progress and rank == 0 and not state["finished"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
    model.train()
    try:
        while not state["finished"] and state["step"] < total_steps and not state["stopped_early"]:
            epoch = state["epoch"]
            batches = train_set.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, max_tokens=cfg.max_tokens)
            batches = batches[: len(batches) // dist.world * dist.world][rank::dist.world]  # equal counts per rank
            for i in range(state["batch_in_epoch"], len(batches)):
                if state["step"] >= total_steps:
                    break
                t0 = time.perf_counter()
                batch = train_set.collate(batches[i]).to(device, non_blocking=True)
                loss = train_step(net, model, batch, opt, lr_at(state["step"], total_steps, warmup, cfg),
                                  cfg.grad_clip, amp)
                busy += time.perf_counter() - t0
                events += batch.num_targets
                speed["busy"] += time.perf_counter() - t0
                speed["events"] += batch.num_targets
                state["step"] += 1
                state["batch_in_epoch"] = i + 1
                state["loss_sum"] += loss
                state["loss_n"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", best_val=f"{state['best_val']:.4f}")
                if state["step"] % cfg.checkpoint_every == 0:
                    save(last)
            else:
                state["epoch"] += 1
                end_of_epoch(evaluate=state["epoch"] % cfg.eval_every == 0)
                state.update(batch_in_epoch=0, loss_sum=0.0, loss_n=0)
                save(last)
    except KeyboardInterrupt:  # Ctrl-C: last.pt (written every checkpoint_every steps) stays the resume point
        if bar is not None:
            bar.close()
        raise TrainingInterrupted(state["step"], saved["step"], out) from None
    if not state["finished"]:
        if state["best_step"] < 0:  # stopped before the first evaluation: select what we have
            end_of_epoch(evaluate=True)
        state["finished"] = True
        save(last)
    if bar is not None:
        bar.close()
    dist.close()
    return TrainResult(best_val=state["best_val"], best_step=state["best_step"], steps=state["step"],
                       epochs_run=state["epoch"], history=state["history"], out_dir=out, model=model,
                       stopped_early=state["stopped_early"], events_per_second=events / busy if busy else math.nan,
                       trained_now=events > 0)
