"""The probability-flow ODE of a DDPM: the exact log-density of its deterministic (ODE-DDIM) sampler.

Song et al. 2021 (DDIM eq. 14, the score SDE's probability flow): with x̄ = x / sqrt(ᾱ), σ̄ = sqrt((1 − ᾱ) / ᾱ),

    dx̄/dσ̄ = ε̂(sqrt(ᾱ) x̄, step)          (DDIM with η = 0 is Euler's method on this)

Steps are continuous, s ∈ [−1, K−1]: s = −1 is the data (ᾱ = 1), s = k the schedule's ᾱ_k, s = K−1 the prior
N(0, I) that the samplers start from. The solver runs on the noise level τ = asinh σ̄ (ᾱ = sech²τ,
sqrt(1 − ᾱ) = tanh τ), with x itself as the state, not x̄:

    dx/dτ = ε̂(x, s(τ)) − tanh(τ) x
    log p(x0) = log N(x(τ_{K−1}); 0, I) + ∫_0^{τ_{K−1}} [tr ∂ε̂/∂x − D tanh τ] dτ          (Chen et al. 2018)

Why these variables: x stays O(1) along the whole path (x̄ reaches σ̄ ≈ 4·10³ at the cosine prior), so one atol
means the same everywhere and the prior is N(0, I) with no change of variables. τ ≈ σ̄ near the data (finite at
s = −1, unlike log-SNR) and ≈ log 2σ̄ near the prior, where a DDPM's last steps jump: the cosine schedule's last
one (β clipped at 0.999) takes σ̄ from 128 to 4058. Solved in s instead, the field there is concentrated in a
sliver of that one step, and dopri5's error estimate misses it (errors of 1e-3 to 4e-3 in x at rtol 1e-5, measured); in τ
nothing in the coefficients is steep, and for an exact ε the field is analytic in τ. The −D tanh τ term is the
x̄ ↔ x Jacobian (it integrates to (D/2) log ᾱ_{K−1}); inside the integrand it cancels pointwise against
tr ∂ε̂/∂x near the prior (where ε̂ ≈ x) instead of as two large numbers at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy.interpolate import PchipInterpolator
from torchdiffeq import odeint

#: ``denoise(x, s) -> eps``: x (..., D) float64, s a 0-dim float64 tensor, continuous in [−1, K−1].
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@dataclass
class ODELogProb:
    log_prob: torch.Tensor  # (N,) log p(x0) in nats, in the units of x0
    latent: torch.Tensor  # (N, D) x at s = K−1 (``sample(denoise, latent)`` maps it back to x0)
    nfe: int  # evaluations of the vector field (each: one denoise call and D vector-Jacobian products)


class StepClamped:
    """``denoise`` seeing s clamped to ≥ ``lo`` (and its ``divergence``, where it has one)."""

    def __init__(self, denoise: Denoise, lo: float = 0.0):
        self.denoise, self.lo = denoise, lo
        inner = getattr(denoise, "divergence", None)
        self.divergence = None if inner is None else (lambda x, s: inner(x, s.clamp(min=lo)))

    def __call__(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, s.clamp(min=self.lo))


def clamp_steps(denoise: Denoise, lo: float = 0.0) -> Denoise:
    """``denoise`` seeing s clamped to ≥ ``lo``. A network trained on steps 0..K−1 is then evaluated at step 0 on
    s ∈ [−1, 0], the last stretch to the data, as DDIM's final step (k = 0 → x̂0) does."""
    return StepClamped(denoise, lo)


def _max_norm(t: torch.Tensor) -> torch.Tensor:
    # every event (and its log-density) within tolerance: with all N events in one state, torchdiffeq's default RMS
    # norm would let a few hard events hide under the average
    return t.abs().max()


class ProbabilityFlow:
    """The probability-flow ODE of a NoiseSchedule: exact log-density and the matching deterministic sampler.

    The step at noise level τ is s(τ), a monotone cubic (PCHIP) through (0, −1) and (τ_k, k), τ_k = asinh σ̄_k, so
    integer steps reproduce the schedule exactly (to the float32 of its buffers, what the network was trained
    on) and ᾱ(s) = sech² τ(s) is C¹ and monotone in between. PCHIP: C¹, so the network's input, and the field,
    have no kinks at the knots (piecewise-linear would put one at every integer, each one a place where the
    solver's error estimate is unreliable); monotone by construction, so the path never turns back (a C² spline
    through the same points need not be). Only the network sees s; the ODE's coefficients depend on τ alone.
    """

    def __init__(self, schedule, rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5"):
        self.steps, self.rtol, self.atol, self.method = schedule.steps, rtol, atol, method
        #: "auto": the likelihood's trace from the denoiser's ``divergence`` where it has one; "autograd": from D
        #: vector-Jacobian products always (the reference the fast path is checked against)
        self.trace = "auto"
        sigma = schedule.sqrt_recipm1_alpha_bar  # σ̄_k, computed in float64 before the cast: more digits than ᾱ_k
        tau = torch.cat([torch.zeros(1, dtype=torch.float64), torch.asinh(sigma.detach().double().cpu())])
        slopes = PchipInterpolator(tau.numpy(), range(-1, self.steps)).derivative()(tau.numpy())  # ds/dτ
        self._tau = tau.to(sigma.device)
        self._slope = torch.as_tensor(slopes, dtype=torch.float64).to(sigma.device)
        self.tau_end = float(tau[-1])

    def _hermite(self, i: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s and ds/du at fraction u of knot interval i (from step i − 1 to step i)."""
        h = self._tau[i + 1] - self._tau[i]
        d0, d1 = self._slope[i] * h, self._slope[i + 1] * h
        s = i - 1 + u**2 * (3 - 2 * u) + u * (1 - u) ** 2 * d0 - u**2 * (1 - u) * d1
        return s, 6 * u * (1 - u) + (1 - u) * (1 - 3 * u) * d0 + u * (3 * u - 2) * d1

    def step_at(self, tau) -> torch.Tensor:
        """s(τ) for τ (any shape) in [0, τ_{K−1}]."""
        tau = torch.as_tensor(tau, dtype=torch.float64, device=self._tau.device)
        i = (torch.searchsorted(self._tau, tau, right=True) - 1).clamp(0, self.steps - 1)
        return self._hermite(i, (tau - self._tau[i]) / (self._tau[i + 1] - self._tau[i]))[0]

    def tau_at(self, s) -> torch.Tensor:
        """τ(s), the inverse of :meth:`step_at`, for s (any shape) in [−1, K−1]: Newton on the interval's cubic,
        kept inside its bracket (bisecting where a step would leave it), to float64 round-off."""
        s = torch.as_tensor(s, dtype=torch.float64, device=self._tau.device)
        i = (s + 1).floor().clamp(0, self.steps - 1).long()
        lo, hi, u = torch.zeros_like(s), torch.ones_like(s), s + 1 - i
        for _ in range(60):
            value, slope = self._hermite(i, u)
            gap = value - s
            lo, hi = torch.where(gap < 0, u, lo), torch.where(gap > 0, u, hi)
            newton = u - torch.where(gap == 0, 0.0, gap / slope)  # slope is 0 at a flat end knot
            u = torch.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2)
            if bool((gap.abs() < 1e-13).all()):  # the last Newton step squared that
                break
        return self._tau[i] + u * (self._tau[i + 1] - self._tau[i])

    def alpha_bar_at(self, s) -> torch.Tensor:
        """ᾱ(s) = sech² τ(s), float64, for s (any shape): ᾱ(−1) = 1, ᾱ(k) = the schedule's ᾱ_k."""
        return torch.cosh(self.tau_at(s)) ** -2

    def _solve(self, field, state: torch.Tensor, start: float, end: float, rtol=None, atol=None) -> torch.Tensor:
        span = torch.tensor([start, end], dtype=torch.float64, device=state.device)
        # Steps must end on these: on the end, rather than step past it and interpolate back (so the field is never
        # evaluated off the path), and on step 0, where a network clamped by clamp_steps has a kink in s that a
        # step across it would not see (5e-4 errors in x instead of 2e-5 at rtol 1e-5, measured).
        stops = torch.stack([self._tau[1].to(state.device), span[1]])
        options = {"norm": _max_norm, "step_t": stops} if self.method in _ADAPTIVE else {}
        return odeint(field, state, span, rtol=self.rtol if rtol is None else rtol,
                      atol=self.atol if atol is None else atol, method=self.method, options=options)[-1]

    def log_prob(self, denoise: Denoise, x0: torch.Tensor, rtol: float | None = None,
                 atol: float | None = None) -> ODELogProb:
        """Exact log p(x0) (N,) of the flow's distribution for x0 (N, D) scaled data, all events in one solve.

        ``denoise`` gets x (N, D) float64 and s (0-dim float64, continuous, ≥ −1: wrap it in :func:`clamp_steps`
        for a network trained on integer steps). Row n of ε̂ must depend on row n of x only (the trace takes D
        vector-Jacobian products over the whole batch). Where ``denoise`` has ``divergence(x, s) -> (ε̂, Σ_i
        ∂ε̂_i/∂x_i)``, the trace comes from it instead (the same number, without the backward passes: DSTPP's
        denoiser computes it in one forward pass with tangents). Evaluation only: not differentiable in the
        parameters.
        """
        n, d = x0.shape
        nfe = 0
        divergence = getattr(denoise, "divergence", None) if self.trace == "auto" else None

        def field(tau, state):
            nonlocal nfe
            nfe += 1
            if divergence is not None:
                eps, trace = divergence(state[:, :d], self.step_at(tau))
                x = state[:, :d]
            else:
                with torch.enable_grad():  # works under an outer no_grad
                    x = state[:, :d].detach().requires_grad_(True)
                    eps = denoise(x, self.step_at(tau))
                    # exact divergence: one vector-Jacobian product per output coordinate (D is 3 or 4)
                    trace = sum(torch.autograd.grad(eps[:, i].sum(), x, retain_graph=i < d - 1)[0][:, i]
                                for i in range(d))
            shrink = torch.tanh(tau)
            return torch.cat([eps.detach() - shrink * x.detach(), (trace - d * shrink).unsqueeze(-1)], -1)

        state = torch.cat([x0.detach().double(), x0.new_zeros((n, 1), dtype=torch.float64)], -1)
        with torch.no_grad():
            end = self._solve(field, state, 0.0, self.tau_end, rtol, atol)
        latent, change = end[:, :d], end[:, d]
        prior = -0.5 * (latent**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return ODELogProb(prior + change, latent, nfe)

    @torch.no_grad()
    def sample(self, denoise: Denoise, x_end: torch.Tensor) -> torch.Tensor:
        """x_end (..., D) ~ N(0, I) at s = K−1 → x0 (..., D) float64: the same ODE solved backwards, no clipping
        (clipping would leave the distribution whose density :meth:`log_prob` gives). ``denoise`` gets x of
        shape (..., D), all of it in one call per evaluation."""
        def field(tau, x):
            return denoise(x, self.step_at(tau)) - torch.tanh(tau) * x

        return self._solve(field, x_end.double(), self.tau_end, 0.0)


def solver_error(flow: ProbabilityFlow, denoise: Denoise, x0: torch.Tensor,
                 base: ODELogProb | None = None) -> float:
    """Mean |Δ log p| per event, in nats, when both tolerances are halved (``base``: the result at full tolerance
    if already computed). Report it beside any ODE log-likelihood: it should be well under 0.01."""
    base = flow.log_prob(denoise, x0) if base is None else base
    finer = flow.log_prob(denoise, x0, rtol=flow.rtol / 2, atol=flow.atol / 2)
    return (finer.log_prob - base.log_prob).abs().mean().item()
