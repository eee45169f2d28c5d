"""Issue 22: DSTPP as a mixture over candidate parents (stforecast/models/dstpp/parents.py): candidates, the
background's density, the exact mixture likelihood, sampling, training and the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stforecast.batch import SequenceSet
from stforecast.models.base import Histories
from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler, Statistics
from stforecast.sampling import Sampling

REGION = (-100.0, -50.0, 100.0, 80.0)
STATS = {"dt": {"min": 0.001, "max": 5.0}, "log_dt": {"min": math.log(0.001), "max": math.log(5.0)},
         "x": {"min": -100.0, "max": 100.0}, "y": {"min": -50.0, "max": 80.0}}
CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, rnn_hidden=16, denoiser_width=16, steps=30,
                  dropout=0.0, location="bounded", parents=3, background_events=300, mark_inputs=True)


def mixture_model(cfg=CFG, seed=0) -> DSTPP:
    torch.manual_seed(seed)
    stats = Statistics(mark_center=3.0, mark_scale=0.5, mark_mc=2.5, mark_b=1.0, parent_c=0.01)
    model = DSTPP(cfg, Scaler.from_stats(STATS, cfg.time_transform, cfg.range_margin, cfg.location,
                                         cfg.location_scale, REGION, stats))
    rng = np.random.default_rng(seed)
    places = np.column_stack([rng.normal(-30, 15, 250), rng.normal(20, 10, 250)]).clip([-99, -49], [99, 79])
    model.mixture.fit_background(model.scaler, places)
    return model.eval()


def toy_set(n_seq=5, seed=0) -> SequenceSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 10, n_seq)
    t = np.concatenate([np.cumsum(rng.exponential(0.5, n) + 0.01) for n in lengths])
    n = len(t)
    return SequenceSet(t, rng.uniform(-90, 90, n), rng.uniform(-40, 70, n), np.zeros(n_seq), np.ones(n, bool),
                       np.r_[0, np.cumsum(lengths)], rng.uniform(2.5, 6.0, n))


def test_a_mixture_needs_the_bounded_location_and_known_choices():
    with pytest.raises(ValueError, match="bounded"):
        ModelConfig(parents=4, location="relative")
    with pytest.raises(ValueError, match="parent_choice"):
        ModelConfig(parents=4, parent_choice="nearest")
    assert ModelConfig(parents=0, location="relative").parents == 0  # the single-reference model is unchanged


def test_candidates_are_causal_and_ranked_by_omori_or_recency():
    model = mixture_model()
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    # sequence 0: a large shock first, small events after it
    batch.mark[0] = 2.6
    batch.mark[0, 0] = 7.0
    rows = torch.full((1,), 3)
    index, valid = model.mixture.candidates(batch, torch.zeros(1, dtype=torch.long), rows, model)
    assert bool(valid.all()) and int(index.max()) <= 3  # nothing after the history's end
    assert int(index[0, 0]) == 0  # the M7 three events ago outranks the small newest one
    model.mixture.choice = "newest"
    index, _ = model.mixture.candidates(batch, torch.zeros(1, dtype=torch.long), rows, model)
    assert index[0].tolist() == [3, 2, 1]
    # a history of two events has two candidates; the third is marked missing
    index, valid = model.mixture.candidates(batch, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long), model)
    assert valid[0].tolist() == [True, True, False]


def test_background_places_integrate_to_one_and_the_grid_matches_the_exact_sum():
    model = mixture_model()
    mix, scaler = model.mixture, model.scaler
    x0, y0, x1, y1 = scaler.support()
    # midpoint rule on a grid fine enough for the kernels (bandwidth >= 0.003 logit units), in model units
    xs = torch.linspace(x0, x1, 801, dtype=torch.float64)[:-1] + (x1 - x0) / 1600
    ys = torch.linspace(y0, y1, 801, dtype=torch.float64)[:-1] + (y1 - y0) / 1600
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    xy = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    mass = float(mix.place_log_prob(xy, scaler).exp().sum()) * (x1 - x0) / 800 * (y1 - y0) / 800
    assert mass == pytest.approx(1.0, abs=0.02)
    probe = xy[::97][:2000]
    exact, grid = mix.place_log_prob(probe, scaler), mix.place_log_prob_tabulated(probe, scaler)
    near = exact > exact.max() - 8  # where the background has mass (far away both are tiny)
    error = (exact - grid)[near].abs()
    assert float(error.mean()) < 0.03 and float(error.max()) < 0.2


def test_the_exact_nll_is_the_logsumexp_of_the_components():
    model = mixture_model().with_sampling(Sampling(tolerance=1e-5))
    data = toy_set()
    hist, truth = data.prefixes(np.arange(4), np.full(4, 3))
    batch = hist.collate(np.arange(4))
    cond = model.last_states(batch)
    nll, info = model.mixture_exact_nll(batch, torch.as_tensor(truth), cond)
    assert nll.shape == (4,) and bool(torch.isfinite(nll).all()) and info["nfe"] > 0
    comps = model.next_components(batch, cond)
    flow = model.flow()
    truth_t = torch.as_tensor(truth)
    terms = []
    for c in range(CFG.parents):  # each parent's component solved on its own
        ref = comps["ref"][:, c]
        x0 = model.scaler(truth_t[:, 0].float(), truth_t[:, 1:].float(), ref).double()
        lp = flow.log_prob(model.continuous_denoiser(model.denoiser.prepare(comps["cond"][:, c])), x0).log_prob
        terms.append(comps["log_pi"][:, c].double() + lp + model.log_jacobian(truth_t, ref).sum(-1))
    terms.append(comps["log_pi"][:, -1].double() + model.mixture.background_log_prob(cond, truth_t, model.scaler))
    expected = -torch.logsumexp(torch.stack(terms, -1), -1)
    assert torch.allclose(nll, expected, atol=2e-3)


def test_samples_pick_components_and_stay_in_the_region():
    model = mixture_model().with_sampling(Sampling(sampler="ddim", steps=10))
    data = toy_set()
    hist, _ = data.prefixes(np.arange(4), np.full(4, 3))
    draws = model.forecast(Histories.from_sequences(hist)).sample(200, np.random.default_rng(0)).events
    assert draws.shape == (4, 200, 3) and np.isfinite(draws).all() and (draws[..., 0] > 0).all()
    x0, y0, x1, y1 = model.scaler.support()
    assert ((draws[..., 1] > x0) & (draws[..., 1] < x1) & (draws[..., 2] > y0) & (draws[..., 2] < y1)).all()
    # the background alone: its places follow the kernel estimate's points (centred near (-30, 20))
    with torch.no_grad():
        model.mixture.background_score.bias.fill_(50.0)
    bg = model.forecast(Histories.from_sequences(hist)).sample(500, np.random.default_rng(1)).events
    assert abs(np.median(bg[..., 1]) + 30) < 8 and abs(np.median(bg[..., 2]) - 20) < 6


def test_a_training_step_learns_and_the_checkpoint_restores_the_background(tmp_path):
    import json

    from stforecast.checkpoints import atomic_torch_save, load_model

    model = mixture_model().train()
    data = toy_set(n_seq=8)
    batch = data.collate(np.arange(len(data)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model.loss(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert math.isfinite(float(loss)) and float(loss) < first
    model.eval()
    atomic_torch_save({"model": model.state_dict(), "model_config": json.dumps(model.cfg.to_dict())}, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.mixture is not None and torch.equal(back.mixture.bg_points, model.mixture.bg_points)
    assert float(back.mixture.bg_bandwidth) == float(model.mixture.bg_bandwidth)
    xy = torch.tensor([[-30.0, 20.0], [10.0, 10.0]])
    assert torch.allclose(back.mixture.place_log_prob(xy, back.scaler), model.mixture.place_log_prob(xy, model.scaler))


def test_a_cached_simulation_offers_the_parents_and_weights_of_the_history_it_has_built():
    """Issue 23: a mixture's horizon simulation carries its encoder state and its rows forward (MixtureStepper)
    instead of re-encoding every simulation's history at every event; after each simulated event its components
    must be those of the model on the observed history extended by that simulation's events."""
    from stforecast.models.dstpp.simulation import MixtureStepper

    model = mixture_model()
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.exponential(0.4, 12) + 0.01)
    xy = np.column_stack([rng.uniform(-90, 90, 12), rng.uniform(-40, 70, 12)])
    mags = rng.uniform(2.5, 6.5, 12)
    batch = model.history_batch(Histories(t[None], xy[None], {"magnitude": mags[None]}), 64)
    with torch.no_grad():
        start = model.encoder.start(batch.time, model.scaler.position(batch.xy), *model.row_features(batch))
        stepper = MixtureStepper(model, start.expand(4), batch, t[0], model.sampler_object(),
                                 torch.Generator().manual_seed(0))
        sims_t, sims_xy, sims_m = [np.tile(a, (4,) + (1,) * (a.ndim)) for a in (t, xy, mags)]
        for step in range(3):
            drawn, marks = stepper.draw(rng)
            assert drawn.shape == (len(sims_t), 3) and "magnitude" in marks
            keep = np.arange(len(sims_t))[: len(sims_t) - (step == 1)]  # one simulation retires at step 1
            new_t = sims_t[keep, -1] + drawn[keep, 0]
            stepper.advance(keep, new_t, drawn[keep], {k: v[keep] for k, v in marks.items()})
            sims_t = np.column_stack([sims_t[keep], new_t])
            sims_xy = np.concatenate([sims_xy[keep], drawn[keep, None, 1:]], 1)
            sims_m = np.column_stack([sims_m[keep], marks["magnitude"][keep]])
            built = model.history_batch(Histories(sims_t, sims_xy, {"magnitude": sims_m}), 64)
            cond = stepper.cache.state
            torch.testing.assert_close(cond, model.last_states(built), atol=2e-5, rtol=1e-4)
            b = torch.arange(len(keep))
            cached = model.mixture.components(stepper.rows, cond, b, torch.full_like(b, sims_t.shape[1] - 1), model)
            fresh = model.next_components(built, cond)
            torch.testing.assert_close(cached["ref"], fresh["ref"], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(cached["log_pi"], fresh["log_pi"], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(cached["cond"], fresh["cond"], atol=1e-4, rtol=1e-4)
