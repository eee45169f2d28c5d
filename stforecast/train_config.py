"""Training settings: :class:`TrainConfig` (a plain dataclass, as nanoGPT's) and how a run gets one — a settings
file's ``[train]`` table (:mod:`stforecast.config` describes the one layout), ``--set key=value`` overrides, or the
settings a checkpoint stored."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field

from stforecast.checkpoints import CONFIG_LIMITS
from stforecast.settings_files import deep_merge, parse_overrides, train_settings, typed_fields
from stforecast.models.dstpp import PAPER, ModelConfig


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

    The file's ``[train]`` table holds TrainConfig fields and ``[train.model]`` ModelConfig fields, over what its
    ``[base]`` names (:func:`stforecast.settings_files.train_settings`; its other tables, e.g. ``data/benchmark.toml``'s,
    are not read here). Every value is checked against the field's type (:func:`stforecast.settings_files.typed_fields`),
    so ``--set lr=abc`` is an error naming the setting, not a crash later. ``base`` (instead of a file): settings
    as a dict, e.g. those stored in a checkpoint to resume it."""
    values: dict = json.loads(json.dumps(base)) if base else {}
    where = " + ".join(w for w in (f"{path} [train]" if path else "", "--set" if overrides else "") if w) or "settings"
    if path:
        values = train_settings(path)
    values = deep_merge(values, parse_overrides(overrides or [], example="lr=3e-4 or model.d_model=32"))
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
