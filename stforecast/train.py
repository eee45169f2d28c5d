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

from stforecast.batch import Batch, SequenceSet, load_manifest, load_split
from stforecast.errors import TrainingInterrupted
from stforecast.ingested import IngestedCatalog
from stforecast.model.dstpp import DSTPP, PAPER, ModelConfig, Scaler


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


def atomic_torch_save(obj, path: Path) -> None:
    from stforecast.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint's dict, read with ``weights_only=True``. A missing, empty, truncated or foreign file raises a
    ValueError/FileNotFoundError that names it, instead of torch's or pickle's internals."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `stforecast train`, or give an MLflow "
                                "model URI such as models:/dstpp/1")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable stforecast checkpoint (empty, truncated or another format: "
                         f"{first}); retrain it or pick another file") from None
    if not isinstance(ckpt, dict) or not {"model", "model_config"} <= set(ckpt):
        raise ValueError(f"{path} is a torch file but not an stforecast checkpoint (no model/model_config); "
                         "use best.pt or last.pt written by `stforecast train`")
    return ckpt


def catalog_identity(manifest: dict) -> dict:
    """What a model's coordinates mean: the catalog it was trained on, its units and its frame. Stored in every
    checkpoint and compared with the catalog a forecast is made on (:func:`check_catalog`)."""
    schema = manifest.get("schema", {})
    return {"name": manifest.get("name", ""), "input_hash": manifest.get("input_hash", ""),
            "time_unit": schema.get("time_unit"), "spatial_unit": schema.get("spatial_unit"),
            "crs_model": schema.get("crs_model"), "projection_center_lonlat": schema.get("projection_center_lonlat")}


def check_catalog(model, manifest: dict, allow_other: bool = False, warn=print) -> None:
    """Refuse to forecast a catalog in other units or another frame than the model was trained on (a Japan model
    on an hourly, metre-unit crime catalog gives meaningless numbers without a word). ``allow_other`` turns the
    refusal into a warning. Same units and frame under another name (a re-ingested copy) only warns; the same
    catalog refreshed with new events (another input hash) is fine."""
    trained = getattr(model, "trained_on", None)
    if not trained:
        warn("warning: this checkpoint does not record the catalog it was trained on (written before that was "
             "stored); make sure it matches the catalog")
        return
    here = catalog_identity(manifest)
    differs = [f"{k} {trained.get(k)!r} vs {here[k]!r}" for k in ("time_unit", "spatial_unit", "crs_model",
                                                                   "projection_center_lonlat")
               if trained.get(k) != here[k]]
    if differs:
        msg = (f"the model was trained on catalog {trained.get('name')!r} and catalog {here['name']!r} is in other "
               f"units or another frame ({'; '.join(differs)}), so its forecasts would be meaningless")
        if not allow_other:
            raise ValueError(msg + "; use a model trained on this catalog, or --allow-other-catalog to run anyway")
        warn(f"warning: {msg} (running anyway: --allow-other-catalog)")
    elif trained.get("name") != here["name"]:
        warn(f"warning: the model was trained on catalog {trained.get('name')!r}; forecasting {here['name']!r}, "
             "which has the same units and frame")


def build_model(cfg: ModelConfig, data: str | os.PathLike, train_set: SequenceSet | None = None) -> DSTPP:
    """A new model for the ingested catalog in folder ``data``, scaled by its manifest's train statistics; a
    bounded location's support is the catalog's region (:attr:`IngestedCatalog.region_box` with the margin); with
    ``mark_inputs`` or ``mark_head``, the magnitudes of ``train_set`` (the train split) set their standardisation and
    the Gutenberg-Richter law simulated events draw."""
    catalog = IngestedCatalog.open(data, Path(data).parent)
    manifest = catalog.manifest
    region = catalog.region_box if cfg.location == "bounded" else None
    if cfg.mark_inputs or cfg.mark_head:
        marks = None if train_set is None or train_set.mark is None else train_set.mark[np.isfinite(train_set.mark)]
        if marks is None or len(marks) < 2:
            raise ValueError("mark_inputs and mark_head need a catalog with magnitudes (an earthquake catalog)")
        from stforecast.baselines.etas import aki_b_value

        mc = float(marks.min())
        cfg = dataclasses.replace(cfg, mark_center=float(marks.mean()), mark_scale=float(marks.std()) or 1.0,
                                  mark_mc=mc, mark_b=float(aki_b_value(marks, mc)))
    if cfg.location == "parent":  # Omori's c: a tenth of the typical (geometric-mean) waiting time
        cfg = dataclasses.replace(cfg, parent_c=0.1 * math.exp(manifest["normalisation"]["log_dt"]["mean"]))
    scaler = Scaler.from_stats(manifest["normalisation"], cfg.time_transform, cfg.range_margin, cfg.location,
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
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    for index in data.batches(batch_size, shuffle=False):
        batch = data.collate(index).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(batch, generator=gen)
        total += float(loss) * batch.num_targets
        count += batch.num_targets
    model.train(was_training)
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


# ------------------------------------------------------------------------------------------------ the run folder
#: the lock file of a run folder: held (flock) while a training runs in it, with the holder's pid, host and start
LOCK_FILE = ".train.lock"
_held: dict[str, list] = {}  # run folder → [open lock file, depth]: a process may claim its own folder again


@contextlib.contextmanager
def claimed_run_folder(out: Path, *, resume: bool, force: bool = False):
    """Hold the run folder ``out`` for one training run. A second run in the same folder (another process, or
    another machine on a shared disk where flock works) is refused with one line naming the holder; a new run
    over a folder that already holds checkpoints is refused unless ``resume`` (continue it) or ``force`` (start
    over: its checkpoints are removed). The lock is the kernel's (``flock``): a killed run holds nothing.
    Temp files of killed runs (``.last.*.part.pt``) are removed. Re-entrant within one process (the MLflow
    wrapper claims the folder before it opens a run, then :func:`train` claims it again)."""
    import fcntl
    import socket

    from stforecast.io.atomic import sweep_temp_files

    out = Path(out)
    key = str(out.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"{out} is in use by another training run ({holder}); wait for it to finish, or train "
                         "into another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        for name in ("last.pt", "best.pt"):
            sweep_temp_files(out / name)
        existing = [p for p in (out / "last.pt", out / "best.pt") if p.exists()]
        if existing and not resume:
            if not force:
                raise ValueError(f"{out} already holds a training run ({describe_run(out)}); continue it with "
                                 "--resume, start over with --force, or train into another --out")
            for stale in existing:
                stale.unlink()
        _held[key] = [handle, 1]
        try:
            yield
        finally:
            del _held[key]
    finally:
        handle.close()  # releases the lock


def describe_run(out: Path) -> str:
    """"finished at step N" / "stopped at step N" for the run whose ``last.pt`` is in ``out``."""
    try:
        state = load_checkpoint(out / "last.pt")["state"]
        return f"{'finished' if state['finished'] else 'stopped'} at step {state['step']}"
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return "its best.pt and last.pt"


# ------------------------------------------------------------------------------------------------ the loop
class _Dist:
    """Rank, world size and the few collectives the loop needs (no-ops in a single process)."""

    def __init__(self, device: torch.device):
        self.on = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank, self.world, self.device = 0, 1, device
        if self.on:
            import torch.distributed as dist

            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device.type == "cuda":
                self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
                torch.cuda.set_device(self.device)

    def gather(self, obj):
        """Every rank's ``obj``, in rank order (for RNG states kept per rank)."""
        if not self.on:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_rank0(self, obj):
        """Rank 0's ``obj`` on every rank, so decisions (early stopping) cannot diverge."""
        if not self.on:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def train(cfg: TrainConfig, *, resume: bool = False, force: bool = False,
          on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    """Train DSTPP on ``cfg.data``. ``on_eval(metrics)`` is called on rank 0 at the end of every epoch with the
    mean train loss and learning rate, plus ``val_loss`` when the epoch was evaluated (MLflow logging). The run
    folder is held for the run (:func:`claimed_run_folder`): a folder that already holds a run needs ``resume``
    or ``force``."""
    dist = _Dist(pick_device(cfg.device))
    out = Path(cfg.out_dir)
    claim = claimed_run_folder(out, resume=resume, force=force) if dist.rank == 0 else contextlib.nullcontext()
    with claim:
        if dist.rank == 0 and force and not resume and str(out.resolve()) in _held and \
                _held[str(out.resolve())][1] == 1:  # not under the MLflow wrapper, which keeps its own record
            (out / "mlflow_run.json").unlink(missing_ok=True)
        if dist.on:
            dist.from_rank0(None)  # wait for the clean-up
        return _train(cfg, dist, resume, on_eval)


def _train(cfg: TrainConfig, dist: "_Dist", resume: bool, on_eval) -> TrainResult:
    device, rank = dist.device, dist.rank
    seed_everything(cfg.seed + rank)  # ranks draw different noise; each rank's RNG state is checkpointed
    out = Path(cfg.out_dir)
    last, best = out / "last.pt", out / "best.pt"
    manifest = load_manifest(cfg.data)
    train_set, val_set = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    model_cfg = cfg.model_config()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(model_cfg, cfg.data, train_set).to(device)
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
                "manifest_hash": manifest.get("input_hash", ""), "catalog": json.dumps(catalog_identity(manifest))}
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


#: bounds of a stored model configuration, checked before anything is built from it: a crafted checkpoint could
#: otherwise size memory (d_model = 200000 asks for about 480 GB) or a schedule of a billion steps
CONFIG_LIMITS = {"d_model": (1, 4096), "n_layers": (1, 64), "n_heads": (1, 64), "d_ff": (1, 65536),
                 "rnn_hidden": (0, 8192), "denoiser_width": (1, 8192), "denoiser_layers": (1, 64),
                 "steps": (1, 10_000), "mark_components": (1, 64)}
SCALER_SHAPES = {"scaler.lo": (3,), "scaler.hi": (3,), "scaler.log_time": (), "scaler.r0": (),
                 "scaler.xy_lo": (2,), "scaler.xy_hi": (2,), "scaler.box_lo": (2,), "scaler.box_hi": (2,)}


def checked_model_config(raw, state: dict, where: str) -> ModelConfig:
    """The stored configuration ``raw`` (JSON text) as a :class:`ModelConfig`, checked against the stored weights
    ``state`` before any network is built: known fields of the right types, sizes within :data:`CONFIG_LIMITS`,
    and every weight's shape the one the configuration implies (networks built on the meta device: no memory).
    A ValueError naming ``where`` and the first mismatch otherwise."""
    from stforecast.config import typed_fields

    damaged = f"{where}: the checkpoint's model configuration does not match its weights"
    advice = "the file is damaged or was edited; retrain it with `stforecast train`"
    try:
        values = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: the checkpoint's model configuration is not valid JSON ({e.msg}); {advice}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{where}: the checkpoint's model configuration is not a table; {advice}")
    cfg = ModelConfig(**typed_fields(ModelConfig, values, f"{where}: model configuration", "model."))
    for key, (lo, hi) in CONFIG_LIMITS.items():
        value = getattr(cfg, key)
        if not lo <= value <= hi:
            raise ValueError(f"{where}: model.{key} = {value} is outside [{lo}, {hi}]; {advice}")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"{where}: model.d_model = {cfg.d_model} is not a multiple of n_heads = {cfg.n_heads}; {advice}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{where}: the checkpoint's weights are not a table of tensors; {advice}")
    with torch.device("meta"):
        nets = DSTPP.networks(cfg)
    expected = {**SCALER_SHAPES, **{f"{name}.{k}": tuple(v.shape) for name, net in nets.items()
                                    for k, v in net.state_dict().items()}}
    stored = {k: tuple(v.shape) for k, v in state.items()}
    for key in sorted(set(expected) | set(stored)):
        if key not in stored:
            raise ValueError(f"{damaged} (no weights for {key}); {advice}")
        if key not in expected:
            raise ValueError(f"{damaged} (unexpected weights {key}); {advice}")
        if stored[key] != expected[key]:
            raise ValueError(f"{damaged} ({key}: the configuration implies shape {expected[key]}, the weights have "
                             f"{stored[key]}); {advice}")
    return cfg


def load_model(checkpoint: str | os.PathLike, map_location="cpu") -> DSTPP:
    """A trained model from ``best.pt``/``last.pt`` (weights only: nothing in the file is executed). The stored
    configuration is checked against the weights before anything is built (:func:`checked_model_config`)."""
    ckpt = load_checkpoint(Path(checkpoint), map_location)
    state = ckpt["model"]
    if isinstance(state, dict):
        # checkpoints written before the relative location carry no r0 / absolute-position range
        state.setdefault("scaler.r0", torch.tensor(0.0))
        if isinstance(state.get("scaler.lo"), torch.Tensor) and isinstance(state.get("scaler.hi"), torch.Tensor):
            state.setdefault("scaler.xy_lo", state["scaler.lo"][1:])
            state.setdefault("scaler.xy_hi", state["scaler.hi"][1:])
        for key in ("scaler.box_lo", "scaler.box_hi"):  # written before the bounded location: unbounded
            state.setdefault(key, torch.zeros(2))
    cfg = checked_model_config(ckpt["model_config"], state, str(checkpoint))
    try:
        scaler = Scaler(state["scaler.lo"], state["scaler.hi"], bool(state["scaler.log_time"]), float(state["scaler.r0"]),
                        state["scaler.xy_lo"], state["scaler.xy_hi"], state["scaler.box_lo"], state["scaler.box_hi"])
        model = DSTPP(cfg, scaler)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{checkpoint}: the checkpoint does not fit this version's model ({first}); "
                         "retrain it with `stforecast train`") from None
    model.trained_on = json.loads(ckpt["catalog"]) if "catalog" in ckpt else None
    return model.eval()
