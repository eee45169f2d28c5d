"""`stforecast csep-eval` end to end on a small catalog, and simulated magnitudes that come from the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from stforecast.sampling import Sampling

from tests.test_incremental import VARIANTS, make


def test_simulated_magnitudes_follow_the_model_unless_the_option_says_gutenberg_richter():
    m = make(VARIANTS["relative + waits + magnitudes + head"]).with_sampling(Sampling(sampler="dpm", steps=4))
    head, fit = m.magnitude_head, m.scaler.statistics
    J = m.cfg.mark_components
    with torch.no_grad():  # every component at rate 20: magnitudes hug Mc (G-R with b = 1 has rate 2.3)
        head.net[-1].bias[J:] = math.log(20.0) - math.log(fit.mark_b * math.log(10))
    rng = np.random.default_rng(0)
    t0 = np.cumsum(rng.exponential(0.5, 15) + 0.01)
    xy0 = np.column_stack([rng.uniform(-90, 90, 15), rng.uniform(-40, 70, 15)])
    marks = {"magnitude": rng.uniform(2.5, 5, 15)}

    def excess(option):
        drawn = m.with_sampling(m.sampling.replace(magnitudes=option))
        ev = pd.concat([c.events for c in drawn.simulate_catalogs(t0, xy0, marks, t0[-1] + 2.0, 200,
                                                              np.random.default_rng(1))])
        return (ev["magnitude"] - (fit.mark_mc - 0.05)).to_numpy()

    model_excess, gr_excess = excess("model"), excess("gutenberg-richter")
    assert len(model_excess) > 100 and len(gr_excess) > 100
    assert model_excess.mean() == pytest.approx(1 / 20, rel=0.2)
    assert gr_excess.mean() == pytest.approx(1 / math.log(10) + 0.05, rel=0.2)  # G-R draws start at Mc = lo + 0.05
    # a model without a head has no magnitudes of its own: asking for them gives none (csep-eval refuses it, naming
    # the flag that draws Gutenberg-Richter ones instead)
    headless = make(VARIANTS["paper-like (absolute, no extras)"]).with_sampling(Sampling(magnitudes="model"))
    assert headless.forecast_marks == () and headless.magnitudes == "none"


@pytest.fixture(scope="module")
def ridgecrest_with_magnitudes(ridgecrest_tiny, tmp_path_factory):
    """The Ridgecrest sample and a tiny DSTPP with a magnitude head (a few steps: plumbing, not quality)."""
    from stforecast.train import TrainConfig, train

    r, _ = ridgecrest_tiny
    out = tmp_path_factory.mktemp("rc-head") / "run"
    train(TrainConfig(data=str(r.out_dir), model={"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                                  "rnn_hidden": 16, "steps": 30, "mark_inputs": True,
                                                  "mark_head": True, "location": "relative"},
                      epochs=1, max_steps=3, batch_size=8, progress=False, out_dir=str(out)))
    return r, out / "best.pt"


def test_csep_eval_runs_daily_tests_for_dstpp_and_etas_and_skips_done_days(ridgecrest_with_magnitudes, tmp_path):
    pytest.importorskip("csep") if not __import__("os").environ.get("CI") else None
    from pipelines.cli import main

    r, ckpt = ridgecrest_with_magnitudes
    args = ["csep-eval", "--data", str(r.out_dir), "--model", str(ckpt), "--start", "2019-07-10", "--days", "2",
            "--catalogs", "60", "--max-events", "50", "--no-track", "--out", str(tmp_path)]
    assert main(args + ["--workers", "2"]) == 0  # on a LocalCluster
    summary = json.loads((tmp_path / "summary.json").read_text())
    table = pd.DataFrame(summary["table"])
    label = f"dstpp-{ckpt.parent.name}"
    assert set(table["model"]) == {label, "etas"}
    assert set(table["test"]) == {"number", "magnitude", "spatial", "pseudolikelihood"}
    for model in (label, "etas"):
        for day in ("2019-07-10", "2019-07-11"):
            rec = json.loads((tmp_path / model / day / "day.json").read_text())
            assert rec["n_catalogs"] == 60 and rec["magnitudes"] == "model"
            frame = pd.read_csv(tmp_path / model / day / rec["file"]).dropna(subset=["mag"])
            start = pd.Timestamp(day)
            times = pd.to_datetime(frame["time_string"])
            assert ((times >= start) & (times < start + pd.Timedelta(days=1))).all()
            assert frame["catalog_id"].between(0, 59).all()
            n = rec["csep"]["number_test"]
            assert n["observed"] == rec["csep"]["observed_events"] and len(n["quantile"]) == 2
            assert (tmp_path / model / day / rec["csep"]["number_test"]["plot"]).is_file()
    assert (tmp_path / "summary.md").read_text().count("|") > 20
    assert f"{label}: each simulated catalog is capped at 50 events" in (tmp_path / "summary.md").read_text()
    assert any(p.name.startswith(f"calibration_{label}_number") for p in tmp_path.glob("*.png"))
    before = (tmp_path / label / "2019-07-10" / "day.json").stat().st_mtime_ns
    assert main(args + ["--local"]) == 0  # same inputs: every day is skipped, nothing rewritten
    assert (tmp_path / label / "2019-07-10" / "day.json").stat().st_mtime_ns == before


def test_a_csep_day_caps_each_catalog_and_counts_the_capped_ones(ridgecrest_with_magnitudes, tmp_path):
    """Issue 23: a day's catalogs stop at ``max_events`` each, whether simulated in one lock-step or in chunks,
    and the day's record states the cap and counts the catalogs that reached it (ETAS fitted on the Ridgecrest
    sample: the day after the M7.1 mainshock, when its catalogs run long)."""
    from stforecast.csep import forecast_day
    from stforecast.ingested import IngestedCatalog
    from stforecast.registry import load_forecaster

    r, _ = ridgecrest_with_magnitudes
    catalog = IngestedCatalog.open(r.out_dir)
    model = load_forecaster("etas", catalog, cache_root=tmp_path / "fits", log=lambda *a: None)
    free = forecast_day(catalog, model, "2019-07-10", 60, tmp_path / "free", max_events=100_000, seed=1)
    assert free["capped"] == 0 and free["max_events"] == 100_000
    cap = int(np.quantile(pd.read_csv(free["file"]).dropna(subset=["mag"]).groupby("catalog_id").size(), 0.5))
    assert cap >= 2
    for chunk in (60, 25):
        rec = forecast_day(catalog, model, "2019-07-10", 60, tmp_path / str(chunk), max_events=cap, chunk=chunk,
                           seed=1)
        per_catalog = pd.read_csv(rec["file"]).dropna(subset=["mag"]).groupby("catalog_id").size()
        assert rec["max_events"] == cap and per_catalog.max() <= cap
        # a capped catalog drew its ``cap`` events from the history's end on, so at most that many in the day
        assert 0 < rec["capped"] <= 60 and rec["capped"] >= int((per_catalog == cap).sum())
        assert rec["mean_events"] < free["mean_events"]
