"""Every next-event model by name: the one place that lists them.

``load_forecaster(spec, events, manifest)`` turns what a user types after ``--model`` (a baseline's name, a
checkpoint path, an MLflow URI) into a :class:`~stforecast.model.base.Forecaster`. Baselines are fitted by maximum
likelihood on the catalog's events before its validation start (the same rule as the evaluation) and their fits
are kept as JSON (parameters, the catalog's input hash and the fit settings; no pickle) under
``runs/baselines/<catalog>/``, so a second report or batch job reuses the fit instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from stforecast.model.base import Forecaster

if TYPE_CHECKING:  # importing pandas here would slow every `stforecast --help`
    import pandas as pd

#: the classical baselines: name → constructor taking the catalog's completeness magnitude
BASELINES = {
    "poisson_kde": lambda mc: _baselines().PoissonKDE(),
    "hawkes": lambda mc: _baselines().HawkesST(),
    "etas": lambda mc: _baselines().ETAS(mc),
}
#: a baseline applies to a catalog only if the catalog has these event columns
REQUIRES = {"etas": ("magnitude",)}
DESCRIPTIONS = {"poisson_kde": "Poisson x KDE (no memory)", "hawkes": "spatio-temporal Hawkes",
                "etas": "ETAS (Ogata 1998)", "dstpp": "DSTPP (diffusion)"}


def _baselines():
    import stforecast.baselines as module

    return module


def is_baseline(spec: str) -> bool:
    return spec in BASELINES


def applies(name: str, events: pd.DataFrame) -> bool:
    return all(c in events for c in REQUIRES.get(name, ()))


def completeness(manifest: dict, events: pd.DataFrame) -> float | None:
    """The magnitude above which the baselines treat the catalog as complete: its ingestion threshold, else its
    smallest magnitude (None without magnitudes)."""
    if "magnitude" not in events:
        return None
    return manifest["config"]["filters"].get("magnitude_min") or float(events["magnitude"].min())


def fit_baseline(name: str, events: pd.DataFrame, fit_end: float, mc: float | None = None,
                 max_events: int | None = None) -> Forecaster:
    """A baseline fitted on events before ``fit_end`` (the latest ``max_events`` of them, for quick runs)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if not applies(name, events):
        raise ValueError(f"{name} needs event column(s) {list(REQUIRES[name])}, which this catalog lacks")
    past = events[events["t"] < fit_end]
    if max_events is not None:
        past = past.iloc[-max_events:]
    return BASELINES[name](mc).fit_events(past, fit_end)


def fit_baselines(events: pd.DataFrame, fit_end: float, mc: float | None = None, max_events: int | None = None,
                  names=tuple(BASELINES)) -> dict:
    """The named baselines that apply to this catalog (ETAS needs magnitudes), fitted on events before
    ``fit_end`` (model time: the validation start, so neither validation nor test data is used)."""
    if mc is None and "magnitude" in events:
        mc = float(events["magnitude"].min())
    return {n: fit_baseline(n, events, fit_end, mc, max_events) for n in names if applies(n, events)}


def cached_baseline(name: str, events: pd.DataFrame, manifest: dict, cache_root: Path | None = None,
                    log=print) -> Forecaster:
    """A baseline fitted on the catalog's events before its validation start, from the JSON cache when the same
    catalog (input hash) and settings were fitted before."""
    from stforecast.config import REPO_ROOT
    from stforecast.io.remote import atomic_write_text

    fit_end = manifest["split"]["model_time"]["val_start"]
    mc = completeness(manifest, events)
    key = hashlib.sha256(json.dumps([name, manifest["input_hash"], fit_end, mc], sort_keys=True).encode()
                         ).hexdigest()[:16]
    path = Path(cache_root or REPO_ROOT / "runs" / "baselines") / manifest["name"] / f"{name}-{key}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return BASELINES[name](mc).restore(saved["state"], events[events["t"] < fit_end], fit_end)
    log(f"fitting {DESCRIPTIONS[name]} on {int((events['t'] < fit_end).sum()):,} events before the validation "
        f"start (kept in {path} for next time)")
    model = fit_baseline(name, events, fit_end, mc)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"name": name, "catalog": manifest["name"],
                                        "catalog_input_hash": manifest["input_hash"], "fit_end_model_time": fit_end,
                                        "mc": mc, "state": model.state()}, indent=1))
    return model


def load_forecaster(spec: str, events: pd.DataFrame, manifest: dict, *, allow_other_catalog: bool = False,
                    cache_root: Path | None = None, log=print) -> Forecaster:
    """``spec``: a baseline's name (fitted on this catalog), a checkpoint path or an MLflow model URI (a trained
    DSTPP, checked against this catalog's units and frame: :func:`stforecast.train.check_catalog`)."""
    if is_baseline(spec):
        return cached_baseline(spec, events, manifest, cache_root, log=log)
    from stforecast.tracking import load_model
    from stforecast.train import check_catalog

    model = load_model(spec)
    check_catalog(model, manifest, allow_other_catalog, warn=log)
    return model
