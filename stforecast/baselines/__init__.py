"""Classical next-event forecasters with exact densities, on one event stream (t, x, y) in model units.

Each is a :class:`~stforecast.models.base.Forecaster` (fitted by ``fit_events``; ``forecast(histories)`` gives
the next-event distribution: exact samples and density), so evaluation, horizon simulation and reports treat it as
they treat DSTPP; ``next_event_logpdf(t, xy, index)`` scores the events of one stream (the fits use it).
:mod:`.kernels` holds what Hawkes and ETAS share (event windows, pairs, the uniform box); ETAS is in three parts:
:mod:`.etas_kernel` (its parameters and spatial kernels), :mod:`.etas` (the model and its fit),
:mod:`.etas_simulation` (next-event sampling and branching catalogs). Hawkes and ETAS condition on every past event whose triggering kernel still carries more than 1 % of
its offspring mass (a time cut-off, capped at 3,000 events).
"""

from stforecast.baselines.etas import ETAS
from stforecast.baselines.etas_simulation import simulate_etas
from stforecast.baselines.hawkes import HawkesST, simulate_hawkes
from stforecast.baselines.poisson_kde import PoissonKDE

__all__ = ["PoissonKDE", "HawkesST", "ETAS", "simulate_hawkes", "simulate_etas"]
