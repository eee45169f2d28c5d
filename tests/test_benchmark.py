"""`stforecast benchmark --quick`: the whole pipeline (ingest, train, fit, score, report, track) on the three
primary catalogs at toy sizes. It proves the pipeline runs and records what it did; it does not rank models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.benchmark import catalog_settings, load_benchmark_config, merge, verdict


def test_quick_benchmark_on_the_three_primary_catalogs(tmp_path, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("STFORECAST_PROCESSED_DIR", str(tmp_path / "processed"))
    out = tmp_path / "report"
    rc = main(["benchmark", "--quick", "--catalogs", "japan,chicago,wmaze", "--out", str(out),
               "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert rc == 0
    table = pd.read_csv(out / "benchmark.csv")
    models = table.groupby("catalog", sort=False)["model"].apply(list).to_dict()
    assert models == {"japan": ["dstpp", "poisson_kde", "hawkes", "etas"],  # ETAS only where there are magnitudes
                      "chicago": ["dstpp", "poisson_kde", "hawkes"], "wmaze": ["dstpp", "poisson_kde", "hawkes"]}
    assert table[["nll_joint", "nll_dt", "nll_xy", "crps_dt", "energy_xy", "cover_dt_80", "cover_xy_80"]
                 ].notna().all().all()
    record = json.loads((out / "benchmark.json").read_text())
    assert record["quick"] and record["config"]["seed"] == 0
    for name in ("japan", "chicago", "wmaze"):
        assert record["per_catalog"][name]["train"]["seed"] == 1234
        assert record["per_catalog"][name]["test_targets"] == 40
        assert (out / name / "reliability.png").exists()
    assert record["per_catalog"]["chicago"]["units"] == ["hours", "m"]
    md = (out / "benchmark.md").read_text()
    assert "| japan | etas |" in md and "## DSTPP against the best baseline" in md
    import mlflow

    runs = mlflow.search_runs(experiment_names=["stforecast-benchmark"])
    names = set(runs["tags.mlflow.runName"])
    assert {"benchmark-japan", "benchmark-chicago", "benchmark-wmaze", "benchmark-summary"} <= names
    scored = runs[runs["tags.mlflow.runName"] == "benchmark-wmaze"].dropna(axis=1, how="all")
    assert "metrics.hawkes.nll_joint" in scored.columns


def test_settings_merge_per_catalog_and_quick():
    cfg = load_benchmark_config()
    assert catalog_settings(cfg, "japan", quick=False)["epochs"] == cfg["train"]["epochs"]
    paper = catalog_settings(cfg, "dstpp_japan", quick=False)
    assert paper["preset"] == "paper" and paper["epochs"] != cfg["train"]["epochs"]
    quick = load_benchmark_config(quick=True)
    assert quick["targets"] < cfg["targets"] and catalog_settings(quick, "japan", quick=True)["max_steps"] > 0
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_verdict_names_the_best_baseline_and_the_margin():
    table = pd.DataFrame({"catalog": ["c"] * 3, "model": ["dstpp", "p", "h"],
                          **{m: [1.0, 2.0, 0.5] for m in ("nll_joint", "nll_dt", "nll_xy", "crps_dt", "energy_xy")}})
    line = verdict(table)[0]
    assert "loses to best baseline h by 0.5" in line
    table.loc[0, "crps_dt"] = 0.25
    assert "crps_dt beats best baseline h by 0.25" in verdict(table)[0]


@pytest.mark.parametrize("bad", ["nonexistent"])
def test_unknown_catalog_is_a_clear_error(bad, tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["benchmark", "--quick", "--catalogs", bad, "--out", str(tmp_path), "--no-track"])
    assert rc == 2 and bad in capsys.readouterr().err
