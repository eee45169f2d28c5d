"""What several commands share: opening an ingested catalog by name or folder, and loading the model a command
was given (a baseline's name, a checkpoint or an MLflow URI)."""

from __future__ import annotations


def add_model_guard(parser) -> None:
    """The flag of every command that runs a model on a catalog (forecast, report, evaluate)."""
    parser.add_argument("--allow-other-catalog", action="store_true",
                        help="run a model on a catalog in other units or another frame than it was trained on (warns)")


def open_catalog(name: str):
    """An ingested catalog by name (under the processed directory) or folder."""
    from stforecast.config import load_settings
    from stforecast.ingested import IngestedCatalog

    return IngestedCatalog.open(name, load_settings().processed_dir)


def load_checked_model(spec: str, catalog, allow_other: bool, log=print, track: bool = False):
    """The model a command was given: a baseline's name (fitted on this catalog, or its cached fit), a checkpoint
    path or an MLflow URI (checked against the catalog's units and frame)."""
    from stforecast.model.registry import load_forecaster

    return load_forecaster(spec, catalog, allow_other_catalog=allow_other, log=log, track=track)
