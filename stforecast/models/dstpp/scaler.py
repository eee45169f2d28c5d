"""(dt, x, y) ↔ the diffusion's [-1, 1]³: the scaler, holding every statistic fitted on the train split (the
coordinate ranges as buffers, the scalar :class:`Statistics` as its extra state), so a checkpoint's state dict
restores all of them."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields

import torch
from torch import nn

from stforecast.models.dstpp.config import EDGE
from stforecast.region import Region


@dataclass(frozen=True)
class Statistics:
    """The train split's scalar statistics beside the coordinate ranges (``stforecast.train.build_model`` fits
    them; the defaults are what a model fitted without magnitudes, or without a "parent" location, reads):

    * ``mark_center``, ``mark_scale``: mean and standard deviation of the magnitudes (the encoder's standardised
      magnitude, ``mark_inputs``);
    * ``mark_mc``, ``mark_b``: the magnitude of completeness and Aki's b-value: the Gutenberg-Richter law of
      simulated magnitudes and of ``magnitude_gr``, the magnitude head's lower edge and starting rates;
    * ``parent_c``: Omori's c in model time units (``location = "parent"``: a tenth of the typical waiting time).

    Plain Python numbers, not buffers: numpy's samplers read them, and the tensor arithmetic keeps Python-scalar
    operands on every device. A state dict stores them as one float64 tensor in field order (:meth:`as_tensor`)."""

    mark_center: float = 0.0
    mark_scale: float = 1.0
    mark_mc: float = 0.0
    mark_b: float = 1.0
    parent_c: float = 0.01

    def __post_init__(self) -> None:
        values = astuple(self)
        if not all(math.isfinite(v) for v in values) or min(self.mark_scale, self.mark_b, self.parent_c) <= 0:
            raise ValueError(f"the train split's statistics must be finite, with mark_scale, mark_b and parent_c "
                             f"positive, not {dict(zip((f.name for f in fields(self)), values))}")

    def as_tensor(self) -> torch.Tensor:
        """(5,) float64, in field order: the scaler's extra state."""
        return torch.tensor(astuple(self), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "Statistics":
        """The inverse of :meth:`as_tensor`; a ValueError unless ``values`` holds one valid number per field."""
        names = [f.name for f in fields(cls)]
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (len(names),):
            raise ValueError(f"the scaler's statistics must be {len(names)} numbers ({', '.join(names)})")
        return cls(*values.double().tolist())


class Scaler(nn.Module):
    """(dt, x, y) ↔ [-1, 1]³, the coordinates the diffusion runs in, by a min-max fitted on **train targets**
    (from the ingestion manifest). With ``log_time`` the waiting time is log-transformed first (its distribution
    spans many decades). The location is one of three:

    * absolute (``r0 = 0``): the min-max scaled position;
    * relative (``location = "relative"``/``"parent"``): the displacement ``d`` from a reference point ``ref`` (the
      history's newest event, or its chosen parent) through asinh(d / r0) per coordinate: linear below r0
      (kilometres on a 2,800 km Japan), logarithmic above, so one scale resolves an aftershock cluster and a jump
      across the region. Its support is the whole plane: nothing stops a sample 60,000 km away;
    * bounded (``location = "bounded"``, a box ``box_lo``..``box_hi`` given): each coordinate of the region's box
      is first mapped onto the real line, z = logit((x − box_lo) / (box_hi − box_lo)), and the displacement is
      taken there, asinh((z − z_ref) / r0) (r0 in logit units). The inverse, x = box_lo + (box_hi − box_lo)
      sigmoid(z_ref + r0 sinh(u)), lies inside the box for every u: samples never leave the region, and the
      density's mass is all on it. Near the reference the map is the relative one (dz/dx = 4 / width at the
      box's centre), so it keeps its multi-scale resolution.

    ``xy_lo``/``xy_hi`` scale absolute positions for the encoder in every case. ``statistics``: the train split's
    scalar :class:`Statistics` (magnitudes, Omori's c), kept in the state dict as the module's extra state.

    ``Scaler()`` (nothing given) is the unfitted scaler a checkpoint's ``load_state_dict`` fills: every buffer in
    its shape and dtype, every statistic a placeholder."""

    def __init__(self, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None, log_time: bool = False,
                 r0: float = 0.0, xy_lo: torch.Tensor | None = None, xy_hi: torch.Tensor | None = None,
                 box_lo: torch.Tensor | None = None, box_hi: torch.Tensor | None = None,
                 statistics: Statistics | None = None):
        super().__init__()

        def vector(values, default) -> torch.Tensor:  # float32, a copy: no two buffers share storage
            return torch.as_tensor(default if values is None else values, dtype=torch.float32).clone()

        self.register_buffer("lo", vector(lo, torch.zeros(3)))
        self.register_buffer("hi", vector(hi, torch.ones(3)))
        self.register_buffer("log_time", torch.tensor(bool(log_time)))
        self.register_buffer("r0", torch.tensor(float(r0)))
        self.register_buffer("xy_lo", vector(xy_lo, self.lo[1:]))
        self.register_buffer("xy_hi", vector(xy_hi, self.hi[1:]))
        # the support of a bounded location (zeros: unbounded)
        self.register_buffer("box_lo", vector(box_lo, torch.zeros(2)))
        self.register_buffer("box_hi", vector(box_hi, torch.zeros(2)))
        self.statistics = statistics or Statistics()

    def get_extra_state(self) -> torch.Tensor:
        """The :class:`Statistics` in the state dict (key ``scaler._extra_state``: a float64 tensor in field order)."""
        return self.statistics.as_tensor()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.statistics = Statistics.from_tensor(state)

    @classmethod
    def from_stats(cls, stats: dict, time_transform: str = "log", margin: float = 0.0, location: str = "absolute",
                   location_scale: float = 0.002, region: Region | None = None,
                   statistics: Statistics | None = None) -> "Scaler":
        """``region`` (x0, y0, x1, y1), model units: the catalog's region, whose box widened by ``margin`` of its
        width on each side is a bounded location's support (needed for ``location = "bounded"``). ``statistics``:
        the train split's scalar statistics (default: the placeholders of a model fitted without them)."""
        log_time = time_transform == "log"
        t = stats["log_dt" if log_time else "dt"]
        lo = torch.tensor([t["min"], stats["x"]["min"], stats["y"]["min"]], dtype=torch.float64)
        hi = torch.tensor([t["max"], stats["x"]["max"], stats["y"]["max"]], dtype=torch.float64)
        width = (hi - lo).clamp(min=1e-12)
        lo, hi = lo - margin * width, hi + margin * width
        xy_lo, xy_hi, r0, box_lo, box_hi = lo[1:].clone(), hi[1:].clone(), 0.0, None, None
        if location in ("relative", "parent"):
            region_width = float(width[1:].max())
            r0 = location_scale * region_width
            half = math.asinh(region_width / r0) * (1 + margin)  # a displacement across the whole region
            lo[1:], hi[1:] = -half, half
        elif location == "bounded":
            if region is None:
                raise ValueError("a bounded location needs the catalog's region (x0, y0, x1, y1)")
            r_lo = torch.tensor(region[:2], dtype=torch.float64)
            r_hi = torch.tensor(region[2:], dtype=torch.float64)
            pad = max(margin, 0.01) * (r_hi - r_lo).clamp(min=1e-12)
            box_lo, box_hi = r_lo - pad, r_hi + pad
            # the region's edges sit at logit(±p_edge) in the box: a displacement between them spans 2 logit(…)
            p_edge = float((pad / (box_hi - box_lo)).min())
            span = 2 * math.log((1 - p_edge) / p_edge)
            r0 = 4 * location_scale  # logit units: dz/dx = 4 / width at the box's centre, as relative's r0 / width
            half = math.asinh(span / r0) * (1 + margin)
            lo[1:], hi[1:] = -half, half
        elif location != "absolute":
            raise ValueError(f"location must be 'absolute', 'relative', 'parent' or 'bounded', not {location!r}")
        return cls(lo, hi, log_time, r0, xy_lo, xy_hi, box_lo, box_hi, statistics)

    @property
    def relative(self) -> bool:
        """True when the location is a displacement from a reference point (relative, parent or bounded)."""
        return float(self.r0) > 0

    @property
    def bounded(self) -> bool:
        """True when the location's support is the box ``box_lo``..``box_hi`` (samples never leave it)."""
        return bool((self.box_hi > self.box_lo).all())

    def support(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1): the box every location sample lies in, None for an unbounded location."""
        if not self.bounded:
            return None
        return (*map(float, self.box_lo), *map(float, self.box_hi))

    def _to_line(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) positions in the box → (..., 2) on the real line (logit of the share of the box's width);
        positions within EDGE of an edge (or outside: padding rows) are held at that distance."""
        share = ((xy - self.box_lo) / (self.box_hi - self.box_lo)).clamp(EDGE, 1 - EDGE)
        return torch.log(share) - torch.log1p(-share)

    def _time_value(self, dt: torch.Tensor) -> torch.Tensor:
        if bool(self.log_time):
            return torch.log(dt.clamp(min=math.exp(float(self.lo[0]))))  # ties (dt = 0) sit at the lower edge
        return dt

    def _xy_value(self, xy: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        if not self.relative:
            return xy
        if ref is None:
            raise ValueError("a relative location needs the reference event (the history's newest)")
        if self.bounded:
            return torch.asinh((self._to_line(xy) - self._to_line(ref)) / self.r0)
        return torch.asinh((xy - ref) / self.r0)

    def forward(self, dt: torch.Tensor, xy: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``dt`` (...), ``xy`` (..., 2), ``ref`` (..., 2) (relative only) → (..., 3) in [-1, 1] for
        training-range values."""
        v = torch.cat([self._time_value(dt).unsqueeze(-1), self._xy_value(xy, ref)], -1)
        return 2 * (v - self.lo) / (self.hi - self.lo) - 1

    def time_coordinate(self, dt: torch.Tensor) -> torch.Tensor:
        """(...) waiting times → (...) their scaled diffusion coordinate (an encoder feature)."""
        return 2 * (self._time_value(dt) - self.lo[0]) / (self.hi[0] - self.lo[0]) - 1

    def position(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) absolute positions → (..., 2) in [-1, 1] over the training region (the encoder's input)."""
        return 2 * (xy - self.xy_lo) / (self.xy_hi - self.xy_lo) - 1

    def inverse(self, u: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(..., 3) scaled → (..., 3) = (dt, x, y) in model units (``ref`` (..., 2) for a relative location)."""
        v = (u + 1) / 2 * (self.hi - self.lo) + self.lo
        dt = v[..., 0].exp() if bool(self.log_time) else v[..., 0]
        xy = v[..., 1:]
        if self.bounded:  # held EDGE inside the box, as _to_line holds it: strictly inside, in float32 too
            z = self._to_line(ref) + self.r0 * torch.sinh(xy)
            xy = self.box_lo + (self.box_hi - self.box_lo) * torch.sigmoid(z).clamp(EDGE, 1 - EDGE)
        elif self.relative:
            xy = ref + self.r0 * torch.sinh(xy)
        return torch.cat([dt.unsqueeze(-1), xy], -1)

    def line_log_jacobian(self, xy: torch.Tensor) -> torch.Tensor:
        """(N, 2) log |dz/dx| per coordinate of the box's logit map at ``xy`` (N, 2), float64: dz/dx = (b − a) /
        ((x − a)(b − x)); −inf outside the box (no density there)."""
        xy, a, b = xy.double(), self.box_lo.double(), self.box_hi.double()
        dz = torch.log(b - a) - torch.log((xy - a).clamp(min=1e-300)) - torch.log((b - xy).clamp(min=1e-300))
        return torch.where((xy > a) & (xy < b), dz, torch.full_like(dz, -math.inf))

    def log_jacobian(self, truth: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(H, 3) log |d scaled / d model units| per coordinate at ``truth`` (H, 3) = (dt, x, y): a density in
        scaled units times this is the density in model units (days, km, ...). −log p(model) = −log p(scaled) −
        this. Ties (dt below the training minimum) are scored at that minimum."""
        truth = truth.double()
        out = -torch.log((self.hi - self.lo).double() / 2).expand(truth.shape[0], 3).clone()
        if bool(self.log_time):
            out[:, 0] -= torch.log(truth[:, 0].clamp(min=math.exp(float(self.lo[0]))))  # u = log dt: p(dt) = p(u)/dt
        if self.bounded:  # u = asinh((z - z_ref) / r0), z = logit((x - a) / (b - a)): dz/dx = (b - a) / ((x - a)(b - x))
            xy = truth[:, 1:3]
            d = self._to_line(xy) - self._to_line(ref.double())
            out[:, 1:] += self.line_log_jacobian(xy) - 0.5 * torch.log(d**2 + self.r0.double() ** 2)
        elif self.relative:  # d asinh(d / r0) / dd = 1 / sqrt(d² + r0²)
            d = truth[:, 1:3] - ref.double()
            out[:, 1:] -= 0.5 * torch.log(d**2 + self.r0.double() ** 2)
        return out
