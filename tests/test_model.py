"""DSTPP model, noise schedule and samplers: identities, causality, shapes, scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stforecast.sampling import Sampling

from stforecast.batch import SequenceSet
from stforecast.models.base import Histories
from stforecast.models.dstpp import DSTPP, PAPER, ModelConfig, Scaler, Statistics
from stforecast.diffusion.schedule import DDIMSampler, DDPMSampler, NoiseSchedule, sample_loop

TINY = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, rnn_hidden=16, denoiser_width=16, steps=50,
                   dropout=0.0, location="absolute")
STATS = {"dt": {"min": 0.001, "max": 5.0}, "log_dt": {"min": math.log(0.001), "max": math.log(5.0)},
         "x": {"min": -100.0, "max": 100.0}, "y": {"min": -50.0, "max": 80.0}}


def toy_set(n_seq=6, seed=0) -> SequenceSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, n_seq)
    t = np.concatenate([np.cumsum(rng.exponential(0.5, n) + 0.01) for n in lengths])
    offsets = np.r_[0, np.cumsum(lengths)]
    n = len(t)
    return SequenceSet(t, rng.uniform(-90, 90, n), rng.uniform(-40, 70, n), np.zeros(n_seq), np.ones(n, bool), offsets)


def model(cfg=TINY, seed=0) -> DSTPP:
    torch.manual_seed(seed)
    return DSTPP(cfg, Scaler.from_stats(STATS, cfg.time_transform, cfg.range_margin)).eval()


# ------------------------------------------------------------------------------------------------ schedule
def test_cosine_schedule_matches_published_values():
    s = NoiseSchedule(500, "cosine")
    assert float(s.betas[0]) == pytest.approx(8.742e-5, rel=1e-3)
    assert float(s.betas[1]) == pytest.approx(1.0685e-4, rel=1e-3)
    assert float(s.betas[-1]) == pytest.approx(0.999)
    assert float(s.alpha_bar[0]) == pytest.approx(0.999913, abs=1e-6)
    assert float(s.alpha_bar[-1]) == pytest.approx(9.7e-9, rel=0.05)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_alpha_bar_is_the_product_and_posterior_matches_closed_form(kind):
    s = NoiseSchedule(100, kind)
    ab = torch.cumprod(1 - s.betas.double(), 0)
    assert torch.allclose(s.alpha_bar.double(), ab, rtol=1e-5)
    # q(x_{k-1} | x_k, x0) from Bayes' rule for Gaussians, written independently of the buffers
    x0, xk = torch.randn(100, 3, dtype=torch.float64), torch.randn(100, 3, dtype=torch.float64)
    k = torch.arange(1, 100)
    beta, alpha = s.betas.double()[k], 1 - s.betas.double()[k]
    ab_prev = ab[k - 1]
    var = 1 / (alpha / beta + 1 / (1 - ab_prev))
    mean = var[:, None] * (alpha.sqrt()[:, None] * xk[k] / beta[:, None] + ab_prev.sqrt()[:, None] * x0[k] / (1 - ab_prev)[:, None])
    m, v, logv = s.posterior(x0[k].float(), xk[k].float(), k)
    assert torch.allclose(m.double(), mean, atol=1e-4)
    assert torch.allclose(v.squeeze(-1).double(), var, rtol=1e-4)
    assert torch.allclose(logv.squeeze(-1)[1:].double(), var[1:].log(), rtol=1e-4)


def test_add_noise_has_the_forward_marginal():
    s = NoiseSchedule(100, "cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    k = torch.full((200_000,), 40)
    xk = s.add_noise(x0, torch.randn(x0.shape, generator=g), k)
    assert float(xk.mean()) == pytest.approx(0.7 * float(s.alpha_bar[40].sqrt()), abs=5e-3)
    assert float(xk.var()) == pytest.approx(1 - float(s.alpha_bar[40]), abs=5e-3)


def test_ddim_with_eta_one_uses_the_ddpm_posterior_variance():
    s = NoiseSchedule(50, "cosine")
    d = DDIMSampler(s, 50, eta=1.0, clip=None)
    x_k = torch.zeros(200_000, 1)
    eps = torch.zeros_like(x_k)
    for k in (40, 10, 1):
        out = d.step(eps, k, x_k, torch.Generator().manual_seed(k))
        assert float(out.var()) == pytest.approx(float(s.posterior_variance[k]), rel=0.02)


@pytest.mark.parametrize("K, kind, steps", [(500, "ddpm", 500), (100, "ddim", 100), (500, "ddim", 50)])
def test_samplers_turn_noise_into_the_data_distribution(K, kind, steps):
    """1-D Gaussian data x0 ~ N(m, s²): the optimal noise estimate is known in closed form,
    E[eps | x_k] = sqrt(1 - ab) (x_k - sqrt(ab) m) / (ab s² + 1 - ab), so every step of the sampler matters.
    (Measured discretisation error at these settings: std within 3 %; fewer steps or narrower data under-disperse,
    e.g. DDIM-25 of K=100 gives 0.129 for s = 0.15.)"""
    sch = NoiseSchedule(K, "cosine")
    m, sd = 0.3, 0.5

    def oracle(x_k, k):
        ab = sch.alpha_bar[k]
        return (1 - ab).sqrt() * (x_k - ab.sqrt() * m) / (ab * sd**2 + 1 - ab)

    samp = DDPMSampler(sch, clip=None) if kind == "ddpm" else DDIMSampler(sch, steps, eta=0.0, clip=None)
    g = torch.Generator().manual_seed(0)
    out = sample_loop(samp, oracle, torch.randn(40_000, 1, generator=g), g)
    assert float(out.mean()) == pytest.approx(m, abs=0.015)
    assert float(out.std()) == pytest.approx(sd, rel=0.05)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_recover_x0_with_an_oracle_noise_estimate(sampler):
    """With the exact noise for a known x0, both samplers must land on x0: the update rules are consistent."""
    s = NoiseSchedule(100, "cosine")
    x0 = torch.tensor([[0.3, -0.5, 0.9]])
    samp = DDPMSampler(s) if sampler == "ddpm" else DDIMSampler(s, 10)

    def oracle(x_k, k):
        ab = s.alpha_bar[k]
        return (x_k - ab.sqrt() * x0) / (1 - ab).sqrt()

    out = sample_loop(samp, oracle, torch.randn(1, 3, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(out, x0, atol=1e-4)
    assert DDIMSampler(s, 10).timesteps[0] == 99 and DDIMSampler(s, 10).timesteps[-1] == 0


# ------------------------------------------------------------------------------------------------ model
def test_causal_mask_future_events_never_change_earlier_outputs():
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    m = model()
    h = m.encode(batch)
    j = 2
    changed = batch.xy.clone()
    changed[:, j:] += 37.0
    t = batch.time.clone()
    t[:, j:] += 3.0
    from stforecast.batch import Batch

    other = Batch(t, batch.dt, changed, batch.mask, batch.target, batch.lengths)
    h2 = m.encode(other)
    assert torch.allclose(h[:, :j], h2[:, :j], atol=1e-6)
    assert not torch.allclose(h[:, j:][batch.mask[:, j:]], h2[:, j:][batch.mask[:, j:]])


def test_padding_content_and_coordinates_at_the_minimum_never_act_as_padding():
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    m = model()
    h = m.encode(batch)
    noisy = batch.xy.clone()
    noisy[~batch.mask] = 123.0  # garbage in padded rows
    from stforecast.batch import Batch

    h2 = m.encode(Batch(batch.time, batch.dt, noisy, batch.mask, batch.target, batch.lengths))
    assert torch.allclose(h[batch.mask], h2[batch.mask], atol=1e-6)
    # an event exactly at the minimum longitude is a real event (the published code masked it as padding)
    at_min = batch.xy.clone()
    at_min[0, 1, 0] = STATS["x"]["min"]
    h3 = m.encode(Batch(batch.time, batch.dt, at_min, batch.mask, batch.target, batch.lengths))
    assert not torch.allclose(h3[0, 1], torch.zeros_like(h3[0, 1]))
    assert not torch.allclose(h3[0, 2:int(batch.lengths[0])], h[0, 2:int(batch.lengths[0])])


def test_shapes_loss_and_batched_sampling():
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    m = model()
    assert batch.time.shape == batch.dt.shape == batch.mask.shape and batch.xy.shape[-1] == 2
    assert m.loss(batch).shape == ()
    cond, x0 = m.targets(batch)
    assert cond.shape == (batch.num_targets, 3 * TINY.d_model) and x0.shape == (batch.num_targets, 3)
    histories = Histories.from_sequences(data)
    for sampling in (Sampling("ddim", 10), Sampling("ddim", 50), Sampling("dpm", 5)):  # DDIM-50: all K steps
        out = m.with_sampling(sampling).forecast(histories).sample(7, np.random.default_rng(0)).events
        assert out.shape == (len(data), 7, 3)
        assert np.isfinite(out).all() and (out[..., 0] > 0).all()  # waiting times are positive
        if sampling.sampler == "ddim":  # clamped x̂0: samples stay inside the scaled training range (plus the margin)
            assert (out[..., 1] >= -100 - 10.1).all() and (out[..., 1] <= 100 + 10.1).all()


def test_target_is_predicted_only_from_earlier_events_and_sampling_uses_the_newest():
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    m = model()
    cond, _ = m.targets(batch)
    b, j = batch.target.nonzero(as_tuple=True)
    from stforecast.batch import Batch

    # change row 3 of sequence 0: the condition of target row 3 must not move, that of row 4 must
    xy = batch.xy.clone()
    xy[0, 3] += 25.0
    cond2, _ = m.targets(Batch(batch.time, batch.dt, xy, batch.mask, batch.target, batch.lengths))
    row3 = ((b == 0) & (j == 3)).nonzero()[0, 0]
    row4 = ((b == 0) & (j == 4)).nonzero()[0, 0]
    assert torch.allclose(cond[row3], cond2[row3]) and not torch.allclose(cond[row4], cond2[row4])
    # the sampling condition of a prefix is the encoder state after its last event
    sub, truth = data.prefixes(np.array([0, 1]), np.array([3, 2]))
    last = m.last_states(sub.collate(np.arange(2)))
    h = m.encode(batch)
    assert torch.allclose(last[0], h[0, 2], atol=1e-5) and torch.allclose(last[1], h[1, 1], atol=1e-5)
    assert truth.shape == (2, 3)


def test_sampling_is_one_batched_call_and_seeded():
    data = toy_set()
    batch = data.collate(np.arange(len(data)))
    m = model().with_sampling(Sampling("ddim", 5))
    a = m.forecast(Histories.from_sequences(data)).sample(5, np.random.default_rng(3)).events
    b = m.forecast(Histories.from_sequences(data)).sample(5, np.random.default_rng(3)).events
    assert a.shape == (len(data), 5, 3) and np.array_equal(a, b)
    # history 2 gets the same condition alone as inside the batch: histories do not mix in the encoder
    last = m.last_states(batch)
    alone = m.last_states(data.collate(np.array([2])))
    assert torch.allclose(last[2], alone[0], atol=1e-5)


@pytest.mark.parametrize("transform", ["log", "none"])
def test_scaler_round_trip(transform):
    sc = Scaler.from_stats(STATS, transform, 0.05)
    dt = torch.tensor([0.002, 0.3, 4.0])
    xy = torch.tensor([[-90.0, 70.0], [0.0, 0.0], [99.0, -49.0]])
    u = sc(dt, xy)
    assert u.abs().max() <= 1.0
    back = sc.inverse(u)
    assert torch.allclose(back[:, 0], dt, rtol=1e-5, atol=1e-5) and torch.allclose(back[:, 1:], xy, atol=1e-4)
    # out of the training range maps outside [-1, 1] (no silent clipping); a zero waiting time stays finite
    far = sc(torch.tensor([50.0]), torch.tensor([[500.0, 0.0]]))
    assert far[0, 0] > 1 and far[0, 1] > 1
    zero = sc(torch.tensor([0.0]), torch.tensor([[0.0, 0.0]]))
    assert torch.isfinite(zero).all()


def test_paper_configuration_has_the_published_sizes():
    assert (PAPER.d_model, PAPER.n_layers, PAPER.n_heads, PAPER.steps, PAPER.rnn_hidden) == (64, 4, 4, 500, 256)
    m = model(PAPER)
    # sizes in the reference description; the published encoder also holds an unused 12,608-parameter MLP and
    # two unused scalars
    enc = sum(p.numel() for p in m.encoder.parameters())
    den = sum(p.numel() for p in m.denoiser.parameters())
    assert enc == 1_463_170 - 12_608 - 2
    assert abs(den - 121_159) < 0.05 * 121_159


# ------------------------------------------------------------------------------- issue 11: conditioning options
def test_relative_location_round_trips_and_its_jacobian_is_the_derivative():
    sc = Scaler.from_stats(STATS, "log", 0.05, location="relative", location_scale=0.01)
    assert sc.relative and float(sc.r0) == pytest.approx(0.01 * 200)  # a fraction of the wider side, x
    gen = torch.Generator().manual_seed(0)
    truth = torch.cat([torch.rand(64, 1, generator=gen) * 3 + 0.01, (torch.rand(64, 2, generator=gen) - 0.5) * 150], 1)
    ref = (torch.rand(64, 2, generator=gen) - 0.5) * 150
    ref[:8] = truth[:8, 1:]  # displacement 0: where asinh is steepest
    u = sc(truth[:, 0], truth[:, 1:], ref)
    assert torch.allclose(sc.inverse(u, ref), truth, rtol=1e-4, atol=1e-3)
    assert u[:, 1:].abs().max() < 1  # any displacement inside the region lands inside [-1, 1]
    # the log-Jacobian per coordinate is the log of the derivative of the map (checked by autograd, in float64)
    t64 = truth.double().requires_grad_(True)
    v = sc.double()(t64[:, 0], t64[:, 1:], ref.double())
    grads = torch.stack([torch.autograd.grad(v[:, i].sum(), t64, retain_graph=True)[0][:, i] for i in range(3)], 1)
    assert torch.allclose(sc.log_jacobian(truth, ref), grads.abs().log(), atol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        sc(truth[:, 0], truth[:, 1:])


def test_conditioning_inputs_reach_the_encoder_and_magnitudes_are_forecast():
    import dataclasses

    data = toy_set()
    data.mark = np.random.default_rng(1).uniform(2.5, 6, len(data.t))
    batch = data.collate(np.arange(len(data)))
    assert batch.mark is not None and batch.mark.shape == batch.time.shape
    cfg = dataclasses.replace(TINY, mark_inputs=True, time_features=True, location="relative")
    torch.manual_seed(0)
    m = DSTPP(cfg, Scaler.from_stats(STATS, "log", 0.05, "relative", statistics=Statistics(mark_mc=2.5))).eval()
    assert m.mark_names == ("magnitude",)
    h = m.encode(batch)
    other = data.collate(np.arange(len(data)))
    other.mark[:, 0] += 2.0  # a bigger first shock changes what the model expects next
    assert not torch.allclose(m.encode(other)[:, -1], h[:, -1])
    plain = model()
    assert plain.mark_names == () and torch.equal(plain.encode(other), plain.encode(batch))  # marks ignored
    drawn = m.with_sampling(Sampling(sampler="ddim", steps=5)).forecast(Histories.from_sequences(data)).sample(
        7, np.random.default_rng(0))
    assert drawn.events.shape == (len(data), 7, 3) and drawn.marks["magnitude"].shape == (len(data), 7)
    assert (drawn.marks["magnitude"] >= 2.5).all()
    with pytest.raises(ValueError, match="magnitudes"):
        m.encode(model().history_batch(Histories.from_sequences(toy_set())))


# ------------------------------------------------------------------------------------ checkpoints, older format
def test_a_checkpoint_of_the_older_format_scores_and_samples_as_the_new_one(tmp_path):
    """Written before the scaler held the train split's statistics, a checkpoint's configuration carried them
    (mark_center ... parent_c) and its weights had no ``scaler._extra_state``: ``checkpoints.upgraded`` reads it,
    and the model it loads scores and samples exactly as the same model saved in the new format."""
    import dataclasses
    import json

    from stforecast.checkpoints import STATISTICS_KEY, load_model, upgraded

    data = toy_set()
    data.mark = np.random.default_rng(1).uniform(2.5, 6, len(data.t))
    cfg = dataclasses.replace(TINY, mark_inputs=True, mark_head=True, location="parent")
    fitted = Statistics(mark_center=3.46, mark_scale=0.81, mark_mc=2.5, mark_b=1.07, parent_c=0.032)
    torch.manual_seed(0)
    m = DSTPP(cfg, Scaler.from_stats(STATS, "log", 0.05, "parent", statistics=fitted)).eval()
    new_state = m.state_dict()
    old_state = {k: v for k, v in new_state.items() if k != STATISTICS_KEY}  # what the older version wrote
    old_config = {**cfg.to_dict(), **dataclasses.asdict(fitted)}
    torch.save({"model": new_state, "model_config": json.dumps(cfg.to_dict())}, tmp_path / "new.pt")
    torch.save({"model": old_state, "model_config": json.dumps(old_config)}, tmp_path / "old.pt")

    state, config = upgraded(old_state, json.dumps(old_config))
    assert json.loads(config) == cfg.to_dict() and torch.equal(state[STATISTICS_KEY], new_state[STATISTICS_KEY])
    # written before the statistics were stored at all: the defaults
    assert torch.equal(upgraded(old_state, json.dumps(cfg.to_dict()))[0][STATISTICS_KEY], Statistics().as_tensor())

    new, old = load_model(tmp_path / "new.pt"), load_model(tmp_path / "old.pt")
    assert new.scaler.statistics == old.scaler.statistics == fitted and new.cfg == old.cfg == cfg
    seq, cut = np.arange(4), np.full(4, 3)
    sub, truth = data.prefixes(seq, cut)
    results = []
    for model in (m, new, old):
        dist = model.with_sampling(Sampling("ddim", 5)).forecast(Histories.from_sequences(sub))
        drawn = dist.sample(6, np.random.default_rng(0))
        results.append((drawn.events, drawn.marks["magnitude"], dist.nll(truth).joint,
                        *dist.mark_nll({"magnitude": data.next_marks(seq, cut)}).values()))
    for a, b, c in zip(*results):
        assert np.array_equal(a, b) and np.array_equal(a, c)
