"""DSTPP: a spatio-temporal diffusion point process (Yuan et al., KDD 2023), written from its description.

    history ─▶ HistoryEncoder ─▶ h_i = [h_t, h_s, h_st]  (three self-attention streams + recurrent heads)
    next event (dt, x, y) ─scale to [-1, 1]─▶ x0 ─NoiseSchedule─▶ x_k ─CoAttentionDenoiser(x_k, k, h_i)─▶ ε̂

Training minimises ||ε − ε̂||² over every target event (the event after position ``i`` is predicted from
``h_i``, so the encoder only sees the past: the causal mask comes from positions and lengths). Forecasts solve
the probability-flow ODE (:mod:`stforecast.model.ode`), whose exact density is the reported likelihood; DDPM and
DDIM (:mod:`stforecast.model.schedule`) remain available. ``n`` draws per history run at once, and everything
that does not depend on the noisy value (the history encoding, the denoiser's condition projections, its
attention over the history) is computed once per history, not once per denoising step.

Conditioning options (issue 11, each an ablation of ``stforecast benchmark``): ``location = "relative"`` diffuses
asinh of the displacement from the newest event (a coordinate change with a known Jacobian that resolves
kilometre-scale clusters on a 2,800 km region; ``"parent"`` measures it from an Omori-weighted past event);
``time_features`` feeds each row's log waiting time to the encoder; ``mark_inputs`` feeds magnitudes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from stforecast.baselines.etas import gutenberg_richter_log_prob
from stforecast.batch import Batch
from stforecast.model.base import NLL, Forecaster, Histories, NextEvent, Samples
from stforecast.model.ode import ProbabilityFlow, clamp_steps, solver_error
from stforecast.model.schedule import (DPMSolverSampler, NoiseSchedule, make_sampler, sample_loop,
                                       variational_bound)


@dataclass
class ModelConfig:
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 128
    rnn_hidden: int = 256  # recurrent head per stream; 0 drops the heads
    dropout: float = 0.1
    attn_dropout: float = 0.0  # dropout on attention weights: 4x the attention cost on CPU; the paper uses 0.1
    spatial_embedding: str = "linear"  # "linear" (paper text) or "mlp" (paper code)
    denoiser_width: int = 64
    denoiser_layers: int = 3
    steps: int = 200  # K; the paper's ablation finds K ≈ 200 best, its runs use 500
    schedule: str = "cosine"
    time_transform: str = "log"  # "log": diffuse log waiting times; "none": raw (paper)
    range_margin: float = 0.05  # widen the train min-max range so samples can fall a little outside it
    # conditioning that can express clustering (issue 11; each is an ablation row of the benchmark)
    time_features: bool = False  # the encoder also sees each row's log waiting time (not only time since start)
    mark_inputs: bool = False  # the encoder sees each row's magnitude; simulated events draw Gutenberg-Richter ones
    location: str = "bounded"  # "absolute": diffuse the scaled (x, y); "relative": asinh of the displacement
    # from the newest event; "parent": from the past event an Omori-Utsu weight 10^m / (lag + c)^1.1 picks;
    # "bounded" (issue 20, the default: chosen on the validation NLL of Japan, Chicago and the W-maze,
    # `python -m benchmarks.location_support`): the region's box mapped onto the plane (logit per coordinate),
    # then asinh of the displacement from the newest event there, so every sample lies inside the catalog's region
    location_scale: float = 0.002  # relative: asinh's linear scale r0 as a fraction of the region's width
    # issue 12: magnitude as a forecast mark, p(m | h) a mixture of exponentials above Mc (Gutenberg-Richter is one
    # exponential), read from the history state, trained beside the denoising loss; exact NLL in closed form
    mark_head: bool = False
    mark_components: int = 3
    mark_weight: float = 1.0  # weight of the magnitude NLL in the training loss
    # filled from the train split by stforecast.train.build_model (so a checkpoint carries them)
    mark_center: float = 0.0
    mark_scale: float = 1.0
    mark_mc: float = 0.0  # magnitude of completeness and b-value of the simulated magnitudes
    mark_b: float = 1.0
    parent_c: float = 0.01  # "parent": Omori's c in model time units (a tenth of the typical waiting time)

    def to_dict(self) -> dict:
        return asdict(self)


#: |scaled value| beyond which an ODE sample is clamped (the training data span [-1, 1])
OUTSIDE = 2.0

#: locations diffused as a displacement from a reference event (the encoder also reads each row's step)
DISPLACEMENTS = ("relative", "parent", "bounded")
#: a bounded location's share of the box kept away from its edges (the logit is infinite there)
EDGE = 1e-6

#: The published configuration (d_model 64, 4 layers, 4 heads, LSTM heads of 256, K = 500, raw waiting times).
PAPER = ModelConfig(steps=500, time_transform="none", range_margin=0.0, spatial_embedding="mlp", attn_dropout=0.1,
                    location="absolute")


# -------------------------------------------------------------------------------------------------- scaling
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

    ``xy_lo``/``xy_hi`` scale absolute positions for the encoder in every case."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, log_time: bool, r0: float = 0.0,
                 xy_lo: torch.Tensor | None = None, xy_hi: torch.Tensor | None = None,
                 box_lo: torch.Tensor | None = None, box_hi: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32))
        self.register_buffer("log_time", torch.tensor(bool(log_time)))
        self.register_buffer("r0", torch.tensor(float(r0)))
        self.register_buffer("xy_lo", torch.as_tensor(self.lo[1:] if xy_lo is None else xy_lo, dtype=torch.float32))
        self.register_buffer("xy_hi", torch.as_tensor(self.hi[1:] if xy_hi is None else xy_hi, dtype=torch.float32))
        # the support of a bounded location (zeros: unbounded)
        self.register_buffer("box_lo", torch.zeros(2) if box_lo is None else torch.as_tensor(box_lo, dtype=torch.float32))
        self.register_buffer("box_hi", torch.zeros(2) if box_hi is None else torch.as_tensor(box_hi, dtype=torch.float32))

    @classmethod
    def from_stats(cls, stats: dict, time_transform: str = "log", margin: float = 0.0, location: str = "absolute",
                   location_scale: float = 0.002, region: tuple | None = None) -> "Scaler":
        """``region`` (x0, y0, x1, y1), model units: the catalog's region, whose box widened by ``margin`` of its
        width on each side is a bounded location's support (needed for ``location = "bounded"``)."""
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
        return cls(lo, hi, log_time, r0, xy_lo, xy_hi, box_lo, box_hi)

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

    def log_jacobian(self, truth: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(H, 3) log |d scaled / d model units| per coordinate at ``truth`` (H, 3) = (dt, x, y): a density in
        scaled units times this is the density in model units (days, km, ...). −log p(model) = −log p(scaled) −
        this. Ties (dt below the training minimum) are scored at that minimum."""
        truth = truth.double()
        out = -torch.log((self.hi - self.lo).double() / 2).expand(truth.shape[0], 3).clone()
        if bool(self.log_time):
            out[:, 0] -= torch.log(truth[:, 0].clamp(min=math.exp(float(self.lo[0]))))  # u = log dt: p(dt) = p(u)/dt
        if self.bounded:  # u = asinh((z - z_ref) / r0), z = logit((x - a) / (b - a)): dz/dx = (b - a) / ((x - a)(b - x))
            xy, a, b = truth[:, 1:3], self.box_lo.double(), self.box_hi.double()
            d = self._to_line(xy) - self._to_line(ref.double())
            inside = (xy > a) & (xy < b)
            dz = torch.log(b - a) - torch.log((xy - a).clamp(min=1e-300)) - torch.log((b - xy).clamp(min=1e-300))
            out[:, 1:] += torch.where(inside, dz - 0.5 * torch.log(d**2 + self.r0.double() ** 2), -math.inf)
        elif self.relative:  # d asinh(d / r0) / dd = 1 / sqrt(d² + r0²)
            d = truth[:, 1:3] - ref.double()
            out[:, 1:] -= 0.5 * torch.log(d**2 + self.r0.double() ** 2)
        return out


# -------------------------------------------------------------------------------------------------- encoder
def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Interleaved sin/cos of ``t`` (...) at ``dim`` geometric frequencies → (..., dim)."""
    j = torch.arange(dim, device=t.device)
    div = torch.pow(10000.0, (2 * (j // 2)).float() / dim)
    angle = t.unsqueeze(-1) / div
    return torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))


class EncoderLayer(nn.Module):
    """Post-LayerNorm self-attention block (as the published model): x ← LN(x + MHA(x)); x ← LN(x + FFN(x))."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d))
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.xavier_uniform_(self.proj.weight)

    def forward(self, x: torch.Tensor, keep_kv: list | None = None) -> torch.Tensor:
        """``x`` (B, L, d), right-padded. Row i attends to rows 0..i: since padding only follows the real rows of
        a sequence, the causal mask alone keeps every real row from seeing padding (and the future).
        ``keep_kv``: a list the keys and values (each (B, heads, L, d/heads)) are appended to (an encoder cache)."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if keep_kv is not None:
            keep_kv.append((k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self._finish(x, a)

    def _finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        x = self.ln1(x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, d))))
        return self.ln2(x + self.drop(self.ff(x)))

    def step(self, x: torch.Tensor, cache: "LayerCache") -> torch.Tensor:
        """One new row per sequence: ``x`` (B, 1, d) attends to the cached rows and itself; its key and value
        join the cache. Equal to :meth:`forward` on the whole sequence, at that row (eval mode)."""
        B, _, d = x.shape
        q, k, v = self.qkv(x).view(B, 1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        cache.append(k, v)
        scale = (d // self.heads) ** -0.5
        # scores against the shared prefix (broadcast, never copied per sequence) and each sequence's own rows
        scores = [q @ key.transpose(-1, -2) * scale for key in cache.keys()]
        w = torch.softmax(torch.cat(scores, -1), -1).split([sc.shape[-1] for sc in scores], -1)
        a = sum(wi @ vi for wi, vi in zip(w, cache.values()))
        return self._finish(x, a)


class LayerCache:
    """Keys and values of the rows one attention layer has seen: a ``prefix`` (k, v) each (1 or B, heads, P, dh)
    shared by every sequence (the observed history of lock-step simulations), then each sequence's own rows in a
    buffer that grows by doubling (B, heads, capacity, dh), ``n`` of them filled."""

    def __init__(self, prefix: tuple[torch.Tensor, torch.Tensor]):
        self.prefix = prefix
        self.own: tuple[torch.Tensor, torch.Tensor] | None = None
        self.n = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.own is None or self.n == self.own[0].shape[2]:
            cap = max(8, 2 * self.n)
            grown = [t.new_empty((t.shape[0], t.shape[1], cap, t.shape[3])) for t in (k, v)]
            if self.own is not None:
                for g, old in zip(grown, self.own):
                    g[:, :, :self.n] = old[:, :, :self.n]
            self.own = tuple(grown)
        self.own[0][:, :, self.n:self.n + 1] = k
        self.own[1][:, :, self.n:self.n + 1] = v
        self.n += 1

    def keys(self) -> list[torch.Tensor]:
        return [self.prefix[0]] + ([self.own[0][:, :, :self.n]] if self.n else [])

    def values(self) -> list[torch.Tensor]:
        return [self.prefix[1]] + ([self.own[1][:, :, :self.n]] if self.n else [])

    def select(self, index: torch.Tensor) -> None:
        """Keep sequences ``index`` (retired simulations leave the batch)."""
        if self.prefix[0].shape[0] > 1:
            self.prefix = tuple(t[index] for t in self.prefix)
        if self.own is not None:
            self.own = tuple(t[index, :, :max(self.n, 1)] for t in self.own)

    def expand(self, batch: int) -> "LayerCache":
        """A fresh cache for ``batch`` sequences that all start from this one's prefix (nothing of their own)."""
        assert self.n == 0, "expand a cache before any sequence has rows of its own"
        return LayerCache(self.prefix)


@dataclass
class EncoderCache:
    """What :meth:`HistoryEncoder.advance` needs to add a row to B sequences: per stream, each attention layer's
    :class:`LayerCache` and the recurrent head's (h, c) (each (1, B, hidden)); and ``state`` (B, 3 d), the encoder
    state after the newest row."""

    layers: list  # [stream][layer] -> LayerCache
    rnn: list  # [stream] -> (h, c) or None
    state: torch.Tensor

    def select(self, index: torch.Tensor) -> None:
        for stream in self.layers:
            for cache in stream:
                cache.select(index)
        self.rnn = [None if hc is None else tuple(t[:, index] for t in hc) for hc in self.rnn]
        self.state = self.state[index]

    def expand(self, batch: int) -> "EncoderCache":
        """``batch`` copies of a one-sequence cache (the shared observed history of ``batch`` simulations)."""
        assert self.state.shape[0] == 1
        return EncoderCache([[c.expand(batch) for c in stream] for stream in self.layers],
                            [None if hc is None else tuple(t.expand(-1, batch, -1).contiguous() for t in hc)
                             for hc in self.rnn], self.state.expand(batch, -1))


class Stream(nn.Module):
    """One of the three views: a stack of attention layers, then a recurrent head projected back to d."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout)
                                    for _ in range(cfg.n_layers))
        self.rnn = nn.LSTM(cfg.d_model, cfg.rnn_hidden, batch_first=True) if cfg.rnn_hidden else None
        self.out = nn.Linear(cfg.rnn_hidden, cfg.d_model) if cfg.rnn_hidden else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        """``x`` (B, L, d) → (B, L, d). ``cache``: a list that receives [layer caches, (h, c)] for sequences
        without padding (their last row is row L − 1)."""
        kv = [] if cache is not None else None
        for layer in self.layers:
            x = layer(x, kv) * keep
        hc = None
        if self.rnn is not None:
            # Right padding only follows the real rows and the LSTM runs forwards, so outputs at real rows are
            # exactly those of a packed run; length bucketing keeps the wasted padded steps few.
            y, hc = self.rnn(x)
            x = self.out(y)
        if cache is not None:
            cache.extend([[LayerCache(p) for p in kv], hc])
        return x * keep

    def step(self, x: torch.Tensor, layers: list, hc):
        """One new row (B, 1, d) → its output (B, 1, d) and the new recurrent state."""
        for layer, cache in zip(self.layers, layers):
            x = layer.step(x, cache)
        if self.rnn is not None:
            y, hc = self.rnn(x, hc)
            x = self.out(y)
        return x, hc


class HistoryEncoder(nn.Module):
    """Events so far → ``(B, L, 3 d)`` states [h_t, h_s, h_st]; row i depends on rows 0..i only."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.d = d
        if cfg.spatial_embedding == "linear":
            self.spatial = nn.Linear(2, d)
        elif cfg.spatial_embedding == "mlp":
            self.spatial = nn.Sequential(nn.Linear(2, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d),
                                         nn.ReLU(), nn.Linear(d, d))
        else:
            raise ValueError(f"spatial_embedding must be 'linear' or 'mlp', not {cfg.spatial_embedding!r}")
        self.streams = nn.ModuleList(Stream(cfg) for _ in range(3))  # temporal, spatial, joint
        # optional inputs (ablations): a linear embedding each, added to the stream inputs
        self.wait = nn.Linear(1, d) if cfg.time_features else None
        self.step = nn.Linear(2, d) if cfg.location in DISPLACEMENTS else None
        self.mark = nn.Linear(1, d) if cfg.mark_inputs else None

    def forward(self, time: torch.Tensor, xy_scaled: torch.Tensor, lengths: torch.Tensor,
                wait: torch.Tensor | None = None, step: torch.Tensor | None = None,
                mark: torch.Tensor | None = None) -> torch.Tensor:
        """``time`` (B, L) model time since the first row; ``xy_scaled`` (B, L, 2) in [-1, 1]; ``lengths`` (B,).
        Optional: ``wait`` (B, L) scaled log waiting time before each row; ``step`` (B, L, 2) scaled displacement
        from the previous row; ``mark`` (B, L) standardised magnitude."""
        B, L = time.shape
        # which rows are real comes from the lengths, never from coordinate values
        keep = (torch.arange(L, device=time.device) < lengths.unsqueeze(1)).unsqueeze(-1).to(xy_scaled.dtype)
        e_t, e_s = self.embed(time, xy_scaled, wait, step, mark)
        e_t, e_s = e_t * keep, e_s * keep
        h = [stream(x, keep) for stream, x in zip(self.streams, (e_t, e_s, e_t + e_s))]
        return torch.cat(h, -1)

    def start(self, time: torch.Tensor, xy_scaled: torch.Tensor, wait: torch.Tensor | None = None,
              step: torch.Tensor | None = None, mark: torch.Tensor | None = None) -> EncoderCache:
        """Encode B unpadded histories (B, L) in one pass and keep what :meth:`advance` needs to extend them."""
        B, L = time.shape
        keep = torch.ones((B, L, 1), dtype=xy_scaled.dtype, device=xy_scaled.device)
        e_t, e_s = self.embed(time, xy_scaled, wait, step, mark)
        caches = [[] for _ in self.streams]
        h = [stream(x, keep, c) for stream, x, c in zip(self.streams, (e_t, e_s, e_t + e_s), caches)]
        return EncoderCache([c[0] for c in caches], [c[1] for c in caches], torch.cat(h, -1)[:, -1])

    def advance(self, cache: EncoderCache, time: torch.Tensor, xy_scaled: torch.Tensor,
             wait: torch.Tensor | None = None, step: torch.Tensor | None = None,
             mark: torch.Tensor | None = None) -> torch.Tensor:
        """Add one row to each of the cache's B sequences (inputs as :meth:`forward`'s, shaped (B,) and (B, 2)):
        the cost of one row, not of re-encoding the history. Returns and stores the new state (B, 3 d)."""
        add = (lambda v: None if v is None else v.unsqueeze(1))
        e_t, e_s = self.embed(add(time), add(xy_scaled), add(wait), add(step), add(mark))
        out = []
        for i, (stream, x) in enumerate(zip(self.streams, (e_t, e_s, e_t + e_s))):
            y, cache.rnn[i] = stream.step(x, cache.layers[i], cache.rnn[i])
            out.append(y[:, 0])
        cache.state = torch.cat(out, -1)
        return cache.state

    def embed(self, time, xy_scaled, wait=None, step=None, mark=None):
        """(B, L) inputs → the temporal and spatial stream inputs e_t, e_s (B, L, d)."""
        e_t = sinusoid(time, self.d)
        e_s = self.spatial(xy_scaled)
        if self.wait is not None:
            e_t = e_t + self.wait(wait.unsqueeze(-1))
        if self.step is not None:
            e_s = e_s + self.step(step)
        if self.mark is not None:  # a magnitude changes both how long and how far the triggering reaches
            e_m = self.mark(mark.unsqueeze(-1))
            e_t, e_s = e_t + e_m, e_s + e_m
        return e_t, e_s


# -------------------------------------------------------------------------------------------------- denoiser
class CoAttentionDenoiser(nn.Module):
    """ε̂(x_k, k | h): a temporal and a spatial branch, each conditioned on its own history view and the joint
    view, mixed by attention weights that depend on the history and the step only (not on x_k).

    Use :meth:`prepare` once per history to cache the step-independent parts, then call the module per step.
    """

    def __init__(self, d: int, width: int = 64, layers: int = 3):
        super().__init__()
        w = width
        self.width = w
        self.step_mlp = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, w))
        self.cond_mlp = nn.Sequential(nn.Linear(3 * d, w), nn.ReLU(), nn.Linear(w, w))
        # attention MLPs over concat(g, e_k): the first layer is split so the g half is cached per history
        self.att_g = nn.ModuleList(nn.Linear(w, w) for _ in range(2))  # [spatial, temporal]
        self.att_e = nn.ModuleList(nn.Linear(w, w, bias=False) for _ in range(2))
        self.att_rest = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2))
                                      for _ in range(2))
        self.w_s = nn.ModuleList([nn.Linear(2, w)] + [nn.Linear(w, w) for _ in range(layers - 1)])
        self.w_t = nn.ModuleList([nn.Linear(1, w)] + [nn.Linear(w, w) for _ in range(layers - 1)])
        self.joint = nn.ModuleList(nn.Linear(d, w) for _ in range(layers))  # shared by both branches
        self.cond_s = nn.ModuleList(nn.Linear(d, w) for _ in range(layers))
        self.cond_t = nn.ModuleList(nn.Linear(d, w) for _ in range(layers))
        self.out_s, self.out_t = nn.Linear(w, w), nn.Linear(w, w)
        self.head_t = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 1))
        self.head_s = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2))

    def step_embedding(self, k: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=k.device) / (half - 1))
        angle = k.float().unsqueeze(-1) * freqs
        return self.step_mlp(torch.cat([angle.sin(), angle.cos()], -1))

    def prepare(self, cond: torch.Tensor) -> dict[str, torch.Tensor | list]:
        """``cond`` (..., 3 d) → the step-independent tensors (each (..., width))."""
        d = cond.shape[-1] // 3
        c_t, c_s, c_st = cond[..., :d], cond[..., d:2 * d], cond[..., 2 * d:]
        g = self.cond_mlp(cond)
        joint = [lin(c_st) for lin in self.joint]
        return {"att_g": [lin(g) for lin in self.att_g],
                "cs": [j + lin(c_s) for j, lin in zip(joint, self.cond_s)],
                "ct": [j + lin(c_t) for j, lin in zip(joint, self.cond_t)]}

    def forward(self, x_k: torch.Tensor, k: torch.Tensor, ctx: dict) -> torch.Tensor:
        """``x_k`` (..., 3) noisy (dt, x, y); ``k`` integer steps broadcastable to (...); ``ctx`` from
        :meth:`prepare`, broadcastable to (..., width). Returns ε̂ (..., 3)."""
        e = self.step_embedding(k)
        alpha_s, alpha_t = (torch.softmax(rest(g + lin(e)), -1) for g, lin, rest in
                            zip(ctx["att_g"], self.att_e, self.att_rest))
        h_t, h_s = x_k[..., :1], x_k[..., 1:]
        for lin_t, lin_s, ct, cs in zip(self.w_t, self.w_s, ctx["ct"], ctx["cs"]):
            h_t = F.relu(lin_t(h_t) + e + ct)
            h_s = F.relu(lin_s(h_s) + e + cs)
        h_t, h_s = self.out_t(h_t), self.out_s(h_s)
        # attention over the two branch features, per output domain
        o_t = alpha_t[..., :1] * h_t + alpha_t[..., 1:] * h_s
        o_s = alpha_s[..., :1] * h_t + alpha_s[..., 1:] * h_s
        return torch.cat([self.head_t(o_t), self.head_s(o_s)], -1)


def length_buckets(lengths: np.ndarray, max_rows: int, spread: float = 1.5) -> np.ndarray:
    """Bucket ids for sequences sorted by length (ascending): a bucket closes when its padded rows (count ×
    longest) would pass ``max_rows`` or its longest would pass ``spread`` × its shortest, so padding stays
    under a third of the work whatever the mix of lengths (one long window does not pad a hundred short ones)."""
    out = np.empty(len(lengths), dtype=np.int64)
    bucket, first, count = 0, None, 0
    for i, n in enumerate(np.asarray(lengths)):
        n = max(int(n), 1)
        if first is not None and ((count + 1) * n > max_rows or n > spread * first):
            bucket, first, count = bucket + 1, None, 0
        if first is None:
            first = n
        out[i] = bucket
        count += 1
    return out


# -------------------------------------------------------------------------------------------------- magnitudes
class MagnitudeHead(nn.Module):
    """p(m | h): the next event's magnitude above ``lo`` = Mc − 0.05 (half a 0.1 reporting bin) as a mixture of
    ``J`` exponentials whose weights and rates the history state sets. One exponential with the catalog's b is
    Gutenberg-Richter (ETAS's magnitude law); the mixture can put more weight on large magnitudes after a large
    shock, or less in a quiet spell. Rates start at b ln 10 (the Aki b of the train split)."""

    def __init__(self, d_state: int, cfg: ModelConfig):
        super().__init__()
        self.lo = cfg.mark_mc - 0.05
        self.base = math.log(cfg.mark_b * math.log(10))
        self.net = nn.Sequential(nn.Linear(d_state, 64), nn.GELU(), nn.Linear(64, 2 * cfg.mark_components))
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():  # rates spread around G-R's at start (0.7x, 1x, 1.4x)
            self.net[-1].bias.zero_()
            self.net[-1].bias[cfg.mark_components:] = torch.linspace(-0.35, 0.35, cfg.mark_components)

    def params(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cond`` (..., 3 d) → log mixture weights and log rates (..., J)."""
        logits, log_rate = self.net(cond.float()).chunk(2, -1)
        return torch.log_softmax(logits, -1), log_rate.clamp(-5, 5) + self.base

    def log_prob(self, cond: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """log p(m | h) (...) in nats per magnitude unit; magnitudes below ``lo`` are scored at ``lo``."""
        log_w, log_rate = self.params(cond)
        excess = (m.float() - self.lo).clamp(min=0).unsqueeze(-1)
        return torch.logsumexp(log_w + log_rate - log_rate.exp() * excess, -1)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, n: int, generator: torch.Generator | None = None,
               m_max: float = 9.5) -> torch.Tensor:
        """``cond`` (B, 3 d) → (B, n) magnitudes (capped at ``m_max``)."""
        log_w, log_rate = self.params(cond)
        j = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)  # (B, n)
        rate = torch.gather(log_rate.exp(), 1, j)
        u = torch.rand(rate.shape, generator=generator, device=rate.device)
        return (self.lo - torch.log1p(-u) / rate).clamp(max=m_max)


# -------------------------------------------------------------------------------------------------- the model
class DSTPP(nn.Module, Forecaster):
    name = "dstpp"
    context = 128  # the newest events a forecast conditions on where the catalog defines no sequences

    def __init__(self, cfg: ModelConfig, scaler: Scaler):
        super().__init__()
        self.cfg = cfg
        self.scaler = scaler
        for name, module in self.networks(cfg).items():  # encoder, denoiser (and magnitude_head)
            setattr(self, name, module)
        self.schedule = NoiseSchedule(cfg.steps, cfg.schedule)
        # the Forecaster face: forecasts sample as ``self.sampling`` says (:meth:`with_sampling`; by default the
        # probability-flow ODE whose exact density they report); sampler objects are kept per setting
        self._flows, self._samplers = {}, {}
        self.bound_repeats, self.x0_mse = 4, None
        self.mark_names = ("magnitude",) if cfg.mark_inputs else ()
        if not cfg.mark_head:
            self.magnitude_head = None

    @staticmethod
    def networks(cfg: ModelConfig) -> dict[str, nn.Module]:
        """The model's networks (everything with weights but the scaler), by attribute name. Built on the meta
        device, they give a checkpoint's expected weight shapes without allocating any memory."""
        nets = {"encoder": HistoryEncoder(cfg),
                "denoiser": CoAttentionDenoiser(cfg.d_model, cfg.denoiser_width, cfg.denoiser_layers)}
        if cfg.mark_head:
            nets["magnitude_head"] = MagnitudeHead(3 * cfg.d_model, cfg)
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
        return self.sampling.magnitude_b or self.cfg.mark_b

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
        step max(s, 0) (it was trained on steps 0..K-1)."""
        def denoise(x, s):
            return self.denoiser(x.to(self.schedule.betas.dtype), s.to(self.schedule.betas.dtype), ctx).double()

        return clamp_steps(denoise)

    def history_batch(self, histories: Histories, context: int | None = None) -> Batch:
        """The histories as a padded batch: the catalog's own sequences where they come with them (evaluation
        of its windows), else each history's newest ``context`` events, times since its oldest one."""
        from stforecast.batch import SequenceSet

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
        """Fit the reverse variances of the likelihood bound on these (validation, never test) events."""
        gen = torch.Generator(device=self.scaler.lo.device).manual_seed(seed)
        self.x0_mse = self.reverse_variance_fit(self.history_batch(histories), torch.as_tensor(truth), generator=gen)

    def forecast(self, histories: Histories) -> "DiffusionNextEvent":
        return DiffusionNextEvent(self, self.history_batch(histories), histories=histories)

    def describe(self) -> str:
        s = self.sampling
        how = {"ode": f"the probability-flow ODE (tolerance {s.tolerance:g})",
               "dpm": f"DPM-Solver++(2M), {s.steps} evaluations",
               "ddim": f"DDIM-{min(s.steps, self.cfg.steps)}"}[s.sampler]
        return f"DSTPP (K = {self.cfg.steps}, sampled with {how})"

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, L, 3 d) history states."""
        return self.encoder(batch.time, self.scaler.position(batch.xy), batch.lengths, *self.row_features(batch))

    def row_features(self, batch: Batch) -> tuple:
        """The optional encoder inputs (wait, step, mark) of every row, each (B, L[, 2]) or None."""
        cfg, sc = self.cfg, self.scaler
        wait = sc.time_coordinate(batch.dt) if cfg.time_features else None
        step = None
        if cfg.location in DISPLACEMENTS:  # each row's displacement from the previous one (0 for the first)
            prev = torch.cat([batch.xy[:, :1], batch.xy[:, :-1]], 1)
            step = sc(batch.dt, batch.xy, prev)[..., 1:]
        mark = None
        if cfg.mark_inputs:
            if batch.mark is None:
                raise ValueError("this model reads magnitudes (mark_inputs) and the histories carry none")
            mark = (batch.mark - cfg.mark_center) / cfg.mark_scale
        return wait, step, mark

    def targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition (N, 3 d) and scaled target x0 (N, 3) for the N target rows: row j conditioned on h_{j-1}."""
        h = self.encode(batch)
        b, j = batch.target.nonzero(as_tuple=True)
        parent = self.parents(batch)
        x0 = self.scaler(batch.dt[b, j], batch.xy[b, j], batch.xy[b, parent[b, j - 1]])
        return h[b, j - 1], x0

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
        score = -1.1 * torch.log(lag.clamp(min=0) + self.cfg.parent_c)
        if batch.mark is not None:
            score = score + math.log(10) * batch.mark.unsqueeze(1)
        score = score.masked_fill(cols.view(1, 1, L) > rows.unsqueeze(2), -math.inf)
        return score.argmax(-1)

    def reference_location(self, batch: Batch) -> torch.Tensor:
        """(B, 2) each history's reference location for a forecast (its newest event, or its chosen parent)."""
        b = torch.arange(batch.xy.shape[0], device=batch.xy.device)
        return batch.xy[b, self.parents(batch, (batch.lengths - 1).unsqueeze(1))[:, 0]]

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss (so DistributedDataParallel, which hooks ``forward``, sees the whole step)."""
        return self.loss(batch)

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the noise estimate over all target events and the 3 dimensions."""
        cond, x0 = self.targets(batch)
        draw = {} if generator is None else {"generator": generator}  # an explicit None breaks torch.compile
        k = torch.randint(0, self.schedule.steps, (x0.shape[0],), device=x0.device, **draw)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, **draw)
        eps = self.denoiser(self.schedule.add_noise(x0, noise, k), k, self.denoiser.prepare(cond))
        loss = F.mse_loss(eps.float(), noise.float())
        if self.magnitude_head is not None:
            if batch.mark is None:
                raise ValueError("this model forecasts magnitudes (mark_head) and the sequences carry none")
            b, j = batch.target.nonzero(as_tuple=True)
            loss = loss - self.cfg.mark_weight * self.magnitude_head.log_prob(cond, batch.mark[b, j]).mean()
        return loss

    @torch.no_grad()
    def sample_next(self, batch: Batch, n: int, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of the event after each history's last row → (B, n, 3) = (dt, x, y) in model units.
        Runs in eval mode (no dropout) whatever mode the model is in, and restores it."""
        was_training = self.training
        self.eval()
        try:
            return self.sample_from_condition(self.last_states(batch), n, sampler, steps, eta, generator,
                                              self.reference_location(batch))
        finally:
            self.train(was_training)

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
    def simulate_catalogs(self, t: np.ndarray, xy: np.ndarray, marks: dict, t_end: float, n: int,
                          rng: np.random.Generator, *, t_start: float | None = None, chunk: int = 1000,
                          max_events: int = 1000, max_history: int | None = None, progress: bool = False):
        """``n`` simulated continuations of one history (``t`` (L,), ``xy`` (L, 2), ``marks`` {name: (L,)}) from its
        newest event to ``t_end``, in lock-step, ``chunk`` simulations at a time; yields a
        :class:`~stforecast.model.base.SimulatedChunk` per chunk (events in [``t_start``, ``t_end``)).

        The observed history is encoded **once**; every simulation then carries its own encoder state forward
        (attention keys/values and recurrent state, :class:`EncoderCache`), so a simulated event costs one row of
        encoding, not a re-encoding of the whole history: the simulations' context grows from the newest
        ``max_history`` observed events (default: ``context``) by their own events instead of sliding. Each step
        samples as ``self.sampling`` says (``with_sampling(Sampling(sampler="dpm"))`` for the fast one) and the
        magnitudes with ``self.magnitudes``. An Omori-chosen reference (``location = "parent"``) takes the generic path."""
        from stforecast.model.base import SimulatedChunk, chunk_within

        if self.cfg.location == "parent":
            yield from Forecaster.simulate_catalogs(self, t, xy, marks, t_end, n, rng, t_start=t_start, chunk=chunk,
                                                    max_events=max_events, max_history=max_history,
                                                    progress=progress)
            return
        keep = int(max_history or self.context)
        t, xy = np.asarray(t, float)[-keep:], np.asarray(xy, float)[-keep:]
        marks = {k: np.asarray(v, float)[-keep:] for k, v in (marks or {}).items()}
        missing = [k for k in self.mark_names if k not in marks]
        if missing:
            raise ValueError(f"{self.describe()} needs the history's {missing}")
        t_start = float(t[-1]) if t_start is None else float(t_start)
        device = self.scaler.lo.device
        was_training = self.training
        self.eval()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="catalogs simulated", unit="catalog")
        try:
            batch = self.history_batch(Histories(t[None], xy[None], {k: v[None] for k, v in marks.items()}),
                                       keep).to(device)
            start = self.encoder.start(batch.time, self.scaler.position(batch.xy), *self.row_features(batch))
            sampler = self.sampler_object()
            gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
            dtype = batch.time.dtype
            for first in range(0, n, chunk):
                size = min(chunk, n - first)
                cache = start.expand(size)
                ids = np.arange(first, first + size)  # global simulation ids of the live rows
                last_t = np.full(size, t[-1])
                last_xy = torch.tensor(np.array(xy[-1]), dtype=dtype, device=device).expand(size, 2).clone()
                counts, capped = np.zeros(size, np.int64), np.zeros(size, bool)
                drawn_all = np.zeros(size, np.int64)
                parts = []
                while len(ids):
                    cond = cache.state
                    draw = self.sample_from_condition_with(cond, 1, sampler, gen, last_xy)[:, 0]  # (B, 3)
                    mags = self.sample_magnitudes(cond, 1, rng, gen)
                    d = draw.double().cpu().numpy()
                    new_t = last_t + d[:, 0]
                    inside = new_t < t_end
                    record = inside & (new_t >= t_start)
                    local = ids - first
                    counts[local[record]] += 1
                    drawn_all[local[inside]] += 1
                    if record.any():
                        parts.append(pd.DataFrame({"simulation": ids[record], "t": new_t[record],
                                                   "x": d[record, 1], "y": d[record, 2],
                                                   **{k: v[record, 0] for k, v in mags.items()}}))
                    full = inside & (drawn_all[local] >= max_events)
                    capped[local[full]] = True
                    go = inside & ~full
                    if bar is not None:
                        bar.update(int((~go).sum()))
                    if not go.any():
                        break
                    sel = torch.as_tensor(np.flatnonzero(go), device=device)
                    if not go.all():
                        cache.select(sel)
                    new = draw[sel].to(dtype)
                    dt_new = new[:, 0]
                    xy_new = new[:, 1:]
                    prev_xy = last_xy[sel]
                    ids, last_t = ids[go], new_t[go]
                    self._extend(cache, torch.as_tensor(last_t - t[0], dtype=dtype, device=device), dt_new, xy_new,
                                 prev_xy, {k: v[go, 0] for k, v in mags.items()})
                    last_xy = xy_new
                events = (pd.concat(parts, ignore_index=True) if parts else
                          pd.DataFrame(columns=["simulation", "t", "x", "y", *self.sample_magnitudes(
                              start.state, 1, rng, gen).keys()]))
                part = SimulatedChunk(events, first, counts, capped)
                # a bounded model's events are inside its region already; an older unbounded one's are kept there
                yield part if self.support is None or self.scaler.bounded else chunk_within(part, self.support)
        finally:
            if bar is not None:
                bar.close()
            self.train(was_training)

    def _extend(self, cache: EncoderCache, time: torch.Tensor, dt: torch.Tensor, xy: torch.Tensor,
                prev_xy: torch.Tensor, marks: dict) -> None:
        """Add one row (time since the history's first row (B,), waiting time (B,), location (B, 2), the previous
        row's location (B, 2), marks {name: (B,)}) to every sequence of ``cache``: the features :meth:`encode`
        gives a row, computed for that row alone."""
        cfg, sc = self.cfg, self.scaler
        wait = sc.time_coordinate(dt) if cfg.time_features else None
        step = sc(dt, xy, prev_xy)[..., 1:] if cfg.location in DISPLACEMENTS else None
        mark = None
        if cfg.mark_inputs:
            m = torch.as_tensor(marks["magnitude"], dtype=time.dtype, device=time.device)
            mark = (m - cfg.mark_center) / cfg.mark_scale
        self.encoder.advance(cache, time, sc.position(xy), wait, step, mark)

    @torch.no_grad()
    def history_states(self, histories: Histories, batch: Batch | None = None, max_rows: int = 32768) -> torch.Tensor:
        """(H, 3 d) encoder state after each history. Histories that are prefixes of a catalog's windows (the
        evaluation's targets) take it from **one causal pass per window**: row j of the window's encoding is the
        state after its first j + 1 rows, so H prefixes of W windows cost W sequences, not H. Otherwise each
        history is encoded (:meth:`last_states`)."""
        origin = getattr(histories.sequences, "origin", None)
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
        was_training = self.training
        self.eval()
        try:
            for c in np.unique(chunk):
                idx = order[chunk == c]
                sub, _ = source.prefixes(windows[idx], need[idx])
                h = self.encode(sub.collate(np.arange(len(idx))).to(device))  # (w, L, 3 d)
                local = np.full(len(windows), -1)
                local[idx] = np.arange(len(idx))
                rows = np.flatnonzero(np.isin(which, idx))
                out[torch.as_tensor(rows, device=device)] = h[torch.as_tensor(local[which[rows]], device=device),
                                                               torch.as_tensor(cut[rows] - 1, device=device)].to(out.dtype)
        finally:
            self.train(was_training)
        return out

    @torch.no_grad()
    def sample_from_condition(self, cond: torch.Tensor, n: int, sampler: str = "ddim", steps: int = 50,
                              eta: float = 0.0, generator: torch.Generator | None = None,
                              ref: torch.Tensor | None = None) -> torch.Tensor:
        """``cond`` (B, 3 d) → (B, n, 3) samples in model units; one batched tensor, no loop over histories.
        DDIM on more steps than the model's K runs all K (the shared default of 50 on a model trained with K < 50).
        ``ref`` (B, 2): each history's newest location (needed by a relative location)."""
        s = make_sampler(self.schedule, sampler, min(steps, self.cfg.steps) if sampler == "ddim" else steps, eta)
        return self.sample_from_condition_with(cond, n, s, generator, ref)

    def sample_from_condition_with(self, cond: torch.Tensor, n: int, sampler,
                                   generator: torch.Generator | None = None,
                                   ref: torch.Tensor | None = None) -> torch.Tensor:
        """The same with a sampler object from :mod:`stforecast.model.schedule` (DDPM, DDIM, ...) or a
        :class:`~stforecast.model.ode.ProbabilityFlow` (the ODE sampler)."""
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
        counts = self.__dict__.setdefault("_clamp_counts", [0, 0])
        counts[0] += int((x0.abs() > OUTSIDE).sum())
        counts[1] += x0.numel()
        return x0.clamp(-OUTSIDE, OUTSIDE)

    def take_clamped_share(self) -> float | None:
        clamped, total = self.__dict__.pop("_clamp_counts", (0, 0))
        return clamped / total if total else 0.0

    @torch.no_grad()
    def exact_nll(self, histories: Batch, truth: torch.Tensor, tolerance: float | None = None,
                  error_events: int = 0, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Exact next-event NLL (H,) of ``truth`` (H, 3) = (dt, x, y) after each history, in model units, by the
        probability-flow ODE (its density is that of the ODE sampler), and ``{"nfe", "solver_error"}``: the
        function evaluations and, on the first ``error_events`` events, the mean change in nats when the tolerance
        is halved. ``cond`` (H, 3 d): the histories' encoder states, if already computed."""
        was_training = self.training
        self.eval()
        try:
            cond = self.last_states(histories) if cond is None else cond
            ref = self.reference_location(histories)
            truth = truth.to(cond.device)
            x0 = self.scaler(truth[:, 0], truth[:, 1:3], ref).double()
            flow = self.flow(tolerance)
            result = flow.log_prob(self.continuous_denoiser(self.denoiser.prepare(cond)), x0)
            info = {"nfe": result.nfe, "solver_error": float("nan")}
            if error_events:
                k = min(error_events, len(x0))
                sub = self.continuous_denoiser(self.denoiser.prepare(cond[:k]))
                info["solver_error"] = solver_error(flow, sub, x0[:k])
            nll = -result.log_prob - self.log_jacobian(truth, ref).sum(-1)
            return nll, info
        finally:
            self.train(was_training)

    @torch.no_grad()
    def sample_magnitudes(self, cond: torch.Tensor, n: int, rng: np.random.Generator,
                          generator: torch.Generator | None = None) -> dict:
        """{"magnitude": (B, n)} numpy magnitudes for ``n`` events after each state ``cond`` (B, 3 d), from the
        head or the Gutenberg-Richter fill-in (``self.magnitudes``); {} for a model without magnitudes."""
        if self.magnitudes == "model":
            return {"magnitude": self.magnitude_head.sample(cond, n, generator).double().cpu().numpy()}
        if self.magnitudes == "gutenberg-richter":
            cfg = self.cfg
            return {"magnitude": cfg.mark_mc + rng.exponential(1 / (self.fill_b * math.log(10)), (len(cond), n))}
        return {}

    def log_jacobian(self, truth: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(H, 3) log |d scaled / d model units| at ``truth`` (H, 3) (see :meth:`Scaler.log_jacobian`)."""
        return self.scaler.log_jacobian(truth, ref)

    @torch.no_grad()
    def _bound_draws(self, histories: Batch, truth: torch.Tensor, repeats: int, x0_mse, generator, cond=None):
        """``repeats`` draws of :func:`variational_bound` for the event ``truth`` (H, 3) after each history."""
        was_training = self.training
        self.eval()
        try:
            cond = self.last_states(histories) if cond is None else cond
            ctx = self.denoiser.prepare(cond)
            truth = truth.to(cond.device)
            x0 = self.scaler(truth[:, 0], truth[:, 1:3], self.reference_location(histories))

            def denoise(x_k, k):
                return self.denoiser(x_k.to(cond.dtype), torch.tensor(k, device=x_k.device), ctx)

            return [variational_bound(self.schedule, denoise, x0, x0_mse, generator) for _ in range(repeats)]
        finally:
            self.train(was_training)

    def nll_bound(self, histories: Batch, truth: torch.Tensor, repeats: int = 4, x0_mse: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, cond: torch.Tensor | None = None) -> "NLLBound":
        """Upper bound on the next-event negative log-likelihood of ``truth`` (H, 3) = (dt, x, y) after each of
        the H histories, in model units (see :func:`variational_bound`; ``repeats`` independent draws are
        averaged). ``x0_mse`` (K, 3) from :meth:`reverse_variance_fit` on validation data tightens it."""
        draws = self._bound_draws(histories, truth, repeats, x0_mse, generator, cond)
        scaled = torch.stack([bound for bound, _ in draws])  # (R, H, 3)
        return NLLBound(scaled=scaled, log_jacobian=self.log_jacobian(truth.to(scaled.device),
                                                                      self.reference_location(histories)))

    def reverse_variance_fit(self, histories: Batch, truth: torch.Tensor, repeats: int = 2,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """(K, 3) mean squared error of x̂0 per step and dimension on these (validation, never test) events."""
        draws = self._bound_draws(histories, truth, repeats, None, generator)
        return torch.stack([sq_err for _, sq_err in draws]).mean(0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


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


class DiffusionNextEvent(NextEvent):
    """DSTPP's next-event distribution: samples with ``model.sampling`` (the probability-flow ODE by default, else
    DDIM), the **exact** NLL of the ODE's density (kind "exact-ode": the density of the ODE sampler, and of DDIM
    only as far as DDIM approximates that ODE) and, beside it, the full variational **upper bound** (reverse
    variances fitted by :meth:`DSTPP.calibrate` when it was called, DDPM's fixed ones otherwise)."""

    kind = "exact-ode"
    #: events the solver error (tolerance halved) is measured on: a second and third solve, so not all of them
    error_events = 200

    def __init__(self, model: DSTPP, batch: Batch, seed: int = 0, histories: Histories | None = None):
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
        was_training = model.training
        model.eval()
        try:
            cond = self.cond
            sampler = model.sampler_object()
            draws = model.sample_from_condition_with(cond, n, sampler, gen, model.reference_location(self.batch))
            marks = model.sample_magnitudes(cond, n, rng, gen)
        finally:
            model.train(was_training)
        return Samples(draws.double().cpu().numpy(), marks)

    def mark_nll(self, marks: dict) -> dict:
        """{"magnitude": (H,)} exact NLL of the held-out magnitudes by the model's head (nats per magnitude unit),
        and {"magnitude_gr": (H,)} by the Gutenberg-Richter law of the same train split, beside it."""
        model, cfg = self.model, self.model.cfg
        if "magnitude" not in marks or not (cfg.mark_head or cfg.mark_inputs):
            return {}
        m = np.asarray(marks["magnitude"], float)
        out = {"magnitude_gr": -gutenberg_richter_log_prob(m, cfg.mark_mc, cfg.mark_b)}
        if model.magnitude_head is not None:
            with torch.no_grad():
                lp = model.magnitude_head.log_prob(self.cond, torch.as_tensor(m, device=self.cond.device))
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
