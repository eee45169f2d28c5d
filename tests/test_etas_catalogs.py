"""ETAS.simulate_catalogs: many catalogs of one forecast window from the branching process, vectorised over
catalogs and events; checked against Poisson theory, the exact lock-step sampler, its own chunking and
Gutenberg-Richter."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stforecast.baselines.etas import ETAS
from stforecast.baselines.etas_kernel import _tied
from stforecast.baselines.etas_simulation import simulate_etas
from stforecast.models.marks import aki_b_value
from stforecast.baselines.kernels import UniformBox
from stforecast.forecast import simulate_horizon
from stforecast.models.base import Forecaster

BOX = (0.0, 0.0, 200.0, 200.0)
TRUE = {"mu": 0.3, "A": 0.25, "alpha": 1.0, "c": 0.02, "p": 1.3, "D": 1.5, "q": 1.8, "gamma": 0.6}


def _etas(params, variant="power-law", cutoff=math.inf, max_lag=1000):
    model = ETAS(3.0, background=BOX, max_lag=max_lag)
    model.background = UniformBox(BOX)
    model.variant, model.cutoff = variant, cutoff
    model.theta = _tied([math.log(params["mu"]), math.log(params["A"]), params["alpha"], math.log(params["c"]),
                         math.log(params["p"] - 1), math.log(params["D"]), math.log(params.get("q", 2.0) - 1),
                         params.get("gamma", params["alpha"])], variant)
    return model


@pytest.fixture(scope="module")
def history():
    """A short catalog ending with its largest event (a strongly triggered window follows)."""
    t, xy, m = simulate_etas(TRUE, 3.0, 1.0, BOX, 400.0, np.random.default_rng(12))  # (seed: see the assert)
    end = int(np.argmax(m)) + 1
    assert m[end - 1] > 4.5 and 20 < end < 500
    return t[:end], xy[:end], m[:end]


def _run(model, t, xy, m, t_start, t_end, n, seed, **kw):
    """Every chunk of a simulate_catalogs run: (events frame, counts, capped, chunks)."""
    chunks = list(model.simulate_catalogs(t, xy, {"magnitude": m}, t_end, n, np.random.default_rng(seed),
                                          t_start=t_start, **kw))
    frame = pd.concat([c.events for c in chunks], ignore_index=True)
    counts = np.concatenate([c.counts for c in chunks]) if chunks else np.zeros(0, np.int64)
    capped = np.concatenate([c.capped for c in chunks]) if chunks else np.zeros(0, bool)
    _check_ids(frame, counts, capped, n, t_start, t_end)
    return frame, counts, capped, chunks


def _check_ids(frame, counts, capped, n, t_start, t_end):
    assert counts.shape == (n,) and capped.shape == (n,) and counts.dtype.kind == "i"
    assert list(frame.columns) == ["simulation", "t", "x", "y", "magnitude"]
    assert frame["simulation"].between(0, n - 1).all()
    assert np.array_equal(np.bincount(frame["simulation"], minlength=n), counts)
    assert ((frame["t"] >= t_start) & (frame["t"] < t_end)).all()
    assert (frame.groupby("simulation")["t"].apply(lambda s: s.is_monotonic_increasing)).all()


def test_without_triggering_counts_are_poisson_with_the_background_rate(history):
    t, xy, m = history
    model = _etas({**TRUE, "A": 1e-9})
    n, span = 4000, 20.0
    t0 = t[-1] + 1.0  # the window may start after the newest event
    frame, counts, capped, _ = _run(model, t, xy, m, t0, t0 + span, n, 0, chunk=1500)
    expected = TRUE["mu"] * span  # 6 events per catalog
    assert abs(counts.mean() - expected) < 4 * math.sqrt(expected / n)
    # dispersion index s²/mean: sd ≈ sqrt((2 + 1/λ)/n) ≈ 0.024 for a Poisson count
    assert counts.var(ddof=1) / counts.mean() == pytest.approx(1.0, abs=0.1)
    # background times uniform over the window, locations from the background (the box)
    assert stats.kstest((frame["t"] - t0) / span, "uniform").pvalue > 1e-3
    x, y = frame["x"], frame["y"]
    assert x.between(BOX[0], BOX[2]).all() and y.between(BOX[1], BOX[3]).all()
    assert x.mean() == pytest.approx(100.0, abs=4 * 200 / math.sqrt(12 * len(frame)))
    assert not capped.any()


@pytest.mark.parametrize("variant", ["power-law", "gaussian"])
def test_agrees_with_the_exact_lock_step_sampler(history, variant):
    """Both sample the same process here: infinite cut-off, and the history plus a catalog's events stay within
    max_lag (so the lock-step histories never drop an observed parent). Tolerances: 4 combined standard errors of
    each statistic (means over independent catalogs; binomial SE for shares)."""
    t, xy, m = history
    model = _etas(TRUE, variant)
    span = 10.0
    t0 = float(t[-1])  # the lock-step sampler starts at the newest observed event
    ours, counts, capped, _ = _run(model, t, xy, m, t0, t0 + span, 4000, 1, chunk=1000)
    # the generic lock-step sampler: one exact next-event draw (ETASNextEvent.sample) per catalog and step
    ref_chunks = list(Forecaster.simulate_catalogs(model, t, xy, {"magnitude": m}, t0 + span, 800,
                                                   np.random.default_rng(2), max_events=900))
    ref = pd.concat([c.events for c in ref_chunks], ignore_index=True).sort_values(["simulation", "t"])
    ref_counts = np.concatenate([c.counts for c in ref_chunks])
    assert ref_counts.max() + len(t) < model.max_lag and not capped.any()

    def agree(a, b, what):
        (a, sa), (b, sb) = a, b
        assert abs(a - b) < 4 * math.hypot(sa, sb), f"{what}: {a:.4g} vs {b:.4g}"

    def mean_se(v):
        v = np.asarray(v, float)
        return v.mean(), v.std(ddof=1) / math.sqrt(len(v))

    def share_se(v):
        v = np.asarray(v, float)
        return v.mean(), math.sqrt(max(v.mean() * (1 - v.mean()), 1e-4) / len(v))

    # the counts: mean, and the share of quiet catalogs
    agree(mean_se(counts), mean_se(ref_counts), "mean count")
    assert counts.mean() > 2 * TRUE["mu"] * span  # aftershocks dominate the window: the comparison tests triggering
    agree(share_se(counts <= 3), share_se(ref_counts <= 3), "share of catalogs with ≤ 3 events")
    # the first event of each catalog: its waiting time (Omori), and its distance to the mainshock (spatial kernel)
    first_ours, first_ref = ours.groupby("simulation").first(), ref.groupby("simulation").first()
    agree(mean_se(np.log(first_ours["t"] - t0)), mean_se(np.log(first_ref["t"] - t0)),
          "mean log waiting time of the first event")
    dist_ours = np.hypot(first_ours["x"] - xy[-1, 0], first_ours["y"] - xy[-1, 1])
    dist_ref = np.hypot(first_ref["x"] - xy[-1, 0], first_ref["y"] - xy[-1, 1])
    for radius in (3 * TRUE["D"], 30 * TRUE["D"]):
        agree(share_se(dist_ours < radius), share_se(dist_ref < radius), f"share of first events within {radius}")

    # every event's spread (later generations too): per catalog, its events within 3 kernel scales of the mainshock
    def near_counts(frame, counts_):
        near = np.hypot(frame["x"] - xy[-1, 0], frame["y"] - xy[-1, 1]) < 3 * TRUE["D"]
        return np.bincount(frame["simulation"][near], minlength=len(counts_))

    agree(mean_se(near_counts(ours, counts)), mean_se(near_counts(ref, ref_counts)), "events near the mainshock")

    # the later generations' Omori clustering: per catalog, the events within c of the previous one
    def quick_followers(frame, counts_):
        close = (frame.groupby("simulation")["t"].diff() < TRUE["c"]).to_numpy()
        return np.bincount(frame["simulation"][close], minlength=len(counts_))

    agree(mean_se(quick_followers(ours, counts)), mean_se(quick_followers(ref, ref_counts)), "quick followers")
    # the magnitudes of every event (i.i.d. Gutenberg-Richter in both)
    agree(mean_se(ours["magnitude"]), mean_se(ref["magnitude"]), "mean magnitude")


def test_a_window_after_a_quiet_gap_is_the_process_given_no_events_in_the_gap(history):
    """A window starting ``gap`` after the newest event conditions on the history alone (no events in the gap):
    the same law as catalogs simulated from the newest event and kept where the gap stayed empty (rejection)."""
    t, xy, m = history
    model = _etas(TRUE)
    t_n, gap, span = float(t[-1]), 0.3, 5.0
    direct, counts, _, _ = _run(model, t, xy, m, t_n + gap, t_n + gap + span, 4000, 8, chunk=2000)
    full, full_counts, _, _ = _run(model, t, xy, m, t_n, t_n + gap + span, 12_000, 9, chunk=4000)
    in_gap = np.bincount(full["simulation"][full["t"] < t_n + gap], minlength=len(full_counts))
    kept = full[in_gap[full["simulation"]] == 0]
    kept_counts = full_counts[in_gap == 0]
    assert len(kept_counts) > 1000
    mean_a, se_a = counts.mean(), counts.std() / math.sqrt(len(counts))
    mean_b, se_b = kept_counts.mean(), kept_counts.std() / math.sqrt(len(kept_counts))
    assert abs(mean_a - mean_b) < 4 * math.hypot(se_a, se_b)
    wait_a = np.log(direct.groupby("simulation")["t"].first() - (t_n + gap))
    wait_b = np.log(kept.groupby("simulation")["t"].first() - (t_n + gap))
    assert abs(wait_a.mean() - wait_b.mean()) < 4 * math.hypot(wait_a.std() / math.sqrt(len(wait_a)),
                                                               wait_b.std() / math.sqrt(len(wait_b)))


def test_simulate_horizon_runs_the_branching_process(history):
    t, xy, m = history
    model = _etas(TRUE)
    hf = simulate_horizon(model, t, xy, t[-1] + 5.0, m=300, marks={"magnitude": m}, seed=0, chunk=128)
    assert len(hf.counts) == 300 and "magnitude" in hf.events.columns
    assert np.array_equal(np.bincount(hf.events["simulation"], minlength=300), hf.counts)


def test_chunking_covers_every_catalog_once_and_is_reproducible(history):
    t, xy, m = history
    model = _etas(TRUE)
    n = 1000
    frames = {}
    for size in (1000, 128):
        gen = model.simulate_catalogs(t, xy, {"magnitude": m}, t[-1] + 5.0, n, np.random.default_rng(3), chunk=size)
        assert not isinstance(gen, (list, tuple))  # lazy: a generator
        frame, counts, capped, chunks = _run(model, t, xy, m, t[-1], t[-1] + 5.0, n, 3, chunk=size)
        assert len(chunks) == math.ceil(n / size)
        for i, c in enumerate(chunks):
            assert c.first == i * size and len(c.counts) == min(size, n - c.first)
            assert c.events["simulation"].between(c.first, c.first + len(c.counts) - 1).all()
        frames[size] = (frame, counts)
    again, _, _, _ = _run(model, t, xy, m, t[-1], t[-1] + 5.0, n, 3, chunk=128)
    assert again.equals(frames[128][0])
    # different chunkings draw different streams but the same distribution
    c1, c2 = frames[1000][1], frames[128][1]
    assert abs(c1.mean() - c2.mean()) < 4 * math.sqrt((c1.var() + c2.var()) / n)


def test_an_explosive_fit_is_capped_quickly(history):
    t, xy, m = history
    model = _etas({**TRUE, "A": 3.0, "alpha": 1.5})  # branching ratio ∞ for b = 1 (β < α)
    frame, counts, capped, _ = _run(model, t, xy, m, t[-1], t[-1] + 100.0, 400, 4, chunk=150, max_events=300)
    assert capped.mean() > 0.9
    assert (counts[capped] == 300).all() and (counts <= 300).all()
    # without triggering nothing is capped
    _, _, quiet, _ = _run(_etas({**TRUE, "A": 1e-9}), t, xy, m, t[-1], t[-1] + 10.0, 50, 4, max_events=300)
    assert not quiet.any()
    # simulate_horizon warns about the capped catalogs
    with pytest.warns(RuntimeWarning, match="hit max_events=300"):
        simulate_horizon(model, t, xy, t[-1] + 100.0, m=50, marks={"magnitude": m}, max_events=300)


def test_magnitudes_follow_gutenberg_richter_and_stay_below_m_max(history):
    t, xy, m = history
    model = _etas(TRUE)
    mag = _run(model, t, xy, m, t[-1], t[-1] + 30.0, 2000, 5, b_value=1.3)[0]["magnitude"].to_numpy()
    assert len(mag) > 10_000 and mag.min() >= 3.0 and mag.max() <= 9.5
    # Aki's estimate: its relative SE is 1/sqrt(N) < 1 %
    assert aki_b_value(mag, 3.0, bin_width=0.0) == pytest.approx(1.3, rel=0.04)
    # the default b is the fitted one
    model.b_value = 0.8
    mag = _run(model, t, xy, m, t[-1], t[-1] + 30.0, 1000, 6)[0]["magnitude"].to_numpy()
    assert aki_b_value(mag, 3.0, bin_width=0.0) == pytest.approx(0.8, rel=0.05)
    # a low m_max truncates the law: the magnitudes follow the truncated Gutenberg-Richter distribution
    m_max, beta = 3.8, 1.0 * math.log(10)
    mag = _run(model, t, xy, m, t[-1], t[-1] + 30.0, 2000, 7, b_value=1.0, m_max=m_max)[0]["magnitude"].to_numpy()
    assert mag.max() <= m_max and mag.min() >= 3.0
    cdf = lambda x: -np.expm1(-beta * (x - 3.0)) / -math.expm1(-beta * (m_max - 3.0))  # noqa: E731
    assert stats.kstest(mag, cdf).pvalue > 1e-3
    assert stats.kstest(mag, lambda x: -np.expm1(-beta * (x - 3.0))).pvalue < 1e-6  # the untruncated law fails


def test_rejects_a_history_past_the_window_start(history):
    t, xy, m = history
    with pytest.raises(ValueError, match="t_start"):
        _etas(TRUE).simulate_catalogs(t, xy, {"magnitude": m}, t[-1] + 1.0, 10, np.random.default_rng(0),
                                      t_start=t[-1] - 1.0)
