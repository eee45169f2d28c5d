"""Classical next-event forecasters with exact densities, on one event stream (t, x, y) in model units.

Each baseline has the same face: ``fit(t, xy, t_end)``, ``next_event_logpdf(t, xy, index)`` (log density of
event ``index`` given all earlier events, split into temporal and spatial parts that sum to the joint), and
``sample_next(t, xy, index, n, rng)`` for forecasts (ETAS also takes magnitudes ``m`` and forecasts them). Each is
also a :class:`~stforecast.model.base.Forecaster`, so evaluation, horizon simulation and reports treat it as they
treat DSTPP. Hawkes and ETAS condition on every past event whose triggering kernel still carries more than 1 % of
its offspring mass (a time cut-off, capped at 3,000 events).
"""

from stforecast.baselines.etas import ETAS, simulate_etas
from stforecast.baselines.hawkes import HawkesST, simulate_hawkes
from stforecast.baselines.poisson_kde import PoissonKDE

__all__ = ["PoissonKDE", "HawkesST", "ETAS", "simulate_hawkes", "simulate_etas"]
