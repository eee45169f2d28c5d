"""ETAS's parameterisation: the parameter vector and its bounds, the spatial kernel variants (their log density and
their draws), and the Omori cut-off. Shared by the fit (:mod:`.etas`) and the simulation (:mod:`.etas_simulation`)."""

from __future__ import annotations

import math

import numpy as np


NAMES = ("mu", "A", "alpha", "c", "p", "D", "q", "gamma")
VARIANTS = ("power-law", "power-law-alpha", "gaussian")
#: free entries of the unconstrained 8-vector per variant (γ is tied to α outside "power-law"; no q for "gaussian")
FREE = {"power-law": (0, 1, 2, 3, 4, 5, 6, 7), "power-law-alpha": (0, 1, 2, 3, 4, 5, 6), "gaussian": (0, 1, 2, 3, 4, 5)}
BOUNDS = [(None, None), (-12, 3), (0, 4), (-12, 3), (-6, 1.5), (-8, 6), (-6, math.log(2)), (0, 4)]
#: the sampler's first window, as a fraction of the mean background wait 1/μ (:meth:`ETASNextEvent.sample`)
FIRST_WINDOW = 1e-4
#: fit diagnostics kept in the state (module docstring)
INFO = ("mass_beyond_cutoff", "mass_left_out", "omori_lag_1pct", "cap_binds", "pruning_gap", "pairs")


def _unpack(theta):
    """Unconstrained → parameters: logs for positive ones, log(p − 1) and log(q − 1) for the exponents."""
    mu, A, alpha, c, pm1, D, qm1, gamma = theta
    return np.exp(mu), np.exp(A), alpha, np.exp(c), 1 + np.exp(pm1), np.exp(D), 1 + np.exp(qm1), gamma


def _tied(theta, variant: str) -> np.ndarray:
    theta = np.array(theta, dtype=float)
    if variant != "power-law":
        theta[7] = theta[2]  # γ = α
    return theta


def omori_cutoff(c: float, p: float, mass: float) -> float:
    """T with (1 + T/c)^{1−p} = mass: the lag beyond which a fraction ``mass`` of the offspring is left (inf for
    mass 0, or when T overflows)."""
    if mass <= 0:
        return math.inf
    log_ratio = math.log(1 / mass) / (p - 1)
    return math.inf if log_ratio > 700 else c * math.expm1(log_ratio)


def log_spatial(r2, log_sig2, q, variant: str):
    """log f(r | m) of the variant's spatial kernel, its derivative in log σ²(m), and log(1 + r²/σ²) (power laws;
    None for the Gaussian)."""
    u = r2 * np.exp(-log_sig2)
    if variant == "gaussian":
        return -math.log(2 * math.pi) - log_sig2 - u / 2, u / 2 - 1, None
    l2 = np.log1p(u)
    return math.log((q - 1) / math.pi) - log_sig2 - q * l2, q * u / (1 + u) - 1, l2


def _kernel_offsets(log_sig2: np.ndarray, q: float, variant: str, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) displacements from the variant's spatial kernel with scales σ² = exp(``log_sig2``)."""
    n = len(log_sig2)
    sig = np.exp(0.5 * log_sig2)
    if variant == "gaussian":
        return sig[:, None] * rng.normal(size=(n, 2))
    with np.errstate(over="ignore"):
        r = sig * np.sqrt((1 - rng.random(n)) ** (1 / (1 - q)) - 1)  # P(R > r) = (1 + r²/σ²)^{1−q}
    angle = rng.uniform(0, 2 * math.pi, n)
    return np.column_stack([r * np.cos(angle), r * np.sin(angle)])
