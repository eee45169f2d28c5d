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

from stforecast.batch import Batch, SequenceSet
from stforecast.checkpoints import (atomic_torch_save, claim_depth, claimed_run_folder, load_checkpoint,
                                    restore_rng, upgraded)
from stforecast.distributed import Distributed
from stforecast.errors import TrainingInterrupted
from stforecast.ingested import IngestedCatalog
from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler
from stforecast.models.dstpp.modes import evaluating
from stforecast.train_config import TrainConfig, load_train_config  # noqa: F401 - the entry point's settings


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
    statistics; a bounded location's support is the catalog's region (:attr:`IngestedCatalog.region` with the
    margin); with ``mark_inputs`` or ``mark_head``, the magnitudes of ``train_set`` (the train split) set their
    standardisation and the Gutenberg-Richter law simulated events draw. Every fitted statistic goes into the
    scaler (its buffers and its :class:`~stforecast.models.dstpp.scaler.Statistics`); ``cfg`` is kept as given."""
    from stforecast.models.dstpp.scaler import Statistics

    catalog = data if isinstance(data, IngestedCatalog) else IngestedCatalog.open(data, Path(data).parent)
    region = catalog.region if cfg.location == "bounded" else None
    fitted = {}
    if cfg.mark_inputs or cfg.mark_head:
        marks = None if train_set is None or train_set.mark is None else train_set.mark[np.isfinite(train_set.mark)]
        if marks is None or len(marks) < 2:
            raise ValueError("mark_inputs and mark_head need a catalog with magnitudes (an earthquake catalog)")
        from stforecast.models.marks import aki_b_value

        mc = float(marks.min())
        fitted.update(mark_center=float(marks.mean()), mark_scale=float(marks.std()) or 1.0, mark_mc=mc,
                      mark_b=float(aki_b_value(marks, mc)))
    if cfg.location == "parent" or cfg.parents:  # Omori's c: a tenth of the typical (geometric-mean) waiting time
        fitted["parent_c"] = 0.1 * math.exp(catalog.normalisation["log_dt"]["mean"])
    scaler = Scaler.from_stats(catalog.normalisation, cfg.time_transform, cfg.range_margin, cfg.location,
                               cfg.location_scale, region, Statistics(**fitted))
    model = DSTPP(cfg, scaler)
    if cfg.parents:  # the background's places: the train split's target events (each event once), oldest first
        if train_set is None or not train_set.predictable.any():
            raise ValueError("a parent mixture (parents > 0) needs the train split's events for its background")
        rows = np.flatnonzero(train_set.predictable)
        order = np.argsort(train_set.t[rows], kind="stable")
        model.mixture.fit_background(scaler, np.column_stack([train_set.x[rows], train_set.y[rows]])[order])
    return model


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


@dataclass
class RunState:
    """Where a run stands; checkpointed beside the weights, so a resumed run continues to the same result."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    best_val: float = math.inf
    best_step: int = -1
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    loss_sum: float = 0.0  # this epoch's train loss, summed over its steps
    loss_n: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: list = field(default_factory=list)  # per epoch: epoch, step, train_loss, lr[, val_loss]

    def to_checkpoint(self) -> dict:
        return dict(asdict(self), history=json.dumps(self.history))  # plain types: weights_only loading

    @classmethod
    def from_checkpoint(cls, values: dict) -> "RunState":
        return cls(**dict(values, history=json.loads(values["history"])))


@dataclass
class Run:
    """What one training run holds: its settings, data, model and optimiser, and where it writes."""

    cfg: TrainConfig
    dist: Distributed
    catalog: IngestedCatalog
    train_set: SequenceSet
    val_set: SequenceSet
    model: DSTPP
    net: torch.nn.Module  # what runs the forward pass: the model, or it wrapped by DDP / torch.compile
    opt: torch.optim.Optimizer
    total_steps: int
    warmup: int
    amp: bool

    @property
    def last(self) -> Path:
        return Path(self.cfg.out_dir) / "last.pt"

    @property
    def best(self) -> Path:
        return Path(self.cfg.out_dir) / "best.pt"

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (seeded shuffle; equal counts on every rank)."""
        cfg, dist = self.cfg, self.dist
        batches = self.train_set.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                                         max_tokens=cfg.max_tokens)
        return batches[: len(batches) // dist.world * dist.world][dist.rank::dist.world]

    def save(self, path: Path, state: RunState, full: bool = True) -> None:
        """A checkpoint written by rank 0 (every rank calls it: the RNG states are gathered). ``full=False``:
        weights and settings only (``best.pt``)."""
        dist = self.dist
        rngs = dist.gather(torch.get_rng_state()) if full else None
        cuda_rngs = dist.gather(torch.cuda.get_rng_state(dist.device)) if full and dist.device.type == "cuda" else None
        if dist.rank != 0:
            return
        ckpt = {"model": self.model.state_dict(), "model_config": json.dumps(self.model.cfg.to_dict()),
                "train_config": json.dumps(self.cfg.to_dict(), default=str),
                "manifest_hash": self.catalog.input_hash, "catalog": json.dumps(self.catalog.identity)}
        if full:
            ckpt.update(optimizer=self.opt.state_dict(), state=state.to_checkpoint(), rng_cpu=rngs)
            if cuda_rngs is not None:
                ckpt["rng_cuda"] = cuda_rngs
        atomic_torch_save(ckpt, path)

    def resumed(self) -> RunState:
        """The state ``last.pt`` holds, with the model, optimiser and this rank's RNG restored from it."""
        ckpt = load_checkpoint(self.last, map_location="cpu")
        weights, config = upgraded(ckpt["model"], ckpt["model_config"])  # a checkpoint of an earlier version
        # settings added since the checkpoint was written count as their defaults
        if {**ModelConfig().to_dict(), **json.loads(config)} != self.model.cfg.to_dict():
            raise ValueError(f"{self.last} was written with another model configuration; not resuming it")
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt, self.dist.rank, self.dist.device)
        state = RunState.from_checkpoint(ckpt["state"])
        if state.finished and state.step < self.total_steps and not state.stopped_early:
            state.finished = False  # more epochs were asked for: carry on
        return state


def start_run(cfg: TrainConfig, dist: Distributed) -> Run:
    """The catalog's train and validation splits, a new model scaled by them, AdamW and the step budget."""
    device, rank = dist.device, dist.rank
    seed_everything(cfg.seed + rank)  # ranks draw different noise; each rank's RNG state is checkpointed
    catalog = IngestedCatalog.open(cfg.data, Path(cfg.data).parent)
    train_set, val_set = catalog.sequences("train"), catalog.sequences("val")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model_config(), catalog, train_set).to(device)
    torch.manual_seed(cfg.seed + rank)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    n_batches = len(train_set.batches(cfg.batch_size, shuffle=False, max_tokens=cfg.max_tokens))
    if n_batches < dist.world:
        raise ValueError(f"{n_batches} training batches cannot feed {dist.world} processes; use a smaller batch_size")
    steps_per_epoch = n_batches // dist.world
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
    net = model
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        net = torch.compile(net)
    return Run(cfg, dist, catalog, train_set, val_set, model, net, opt, int(total_steps),
               warmup=max(1, int(cfg.warmup_epochs * steps_per_epoch)), amp=cfg.amp and device.type == "cuda")


class Progress:
    """What a person watching sees: a progress bar, or (``progress = false``: logs and cron) one line per epoch
    with its losses and speed. Rank 0 only."""

    def __init__(self, run: Run, state: RunState):
        self.run, self.events, self.busy = run, 0, 0.0  # for the epoch line: since the last one
        self.bar = None
        if run.cfg.progress and run.dist.rank == 0 and not state.finished:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)

    def step(self, state: RunState, loss: float, events: int, seconds: float) -> None:
        self.events, self.busy = self.events + events, self.busy + seconds
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=state.epoch, loss=f"{loss:.4f}", best_val=f"{state.best_val:.4f}")

    def epoch(self, state: RunState, metrics: dict) -> None:
        cfg = self.run.cfg
        if self.run.dist.rank != 0 or self.bar is not None or cfg.progress is not False:
            return
        rate = self.events / self.busy if self.busy else math.nan
        val = (f", validation loss {metrics['val_loss']:.4f} (best {state.best_val:.4f} at step "
               f"{state.best_step})" if "val_loss" in metrics else "")
        print(f"epoch {state.epoch}/{cfg.epochs} step {state.step}/{self.run.total_steps}: train loss "
              f"{metrics['train_loss']:.4f}{val}, {rate:,.0f} events/s", flush=True)
        self.events, self.busy = 0, 0.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def end_of_epoch(run: Run, state: RunState, evaluate: bool) -> dict:
    """The epoch's metrics (mean train loss, learning rate) and, when due, the validation loss: a new best is
    saved to ``best.pt``; ``patience`` evaluations without one stop the run."""
    metrics = {"epoch": state.epoch, "step": state.step, "train_loss": state.loss_sum / max(state.loss_n, 1),
               "lr": run.opt.param_groups[0]["lr"]}
    if evaluate:
        rank0 = run.dist.rank == 0
        val = run.dist.from_rank0(evaluate_loss(run.model, run.val_set, run.cfg.batch_size, run.dist.device,
                                                amp=run.amp) if rank0 else None)
        metrics["val_loss"] = val
        if val < state.best_val:
            state.best_val, state.best_step, state.bad_evals = val, state.step, 0
            run.save(run.best, state, full=False)
        else:
            state.bad_evals += 1
            state.stopped_early = state.bad_evals >= run.cfg.patience
    state.history.append(metrics)
    return metrics


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
        return _train(cfg, dist, resume, on_eval or (lambda metrics: None))


def _train(cfg: TrainConfig, dist: Distributed, resume: bool, on_eval: Callable[[dict], None]) -> TrainResult:
    run = start_run(cfg, dist)
    state, saved_step = RunState(), None  # saved_step: the step last.pt holds (for the Ctrl-C message)
    if resume and run.last.exists():
        state = run.resumed()
        saved_step = state.step
    elif resume:
        print(f"no checkpoint at {run.last}; starting from scratch")
    progress, events, busy = Progress(run, state), 0, 0.0
    run.model.train()
    try:
        while not state.finished and state.step < run.total_steps and not state.stopped_early:
            batches = run.epoch_batches(state.epoch)
            for i in range(state.batch_in_epoch, len(batches)):
                if state.step >= run.total_steps:
                    break
                t0 = time.perf_counter()
                batch = run.train_set.collate(batches[i]).to(dist.device, non_blocking=True)
                loss = train_step(run.net, run.model, batch, run.opt, lr_at(state.step, run.total_steps, run.warmup, cfg),
                                  cfg.grad_clip, run.amp)
                seconds = time.perf_counter() - t0
                events, busy = events + batch.num_targets, busy + seconds
                state.step, state.batch_in_epoch = state.step + 1, i + 1
                state.loss_sum, state.loss_n = state.loss_sum + loss, state.loss_n + 1
                progress.step(state, loss, batch.num_targets, seconds)
                if state.step % cfg.checkpoint_every == 0:
                    run.save(run.last, state)
                    saved_step = state.step
            else:
                state.epoch += 1
                metrics = end_of_epoch(run, state, evaluate=state.epoch % cfg.eval_every == 0)
                if dist.rank == 0:
                    on_eval(metrics)
                progress.epoch(state, metrics)
                state.batch_in_epoch, state.loss_sum, state.loss_n = 0, 0.0, 0
                run.save(run.last, state)
                saved_step = state.step
    except KeyboardInterrupt:  # Ctrl-C: last.pt (written every checkpoint_every steps) stays the resume point
        progress.close()
        raise TrainingInterrupted(state.step, saved_step, Path(cfg.out_dir)) from None
    if not state.finished:
        if state.best_step < 0:  # stopped before the first evaluation: select what we have
            metrics = end_of_epoch(run, state, evaluate=True)
            if dist.rank == 0:
                on_eval(metrics)
            progress.epoch(state, metrics)
        state.finished = True
        run.save(run.last, state)
    progress.close()
    dist.close()
    return TrainResult(best_val=state.best_val, best_step=state.best_step, steps=state.step,
                       epochs_run=state.epoch, history=state.history, out_dir=Path(cfg.out_dir), model=run.model,
                       stopped_early=state.stopped_early, events_per_second=events / busy if busy else math.nan,
                       trained_now=events > 0)
