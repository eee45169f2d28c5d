"""The DSTPP next-event NLL bound: all K terms, unit conversion to model units, and its tightness."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stforecast.batch import Batch
from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler

CFG = ModelConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, rnn_hidden=0, denoiser_width=8, steps=100, dropout=0.0,
                  location="absolute")


class ExactGaussianDenoiser(nn.Module):
    """The Bayes-optimal noise estimate E[ε | x_k] when scaled data are N(mean, std²) per dimension."""

    def __init__(self, schedule, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.schedule, self.mean, self.std = schedule, mean, std

    def prepare(self, cond):
        return {}

    def forward(self, x_k, k, ctx):
        a, b = self.schedule.sqrt_alpha_bar[k], self.schedule.sqrt_one_minus_alpha_bar[k]
        return b * (x_k - a * self.mean) / (a**2 * self.std**2 + b**2)


def gaussian_model(time_transform: str, mean_phys, std_phys):
    """A DSTPP whose denoiser is exact for events that are Gaussian in its diffused coordinates
    ((log) waiting time, x, y), with the given physical mean and std per coordinate."""
    lo = np.array(mean_phys) - 4 * np.array(std_phys)
    hi = np.array(mean_phys) + 3 * np.array(std_phys)  # deliberately asymmetric: the scaled mean is not 0
    key = "log_dt" if time_transform == "log" else "dt"
    stats = {key: {"min": lo[0], "max": hi[0]}, "x": {"min": lo[1], "max": hi[1]}, "y": {"min": lo[2], "max": hi[2]}}
    cfg = ModelConfig(**{**CFG.to_dict(), "time_transform": time_transform, "range_margin": 0.0})
    torch.manual_seed(0)
    model = DSTPP(cfg, Scaler.from_stats(stats, time_transform)).eval()
    half = torch.tensor((hi - lo) / 2, dtype=torch.float32)
    mean_scaled = (torch.tensor(mean_phys, dtype=torch.float32) - torch.tensor(lo, dtype=torch.float32)) / half - 1
    model.denoiser = ExactGaussianDenoiser(model.schedule, mean_scaled, torch.tensor(std_phys, dtype=torch.float32) / half)
    return model


def history_batch(t: np.ndarray, xy: np.ndarray) -> Batch:
    """A (B, L) batch of B histories of equal length L: ``t`` (B, L) model times, ``xy`` (B, L, 2)."""
    t = torch.as_tensor(np.asarray(t, dtype=np.float32))
    xy = torch.as_tensor(np.asarray(xy, dtype=np.float32))
    B, L = t.shape
    dt = torch.zeros_like(t)
    dt[:, 1:] = t[:, 1:] - t[:, :-1]
    return Batch(time=t - t[:, :1], dt=dt, xy=xy, mask=torch.ones((B, L), dtype=torch.bool),
                 target=torch.zeros((B, L), dtype=torch.bool), lengths=torch.full((B,), L, dtype=torch.long))


def draw(time_transform, mean_phys, std_phys, n, seed):
    rng = np.random.default_rng(seed)
    v = rng.normal(mean_phys, std_phys, (n, 3))
    if time_transform == "log":
        v[:, 0] = np.exp(v[:, 0])
    histories = history_batch(np.cumsum(rng.exponential(1.0, (n, 5)), 1), rng.normal(0, 1, (n, 5, 2)))
    return histories, torch.tensor(v)


@pytest.mark.parametrize("time_transform", ["none", "log"])
def test_bound_of_a_known_gaussian_gives_the_analytic_nll_in_model_units(time_transform):
    mean, std = [2.0, 30.0, -12.0], [0.5, 8.0, 3.0]  # e.g. dt in days (or log days), x/y in km
    model = gaussian_model(time_transform, mean, std)
    gen = torch.Generator().manual_seed(1)
    mse = model.reverse_variance_fit(*draw(time_transform, mean, std, 4000, seed=1), generator=gen)
    histories, truth = draw(time_transform, mean, std, 4000, seed=2)
    analytic = np.array([0.5 * math.log(2 * math.pi * s**2) + 0.5 for s in std])  # per coordinate, nats
    if time_transform == "log":
        analytic[0] += mean[0]  # p(dt) = p(log dt) / dt, and E[log dt] = mean
    fitted = model.nll_bound(histories, truth, repeats=2, x0_mse=mse, generator=gen)
    per_dim = fitted.per_event.mean(0).numpy()
    se = fitted.per_event.std(0).numpy() / math.sqrt(len(truth))
    # the fitted-variance bound is tight: within sampling error of the exact NLL, dimension by dimension
    assert np.all(np.abs(per_dim - analytic) < 4 * se + 0.02), (per_dim, analytic, se)
    # the Jacobian matters: in scaled units the numbers are far off
    assert abs(fitted.scaled.mean((0, 1)).sum().item() - analytic.sum()) > 1.0
    # DDPM's fixed variances give a valid but looser bound
    fixed = model.nll_bound(histories, truth, repeats=1, generator=gen).per_event.mean(0).numpy()
    assert np.all(fixed > analytic + 0.1)
    assert 0 < fitted.mc_se < 0.05


def test_bound_is_higher_for_events_the_model_finds_unlikely():
    mean, std = [0.0, 0.0, 0.0], [1.0, 10.0, 10.0]
    model = gaussian_model("none", mean, std)
    histories, truth = draw("none", mean, std, 500, seed=3)
    far = truth.clone()
    far[:, 1] += 30.0  # three standard deviations away in x
    gen = torch.Generator().manual_seed(0)
    mse = model.reverse_variance_fit(*draw("none", mean, std, 2000, seed=4), generator=gen)
    near_b = model.nll_bound(histories, truth, repeats=2, x0_mse=mse, generator=gen).per_event.mean(0)
    far_b = model.nll_bound(histories, far, repeats=2, x0_mse=mse, generator=gen).per_event.mean(0)
    assert far_b[1] - near_b[1] == pytest.approx(4.5, abs=0.6)  # analytic: E[(z+3)²−z²]/2 = 4.5 nats
    assert torch.allclose(far_b[[0, 2]], near_b[[0, 2]], atol=0.15)
