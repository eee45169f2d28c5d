"""`stforecast benchmark --quick`: the whole pipeline (ingest, train, fit, score, report, track) on the three
primary catalogs at toy sizes. It proves the pipeline runs and records what it did; it does not rank models."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.benchmark import catalog_settings, load_benchmark_config, verdict
from stforecast.settings_files import deep_merge


def test_quick_benchmark_on_the_three_primary_catalogs(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("STFORECAST_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("STFORECAST_PROCESSED_DIR", str(tmp_path / "processed"))
    out = tmp_path / "report"
    rc = main(["benchmark", "--quick", "--ablations", "--catalogs", "japan,chicago,wmaze", "--out", str(out),
               "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert rc == 0
    assert capsys.readouterr().out.count("fitting baselines") == 3  # once per catalog, ablations included
    table = pd.read_csv(out / "benchmark.csv")
    models = table.groupby("catalog", sort=False)["model"].apply(list).to_dict()
    assert models == {"japan": ["dstpp", "poisson_kde", "hawkes", "etas", "ensemble"],  # ETAS where magnitudes are
                      "chicago": ["dstpp", "poisson_kde", "hawkes", "ensemble"],
                      "wmaze": ["dstpp", "poisson_kde", "hawkes", "ensemble"]}
    assert table[["nll_joint", "crps_dt", "energy_xy", "cover_dt_80", "cover_xy_80"]].notna().all().all()
    baselines = table[~table.model.isin(["dstpp", "ensemble"])]
    assert baselines[["nll_dt", "nll_xy"]].notna().all().all() and set(baselines.nll_kind) == {"exact"}
    dstpp = table[table.model == "dstpp"]
    assert set(dstpp.nll_kind) == {"exact-ode"} and dstpp["nll_ode_nfe"].notna().all()
    # Japan's and Chicago's DSTPP are parent mixtures (issue 22): an exact NLL, no bound; the W-maze's has its bound
    assert dstpp.set_index("catalog")["nll_bound"].isna().to_dict() == {"japan": True, "chicago": True,
                                                                        "wmaze": False}
    record = json.loads((out / "benchmark.json").read_text())
    # the ablations (quick: the W-maze only): every variant that applies there, scored on validation with the
    # baselines beside them, fitted once for the ablations and the test scores
    assert not (out / "japan" / "ablations.csv").exists()
    ablations = pd.read_csv(out / "wmaze" / "ablations.csv")
    assert set(ablations.variant) == {"one reference event (issue 20)", "parents: 8 newest candidates + background",
                                      "baseline"}
    assert set(ablations.loc[ablations.variant == "baseline", "model"]) == {"poisson_kde", "hawkes"}
    # the ensemble: its weights fitted on validation, its exact NLL against each member's on the same test events
    mix = record["per_catalog"]["japan"]["ensemble"]
    assert set(mix["vs"]) == {"dstpp", "poisson_kde", "hawkes", "etas"} and all(g["se"] > 0 for g in mix["vs"].values())
    weights = dict(part.rsplit(" ", 1) for part in mix["weights"].split(", "))
    assert set(weights) == set(mix["vs"]) and sum(map(float, weights.values())) == pytest.approx(1, abs=0.01)
    best_member = min(table.loc[(table.catalog == "japan") & (table.model != "ensemble"), "nll_joint"])
    # maximum-likelihood weights on validation: on test it cannot be far worse than its best member
    assert mix["nll_joint"] < best_member + 1.0
    gap = record["per_catalog"]["japan"]["gap"]
    assert gap["best_baseline"] in {"poisson_kde", "hawkes", "etas"} and gap["se"] > 0
    text = (out / "benchmark.md").read_text()
    assert "exact NLL gap to" in text and "Ablations on wmaze" in text
    assert record["quick"] and record["config"]["seed"] == 0
    for name in ("japan", "chicago", "wmaze"):
        assert record["per_catalog"][name]["train"]["seed"] == 1234
        assert record["per_catalog"][name]["test_targets"] == 40
        assert (out / name / "reliability.png").exists()
    assert record["per_catalog"]["chicago"]["units"] == ["hours", "m"]
    # Chicago's block-snapped places are spread within their cell for every model, and every table says so
    assert "dequantised" in record["per_catalog"]["chicago"]["dequantised"] and not record["per_catalog"]["japan"][
        "dequantised"]
    md = (out / "benchmark.md").read_text()
    assert "- chicago: locations dequantised at ingestion" in md
    # and its own measures: hit rate and PAI of every model's hotspots, per day and week (none on other catalogs)
    crime = table[table.catalog == "chicago"].set_index("model")
    assert crime[["hit_day_1", "pai_day_5", "hit_week_5", "pai_week_1"]].notna().all().all()
    assert (crime["hotspot_days"] == 4).all() and table.loc[table.catalog != "chicago", "pai_day_5"].isna().all()
    assert ((crime["hit_day_5"] >= 0) & (crime["hit_day_5"] <= 1)).all() and "## Hotspots (crime catalogs)" in md
    assert "dequantised at ingestion" in (out / "chicago" / "next_event.md").read_text()
    md = (out / "benchmark.md").read_text()
    assert "| japan | etas |" in md and "## DSTPP against the best baseline" in md and "## Ensemble of DSTPP" in md
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
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert paper["model"] == {} and catalog_settings(quick, "dstpp_japan", quick=True)["model"]["d_model"] == 16


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


def test_likelihood_gap_is_the_paired_difference_with_its_standard_error():
    import numpy as np
    import pandas as pd

    from pipelines.benchmark import likelihood_gap

    rng = np.random.default_rng(0)
    base = rng.normal(12, 3, 400)
    dstpp = base + 0.5 + rng.normal(0, 0.2, 400)  # worse by 0.5 on every event, with little noise of its own
    table = pd.DataFrame({"model": ["dstpp", "hawkes", "etas"], "nll_joint": [dstpp.mean(), base.mean() + 1, base.mean()]})
    curves = {"dstpp": {"nll_joint": list(dstpp)}, "etas": {"nll_joint": list(base)}, "hawkes": {"nll_joint": list(base + 1)}}
    gap = likelihood_gap(table, curves)
    assert gap["best_baseline"] == "etas" and gap["gap"] == pytest.approx(0.5, abs=0.05)
    # paired: the shared per-event spread (3 nats) cancels, so the error is that of the 0.2-nat noise alone
    assert 0.005 < gap["se"] < 0.02
    assert likelihood_gap(table[table.model != "dstpp"], curves) is None
