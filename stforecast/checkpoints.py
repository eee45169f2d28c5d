"""Checkpoints and run folders: what a training writes and what every command loads.

* ``best.pt`` / ``last.pt`` are plain dicts of tensors and JSON text, written atomically
  (:func:`atomic_torch_save`) and read with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`): nothing
  in a file is executed.
* :func:`load_model` reads older checkpoints through :func:`upgraded` (the one place that knows older formats),
  checks the stored configuration against the stored weights before building anything
  (:func:`checked_model_config`: a crafted file cannot size memory), then builds the DSTPP from its configuration
  and restores everything else, fitted statistics included, with ``load_state_dict``;
  :func:`check_catalog` refuses a model on a catalog in other units or another frame.
* :func:`claimed_run_folder` holds a run folder for one training (a kernel lock; an existing run needs
  ``resume`` or ``force``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from stforecast.ingested import IngestedCatalog
from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler, Statistics


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


def check_catalog(model, catalog: IngestedCatalog, allow_other: bool = False, warn=print) -> None:
    """Refuse to forecast a catalog in other units or another frame than the model was trained on (a Japan model
    on an hourly, metre-unit crime catalog gives meaningless numbers without a word). ``allow_other`` turns the
    refusal into a warning. Same units and frame under another name (a re-ingested copy) only warns; the same
    catalog refreshed with new events (another input hash) is fine."""
    trained = model.trained_on
    if not trained:
        warn("warning: this checkpoint does not record the catalog it was trained on (written before that was "
             "stored); make sure it matches the catalog")
        return
    here = catalog.identity
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


#: bounds of a stored model configuration, checked before anything is built from it: a crafted checkpoint could
#: otherwise size memory (d_model = 200000 asks for about 480 GB) or a schedule of a billion steps
CONFIG_LIMITS = {"d_model": (1, 4096), "n_layers": (1, 64), "n_heads": (1, 64), "d_ff": (1, 65536),
                 "rnn_hidden": (0, 8192), "denoiser_width": (1, 8192), "denoiser_layers": (1, 64),
                 "steps": (1, 10_000), "mark_components": (1, 64), "parents": (0, 256),
                 "background_events": (1, 1_000_000)}
#: the state-dict key of the scaler's :class:`Statistics` (nn.Module's extra state)
STATISTICS_KEY = "scaler._extra_state"


def upgraded(state, config) -> tuple:
    """A checkpoint's weights ``state`` and configuration ``config`` (JSON text) as this version writes them; the
    one place that reads older formats. Written before the scaler held the train split's scalar statistics, a
    checkpoint's configuration carries them (``mark_center``, ``mark_scale``, ``mark_mc``, ``mark_b``,
    ``parent_c``; missing ones count as the defaults) and its weights lack ``scaler._extra_state``: they move
    there. Written before the relative location, the weights lack ``scaler.r0`` (0: absolute) and
    ``scaler.xy_lo``/``xy_hi`` (the location range); before the bounded location, ``scaler.box_lo``/``box_hi``
    (zeros: unbounded). Anything else (this version's format, or a file too damaged to read) is returned as it
    is, for :func:`checked_model_config` to judge."""
    if not isinstance(state, dict):
        return state, config
    state = dict(state)
    state.setdefault("scaler.r0", torch.tensor(0.0))
    if isinstance(state.get("scaler.lo"), torch.Tensor) and isinstance(state.get("scaler.hi"), torch.Tensor):
        state.setdefault("scaler.xy_lo", state["scaler.lo"][1:])
        state.setdefault("scaler.xy_hi", state["scaler.hi"][1:])
    for key in ("scaler.box_lo", "scaler.box_hi"):
        state.setdefault(key, torch.zeros(2))
    try:
        values = json.loads(config) if isinstance(config, str) else None
    except json.JSONDecodeError:
        values = None
    if STATISTICS_KEY not in state and isinstance(values, dict):
        names = [f.name for f in dataclasses.fields(Statistics)]
        stored = {k: values.pop(k) for k in names if k in values}
        wrong = [k for k, v in stored.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if wrong:
            raise ValueError(f"the checkpoint's model.{wrong[0]} = {stored[wrong[0]]!r} is not a number; the file is "
                             "damaged or was edited; retrain it with `stforecast train`")
        state[STATISTICS_KEY] = Statistics(**{k: float(v) for k, v in stored.items()}).as_tensor()
        config = json.dumps(values)
    return state, config


def checked_model_config(raw, state: dict, where: str) -> ModelConfig:
    """The stored configuration ``raw`` (JSON text) as a :class:`ModelConfig`, checked against the stored weights
    ``state`` before any network is built: known fields of the right types, sizes within :data:`CONFIG_LIMITS`,
    and every weight's shape the one the configuration implies (networks built on the meta device: no memory).
    A ValueError naming ``where`` and the first mismatch otherwise."""
    from stforecast.settings_files import typed_fields

    damaged = f"{where}: the checkpoint's model configuration does not match its weights"
    advice = "the file is damaged or was edited; retrain it with `stforecast train`"
    try:
        values = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: the checkpoint's model configuration is not valid JSON ({e.msg}); {advice}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{where}: the checkpoint's model configuration is not a table; {advice}")
    try:
        cfg = ModelConfig(**typed_fields(ModelConfig, values, f"{where}: model configuration", "model."))
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: {e}; {advice}") from None
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
    expected = {**{f"scaler.{k}": tuple(v.shape) for k, v in Scaler().state_dict().items()},
                **{f"{name}.{k}": tuple(v.shape) for name, net in nets.items() for k, v in net.state_dict().items()}}
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
    """A trained model from ``best.pt``/``last.pt`` (weights only: nothing in the file is executed), older formats
    read through :func:`upgraded`. The stored configuration is checked against the weights before anything is
    built (:func:`checked_model_config`); the model is then built from the configuration and ``load_state_dict``
    restores its weights and every fitted statistic (the scaler's)."""
    ckpt = load_checkpoint(Path(checkpoint), map_location)
    try:
        state, config = upgraded(ckpt["model"], ckpt["model_config"])
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e}") from None
    cfg = checked_model_config(config, state, str(checkpoint))
    try:
        model = DSTPP(cfg)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{checkpoint}: the checkpoint does not fit this version's model ({first}); "
                         "retrain it with `stforecast train`") from None
    model.trained_on = json.loads(ckpt["catalog"]) if "catalog" in ckpt else None
    return model.eval()


def claim_depth(out: Path) -> int:
    """How many times this process holds the run folder ``out`` (0: not held)."""
    held = _held.get(str(Path(out).resolve()))
    return held[1] if held else 0


def restore_rng(ckpt: dict, rank: int, device: torch.device) -> None:
    """This rank's random-number state from a full checkpoint (``last.pt``), so a resumed run draws the noise an
    uninterrupted one would. Checkpoints written before multi-process training hold one CPU state, not a list."""
    rng = ckpt["rng_cpu"]
    torch.set_rng_state(rng[rank] if isinstance(rng, list) else rng)
    if device.type == "cuda" and "rng_cuda" in ckpt:
        cuda_rng = ckpt["rng_cuda"]
        torch.cuda.set_rng_state((cuda_rng[rank] if isinstance(cuda_rng, list) else cuda_rng).cpu(), device)
