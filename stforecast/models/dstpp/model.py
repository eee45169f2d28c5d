"""The DSTPP model: scaler, history encoder and denoiser composed; the training loss; encoder states of
histories; the sampling configuration and samplers. Simulation and likelihoods live beside it
(:mod:`.simulation`, :mod:`.likelihood`); the next-event distribution in :mod:`.forecaster`."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stforecast.batch import Batch, SequenceSet
from stforecast.diffusion.ode import ProbabilityFlow, clamp_steps
from stforecast.diffusion.schedule import (
    DPMSolverSampler,
    NoiseSchedule,
    make_sampler,
    sample_loop,
)
from stforecast.models.base import Forecaster, Histories
from stforecast.models.dstpp import likelihood, simulation
from stforecast.models.dstpp.config import DISPLACEMENTS, OUTSIDE, ModelConfig
from stforecast.models.dstpp.denoiser import CoAttentionDenoiser, ContinuousDenoiser
from stforecast.models.dstpp.encoder import HistoryEncoder, length_buckets
from stforecast.models.dstpp.forecaster import DiffusionNextEvent
from stforecast.models.dstpp.head import MagnitudeHead
from stforecast.models.dstpp.modes import evaluating
from stforecast.models.dstpp.parents import ParentMixture
from stforecast.models.dstpp.scaler import Scaler
from stforecast.models.marks import sample_gutenberg_richter


class DSTPP(nn.Module, Forecaster):
    name = "dstpp"
    context = 128  # the newest events a forecast conditions on where the catalog defines no sequences
    #: the catalog it was trained on (:attr:`IngestedCatalog.identity`, from its checkpoint); None: not recorded
    trained_on: dict | None = None

    def __init__(self, cfg: ModelConfig, scaler: Scaler | None = None):
        """``scaler``: fitted on the train split (``stforecast.train.build_model``); None: an unfitted one, for a
        checkpoint's ``load_state_dict`` to fill (the configuration alone gives every shape)."""
        super().__init__()
        self.cfg = cfg
        self.scaler = Scaler() if scaler is None else scaler
        for name, module in self.networks(cfg).items():  # encoder, denoiser (and magnitude_head)
            setattr(self, name, module)
        self.schedule = NoiseSchedule(cfg.steps, cfg.schedule)
        # the Forecaster face: forecasts sample as ``self.sampling`` says (:meth:`with_sampling`; by default the
        # probability-flow ODE whose exact density they report); sampler objects are kept per setting
        self._flows, self._samplers = {}, {}
        self.bound_repeats, self.x0_mse = 4, None
        self._clamp_counts = (0, 0)  # values the far clamp moved, values it saw (take_clamped_share)
        self.mark_names = ("magnitude",) if cfg.mark_inputs else ()
        if not cfg.mark_head:
            self.magnitude_head = None
        if not cfg.parents:
            self.mixture = None

    # written beside the model, methods of it: catalog simulation, and the exact likelihood and its bound
    simulate_catalogs = simulation.simulate_catalogs
    exact_nll = likelihood.exact_nll
    mixture_exact_nll = likelihood.mixture_exact_nll
    nll_bound = likelihood.nll_bound
    reverse_variance_fit = likelihood.reverse_variance_fit

    @staticmethod
    def networks(cfg: ModelConfig) -> dict[str, nn.Module]:
        """The model's networks (everything with weights but the scaler), by attribute name. Built on the meta
        device, they give a checkpoint's expected weight shapes without allocating any memory."""
        nets = {"encoder": HistoryEncoder(cfg),
                "denoiser": CoAttentionDenoiser(cfg.d_model, cfg.denoiser_width, cfg.denoiser_layers)}
        if cfg.mark_head:
            nets["magnitude_head"] = MagnitudeHead(3 * cfg.d_model, cfg)
        if cfg.parents:
            nets["mixture"] = ParentMixture(cfg)
        return nets

    # ------------------------------------------------------------------------------------ forecaster interface
    def configure(self, *, bound_repeats: int | None = None) -> "DSTPP":
        """Evaluation settings: Monte-Carlo draws of the likelihood bound. (How forecasts sample is a
        :class:`~stforecast.sampling.Sampling`, given by :meth:`with_sampling`.)"""
        if bound_repeats is not None:
            self.bound_repeats = bound_repeats
        return self

    @property
    def magnitudes(self) -> str:
        """Where simulated events' magnitudes come from: "model" (the head, when the sampling asks for the model's
        own), "gutenberg-richter" (the fill-in above Mc with :attr:`fill_b`: asked for, or what a model that reads
        magnitudes without forecasting them needs) or "none"."""
        has_marks = self.cfg.mark_inputs or self.cfg.mark_head
        if self.sampling.magnitudes == "model" and self.magnitude_head is not None:
            return "model"
        if has_marks and (self.sampling.magnitudes == "gutenberg-richter" or self.cfg.mark_inputs):
            return "gutenberg-richter"
        return "none"

    @property
    def fill_b(self) -> float:
        """The b-value of the Gutenberg-Richter fill-in: the sampling's, else the model's training split's."""
        return self.sampling.magnitude_b or self.scaler.statistics.mark_b

    @property
    def forecast_marks(self) -> tuple:
        """("magnitude",) when simulated events carry the head's magnitudes, () otherwise (a fill-in is not)."""
        return ("magnitude",) if self.magnitudes == "model" else ()

    def sampler_object(self):
        """What forecasts sample with (:attr:`sampling`): the ProbabilityFlow, the DPM-Solver or the DDIM sampler
        (DDIM on at most the model's K steps)."""
        s = self.sampling
        if s.sampler == "ode":
            return self.flow(s.tolerance)
        steps = min(s.steps, self.cfg.steps) if s.sampler == "ddim" else s.steps
        key = (s.sampler, steps)
        if key not in self._samplers:
            self._samplers[key] = make_sampler(self.schedule, s.sampler, steps)
        return self._samplers[key]

    def flow(self, tolerance: float | None = None) -> ProbabilityFlow:
        """The probability-flow ODE of this model's schedule (adaptive Dormand-Prince, rtol = atol = tolerance,
        default the sampling's). Kept per tolerance and device: a horizon simulation asks for it at every
        simulated event."""
        tol = tolerance or self.sampling.tolerance
        key = (tol, self.schedule.betas.device)
        if key not in self._flows:
            self._flows[key] = ProbabilityFlow(self.schedule, rtol=tol, atol=tol)
        return self._flows[key]

    def continuous_denoiser(self, ctx: dict):
        """``denoise(x, s)`` for the ODE: float64 in and out, the network in its own precision, evaluated at
        step max(s, 0) (it was trained on steps 0..K-1); with ``divergence`` (:meth:`CoAttentionDenoiser.divergence`)
        for the likelihood."""
        return clamp_steps(ContinuousDenoiser(self.denoiser, ctx, self.schedule.betas.dtype))

    def history_batch(self, histories: Histories, context: int | None = None) -> Batch:
        """The histories as a padded batch: the catalog's own sequences where they come with them (evaluation
        of its windows), else each history's newest ``context`` events, times since its oldest one."""
        if histories.sequences is not None:
            return histories.sequences.collate(np.arange(len(histories.sequences)))
        h = histories.newest(context or self.context)
        valid = h.valid
        first = h.t[np.arange(len(h)), h.t.shape[1] - h.lengths]
        mark = h.marks[SequenceSet.MARK][valid] if SequenceSet.MARK in h.marks else None
        rows = SequenceSet(h.t[valid], h.xy[valid][:, 0], h.xy[valid][:, 1], first, np.zeros(int(valid.sum()), bool),
                           np.r_[0, np.cumsum(h.lengths)].astype(np.int64), mark)
        return rows.collate(np.arange(len(h)))

    def calibrate(self, histories: Histories, truth: np.ndarray, seed: int = 1) -> None:
        """Fit the reverse variances of the likelihood bound on these (validation, never test) events (a parent
        mixture reports no bound: nothing to fit)."""
        if self.mixture is not None:
            return
        gen = torch.Generator(device=self.scaler.lo.device).manual_seed(seed)
        self.x0_mse = self.reverse_variance_fit(self.history_batch(histories), torch.as_tensor(truth), generator=gen)

    def forecast(self, histories: Histories) -> "DiffusionNextEvent":
        return DiffusionNextEvent(self, self.history_batch(histories), histories=histories)

    def describe(self) -> str:
        s = self.sampling
        how = {"ode": f"the probability-flow ODE (tolerance {s.tolerance:g})",
               "dpm": f"DPM-Solver++(2M), {s.steps} evaluations",
               "ddim": f"DDIM-{min(s.steps, self.cfg.steps)}"}[s.sampler]
        mixture = (f", a mixture over {self.cfg.parents} candidate parents"
                   + (" and a background" if self.cfg.background else "")) if self.cfg.parents else ""
        return f"DSTPP (K = {self.cfg.steps}{mixture}, sampled with {how})"

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, L, 3 d) history states."""
        return self.encoder(batch.time, self.scaler.position(batch.xy), batch.lengths, *self.row_features(batch))

    def row_features(self, batch: Batch) -> tuple:
        """The optional encoder inputs (wait, step, mark) of every row, each (B, L[, 2]) or None: each row's
        displacement is from the previous row (0 for the first)."""
        if self.cfg.mark_inputs and batch.mark is None:
            raise ValueError("this model reads magnitudes (mark_inputs) and the histories carry none")
        prev = torch.cat([batch.xy[:, :1], batch.xy[:, :-1]], 1)
        return self.row_inputs(batch.dt, batch.xy, prev, batch.mark)

    def row_inputs(self, dt: torch.Tensor, xy: torch.Tensor, prev_xy: torch.Tensor,
                   mark: torch.Tensor | None) -> tuple:
        """The optional encoder inputs of rows with waiting times ``dt`` (...), locations ``xy`` (..., 2), the
        previous rows' locations ``prev_xy`` (..., 2) and magnitudes ``mark`` (...): (scaled log wait, scaled
        displacement (..., 2), standardised magnitude), each None where the configuration reads none. The one
        definition of a row's features, for a whole batch (:meth:`row_features`) and for one simulated row
        (:func:`~stforecast.models.dstpp.simulation.extend`)."""
        cfg, sc, fit = self.cfg, self.scaler, self.scaler.statistics
        wait = sc.time_coordinate(dt) if cfg.time_features else None
        step = sc(dt, xy, prev_xy)[..., 1:] if cfg.location in DISPLACEMENTS else None
        scaled_mark = (mark - fit.mark_center) / fit.mark_scale if cfg.mark_inputs else None
        return wait, step, scaled_mark

    def targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition (N, 3 d) and scaled target x0 (N, 3) for the N target rows: row j conditioned on h_{j-1}."""
        h = self.encode(batch)
        b, j = batch.target.nonzero(as_tuple=True)
        parent = self.parents(batch)
        x0 = self.scaler(batch.dt[b, j], batch.xy[b, j], batch.xy[b, parent[b, j - 1]])
        return h[b, j - 1], x0

    def mixture_targets(self, batch: Batch, generator: torch.Generator | None = None):
        """A parent mixture's training targets: the history states (N, 3 d) of the N target rows; the condition
        (M, 3 d) and scaled target x0 (M, 3) of the M ≤ N targets whose component, drawn from the teacher's
        responsibilities, is a parent's (the background's are closed form); the teacher mixture's mean NLL."""
        h = self.encode(batch)
        b, j = batch.target.nonzero(as_tuple=True)
        state = h[b, j - 1]
        comps = self.mixture.components(batch, state, b, j - 1, self)
        truth = torch.stack([batch.dt[b, j], batch.xy[b, j, 0], batch.xy[b, j, 1]], -1)
        joint = self.mixture.teacher_log_prob(comps, state, truth, self.scaler)  # (N, J + 1)
        teacher_nll = -torch.logsumexp(joint, -1).mean()
        pick = torch.multinomial(torch.softmax(joint.detach(), -1), 1, generator=generator)[:, 0]
        parent = pick < self.cfg.parents
        n = torch.arange(len(pick), device=pick.device)[parent]
        c = pick[parent]
        x0 = self.scaler(truth[n, 0], truth[n, 1:3], comps["ref"][n, c])
        return state, comps["cond"][n, c], x0, teacher_nll

    def parents(self, batch: Batch, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, R) for rows ``rows`` (B, R) of each sequence (default: all, R = L), the row (≤ it) a relative
        location after it is measured from: the row itself ("relative"), or ("parent") the row with the largest
        Omori-Utsu weight 10^m_j / (t_i − t_j + c)^1.1 at t_i: a large shock days ago outweighs a small one
        minutes ago. A function of the history only, so the coordinate change (and the likelihood) stays exact."""
        B, L = batch.time.shape
        cols = torch.arange(L, device=batch.time.device)
        if rows is None:
            rows = cols.expand(B, L)
        if self.cfg.location != "parent":
            return rows
        t_i = torch.gather(batch.time, 1, rows)  # (B, R)
        lag = t_i.unsqueeze(2) - batch.time.unsqueeze(1)  # (B, R, L)
        score = -1.1 * torch.log(lag.clamp(min=0) + self.scaler.statistics.parent_c)
        if batch.mark is not None:
            score = score + math.log(10) * batch.mark.unsqueeze(1)
        score = score.masked_fill(cols.view(1, 1, L) > rows.unsqueeze(2), -math.inf)
        return score.argmax(-1)

    def next_components(self, batch: Batch, cond: torch.Tensor) -> dict:
        """A parent mixture's components for the next event after each history of ``batch`` (states ``cond``
        (B, 3 d)): see :meth:`ParentMixture.components`."""
        b = torch.arange(batch.xy.shape[0], device=batch.xy.device)
        return self.mixture.components(batch, cond, b, batch.lengths - 1, self)

    def reference_location(self, batch: Batch) -> torch.Tensor:
        """(B, 2) each history's reference location for a forecast (its newest event, or its chosen parent)."""
        b = torch.arange(batch.xy.shape[0], device=batch.xy.device)
        return batch.xy[b, self.parents(batch, (batch.lengths - 1).unsqueeze(1))[:, 0]]

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss (so DistributedDataParallel, which hooks ``forward``, sees the whole step)."""
        return self.loss(batch)

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the noise estimate over all target events and the 3 dimensions (a parent
        mixture: over the targets whose drawn component is a parent's, plus the teacher's NLL; see
        :mod:`~stforecast.models.dstpp.parents`)."""
        draw = {} if generator is None else {"generator": generator}  # an explicit None breaks torch.compile
        if self.mixture is not None:
            state, cond, x0, teacher_nll = self.mixture_targets(batch, generator)
        else:
            (state, x0), teacher_nll = self.targets(batch), None
            cond = state
        k = torch.randint(0, self.schedule.steps, (x0.shape[0],), device=x0.device, **draw)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, **draw)
        eps = self.denoiser(self.schedule.add_noise(x0, noise, k), k, self.denoiser.prepare(cond))
        loss = F.mse_loss(eps.float(), noise.float()) if len(x0) else eps.float().sum() * 0
        if teacher_nll is not None:
            loss = loss + self.cfg.teacher_weight * teacher_nll
        if self.magnitude_head is not None:
            if batch.mark is None:
                raise ValueError("this model forecasts magnitudes (mark_head) and the sequences carry none")
            b, j = batch.target.nonzero(as_tuple=True)
            fit = self.scaler.statistics
            loss = loss - self.cfg.mark_weight * self.magnitude_head.log_prob(state, batch.mark[b, j], fit.mark_mc,
                                                                              fit.mark_b).mean()
        return loss

    @torch.no_grad()
    def last_states(self, batch: Batch, max_rows: int = 32768) -> torch.Tensor:
        """(B, 3 d) encoder state after each history's newest event. Histories are encoded in chunks of similar
        length (at most ``max_rows`` padded rows each), so one long history does not pad a thousand short ones."""
        order = torch.argsort(batch.lengths)
        chunk = torch.as_tensor(length_buckets(batch.lengths[order].cpu().numpy(), max_rows), device=order.device)
        out = torch.empty((len(order), 3 * self.cfg.d_model), device=batch.time.device)
        for c in torch.unique(chunk):
            idx = order[chunk == c]
            L = int(batch.lengths[idx].max())
            sub = batch.rows(idx, L)
            h = self.encode(sub)
            out[idx] = h[torch.arange(len(idx), device=h.device), sub.lengths - 1].to(out.dtype)
        return out

    @torch.no_grad()
    def history_states(self, histories: Histories, batch: Batch | None = None, max_rows: int = 32768) -> torch.Tensor:
        """(H, 3 d) encoder state after each history. Histories that are prefixes of a catalog's windows (the
        evaluation's targets) take it from **one causal pass per window**: row j of the window's encoding is the
        state after its first j + 1 rows, so H prefixes of W windows cost W sequences, not H. Otherwise each
        history is encoded (:meth:`last_states`)."""
        origin = None if histories.sequences is None else histories.sequences.origin
        if origin is None:
            return self.last_states(self.history_batch(histories) if batch is None else batch, max_rows)
        source, seq, cut = origin
        windows, which = np.unique(seq, return_inverse=True)
        need = np.zeros(len(windows), dtype=np.int64)
        np.maximum.at(need, which, cut)  # each window encoded as far as its longest prefix
        device = self.scaler.lo.device
        out = torch.empty((len(seq), 3 * self.cfg.d_model), device=device)
        order = np.argsort(need, kind="stable")
        chunk = length_buckets(need[order], max_rows)
        with evaluating(self):
            for c in np.unique(chunk):
                idx = order[chunk == c]
                sub, _ = source.prefixes(windows[idx], need[idx])
                h = self.encode(sub.collate(np.arange(len(idx))).to(device))  # (w, L, 3 d)
                local = np.full(len(windows), -1)
                local[idx] = np.arange(len(idx))
                rows = np.flatnonzero(np.isin(which, idx))
                out[torch.as_tensor(rows, device=device)] = h[torch.as_tensor(local[which[rows]], device=device),
                                                               torch.as_tensor(cut[rows] - 1, device=device)].to(out.dtype)
        return out

    def sample_components(self, comps: dict, cond: torch.Tensor, n: int, sampler,
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """(H, n, 3) draws of a parent mixture after H histories (states ``cond`` (H, 3 d), components ``comps`` of
        :meth:`ParentMixture.components`): each draw picks its component by the weights π, then a parent's component
        samples its diffusion (one batched solve for all of them), the background its closed form."""
        H, J = comps["ref"].shape[:2]
        pick = torch.multinomial(comps["log_pi"].exp(), n, replacement=True, generator=generator)  # (H, n)
        h = torch.arange(H, device=cond.device).unsqueeze(1).expand(H, n)
        out = torch.empty((H, n, 3), device=cond.device, dtype=cond.dtype)
        parent = pick < J
        if parent.any():
            hp, cp = h[parent], pick[parent]
            out[parent] = self.sample_from_condition_with(comps["cond"][hp, cp], 1, sampler, generator,
                                                          comps["ref"][hp, cp])[:, 0].to(out.dtype)
        if (~parent).any():
            out[~parent] = self.mixture.sample_background(cond[h[~parent]], self.scaler, generator).to(out.dtype)
        return out

    def sample_from_condition_with(self, cond: torch.Tensor, n: int, sampler,
                                   generator: torch.Generator | None = None,
                                   ref: torch.Tensor | None = None) -> torch.Tensor:
        """``cond`` (B, 3 d) → (B, n, 3) samples in model units, one batched tensor (no loop over histories), drawn
        with a sampler object from :mod:`stforecast.diffusion.schedule` (DDPM, DDIM, ...) or a
        :class:`~stforecast.diffusion.ode.ProbabilityFlow` (the ODE sampler): :meth:`sampler_object` gives the one
        :attr:`sampling` asks for. ``ref`` (B, 2): each history's reference location (needed by a relative
        location)."""
        ctx = self.denoiser.prepare(cond.unsqueeze(1))  # (B, 1, w): broadcast over the n samples
        x = torch.randn((cond.shape[0], n, 3), device=cond.device, generator=generator, dtype=cond.dtype)
        if isinstance(sampler, ProbabilityFlow):
            # unclipped (clipping would leave the density the ODE reports); the clamp far outside the training
            # range [-1, 1] only keeps exp/sinh finite for an untrained or diverging model
            x0 = self._clamp_far(sampler.sample(self.continuous_denoiser(ctx), x)).to(cond.dtype)
        else:
            def denoise(x_k, k):
                return self.denoiser(x_k, torch.tensor(k, device=x_k.device), ctx)

            x0 = sample_loop(sampler, denoise, x, generator)
            if isinstance(sampler, DPMSolverSampler):  # unclipped like the ODE it solves: the same far clamp
                x0 = self._clamp_far(x0)
        return self.scaler.inverse(x0, None if ref is None else ref.unsqueeze(1))

    def _clamp_far(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0`` clamped to ±OUTSIDE, counting the values the clamp moved (:meth:`take_clamped_share`)."""
        clamped, total = self._clamp_counts
        self._clamp_counts = (clamped + int((x0.abs() > OUTSIDE).sum()), total + x0.numel())
        return x0.clamp(-OUTSIDE, OUTSIDE)

    def take_clamped_share(self) -> float | None:
        (clamped, total), self._clamp_counts = self._clamp_counts, (0, 0)
        return clamped / total if total else 0.0

    @torch.no_grad()
    def sample_magnitudes(self, cond: torch.Tensor, n: int, rng: np.random.Generator,
                          generator: torch.Generator | None = None) -> dict:
        """{"magnitude": (B, n)} numpy magnitudes for ``n`` events after each state ``cond`` (B, 3 d), from the
        head or the Gutenberg-Richter fill-in (``self.magnitudes``); {} for a model without magnitudes."""
        fit = self.scaler.statistics
        if self.magnitudes == "model":
            return {"magnitude": self.magnitude_head.sample(cond, n, fit.mark_mc, fit.mark_b,
                                                            generator).double().cpu().numpy()}
        if self.magnitudes == "gutenberg-richter":
            return {"magnitude": sample_gutenberg_richter((len(cond), n), fit.mark_mc, self.fill_b, rng)}
        return {}

    def log_jacobian(self, truth: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(H, 3) log |d scaled / d model units| at ``truth`` (H, 3) (see :meth:`Scaler.log_jacobian`)."""
        return self.scaler.log_jacobian(truth, ref)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
