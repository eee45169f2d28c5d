"""DSTPP's next-event distribution: samples and likelihood from one object (ifl-tpp's idea)."""

from __future__ import annotations

import numpy as np
import torch

from stforecast.batch import Batch
from stforecast.models.base import NLL, Histories, NextEvent, Samples
from stforecast.models.dstpp.modes import evaluating
from stforecast.models.marks import gutenberg_richter_log_prob


class DiffusionNextEvent(NextEvent):
    """DSTPP's next-event distribution: samples with ``model.sampling`` (the probability-flow ODE by default, else
    DDIM), the **exact** NLL of the ODE's density (kind "exact-ode": the density of the ODE sampler, and of DDIM
    only as far as DDIM approximates that ODE) and, beside it, the full variational **upper bound** (reverse
    variances fitted by :meth:`DSTPP.calibrate` when it was called, DDPM's fixed ones otherwise)."""

    kind = "exact-ode"
    #: events the solver error (tolerance halved) is measured on: a second and third solve, so not all of them
    error_events = 200

    # (the model, "DSTPP", is not imported here: it imports this module)
    def __init__(self, model: "DSTPP", batch: Batch, seed: int = 0, histories: Histories | None = None):  # noqa: F821
        self.model, self.batch, self.seed, self.histories = model, batch, seed, histories
        self._cond = None

    @property
    def cond(self) -> torch.Tensor:
        """(H, 3 d) encoder states after each history, computed once (one pass per window where it can)."""
        if self._cond is None:
            self._cond = (self.model.last_states(self.batch) if self.histories is None
                          else self.model.history_states(self.histories, self.batch))
        return self._cond

    @torch.no_grad()
    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        model = self.model
        gen = torch.Generator(device=model.scaler.lo.device).manual_seed(int(rng.integers(2**62)))
        with evaluating(model):
            cond = self.cond
            sampler = model.sampler_object()
            if model.mixture is None:
                draws = model.sample_from_condition_with(cond, n, sampler, gen, model.reference_location(self.batch))
            else:
                draws = self.sample_mixture(n, sampler, gen)
            marks = model.sample_magnitudes(cond, n, rng, gen)
        return Samples(draws.double().cpu().numpy(), marks)

    def sample_mixture(self, n: int, sampler, gen: torch.Generator) -> torch.Tensor:
        """(H, n, 3) draws of a parent mixture (:meth:`DSTPP.sample_components`)."""
        return self.model.sample_components(self.model.next_components(self.batch, self.cond), self.cond, n,
                                            sampler, gen)

    def mark_nll(self, marks: dict) -> dict:
        """{"magnitude": (H,)} exact NLL of the held-out magnitudes by the model's head (nats per magnitude unit),
        and {"magnitude_gr": (H,)} by the Gutenberg-Richter law of the same train split, beside it."""
        model, cfg, fit = self.model, self.model.cfg, self.model.scaler.statistics
        if "magnitude" not in marks or not (cfg.mark_head or cfg.mark_inputs):
            return {}
        m = np.asarray(marks["magnitude"], float)
        out = {"magnitude_gr": -gutenberg_richter_log_prob(m, fit.mark_mc, fit.mark_b)}
        if model.magnitude_head is not None:
            with torch.no_grad():
                lp = model.magnitude_head.log_prob(self.cond, torch.as_tensor(m, device=self.cond.device),
                                                   fit.mark_mc, fit.mark_b)
            out["magnitude"] = -lp.double().cpu().numpy()
        return out

    def nll(self, truth: np.ndarray) -> NLL:
        """The exact joint NLL by the ODE (no split into time and space: the ODE gives the joint density only),
        with the solver's function evaluations and error; beside it the bound in model units, split into the
        waiting-time and location coordinates' terms (a split of one bound, not a marginal and a conditional), and
        the paper's protocol: the fixed-variance bound in the scaled space, spatial = the mean over x and y."""
        model = self.model
        gen = torch.Generator(device=model.scaler.lo.device).manual_seed(self.seed)
        truth = torch.as_tensor(np.asarray(truth, float))
        if model.mixture is not None:
            return self.mixture_nll(truth)
        exact, info = model.exact_nll(self.batch, truth, error_events=self.error_events, cond=self.cond)
        exact = exact.cpu().numpy()
        bound = model.nll_bound(self.batch, truth, repeats=model.bound_repeats, x0_mse=model.x0_mse, generator=gen,
                                cond=self.cond)
        per_event = bound.per_event.cpu().numpy()
        paper = model.nll_bound(self.batch, truth, repeats=1, generator=gen, cond=self.cond).scaled[0].cpu().numpy()
        nan = np.full(len(exact), np.nan)
        return NLL(np.column_stack([nan, nan]), self.kind,
                   {"nll_bound": float(per_event.sum(1).mean()), "nll_bound_dt": float(per_event[:, 0].mean()),
                    "nll_bound_xy": float(per_event[:, 1:].sum(1).mean()),
                    "nll_bound_kind": "bound" if model.x0_mse is not None else "bound (fixed variances)",
                    "nll_mc_se": bound.mc_se, "nll_ode_nfe": info["nfe"], "nll_ode_solver_error": info["solver_error"],
                    "nll_ode_tolerance": model.sampling.tolerance, "sampler": model.describe(),
                    "paper_nll_dt_scaled": float(paper[:, 0].mean()),
                    "paper_nll_xy_scaled": float(paper[:, 1:].mean())}, joint=exact)

    def mixture_nll(self, truth: torch.Tensor) -> NLL:
        """A parent mixture's exact joint NLL (the logsumexp of its components' ODE densities and the background's);
        no bound beside it (a bound per component would not split into time and space)."""
        model = self.model
        exact, info = model.mixture_exact_nll(self.batch, truth, self.cond, error_events=self.error_events)
        exact = exact.cpu().numpy()
        nan = np.full(len(exact), np.nan)
        return NLL(np.column_stack([nan, nan]), self.kind,
                   {"nll_bound": float("nan"), "nll_bound_dt": float("nan"), "nll_bound_xy": float("nan"),
                    "nll_bound_kind": "", "nll_mc_se": float("nan"), "nll_ode_nfe": info["nfe"],
                    "nll_ode_solver_error": info["solver_error"], "nll_ode_tolerance": model.sampling.tolerance,
                    "sampler": model.describe(), "paper_nll_dt_scaled": float("nan"),
                    "paper_nll_xy_scaled": float("nan")}, joint=exact)
