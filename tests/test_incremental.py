"""Encoding that grows linearly: one causal pass per window gives every prefix's state, and a simulation's encoder
state carried forward (attention keys/values + recurrent state) equals re-encoding its whole history."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from stforecast.sampling import Sampling

from stforecast.batch import SequenceSet
from stforecast.models.base import Histories
from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler, Statistics
from stforecast.models.dstpp.simulation import extend

STATS = {"dt": {"min": 0.001, "max": 5.0}, "log_dt": {"min": math.log(0.001), "max": math.log(5.0)},
         "x": {"min": -100.0, "max": 100.0}, "y": {"min": -50.0, "max": 80.0}}
BASE = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, rnn_hidden=16, denoiser_width=16, steps=50,
                   dropout=0.0, location="absolute")
FITTED = Statistics(mark_center=3.5, mark_scale=0.8, mark_mc=2.5, mark_b=1.0)  # the train split's, in the scaler
VARIANTS = {
    "paper-like (absolute, no extras)": {},
    "bounded + waits + magnitudes + head (the default)": dict(location="bounded", time_features=True,
                                                               mark_inputs=True, mark_head=True),
    "relative + waits + magnitudes + head": dict(location="relative", time_features=True, mark_inputs=True,
                                                 mark_head=True),
    "no recurrent head": dict(rnn_hidden=0, location="relative"),
}


def make(overrides: dict, seed: int = 0) -> DSTPP:
    cfg = dataclasses.replace(BASE, **overrides)
    torch.manual_seed(seed)
    region = (STATS["x"]["min"] - 20, STATS["y"]["min"] - 20, STATS["x"]["max"] + 20, STATS["y"]["max"] + 20)
    m = DSTPP(cfg, Scaler.from_stats(STATS, cfg.time_transform, cfg.range_margin, cfg.location,
                                     region=region, statistics=FITTED)).eval()
    with torch.no_grad():  # larger weights than the init: differences would show, not average away
        for p in m.encoder.parameters():
            p.mul_(2.0)
    return m


def toy(n_seq: int = 5, seed: int = 0) -> SequenceSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 30, n_seq)
    t = np.concatenate([np.cumsum(rng.exponential(0.5, n) + 0.01) for n in lengths])
    n = len(t)
    return SequenceSet(t, rng.uniform(-90, 90, n), rng.uniform(-40, 70, n), np.zeros(n_seq), np.ones(n, bool),
                       np.r_[0, np.cumsum(lengths)], rng.uniform(2.5, 6.5, n))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_one_pass_per_window_equals_encoding_each_prefix(variant):
    m = make(VARIANTS[variant])
    data = toy()
    rng = np.random.default_rng(1)
    seq = rng.integers(0, len(data), 40)
    cut = 1 + (rng.random(40) * (data.lengths[seq] - 1)).astype(int)
    prefixes, _ = data.prefixes(seq, cut)
    h = Histories.from_sequences(prefixes)
    batch = m.history_batch(h)
    one_pass = m.history_states(h, batch)
    each = m.last_states(batch)
    assert prefixes.origin is not None
    assert torch.allclose(one_pass, each, atol=1e-5, rtol=0), float((one_pass - each).abs().max())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_carried_encoder_state_equals_full_reencoding(variant):
    """Start from an observed history of 12 rows shared by 3 simulations, add 15 rows that differ per simulation
    (with one simulation retired half-way), and compare every step's state with encoding the whole sequence."""
    m = make(VARIANTS[variant])
    sc = m.scaler
    rng = np.random.default_rng(2)
    L0, extra, B = 12, 15, 3
    t0 = np.cumsum(rng.exponential(0.5, L0) + 0.01)
    xy0 = np.column_stack([rng.uniform(-90, 90, L0), rng.uniform(-40, 70, L0)])
    m0 = rng.uniform(2.5, 6.5, L0)
    hist = Histories(t0[None], xy0[None], {"magnitude": m0[None]})
    batch = m.history_batch(hist)
    with torch.no_grad():
        cache = m.encoder.start(batch.time, sc.position(batch.xy), *m.row_features(batch)).expand(B)
    # B continuations
    dts = rng.exponential(0.5, (B, extra)) + 0.01
    t_all = np.concatenate([np.repeat(t0[None], B, 0), t0[-1] + np.cumsum(dts, 1)], 1)
    xy_new = np.stack([rng.uniform(-90, 90, (B, extra)), rng.uniform(-40, 70, (B, extra))], -1)
    xy_all = np.concatenate([np.repeat(xy0[None], B, 0), xy_new], 1)
    m_all = np.concatenate([np.repeat(m0[None], B, 0), rng.uniform(2.5, 6.5, (B, extra))], 1)
    live = np.arange(B)
    worst = 0.0
    for i in range(extra):
        if i == 7:  # simulation 1 retires: the cache keeps the others
            live = np.array([0, 2])
            cache.select(torch.tensor([0, 2]))
        j = L0 + i
        f = torch.float32
        with torch.no_grad():
            state = extend(m, cache, torch.as_tensor(t_all[live, j] - t0[0], dtype=f),
                              torch.as_tensor(t_all[live, j] - t_all[live, j - 1], dtype=f),
                              torch.as_tensor(xy_all[live, j], dtype=f), torch.as_tensor(xy_all[live, j - 1], dtype=f),
                              {"magnitude": m_all[live, j]}) or cache.state
            full = m.last_states(m.history_batch(Histories(t_all[live, :j + 1], xy_all[live, :j + 1],
                                                           {"magnitude": m_all[live, :j + 1]}), context=10_000))
        worst = max(worst, float((state - full).abs().max()))
    assert worst < 1e-5, worst


def test_cached_simulation_matches_the_generic_lockstep_in_distribution():
    """The same trained-free model simulated by the carried state and by the generic lock-step path (which
    re-encodes each history, with the context large enough that nothing slides out): same count distribution."""
    from stforecast.models.base import Forecaster

    m = make(VARIANTS["relative + waits + magnitudes + head"]).with_sampling(Sampling(sampler="dpm", steps=5))
    rng = np.random.default_rng(3)
    t0 = np.cumsum(rng.exponential(0.5, 20) + 0.01)
    xy0 = np.column_stack([rng.uniform(-90, 90, 20), rng.uniform(-40, 70, 20)])
    marks = {"magnitude": rng.uniform(2.5, 6.5, 20)}
    t_end = t0[-1] + 3.0
    fast = list(m.simulate_catalogs(t0, xy0, marks, t_end, 300, np.random.default_rng(0), max_history=1000,
                                    chunk=128))
    slow = list(Forecaster.simulate_catalogs(m, t0, xy0, marks, t_end, 300, np.random.default_rng(1),
                                             max_history=1000, chunk=300))
    cf = np.concatenate([c.counts for c in fast])
    cs = np.concatenate([c.counts for c in slow])
    assert len(cf) == len(cs) == 300
    se = math.sqrt(cf.var() / len(cf) + cs.var() / len(cs))
    assert abs(cf.mean() - cs.mean()) < 4 * se + 0.05, (cf.mean(), cs.mean(), se)
    ev = [c.events for c in fast]
    ids = np.concatenate([e["simulation"].to_numpy() for e in ev])
    assert set(ids.tolist()) <= set(range(300))
    assert (np.bincount(ids.astype(int), minlength=300) == cf).all()  # counts match the events written
    assert all("magnitude" in e for e in ev if len(e))
