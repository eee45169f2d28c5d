"""DSTPP: a spatio-temporal diffusion point process (Yuan et al., KDD 2023), written from its description.

    history ─▶ HistoryEncoder ─▶ h_i = [h_t, h_s, h_st]  (three self-attention streams + recurrent heads)
    next event (dt, x, y) ─scale to [-1, 1]─▶ x0 ─NoiseSchedule─▶ x_k ─CoAttentionDenoiser(x_k, k, h_i)─▶ ε̂

Training minimises ||ε − ε̂||² over every target event (the event after position ``i`` is predicted from
``h_i``, so the encoder only sees the past: the causal mask comes from positions and lengths). Forecasts solve
the probability-flow ODE (:mod:`stforecast.diffusion.ode`), whose exact density is the reported likelihood; the
fast samplers DPM-Solver and DDIM (:class:`stforecast.sampling.Sampling`), and ancestral DDPM (a ``DDPMSampler``
given to ``sample_from_condition_with``), sit beside it in :mod:`stforecast.diffusion.schedule`. ``n`` draws per history run at once, and everything
that does not depend on the noisy value (the history encoding, the denoiser's condition projections, its
attention over the history) is computed once per history, not once per denoising step.

Conditioning options (each an ablation of ``stforecast benchmark``): ``location = "bounded"`` (the default)
diffuses asinh of the displacement from the newest event after mapping the catalog's region onto the plane, so
samples stay in the region; ``"relative"`` the same on the whole plane, ``"parent"`` from an Omori-weighted past
event, ``"absolute"`` the scaled position; ``time_features`` feeds each row's log waiting time to the encoder;
``mark_inputs`` feeds magnitudes and ``mark_head`` forecasts them; ``parents = J`` (issue 22) makes the next
event a mixture over J candidate parents, each component the diffusion around its parent, plus a closed-form
background (:mod:`.parents`), its likelihood still exact.

The package, in reading order:

* :mod:`.config`: ``ModelConfig`` (a plain dataclass), the published preset ``PAPER``, shared constants;
* :mod:`.scaler`: ``Scaler``, (dt, x, y) ↔ [-1, 1]³ with its exact log-Jacobian, and every statistic fitted on
  the train split (its buffers and its ``Statistics``);
* :mod:`.encoder`: ``HistoryEncoder`` and its key/value cache (one row at a time for simulations);
* :mod:`.denoiser`: ``CoAttentionDenoiser``; :mod:`.head`: ``MagnitudeHead``; :mod:`.parents`: ``ParentMixture``
  (candidate parents, mixture weights, background, training teacher);
* :mod:`.model`: ``DSTPP``, the composition, its training loss and encoder states;
* :mod:`.forecaster`: ``DiffusionNextEvent``, samples and likelihood of the next event;
* :mod:`.simulation`, :mod:`.likelihood`: catalog simulation; the exact ODE likelihood and the bound.

The noise schedule, the samplers and the ODE are not here: :mod:`stforecast.diffusion`.
"""

from stforecast.models.dstpp.config import (
    DISPLACEMENTS,
    EDGE,
    OUTSIDE,
    PAPER,
    ModelConfig,
)
from stforecast.models.dstpp.model import DSTPP
from stforecast.models.dstpp.scaler import Scaler, Statistics

__all__ = ["DSTPP", "DISPLACEMENTS", "EDGE", "ModelConfig", "OUTSIDE", "PAPER", "Scaler", "Statistics"]
