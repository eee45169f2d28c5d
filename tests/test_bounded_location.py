"""The bounded location (issue 20): the catalog's region box mapped onto the plane (logit per coordinate), then the
multi-scale asinh of the displacement from the reference there. Samples never leave the box, the log-Jacobian is
exact (autograd agrees), the inverse round-trips, and a density in the diffusion's coordinates pulls back to one
that integrates to 1 over the box."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stforecast.sampling import Sampling

from stforecast.models.dstpp import OUTSIDE, Scaler

STATS = {"log_dt": {"min": -6.0, "max": 3.0}, "dt": {"min": 0.0, "max": 20.0},
         "x": {"min": -900.0, "max": 1100.0}, "y": {"min": -1300.0, "max": 1400.0}}
REGION = (-1000.0, -1400.0, 1200.0, 1500.0)  # the catalog's region: a little wider than the train targets


def scaler(location_scale: float = 0.002) -> Scaler:
    return Scaler.from_stats(STATS, "log", 0.05, "bounded", location_scale, REGION).double()


def inside(xy: torch.Tensor, sc: Scaler) -> bool:
    x0, y0, x1, y1 = sc.support()
    return bool(((xy[..., 0] >= x0) & (xy[..., 0] <= x1) & (xy[..., 1] >= y0) & (xy[..., 1] <= y1)).all())


def test_the_support_is_the_region_widened_by_the_margin():
    x0, y0, x1, y1 = scaler().support()
    assert x0 == pytest.approx(-1000 - 0.05 * 2200) and x1 == pytest.approx(1200 + 0.05 * 2200)
    assert y0 == pytest.approx(-1400 - 0.05 * 2900) and y1 == pytest.approx(1500 + 0.05 * 2900)


@pytest.mark.parametrize("scale", [1.0, 10.0, 1e3, 1e30])
def test_samples_never_leave_the_region_whatever_the_noise(scale):
    sc = scaler()
    g = torch.Generator().manual_seed(0)
    u = torch.randn((20_000, 3), generator=g, dtype=torch.float64) * scale
    u = u.clamp(-OUTSIDE, OUTSIDE) if scale > 10 else u  # what the sampler's far clamp does; below it, raw draws
    ref = torch.stack([torch.empty(20_000).uniform_(-1000, 1200, generator=g),
                       torch.empty(20_000).uniform_(-1400, 1500, generator=g)], -1).double()
    xy = sc.inverse(u, ref)[:, 1:]
    assert torch.isfinite(xy).all() and inside(xy, sc)
    # float32, as forecasts run: still inside
    xy32 = sc.float().inverse(u.float(), ref.float())[:, 1:]
    assert torch.isfinite(xy32).all() and inside(xy32.double(), sc.double())


def test_the_inverse_round_trips():
    sc = scaler()
    g = torch.Generator().manual_seed(1)
    n = 5000
    xy = torch.stack([torch.empty(n).uniform_(-1050, 1250, generator=g),
                      torch.empty(n).uniform_(-1450, 1550, generator=g)], -1).double()
    ref = xy[torch.randperm(n, generator=g)]
    dt = torch.exp(torch.empty(n).uniform_(-5, 2, generator=g)).double()
    back = sc.inverse(sc(dt, xy, ref), ref)
    assert torch.allclose(back[:, 0], dt, rtol=1e-9)
    assert (back[:, 1:] - xy).abs().max() < 1e-6  # km


def test_the_log_jacobian_equals_autograds():
    sc = scaler()
    g = torch.Generator().manual_seed(2)
    n = 200
    truth = torch.stack([torch.exp(torch.empty(n).uniform_(-5, 2, generator=g)),
                         torch.empty(n).uniform_(-1050, 1250, generator=g),
                         torch.empty(n).uniform_(-1450, 1550, generator=g)], -1).double()
    ref = truth[torch.randperm(n, generator=g), 1:]
    analytic = sc.log_jacobian(truth, ref)
    for i in range(n):
        jac = torch.autograd.functional.jacobian(lambda v: sc(v[:1], v[1:].unsqueeze(0), ref[i:i + 1])[0], truth[i])
        assert torch.allclose(jac - torch.diag(torch.diagonal(jac)), torch.zeros(3, 3, dtype=jac.dtype), atol=1e-12)
        assert torch.allclose(torch.log(torch.diagonal(jac).abs()), analytic[i], atol=1e-8), i


@pytest.mark.parametrize("location_scale, sigma", [(0.05, 0.2), (0.002, 0.3)])
def test_a_density_pulled_back_onto_the_region_integrates_to_one(location_scale, sigma):
    """p(x, y) = N(u(x, y); 0, sigma^2 I) |du/dxy| over the box, integrated by the midpoint rule: 1 within 0.1 %.
    The cells are the images of a grid on the real line (fine near the reference, where the asinh makes the
    density peak, and out to the edges, where the logit piles it up); their widths are exact differences of the
    map, not its Jacobian, so the sum checks the log-Jacobian independently."""
    sc = scaler(location_scale)
    ref = torch.tensor([[150.0, -200.0]], dtype=torch.float64)
    x0, y0, x1, y1 = sc.support()

    def cell_edges(lo, hi, centre):
        z_ref = math.log((centre - lo) / (hi - centre))
        z_max = math.log((1 - 1e-6) / 1e-6)  # the map's own edge (stforecast.models.dstpp.EDGE)
        s = np.linspace(math.asinh((-z_max - z_ref) / 1e-3), math.asinh((z_max - z_ref) / 1e-3), 1501)
        z = z_ref + 1e-3 * np.sinh(s)
        return lo + (hi - lo) / (1 + np.exp(-z))

    ex, ey = cell_edges(x0, x1, 150.0), cell_edges(y0, y1, -200.0)
    X, Y = np.meshgrid((ex[1:] + ex[:-1]) / 2, (ey[1:] + ey[:-1]) / 2)
    area = np.outer(np.diff(ey), np.diff(ex))
    xy = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], -1))
    truth = torch.cat([torch.ones(len(xy), 1, dtype=torch.float64), xy], -1)
    refs = ref.expand(len(xy), 2)
    u = sc(truth[:, 0], truth[:, 1:], refs)[:, 1:]
    log_p = (-0.5 * (u / sigma) ** 2).sum(-1) - 2 * math.log(sigma * math.sqrt(2 * math.pi)) \
        + sc.log_jacobian(truth, refs)[:, 1:].sum(-1)
    mass = float((torch.exp(log_p).numpy() * area.ravel()).sum())
    assert mass == pytest.approx(1.0, abs=1e-3)


def test_an_event_outside_the_support_has_no_density():
    sc = scaler()
    truth = torch.tensor([[1.0, 5000.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    lj = sc.log_jacobian(truth, torch.zeros(2, 2, dtype=torch.float64))
    assert lj[0, 1] == -math.inf and torch.isfinite(lj[1]).all()


@pytest.fixture(scope="module")
def bounded_model(ridgecrest_tiny, tmp_path_factory):
    """A tiny DSTPP with a bounded location trained a few steps on the Ridgecrest sample (plumbing, not quality):
    (catalog folder, checkpoint)."""
    from stforecast.train import TrainConfig, train

    r, _ = ridgecrest_tiny
    out = tmp_path_factory.mktemp("rc-bounded") / "run"
    train(TrainConfig(data=str(r.out_dir), model={"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                                                  "rnn_hidden": 16, "steps": 30, "location": "bounded"},
                      epochs=1, max_steps=6, batch_size=8, progress=False, out_dir=str(out)))
    return r.out_dir, out / "best.pt"


def test_a_bounded_model_samples_inside_the_catalogs_region_even_when_its_network_is_wild(bounded_model):
    from stforecast.forecast import history_of, next_event, simulate_horizon
    from stforecast.ingested import IngestedCatalog
    from stforecast.checkpoints import load_model

    folder, checkpoint = bounded_model
    model = load_model(checkpoint)
    catalog = IngestedCatalog.open(folder)
    x0, y0, x1, y1 = catalog.region
    sx0, sy0, sx1, sy1 = model.scaler.support()
    assert sx0 < x0 and sy0 < y0 and sx1 > x1 and sy1 > y1  # the support holds the region, with its margin
    t, xy, marks = history_of(catalog.events, model.context)
    # a denoiser that predicts no noise sends the ODE to x0 = x_K / sqrt(alpha_bar): far past the clamp
    model.denoiser.forward = lambda x, k, ctx: torch.zeros_like(x)
    for sampler in ("ode", "dpm", "ddim"):
        s = next_event(model.with_sampling(Sampling(sampler=sampler)), t, xy, 2000)
        assert np.isfinite(s[["x", "y"]].to_numpy()).all()
        assert s["x"].between(sx0, sx1).all() and s["y"].between(sy0, sy1).all(), sampler
    hf = simulate_horizon(model, t, xy, t[-1] + 0.5, 20, max_events=30)
    assert hf.events["x"].between(sx0, sx1).all() and hf.events["y"].between(sy0, sy1).all()


def test_a_bounded_models_exact_likelihood_is_finite_on_the_catalogs_events(bounded_model):
    from stforecast.evaluate import next_event_targets
    from stforecast.ingested import IngestedCatalog
    from stforecast.checkpoints import load_model

    folder, checkpoint = bounded_model
    model = load_model(checkpoint)
    targets = next_event_targets(folder, "val", 30, 0)
    dist = model.with_sampling(Sampling(tolerance=1e-3)).forecast(targets.histories_for(IngestedCatalog.open(folder).events,
                                                                                model.context))
    nll = dist.nll(targets.truth).joint_per_event
    assert np.isfinite(nll).all()
