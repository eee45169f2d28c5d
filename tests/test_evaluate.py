"""The evaluation harness scores DSTPP and the baselines on the same held-out events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.ingest import run_ingest
from stforecast.evaluate import evaluate_next_event, next_event_targets, sample_scores
from stforecast.ingested import IngestedCatalog
from stforecast.registry import fit_baselines
from stforecast.checkpoints import load_model
from stforecast.train import TrainConfig, train


def test_sample_scores_prefer_the_truth_centred_forecast():
    rng = np.random.default_rng(0)
    truth = np.column_stack([rng.exponential(1, 200), rng.normal(0, 1, (200, 2))])
    good = truth[:, None, :] + rng.normal(0, 0.1, (200, 50, 3))
    bad = truth[:, None, :] + 2.0 + rng.normal(0, 0.1, (200, 50, 3))
    g, b = sample_scores(good, truth), sample_scores(bad, truth)
    for key in ("crps_dt", "energy_xy", "mae_dt_mean", "dist_xy_mean", "dist_xy_median", "rmse_dt_median",
                "rmse_dt_single"):
        assert g[key] < b[key]
    assert b["cover_dt_80"] == 0.0 and g["cover_dt_95"] > 0.8


def test_harness_on_ridgecrest(settings, tmp_path):
    r = run_ingest(settings.catalog("ridgecrest"), settings, out_root=tmp_path / "p", progress=False)
    cfg = TrainConfig(data=str(r.out_dir), model={"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                                  "rnn_hidden": 16, "steps": 50}, epochs=3, batch_size=8,
                      progress=False, out_dir=str(tmp_path / "run"))
    train(cfg)
    targets = next_event_targets(r.out_dir, "test")
    events = IngestedCatalog.open(r.out_dir).events
    # every test target has history rows before it (16 per chunk), so all of them are scored
    assert len(targets.truth) == r.manifest["counts"]["splits"]["test"]["targets"] == 73
    # the stream position and the DSTPP truth describe the same event
    ev = events.iloc[targets.stream_index]
    assert np.allclose(ev["x"].to_numpy(), targets.truth[:, 1]) and np.allclose(ev["y"].to_numpy(), targets.truth[:, 2])
    val_start = r.manifest["split"]["model_time"]["val_start"]
    dstpp = load_model(tmp_path / "run" / "best.pt").configure(bound_repeats=2)
    models = {"dstpp": dstpp, **fit_baselines(events, val_start, mc=2.5)}
    calibration = next_event_targets(r.out_dir, "val")
    table, curves = evaluate_next_event(targets, events, models, n=40, calibration=calibration)
    assert list(table["model"]) == ["dstpp", "poisson_kde", "hawkes", "etas"]
    assert table[["crps_dt", "energy_xy", "nll_joint", "nll_joint_se"]].notna().all().all()
    assert table.iloc[1:][["nll_dt", "nll_xy"]].notna().all().all()
    assert list(table["nll_kind"]) == ["exact-ode", "exact", "exact", "exact"]
    dstpp = table.iloc[0]
    # DSTPP: the exact ODE value is joint only; its bound beside it has the split and lies above it
    assert dstpp["nll_bound"] == pytest.approx(dstpp["nll_bound_dt"] + dstpp["nll_bound_xy"])
    assert dstpp["nll_bound"] > dstpp["nll_joint"] and dstpp["nll_ode_nfe"] > 0
    assert 0 < dstpp["nll_mc_se"] < dstpp["nll_joint_se"]
    assert ((table.filter(like="cover_") >= 0) & (table.filter(like="cover_") <= 1)).all().all()
    # reliability curves: monotone in the nominal level, and they agree with the table's 80 % column
    for name, curve in curves.items():
        dt = [curve["dt"][lv] for lv in sorted(curve["dt"])]
        assert all(a <= b for a, b in zip(dt, dt[1:]))
        assert curve["dt"][0.8] == table.loc[table.model == name, "cover_dt_80"].item()


def test_evaluate_cli_writes_tables_and_tracks(settings, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    r = run_ingest(settings.catalog("ridgecrest"), settings, out_root=tmp_path / "p", progress=False)
    rc = main(["evaluate", "--data", str(r.out_dir), "--targets", "30", "--samples", "20", "--baselines",
               "poisson_kde,hawkes", "--out", str(tmp_path / "rep")])
    assert rc == 0
    table = pd.read_csv(tmp_path / "rep" / "next_event.csv")
    assert list(table["model"]) == ["poisson_kde", "hawkes"] and table["nll_joint"].notna().all()
    assert (tmp_path / "rep" / "reliability.png").stat().st_size > 10_000
    md = (tmp_path / "rep" / "next_event.md").read_text()
    assert "| model |" in md and "30 held-out events" in md and "days" in md
    assert "next-event scores" in capsys.readouterr().out
    import mlflow

    runs = mlflow.search_runs(experiment_names=["stforecast-evaluate"])
    assert len(runs) == 1 and "metrics.hawkes.crps_dt" in runs.columns
