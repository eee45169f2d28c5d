"""Every next-event model by name: the one place that lists them.

``load_forecaster(spec, catalog)`` turns what a user types after ``--model`` (a baseline's name, a
checkpoint path, an MLflow URI) into a :class:`~stforecast.models.base.Forecaster`. Baselines are fitted by maximum
likelihood on the catalog's events before its validation start (the same rule as the evaluation) and their fits
are kept as JSON (parameters, the catalog's input hash and the fitting rule; no pickle) under
``runs/baselines/<catalog>/``, so a second report or batch job reuses the fit instead of redoing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stforecast.models.base import Forecaster

if TYPE_CHECKING:  # importing pandas here would slow every `stforecast --help`
    import pandas as pd

    from stforecast.ingested import IngestedCatalog

#: the classical baselines: name → constructor taking the catalog's completeness magnitude
BASELINES = {
    "poisson_kde": lambda mc: _baselines().PoissonKDE(),
    "hawkes": lambda mc: _baselines().HawkesST(),
    "etas": lambda mc: _baselines().ETAS(mc),
}
#: a baseline applies to a catalog only if the catalog has these event columns
REQUIRES = {"etas": ("magnitude",)}
#: baselines that choose among their variants on the validation split (ETAS's spatial kernels): their
#: ``fit_events`` also takes the validation events and ``val_end``
SELECT_ON_VALIDATION = ("etas",)
#: bumped when a baseline's fitting rule changes (Hawkes and ETAS: the time cut-off; ETAS: kernel variants), so
#: fits cached under the old rule are not reused
FIT_RULES = {"hawkes": 2, "etas": 3}
DESCRIPTIONS = {"poisson_kde": "Poisson x KDE (no memory)", "hawkes": "spatio-temporal Hawkes",
                "etas": "ETAS (Ogata 1998)", "dstpp": "DSTPP (diffusion)"}
#: the classical model the demo sets beside DSTPP on an earthquake catalog (the reference of aftershock forecasting)
REFERENCE = "etas"
#: short names for pickers and legends (the risk map's Model select)
LABELS = {"dstpp": "DSTPP", "etas": "ETAS", "hawkes": "Hawkes", "poisson_kde": "Poisson x KDE"}


def _baselines():
    import stforecast.baselines as module

    return module


def is_baseline(spec: str) -> bool:
    return spec in BASELINES


def applies(name: str, events: pd.DataFrame) -> bool:
    return all(c in events for c in REQUIRES.get(name, ()))


def validation_end(events: pd.DataFrame, fit_end: float) -> float | None:
    """Just after the last validation event (``split == "val"``, at or after ``fit_end``) of an ingested catalog's
    events; None where there are none (or no ``split`` column)."""
    if "split" not in events:
        return None
    val = events.loc[(events["split"] == "val") & (events["t"] >= fit_end), "t"]
    return float(np.nextafter(val.max(), np.inf)) if len(val) else None


def fit_baseline(name: str, events: pd.DataFrame, fit_end: float, mc: float | None = None,
                 max_events: int | None = None) -> Forecaster:
    """A baseline fitted on events before ``fit_end`` (the latest ``max_events`` of them, for quick runs). A
    baseline that chooses among its variants on validation (ETAS's spatial kernels) is also handed the catalog's
    validation events (``split == "val"``, never the test split; the first ``max_events`` of them) to score them
    on."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    if not applies(name, events):
        raise ValueError(f"{name} needs event column(s) {list(REQUIRES[name])}, which this catalog lacks")
    past = events[events["t"] < fit_end]
    if max_events is not None:
        past = past.iloc[-max_events:]
    model = BASELINES[name](mc)
    val_end = validation_end(events, fit_end) if name in SELECT_ON_VALIDATION else None
    if val_end is None:
        return model.fit_events(past, fit_end)
    import pandas as pd

    later = events[(events["t"] >= fit_end) & (events["t"] < val_end)]
    if max_events is not None and len(later) > max_events:
        later = later.iloc[:max_events]
        val_end = float(np.nextafter(later["t"].iloc[-1], np.inf))
    return model.fit_events(pd.concat([past, later]), fit_end, val_end=val_end)


def fit_baselines(events: pd.DataFrame, fit_end: float, mc: float | None = None, max_events: int | None = None,
                  names=tuple(BASELINES)) -> dict:
    """The named baselines that apply to this catalog (ETAS needs magnitudes), fitted on events before
    ``fit_end`` (model time: the validation start, so neither validation nor test data is used)."""
    if mc is None and "magnitude" in events:
        mc = float(events["magnitude"].min())
    return {n: fit_baseline(n, events, fit_end, mc, max_events) for n in names if applies(n, events)}


def cached_baseline(name: str, catalog: IngestedCatalog, cache_root: Path | None = None, log=print,
                    track: bool = False, mc: float | None = None) -> Forecaster:
    """A baseline fitted on the catalog's events before its validation start, from the JSON cache when the same
    catalog (input hash) and settings were fitted before. ``track``: a new fit is logged to MLflow (experiment
    ``stforecast-baselines``: its parameters, log-likelihood and the JSON), like a trained DSTPP. ``mc``: the
    magnitude above which a magnitude-aware baseline (ETAS) is fitted (default: the catalog's completeness,
    its ingestion threshold; CSEP evaluations pass the Mc their tests count from)."""
    from stforecast.config import REPO_ROOT
    from stforecast.io.atomic import atomic_write_text

    events, fit_end = catalog.events, catalog.split_start("val")
    mc = catalog.completeness() if mc is None else mc
    rule = [FIT_RULES[name]] if name in FIT_RULES else []  # a new fitting rule refits
    key = hashlib.sha256(json.dumps([name, catalog.input_hash, fit_end, mc] + rule, sort_keys=True).encode()
                         ).hexdigest()[:16]
    root = cache_root or os.environ.get("STFORECAST_BASELINE_CACHE") or REPO_ROOT / "runs" / "baselines"
    path = Path(root) / catalog.name / f"{name}-{key}.json"
    if path.is_file():
        saved = read_cached_fit(path, name, catalog.input_hash, log)
        if saved is not None:
            return BASELINES[name](mc).restore(saved["state"], events[events["t"] < fit_end], fit_end)
    log(f"fitting {DESCRIPTIONS[name]} on {int((events['t'] < fit_end).sum()):,} events before the validation "
        f"start (kept in {path} for next time)")
    model = fit_baseline(name, events, fit_end, mc)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "catalog": catalog.name, "catalog_input_hash": catalog.input_hash,
              "fit_end_model_time": fit_end, "mc": mc, "fit_rule": FIT_RULES.get(name, 1), "state": model.state()}
    atomic_write_text(path, json.dumps(record, indent=1))
    if track:
        import mlflow

        from stforecast.tracking import flatten, tracked_run

        with tracked_run("stforecast-baselines", f"{name}-{catalog.name}",
                         {"model_kind": name, "catalog": catalog.name, "data.input_hash": catalog.input_hash}):
            values = {k.removeprefix("params."): v for k, v in flatten(model.state()).items()
                      if isinstance(v, (int, float))}
            mlflow.log_params({k: v for k, v in values.items() if k != "loglik"} | {"fit_end_model_time": fit_end})
            if "loglik" in values:
                mlflow.log_metric("train_loglik", values["loglik"])
            mlflow.log_artifact(str(path))
    return model


def read_cached_fit(path: Path, name: str, input_hash: str, log=print) -> dict | None:
    """A cached fit, validated (:meth:`check_state` of the baseline: types, finite values inside the fit's bounds)
    before anything is built from it. A file that fails is set aside as ``<file>.bad`` (replacing an older one)
    with a warning naming the file and the field, and None is returned so the caller refits."""
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            raise ValueError("no 'state' table")
        if saved.get("name") != name or saved.get("catalog_input_hash") != input_hash:
            raise ValueError(f"it is not a {name} fit of this catalog")
        BASELINES[name](None).check_state(saved["state"])
        return saved
    except (ValueError, UnicodeDecodeError, OSError) as e:  # json.JSONDecodeError is a ValueError
        aside = path.with_name(path.name + ".bad")
        os.replace(path, aside)
        log(f"warning: cached {name} fit {path} is unusable ({e}); set aside as {aside.name} and refitted")
        return None


#: what an ensemble's ``--model`` starts with: ``ensemble:MEMBER+MEMBER...``, each member a spec of its own
ENSEMBLE_PREFIX = "ensemble:"
#: validation events an ensemble loaded for a forecast fits its weights on (each member's exact NLL on each)
ENSEMBLE_VALIDATION_EVENTS = 300


def ensemble_members(spec: str) -> list[str]:
    """The member specs of ``ensemble:A+B...`` (at least two, none itself an ensemble); [] for any other spec."""
    if not spec.startswith(ENSEMBLE_PREFIX):
        return []
    members = [m.strip() for m in spec[len(ENSEMBLE_PREFIX):].split("+")]
    if len(members) < 2 or not all(members) or any(m.startswith(ENSEMBLE_PREFIX) for m in members):
        raise ValueError(f"--model {spec!r}: an ensemble is 'ensemble:' followed by two or more models joined by "
                         "'+' (baseline names, checkpoints or MLflow URIs), e.g. ensemble:runs/demo-japan/best.pt+etas")
    return members


def load_forecaster(spec: str, catalog: IngestedCatalog, *, allow_other_catalog: bool = False,
                    cache_root: Path | None = None, log=print, track: bool = False,
                    mc: float | None = None, fit_ensemble: bool = True) -> Forecaster:
    """``spec``: a baseline's name (fitted on this catalog), a checkpoint path or an MLflow model URI (a trained
    DSTPP, checked against this catalog's units and frame: :func:`stforecast.checkpoints.check_catalog`), or
    ``ensemble:A+B...`` (:class:`~stforecast.models.ensemble.Ensemble` of those, its weights fitted by maximum
    likelihood on :data:`ENSEMBLE_VALIDATION_EVENTS` validation events unless ``fit_ensemble`` is False: the
    evaluation fits them on its own validation targets). Its forecasts keep their locations in the catalog's
    region with its margin (:meth:`Forecaster.within`): every registered model's maps, tables and simulations
    stay on the catalog's map."""
    members = ensemble_members(spec)
    if members:
        from stforecast.models.ensemble import Ensemble

        loaded = [load_forecaster(m, catalog, allow_other_catalog=allow_other_catalog, cache_root=cache_root,
                                  log=log, track=track, mc=mc) for m in members]
        names = [m.name for m in loaded]
        model = Ensemble({(n if names.count(n) == 1 else f"{n}-{i + 1}"): m
                          for i, (n, m) in enumerate(zip(names, loaded))})
        if fit_ensemble:
            from stforecast.evaluate import next_event_targets

            val = next_event_targets(catalog, "val", ENSEMBLE_VALIDATION_EVENTS, seed=0)
            events = catalog.events if catalog.continuous else None
            log(f"fitting the ensemble's weights on {len(val.truth):,} validation events ...")
            model.calibrate(val.histories_for(events, model.context), val.truth)
            log(model.describe())
        return model.within(catalog.view_box())
    if is_baseline(spec):
        model = cached_baseline(spec, catalog, cache_root, log=log, track=track, mc=mc)
    else:
        from stforecast.tracking import fetch_model
        from stforecast.checkpoints import check_catalog

        model = fetch_model(spec)
        check_catalog(model, catalog, allow_other_catalog, warn=log)
    return model.within(catalog.view_box())
