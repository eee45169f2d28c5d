"""Earthquake magnitudes, the one place for the Gutenberg–Richter law every model and report uses: its density, its
sampler (one behaviour everywhere: truncated at :data:`M_MAX`), the b-value (Aki) and the completeness magnitude
(maximum curvature). ETAS draws its magnitudes here, DSTPP its Gutenberg–Richter fill-in, CSEP files theirs."""

from __future__ import annotations

import math

import numpy as np

#: the largest magnitude a simulated event may have: an untruncated law occasionally draws impossible ones
M_MAX = 9.5


def sample_gutenberg_richter(size, mc: float, b: float, rng: np.random.Generator, m_max: float = M_MAX) -> np.ndarray:
    """Magnitudes of shape ``size`` in [mc, m_max) with log10 N(≥ m) ∝ −b m, by inverting the truncated
    exponential CDF."""
    beta = b * math.log(10)
    return mc - np.log1p(-rng.random(size) * -np.expm1(-beta * (m_max - mc))) / beta


def gutenberg_richter_log_prob(m: np.ndarray, mc: float, b: float) -> np.ndarray:
    """log of the Gutenberg-Richter density β e^{−β (m − lo)}, β = b ln 10, lo = Mc − 0.05 (half a 0.1 reporting
    bin below Mc; DSTPP's magnitude head is scored from the same point)."""
    beta = b * math.log(10)
    return math.log(beta) - beta * np.maximum(np.asarray(m, float) - (mc - 0.05), 0)


def aki_b_value(m: np.ndarray, mc: float, bin_width: float = 0.1) -> float:
    """Maximum-likelihood Gutenberg-Richter b-value (Aki 1965, with Utsu's correction for binned magnitudes)."""
    m = np.asarray(m, float)
    m = m[m >= mc]
    return math.log10(math.e) / (m.mean() - (mc - bin_width / 2))


def max_curvature_mc(m: np.ndarray, bin_width: float = 0.1, correction: float = 0.2) -> float:
    """Completeness magnitude by maximum curvature (Wiemer & Wyss 2000): the most populated magnitude bin, plus
    the usual ``correction`` (Woessner & Wiemer 2005), since the raw estimate is biased low."""
    m = np.asarray(m, float)
    bins = np.round(m / bin_width).astype(int)
    values, counts = np.unique(bins, return_counts=True)
    return round(float(values[np.argmax(counts)] * bin_width + correction), 6)
