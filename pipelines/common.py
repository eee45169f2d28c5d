"""What several commands share: opening an ingested catalog by name or folder, and the flag of commands that run a
model on a catalog."""

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


def warn_clamped(share: float | None, what: str, summary: dict, log) -> None:
    """Say (and record in ``summary["warnings"]``) when a share of the samples sat at the sampler's clamp."""
    from stforecast.forecast import clamp_warning

    line = clamp_warning(share, what)
    if line:
        summary.setdefault("warnings", []).append(line)
        log(line)


def model_label(spec: str) -> str:
    """A folder-safe label for what ``--model`` names: a baseline's name, "dstpp-<the checkpoint's folder>" (an
    MLflow URI's words joined by "-"), or "ensemble-" and its members' labels. Default output folders carry it, so reports of two models never collide."""
    from pathlib import Path

    from stforecast.config import safe_name
    from stforecast.registry import ensemble_members, is_baseline

    if is_baseline(spec):
        return spec
    members = ensemble_members(spec)
    if members:
        return safe_name("ensemble-" + "-".join(model_label(m) for m in members), "ensemble")
    p = Path(spec)
    return "dstpp-" + safe_name(p.parent.name if p.suffix == ".pt" else "".join(c if c.isalnum() else "-" for c in spec),
                                "model")
