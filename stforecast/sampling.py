"""How a forecast is drawn: one frozen value that every command builds once from its flags and hands to the model
(:meth:`stforecast.models.base.Forecaster.with_sampling`), and that every output's summary records. The same model,
history, seed and :class:`Sampling` give the same forecast through ``forecast``, ``report``, ``batch``,
``csep-eval`` and the MLflow model.

    sampling = Sampling(sampler="dpm", steps=10)
    model = load_forecaster("runs/demo-japan/best.pt", catalog).with_sampling(sampling)   # a view; not mutated

Models that sample exactly (the baselines) ignore the sampler fields; ETAS takes ``magnitude_b``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

SAMPLERS = ("ode", "dpm", "ddim")
MAGNITUDES = ("model", "gutenberg-richter")


@dataclass(frozen=True)
class Sampling:
    """``sampler``: "ode" (DSTPP's probability-flow ODE, adaptive Dormand-Prince with rtol = atol = ``tolerance``:
    its samples have exactly the density the model reports), "dpm" (DPM-Solver++(2M) on the same ODE, ``steps``
    network evaluations) or "ddim" (``steps`` DDIM steps, at most the model's K). ``magnitudes`` of simulated
    events: "model" (the model's own: DSTPP's magnitude head, ETAS's Gutenberg-Richter law; a DSTPP that reads
    magnitudes but forecasts none falls back to the Gutenberg-Richter law of its training split) or
    "gutenberg-richter" (a Gutenberg-Richter fill-in); ``magnitude_b`` that law's b-value (None: the model's own,
    fitted on its training data)."""

    sampler: str = "ode"
    steps: int = 10
    tolerance: float = 1e-4
    magnitudes: str = "model"
    magnitude_b: float | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {self.sampler!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 10_000:
            raise ValueError(f"sampling steps must be a whole number in 1..10000, not {self.steps!r}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"the ODE tolerance must be in (0, 1), not {self.tolerance!r}")
        if self.magnitudes not in MAGNITUDES:
            raise ValueError(f"magnitudes must be one of {', '.join(MAGNITUDES)}, not {self.magnitudes!r}")
        if self.magnitude_b is not None and not 0.05 <= self.magnitude_b <= 5:
            raise ValueError(f"the Gutenberg-Richter b-value must be in [0.05, 5], not {self.magnitude_b!r}")

    def replace(self, **changes) -> "Sampling":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        how = {"ode": f"probability-flow ODE (tolerance {self.tolerance:g})",
               "dpm": f"DPM-Solver++(2M), {self.steps} evaluations", "ddim": f"DDIM, {self.steps} steps"}
        b = f", b = {self.magnitude_b:.3g}" if self.magnitude_b is not None else ""
        return f"{how[self.sampler]}; magnitudes: {self.magnitudes}{b}"


#: what every command samples with unless told otherwise: the ODE, whose density is the one scored. Its tolerance:
#: on the Japan model 1e-4 changes the validation NLL by < 0.001 nats from 1e-5 at a sixth of the function
#: evaluations (1,166 vs 6,872); the fast sampler's 10 evaluations: `python -m benchmarks.sample_speed --quality`
DEFAULT = Sampling()
#: CSEP catalog forecasts (10,000 catalogs a day): DPM-Solver with 10 evaluations, the speed they need; `forecast
#: --format csep` and `csep-eval` share it, so the two give the same catalogs
CATALOGS = Sampling(sampler="dpm", steps=10)


def add_arguments(parser, default: Sampling | None = DEFAULT) -> None:
    """The sampling flags of a command (``--sampler``, ``--steps``, ``--ode-tolerance``, ``--magnitudes``).
    ``default`` None: the command picks its default later (:func:`from_args`), e.g. by its output format."""
    shown = default or DEFAULT
    group = parser.add_argument_group("sampling (DSTPP; recorded in the output's summary)")
    said = "" if default else " for catalog forecasts (--format csep: dpm, 10 evaluations), else"
    group.add_argument("--sampler", choices=SAMPLERS, default=default and default.sampler,
                       help=f"ode: the probability-flow ODE, whose density is the scored one; dpm: DPM-Solver++ in "
                            f"--steps evaluations; ddim: --steps DDIM steps (default{said} {shown.sampler})")
    group.add_argument("--steps", type=int, default=default and default.steps,
                       help=f"network evaluations of dpm / steps of ddim (default {shown.steps}; the ODE adapts)")
    group.add_argument("--ode-tolerance", type=float, default=default and default.tolerance,
                       help=f"the ODE's rtol = atol (default {shown.tolerance:g})")
    group.add_argument("--magnitudes", choices=MAGNITUDES, default=default and default.magnitudes,
                       help="simulated magnitudes: the model's own (default) or a Gutenberg-Richter fill-in")


def from_args(args, default: Sampling = DEFAULT) -> Sampling:
    """The :class:`Sampling` of a command's flags; flags left unset (None) take ``default``'s values."""
    given = {"sampler": args.sampler, "steps": args.steps, "tolerance": args.ode_tolerance,
             "magnitudes": args.magnitudes}
    return default.replace(**{k: v for k, v in given.items() if v is not None})
