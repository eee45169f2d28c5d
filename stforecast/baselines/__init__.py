"""Classical next-event forecasters with exact densities, on one event stream (t, x, y) in model units.

Each baseline has the same face: ``fit(t, xy, t_end)``, ``next_event_logpdf(t, xy, index)`` (log density of
event ``index`` given all earlier events, split into temporal and spatial parts), and
``sample_next(t, xy, index, n, rng)`` for forecasts. DSTPP and these are scored by the same harness.
"""

from stforecast.baselines.hawkes import HawkesST, simulate_hawkes
from stforecast.baselines.poisson_kde import PoissonKDE

__all__ = ["PoissonKDE", "HawkesST", "simulate_hawkes"]
