"""Property-based checks of splitting and windowing: no event in two splits, order preserved, counts conserved."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st

from stforecast.clean import break_ties
from stforecast.config import SequenceConfig
from stforecast.sequences import assign_splits, build_sequences, inter_event_times


@st.composite
def catalogs(draw):
    n = draw(st.integers(0, 300))
    # gaps are ties (0) or at least one clock tick: times one float ulp apart cannot be told apart by any clock
    gaps = draw(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 5)), min_size=n, max_size=n))
    t = np.cumsum(np.asarray(gaps, dtype="float64")) if n else np.zeros(0)
    t = break_ties(t, 1e-3)  # the pipeline always breaks ties before windowing
    span = float(t[-1]) if n else 1.0
    cuts = sorted(draw(st.lists(st.floats(0, span + 1, allow_nan=False), min_size=4, max_size=4)))
    bounds = dict(zip(("train_start", "val_start", "test_start", "end"), cuts))
    mode = draw(st.sampled_from(["windows", "chunks"]))
    window = draw(st.floats(0.5, 40))
    overlap = draw(st.booleans())
    cfg = SequenceConfig(mode=mode, window=window, stride=window / 3 if overlap else None,
                         length=draw(st.integers(1, 40)), history_events=draw(st.integers(0, 10)), min_targets=1)
    events = pd.DataFrame({"t": t, "x": np.arange(n, dtype=float), "y": np.zeros(n),
                           "event_id": [f"e{i}" for i in range(n)]})
    return events, bounds, cfg, overlap


@settings(max_examples=150, deadline=None)
@given(catalogs())
def test_windowing_and_splitting_properties(case):
    events, bounds, cfg, overlap = case
    split = assign_splits(events["t"].to_numpy(), bounds)
    seqs = build_sequences(events, split, cfg, bounds)
    label = dict(enumerate(split))
    time_of = dict(enumerate(events["t"]))
    targets = seqs[seqs["is_target"]]

    # no event is a target in two splits, and it is a target only in the split whose time range holds it
    per_event = targets.groupby("event_index")["split"].nunique()
    assert (per_event <= 1).all()
    assert all(label[e] == s for e, s in zip(targets["event_index"], targets["split"]))

    # order is preserved inside every sequence, history precedes targets and never reaches past them
    for _, s in seqs.groupby(["split", "sequence"]):
        s = s.sort_values("position")
        assert np.all(np.diff(s["t"].to_numpy()) > 0)
        assert s["position"].tolist() == list(range(len(s)))
        is_t = s["is_target"].to_numpy()
        assert not np.any(is_t[:-1] & ~is_t[1:])  # once targets start, no history row follows
        assert (~is_t).sum() <= cfg.history_events

    # counts are conserved: without overlap every event of train/val/test is a target exactly once
    in_splits = {e for e, s in label.items() if s in ("train", "val", "test")}
    if not overlap or cfg.mode == "chunks":
        assert sorted(targets["event_index"]) == sorted(in_splits)
    else:
        assert set(targets["event_index"]) == in_splits  # overlapping windows repeat targets, lose none
    # waiting times are positive once ties are broken
    if len(seqs):
        dt = inter_event_times(seqs)
        assert np.all(dt[seqs["position"].to_numpy() > 0] > 0)
    assert all(time_of[e] == t for e, t in zip(seqs["event_index"], seqs["t"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=200), st.floats(0.01, 2.0))
def test_break_ties_keeps_order_and_stays_within_a_tick(ticks, resolution):
    t = np.sort(np.asarray(ticks, dtype=float))
    out = break_ties(t, resolution)
    assert len(out) == len(t)
    if len(t) > 1:
        assert np.all(np.diff(out) > 0)  # strictly increasing: ties are gone
    assert np.all(out >= t) and np.all(out - t < max(resolution, 1e-12))
    # an event never overtakes the next distinct time
    nxt = np.array([t[t > v].min() if np.any(t > v) else np.inf for v in t])
    assert np.all(out < nxt)
