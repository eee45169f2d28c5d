"""DSTPP's likelihoods, methods of :class:`~stforecast.models.dstpp.model.DSTPP`: the exact density of its
probability-flow ODE, and the variational upper bound beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stforecast.batch import Batch
from stforecast.diffusion.ode import ODELogProb, solver_error
from stforecast.diffusion.schedule import variational_bound
from stforecast.models.dstpp.modes import evaluating


@torch.no_grad()
def exact_nll(model, histories: Batch, truth: torch.Tensor, tolerance: float | None = None,
              error_events: int = 0, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Exact next-event NLL (H,) of ``truth`` (H, 3) = (dt, x, y) after each history, in model units, by the
    probability-flow ODE (its density is that of the ODE sampler), and ``{"nfe", "solver_error"}``: the
    function evaluations and, on the first ``error_events`` events, the mean change in nats when the tolerance
    is halved. ``cond`` (H, 3 d): the histories' encoder states, if already computed."""
    with evaluating(model):
        cond = model.last_states(histories) if cond is None else cond
        ref = model.reference_location(histories)
        truth = truth.to(cond.device)
        x0 = model.scaler(truth[:, 0], truth[:, 1:3], ref).double()
        flow = model.flow(tolerance)
        ctx = model.denoiser.prepare(cond)
        result = flow.log_prob(model.continuous_denoiser(ctx), x0)
        info = {"nfe": result.nfe, "solver_error": float("nan")}
        if error_events:
            k = min(error_events, len(x0))
            sub = model.continuous_denoiser(first_context_rows(ctx, k))
            info["solver_error"] = solver_error(flow, sub, x0[:k], first_rows(result, k))
        nll = -result.log_prob - model.log_jacobian(truth, ref).sum(-1)
        return nll, info


def first_context_rows(ctx: dict, k: int) -> dict:
    """The denoiser's prepared context (:meth:`CoAttentionDenoiser.prepare`, row-wise) of the first ``k`` rows."""
    return {name: [t[:k] for t in parts] for name, parts in ctx.items()}


def first_rows(result: ODELogProb, k: int) -> ODELogProb:
    """The first ``k`` events of a solve: the base the solver error compares a solve at half the tolerance with
    (those events solved again alone would cost a third solve)."""
    return ODELogProb(result.log_prob[:k], result.latent[:k], result.nfe)


@torch.no_grad()
def mixture_exact_nll(model, histories: Batch, truth: torch.Tensor, cond: torch.Tensor, tolerance: float | None = None,
                      error_events: int = 0) -> tuple[torch.Tensor, dict]:
    """A parent mixture's exact next-event NLL (H,) of ``truth`` (H, 3) after each history (states ``cond`` (H, 3 d)):
    −logsumexp over the components of log π_c + log p_c, each parent component's density its probability-flow
    ODE's (one solve over all H × J (history, parent) pairs), the background's in closed form. ``info`` as
    :func:`exact_nll`'s (the solver error measured on the components of the first ``error_events`` / J histories:
    as many solved rows as a single-reference model's)."""
    with evaluating(model):
        comps = model.next_components(histories, cond)
        H, J = comps["ref"].shape[:2]
        truth = truth.to(cond.device)
        rep = truth.unsqueeze(1).expand(H, J, 3).reshape(H * J, 3)
        ref = comps["ref"].reshape(H * J, 2)
        x0 = model.scaler(rep[:, 0], rep[:, 1:3], ref).double()
        flow = model.flow(tolerance)
        ctx = model.denoiser.prepare(comps["cond"].reshape(H * J, -1))
        result = flow.log_prob(model.continuous_denoiser(ctx), x0)
        info = {"nfe": result.nfe, "solver_error": float("nan")}
        if error_events:
            k = max(1, min(error_events // J, H)) * J  # error_events (history, parent) rows, as many as a single model's
            sub = model.continuous_denoiser(first_context_rows(ctx, k))
            info["solver_error"] = solver_error(flow, sub, x0[:k], first_rows(result, k))
        log_p = (result.log_prob + model.log_jacobian(rep, ref).sum(-1)).view(H, J)
        background = model.mixture.background_log_prob(cond, truth, model.scaler).unsqueeze(1)
        joint = comps["log_pi"].double() + torch.cat([log_p, background], -1)
        return -torch.logsumexp(joint, -1), info


@torch.no_grad()
def _bound_draws(model, histories: Batch, truth: torch.Tensor, repeats: int, x0_mse, generator, cond=None):
    """``repeats`` draws of :func:`variational_bound` for the event ``truth`` (H, 3) after each history."""
    with evaluating(model):
        cond = model.last_states(histories) if cond is None else cond
        ctx = model.denoiser.prepare(cond)
        truth = truth.to(cond.device)
        x0 = model.scaler(truth[:, 0], truth[:, 1:3], model.reference_location(histories))

        def denoise(x_k, k):
            return model.denoiser(x_k.to(cond.dtype), torch.tensor(k, device=x_k.device), ctx)

        return [variational_bound(model.schedule, denoise, x0, x0_mse, generator) for _ in range(repeats)]


def nll_bound(model, histories: Batch, truth: torch.Tensor, repeats: int = 4, x0_mse: torch.Tensor | None = None,
              generator: torch.Generator | None = None, cond: torch.Tensor | None = None) -> "NLLBound":
    """Upper bound on the next-event negative log-likelihood of ``truth`` (H, 3) = (dt, x, y) after each of
    the H histories, in model units (see :func:`variational_bound`; ``repeats`` independent draws are
    averaged). ``x0_mse`` (K, 3) from :meth:`reverse_variance_fit` on validation data tightens it."""
    draws = _bound_draws(model, histories, truth, repeats, x0_mse, generator, cond)
    scaled = torch.stack([bound for bound, _ in draws])  # (R, H, 3)
    return NLLBound(scaled=scaled, log_jacobian=model.log_jacobian(truth.to(scaled.device),
                                                                  model.reference_location(histories)))


def reverse_variance_fit(model, histories: Batch, truth: torch.Tensor, repeats: int = 2,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(K, 3) mean squared error of x̂0 per step and dimension on these (validation, never test) events."""
    draws = _bound_draws(model, histories, truth, repeats, None, generator)
    return torch.stack([sq_err for _, sq_err in draws]).mean(0)


@dataclass
class NLLBound:
    """Monte-Carlo draws of the next-event NLL bound. ``scaled`` (R, H, 3): R draws for H events, per dimension
    (dt, x, y), in the scaled [-1, 1] units the diffusion runs in; ``log_jacobian`` (H, 3) converts to model units.
    """

    scaled: torch.Tensor
    log_jacobian: torch.Tensor

    @property
    def per_event(self) -> torch.Tensor:
        """(H, 3) bound in model units (nats; dt in the catalog's time unit, x/y in its length unit)."""
        return self.scaled.mean(0) - self.log_jacobian

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error of the mean joint bound over events (the spread between the R draws)."""
        joint = self.scaled.sum(-1).mean(1)  # (R,)
        return float(joint.std() / math.sqrt(len(joint))) if len(joint) > 1 else float("nan")
