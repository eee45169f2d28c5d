"""Sample scores against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from stforecast.metrics import crps_from_samples, energy_score


def gaussian_crps(mu, sigma, y):
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


@pytest.mark.parametrize("y", [-1.3, 0.0, 0.4, 2.5])
def test_crps_of_a_gaussian(y):
    rng = np.random.default_rng(0)
    s = rng.normal(0.2, 1.5, (1, 40_000))
    assert crps_from_samples(s, np.array([y]))[0] == pytest.approx(gaussian_crps(0.2, 1.5, y), rel=0.02)


def test_crps_exact_small_cases_and_energy_score_reduces_to_crps_in_1d():
    # one sample: CRPS is the absolute error; two samples {0, 2} at y = 1: E|X-y| = 1, E|X-X'| = 1 → 0.5
    assert crps_from_samples(np.array([[3.0]]), np.array([1.0]))[0] == pytest.approx(2.0)
    assert crps_from_samples(np.array([[0.0, 2.0]]), np.array([1.0]))[0] == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 150))
    y = rng.normal(size=5)
    assert np.allclose(energy_score(s[..., None], y[:, None]), crps_from_samples(s, y))
    # a sharper forecast centred on the truth scores better
    sharp, wide = rng.normal(0, 0.1, (1, 500, 2)), rng.normal(0, 2.0, (1, 500, 2))
    assert energy_score(sharp, np.zeros((1, 2)))[0] < energy_score(wide, np.zeros((1, 2)))[0]


def test_coverage_is_nominal_for_a_calibrated_forecast_and_off_for_a_narrow_one():
    from stforecast.metrics import hdr_coverage, interval_coverage

    rng = np.random.default_rng(3)
    H, n = 2000, 400
    centre = rng.normal(0, 5, H)
    truth = centre + rng.normal(0, 1, H)
    good = centre[:, None] + rng.normal(0, 1, (H, n))
    narrow = centre[:, None] + rng.normal(0, 0.3, (H, n))
    cov = interval_coverage(good, truth)
    assert all(abs(cov[k] - k) < 0.03 for k in cov)
    assert interval_coverage(narrow, truth)[0.8] < 0.4
    centre2 = rng.normal(0, 5, (300, 2))
    truth2 = centre2 + rng.normal(0, 1, (300, 2))
    good2 = centre2[:, None, :] + rng.normal(0, 1, (300, 300, 2))
    cov2 = hdr_coverage(good2, truth2, levels=(0.8,))
    assert abs(cov2[0.8] - 0.8) < 0.07
