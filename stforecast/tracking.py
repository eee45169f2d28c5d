"""MLflow tracking: where runs go, what a training run records, and loading a registered model back.

Default store: a local SQLite database ``mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts`` under the
project (embedded, no server). ``MLFLOW_TRACKING_URI`` (any MLflow URI) and ``STFORECAST_ARTIFACT_ROOT``
override them. Browse with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from stforecast.config import REPO_ROOT

DEFAULT_EXPERIMENT = "stforecast"
DEFAULT_MODEL_NAME = "dstpp"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}"


def artifact_root() -> Path:
    return Path(os.environ.get("STFORECAST_ARTIFACT_ROOT") or REPO_ROOT / "mlruns" / "artifacts")


def setup(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and return the experiment id (created with an explicit artifact folder, so
    artifacts do not land relative to the current directory)."""
    from stforecast.config import check_name

    check_name(experiment, "MLflow experiment", "experiment name")  # its artifact folder is ARTIFACT_ROOT/<name>
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    for noisy in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..." on first use
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = artifact_root() / experiment
    location.mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(experiment, artifact_location=location.resolve().as_uri())


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str | None = None, tags: dict | None = None, run_id: str | None = None):
    """The one way a run is opened: the store set up (:func:`setup`), the experiment created if new, ``tags``
    set (values as strings). Yields the active MLflow run; ``run_id`` continues an existing one."""
    import mlflow

    with mlflow.start_run(run_id=run_id, experiment_id=setup(experiment), run_name=run_name) as run:
        if tags:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})
        yield run


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_trained_model(checkpoint: Path, model_config: dict, registered_name: str | None = DEFAULT_MODEL_NAME):
    """Log ``best.pt`` as an MLflow pyfunc model (from code, no pickle) in the active run and register it.
    Returns the model's URI (``models:/NAME/VERSION`` when registered)."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    code = Path(__file__).with_name("mlflow_model.py")
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow hints about integer columns and input examples do not apply: the signature is written by hand
        warnings.simplefilter("ignore", UserWarning)
        from stforecast.sampling import DEFAULT

        marks = {"magnitude": [3.0, 3.5]} if model_config.get("mark_inputs") or model_config.get("mark_head") else {}
        example_in = pd.DataFrame({"history": [0, 0], "t": [0.0, 1.0], "x": [0.0, 1.0], "y": [0.0, 1.0], **marks})
        example_out = pd.DataFrame({"history": [0], "sample": [0], "dt": [0.5], "t": [1.5], "x": [0.0], "y": [0.0],
                                    **({"magnitude": [3.2]} if model_config.get("mark_head") else {})})
        signature = infer_signature(example_in, example_out,
                                    params={"n": 100, "seed": 0, "sampler": DEFAULT.sampler, "steps": DEFAULT.steps,
                                            "tolerance": DEFAULT.tolerance, "magnitudes": DEFAULT.magnitudes})
        cfg = Path(tmp) / "model_config.json"
        cfg.write_text(json.dumps(model_config, indent=2))
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                       artifacts={"checkpoint": str(checkpoint), "model_config": str(cfg)},
                                       registered_model_name=registered_name, signature=signature,
                                       # stated, not inferred: inference re-imports the model in a subprocess
                                       pip_requirements=["torch>=2.13", "numpy", "pandas", "mlflow"],
                                       # the loader lives in this package: ship it with the model
                                       code_paths=[str(Path(__file__).parent)])
    if registered_name and info.registered_model_version is not None:
        return f"models:/{registered_name}/{info.registered_model_version}"
    return info.model_uri


def is_model_uri(text: str) -> bool:
    """``models:/NAME/VERSION``, ``runs:/ID/model`` and other ``scheme:/…`` URIs; anything else is a file path."""
    import re

    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(text)) is not None


def fetch_model(uri: str):
    """A DSTPP from an MLflow model URI (``models:/NAME/VERSION``, ``runs:/ID/model``: its checkpoint downloaded from
    the store, then :func:`stforecast.checkpoints.load_model`) or a checkpoint path.
    Reads the weights with ``torch.load(weights_only=True)``; no pickled object is loaded (unlike
    ``mlflow.pyfunc.load_model``, which imports and runs the code stored with the model). A missing file, an
    unknown model or an unreadable checkpoint raises FileNotFoundError/ValueError naming it."""
    from stforecast.checkpoints import load_model as load_checkpoint_model

    if not is_model_uri(uri):
        return load_checkpoint_model(uri)
    setup()
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (MlflowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"cannot load model {uri} from the MLflow store {tracking_uri()}: {first}; the MLflow UI "
                         "lists the registered models and versions, or give a checkpoint path") from None
    found = sorted(local.rglob("best.pt")) or sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"{uri}: no checkpoint (*.pt) among the model's artifacts")
    return load_checkpoint_model(found[0])


def train_and_track(cfg, *, resume: bool = False, force: bool = False, experiment: str = DEFAULT_EXPERIMENT,
                    registered_name: str | None = DEFAULT_MODEL_NAME, run_name: str | None = None):
    """Train (see :func:`stforecast.train.train`) inside an MLflow run: configuration, data manifest hash, git
    commit, per-evaluation metrics, the best checkpoint and the registered model. A resumed training continues
    the MLflow run it started (its id is kept in ``out_dir/mlflow_run.json``). The run folder is claimed before
    the MLflow run opens, so a refused training leaves no empty run. Returns (TrainResult, model URI)."""
    from stforecast.checkpoints import claimed_run_folder
    from stforecast.train import train

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 talks to MLflow
        return train(cfg, resume=resume, force=force), None
    with claimed_run_folder(Path(cfg.out_dir), resume=resume, force=force):
        return _train_and_track(cfg, resume, experiment, registered_name, run_name)


def _train_and_track(cfg, resume: bool, experiment: str, registered_name: str | None, run_name: str | None):
    import mlflow

    from stforecast.ingested import IngestedCatalog
    from stforecast.train import train

    out = Path(cfg.out_dir)
    marker = out / "mlflow_run.json"
    run_id = json.loads(marker.read_text())["run_id"] if resume and marker.exists() else None
    catalog = IngestedCatalog.open(cfg.data, Path(cfg.data).parent)
    with tracked_run(experiment, run_name, run_id=run_id) as run:
        marker.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": tracking_uri()}))
        if run_id is None:
            params = flatten(cfg.to_dict())
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            # the preset's model settings that no override names: log them too, so the run is complete
            mlflow.log_params({f"model.{k}": v for k, v in cfg.model_config().to_dict().items()
                               if f"model.{k}" not in params})
            mlflow.set_tags({"git_commit": git_commit(), "data.name": catalog.name,
                             "data.input_hash": catalog.input_hash, "data.pipeline_version": catalog.pipeline_version})
            mlflow.log_dict(catalog.manifest, "data_manifest.json")

        def on_eval(metrics: dict) -> None:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k not in ("epoch", "step")},
                               step=int(metrics["step"]))

        result = train(cfg, resume=resume, on_eval=on_eval)
        if not result.trained_now:  # a resumed run that had already finished: nothing new to log
            return result, mlflow.get_run(run.info.run_id).data.tags.get("model_uri")
        mlflow.log_metrics({"best_val_loss": result.best_val, "best_step": result.best_step,
                            "train_events_per_s": result.events_per_second})
        mlflow.log_artifact(str(out / "best.pt"), artifact_path="checkpoints")
        uri = log_trained_model(out / "best.pt", cfg.model_config().to_dict(), registered_name)
        mlflow.set_tag("model_uri", uri)
    return result, uri
