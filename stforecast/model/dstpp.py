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
import torch
import torch.nn.functional as F
from torch import nn

from stforecast.batch import Batch
from stforecast.defaults import SAMPLER_STEPS
from stforecast.model.base import NLL, Forecaster, Histories, NextEvent, Samples
from stforecast.model.ode import ProbabilityFlow, clamp_steps, solver_error
from stforecast.model.schedule import NoiseSchedule, make_sampler, sample_loop, variational_bound


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
    location: str = "absolute"  # "absolute": diffuse the scaled (x, y); "relative": asinh of the displacement
    # from the newest event; "parent": from the past event an Omori-Utsu weight 10^m / (lag + c)^1.1 picks
    location_scale: float = 0.002  # relative: asinh's linear scale r0 as a fraction of the region's width
    # filled from the train split by stforecast.train.build_model (so a checkpoint carries them)
    mark_center: float = 0.0
    mark_scale: float = 1.0
    mark_mc: float = 0.0  # magnitude of completeness and b-value of the simulated magnitudes
    mark_b: float = 1.0
    parent_c: float = 0.01  # "parent": Omori's c in model time units (a tenth of the typical waiting time)

    def to_dict(self) -> dict:
        return asdict(self)


#: rtol = atol of the probability-flow ODE: on the Japan model, 1e-4 changes the validation NLL by < 0.001 nats
#: from 1e-5 at a sixth of the function evaluations (1,166 vs 6,872)
ODE_TOLERANCE = 1e-4

#: |scaled value| beyond which an ODE sample is clamped (the training data span [-1, 1])
OUTSIDE = 2.0

#: The published configuration (d_model 64, 4 layers, 4 heads, LSTM heads of 256, K = 500, raw waiting times).
PAPER = ModelConfig(steps=500, time_transform="none", range_margin=0.0, spatial_embedding="mlp", attn_dropout=0.1)


# -------------------------------------------------------------------------------------------------- scaling
class Scaler(nn.Module):
    """(dt, x, y) ↔ [-1, 1]³, the coordinates the diffusion runs in, by a min-max fitted on **train targets**
    (from the ingestion manifest). With ``log_time`` the waiting time is log-transformed first (its distribution
    spans many decades). With ``r0 > 0`` (``location = "relative"``) the location is the displacement from a
    reference point ``ref`` (the history's newest event) through asinh(d / r0) per coordinate: linear below r0
    (kilometres on a 2,800 km Japan), logarithmic above, so one scale resolves an aftershock cluster and a jump
    across the region. ``xy_lo``/``xy_hi`` scale absolute positions for the encoder in either case."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, log_time: bool, r0: float = 0.0,
                 xy_lo: torch.Tensor | None = None, xy_hi: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32))
        self.register_buffer("log_time", torch.tensor(bool(log_time)))
        self.register_buffer("r0", torch.tensor(float(r0)))
        self.register_buffer("xy_lo", torch.as_tensor(self.lo[1:] if xy_lo is None else xy_lo, dtype=torch.float32))
        self.register_buffer("xy_hi", torch.as_tensor(self.hi[1:] if xy_hi is None else xy_hi, dtype=torch.float32))

    @classmethod
    def from_stats(cls, stats: dict, time_transform: str = "log", margin: float = 0.0, location: str = "absolute",
                   location_scale: float = 0.002) -> "Scaler":
        log_time = time_transform == "log"
        t = stats["log_dt" if log_time else "dt"]
        lo = torch.tensor([t["min"], stats["x"]["min"], stats["y"]["min"]], dtype=torch.float64)
        hi = torch.tensor([t["max"], stats["x"]["max"], stats["y"]["max"]], dtype=torch.float64)
        width = (hi - lo).clamp(min=1e-12)
        lo, hi = lo - margin * width, hi + margin * width
        xy_lo, xy_hi, r0 = lo[1:].clone(), hi[1:].clone(), 0.0
        if location in ("relative", "parent"):
            region = float(width[1:].max())
            r0 = location_scale * region
            half = math.asinh(region / r0) * (1 + margin)  # a displacement across the whole region
            lo[1:], hi[1:] = -half, half
        elif location != "absolute":
            raise ValueError(f"location must be 'absolute' or 'relative', not {location!r}")
        return cls(lo, hi, log_time, r0, xy_lo, xy_hi)

    @property
    def relative(self) -> bool:
        return float(self.r0) > 0

    def _time_value(self, dt: torch.Tensor) -> torch.Tensor:
        if bool(self.log_time):
            return torch.log(dt.clamp(min=math.exp(float(self.lo[0]))))  # ties (dt = 0) sit at the lower edge
        return dt

    def _xy_value(self, xy: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        if not self.relative:
            return xy
        if ref is None:
            raise ValueError("a relative location needs the reference event (the history's newest)")
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
        if self.relative:
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
        if self.relative:  # d asinh(d / r0) / dd = 1 / sqrt(d² + r0²)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, d), right-padded. Row i attends to rows 0..i: since padding only follows the real rows of
        a sequence, the causal mask alone keeps every real row from seeing padding (and the future)."""
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = self.ln1(x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, d))))
        return self.ln2(x + self.drop(self.ff(x)))


class Stream(nn.Module):
    """One of the three views: a stack of attention layers, then a recurrent head projected back to d."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.attn_dropout)
                                    for _ in range(cfg.n_layers))
        self.rnn = nn.LSTM(cfg.d_model, cfg.rnn_hidden, batch_first=True) if cfg.rnn_hidden else None
        self.out = nn.Linear(cfg.rnn_hidden, cfg.d_model) if cfg.rnn_hidden else nn.Identity()

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x) * keep
        if self.rnn is not None:
            # Right padding only follows the real rows and the LSTM runs forwards, so outputs at real rows are
            # exactly those of a packed run; length bucketing keeps the wasted padded steps few.
            x = self.out(self.rnn(x)[0])
        return x * keep


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
        self.step = nn.Linear(2, d) if cfg.location in ("relative", "parent") else None
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
        e_t = sinusoid(time, self.d)
        e_s = self.spatial(xy_scaled)
        if self.wait is not None:
            e_t = e_t + self.wait(wait.unsqueeze(-1))
        if self.step is not None:
            e_s = e_s + self.step(step)
        if self.mark is not None:  # a magnitude changes both how long and how far the triggering reaches
            e_m = self.mark(mark.unsqueeze(-1))
            e_t, e_s = e_t + e_m, e_s + e_m
        e_t, e_s = e_t * keep, e_s * keep
        h = [stream(x, keep) for stream, x in zip(self.streams, (e_t, e_s, e_t + e_s))]
        return torch.cat(h, -1)


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


# -------------------------------------------------------------------------------------------------- the model
class DSTPP(nn.Module, Forecaster):
    name = "dstpp"
    context = 128  # the newest events a forecast conditions on where the catalog defines no sequences

    def __init__(self, cfg: ModelConfig, scaler: Scaler):
        super().__init__()
        self.cfg = cfg
        self.scaler = scaler
        self.encoder = HistoryEncoder(cfg)
        self.denoiser = CoAttentionDenoiser(cfg.d_model, cfg.denoiser_width, cfg.denoiser_layers)
        self.schedule = NoiseSchedule(cfg.steps, cfg.schedule)
        # the Forecaster face: forecasts sample the probability-flow ODE whose exact density they report (a DDIM
        # sampler can be chosen for speed: then the density belongs to the ODE that DDIM discretises)
        self.sampler, self.ode_tolerance, self._flows = "ode", ODE_TOLERANCE, {}
        self.ddim = make_sampler(self.schedule, "ddim", min(SAMPLER_STEPS, cfg.steps))
        self.bound_repeats, self.x0_mse = 4, None
        self.mark_names = ("magnitude",) if cfg.mark_inputs else ()

    # ------------------------------------------------------------------------------------ forecaster interface
    def configure(self, *, steps: int | None = None, bound_repeats: int | None = None, sampler: str | None = None,
                  ode_tolerance: float | None = None) -> "DSTPP":
        """How forecasts sample: ``sampler`` "ode" (the probability-flow ODE, adaptive, ``ode_tolerance`` as rtol
        and atol; the default) or "ddim" with ``steps`` steps (capped at K); Monte-Carlo draws of the bound."""
        if sampler is not None:
            if sampler not in ("ode", "ddim"):
                raise ValueError(f"sampler must be 'ode' or 'ddim', not {sampler!r}")
            self.sampler = sampler
        if steps is not None:
            self.ddim = make_sampler(self.schedule, "ddim", min(steps, self.cfg.steps))
        if ode_tolerance is not None:
            self.ode_tolerance = ode_tolerance
        if bound_repeats is not None:
            self.bound_repeats = bound_repeats
        return self

    def flow(self, tolerance: float | None = None) -> ProbabilityFlow:
        """The probability-flow ODE of this model's schedule (adaptive Dormand-Prince, rtol = atol = tolerance).
        Kept per tolerance and device: a horizon simulation asks for it at every simulated event."""
        tol = tolerance or self.ode_tolerance
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

    def history_batch(self, histories: Histories) -> Batch:
        """The histories as a padded batch: the catalog's own sequences where they come with them (evaluation
        of its windows), else each history's newest ``context`` events, times since its oldest one."""
        from stforecast.batch import SequenceSet

        if histories.sequences is not None:
            return histories.sequences.collate(np.arange(len(histories.sequences)))
        h = histories.newest(self.context)
        valid = h.valid
        first = h.t[np.arange(len(h)), h.t.shape[1] - h.lengths]
        mark = h.marks[SequenceSet.MARK][valid] if SequenceSet.MARK in h.marks else None
        rows = SequenceSet(h.t[valid], h.xy[valid][:, 0], h.xy[valid][:, 1], first, np.zeros(int(valid.sum()), bool),
                           np.r_[0, np.cumsum(h.lengths)].astype(np.int64), mark)
        return rows.collate(np.arange(len(h)))

    def calibrate(self, histories: Histories, truth: np.ndarray, seed: int = 1) -> None:
        """Fit the reverse variances of the likelihood bound on these (validation, never test) events."""
        gen = torch.Generator().manual_seed(seed)
        self.x0_mse = self.reverse_variance_fit(self.history_batch(histories), torch.as_tensor(truth), generator=gen)

    def forecast(self, histories: Histories) -> "DiffusionNextEvent":
        return DiffusionNextEvent(self, self.history_batch(histories))

    def describe(self) -> str:
        how = (f"the probability-flow ODE (tolerance {self.ode_tolerance:g})" if self.sampler == "ode"
               else f"DDIM-{len(self.ddim.timesteps)}")
        return f"DSTPP (K = {self.cfg.steps}, sampled with {how})"

    def encode(self, batch: Batch) -> torch.Tensor:
        """(B, L, 3 d) history states."""
        cfg, sc = self.cfg, self.scaler
        wait = sc.time_coordinate(batch.dt) if cfg.time_features else None
        step = None
        if cfg.location in ("relative", "parent"):  # each row's displacement from the previous one (0 for the first)
            prev = torch.cat([batch.xy[:, :1], batch.xy[:, :-1]], 1)
            step = sc(batch.dt, batch.xy, prev)[..., 1:]
        mark = None
        if cfg.mark_inputs:
            if batch.mark is None:
                raise ValueError("this model reads magnitudes (mark_inputs) and the histories carry none")
            mark = (batch.mark - cfg.mark_center) / cfg.mark_scale
        return self.encoder(batch.time, sc.position(batch.xy), batch.lengths, wait, step, mark)

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
        k = torch.randint(0, self.schedule.steps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        eps = self.denoiser(self.schedule.add_noise(x0, noise, k), k, self.denoiser.prepare(cond))
        return F.mse_loss(eps.float(), noise.float())

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
        chunk = torch.cumsum(batch.lengths[order], 0) // max_rows  # sorted, so a chunk's rows are alike in length
        out = torch.empty((len(order), 3 * self.cfg.d_model), device=batch.time.device)
        for c in torch.unique(chunk):
            idx = order[chunk == c]
            L = int(batch.lengths[idx].max())
            sub = batch.rows(idx, L)
            h = self.encode(sub)
            out[idx] = h[torch.arange(len(idx), device=h.device), sub.lengths - 1].to(out.dtype)
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
            x0 = sampler.sample(self.continuous_denoiser(ctx), x).clamp(-OUTSIDE, OUTSIDE).to(cond.dtype)
        else:
            def denoise(x_k, k):
                return self.denoiser(x_k, torch.tensor(k, device=x_k.device), ctx)

            x0 = sample_loop(sampler, denoise, x, generator)
        return self.scaler.inverse(x0, None if ref is None else ref.unsqueeze(1))

    @torch.no_grad()
    def exact_nll(self, histories: Batch, truth: torch.Tensor, tolerance: float | None = None,
                  error_events: int = 0) -> tuple[torch.Tensor, dict]:
        """Exact next-event NLL (H,) of ``truth`` (H, 3) = (dt, x, y) after each history, in model units, by the
        probability-flow ODE (its density is that of the ODE sampler), and ``{"nfe", "solver_error"}``: the
        function evaluations and, on the first ``error_events`` events, the mean change in nats when the tolerance
        is halved."""
        was_training = self.training
        self.eval()
        try:
            cond = self.last_states(histories)
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

    def log_jacobian(self, truth: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """(H, 3) log |d scaled / d model units| at ``truth`` (H, 3) (see :meth:`Scaler.log_jacobian`)."""
        return self.scaler.log_jacobian(truth, ref)

    @torch.no_grad()
    def _bound_draws(self, histories: Batch, truth: torch.Tensor, repeats: int, x0_mse, generator):
        """``repeats`` draws of :func:`variational_bound` for the event ``truth`` (H, 3) after each history."""
        was_training = self.training
        self.eval()
        try:
            cond = self.last_states(histories)
            ctx = self.denoiser.prepare(cond)
            truth = truth.to(cond.device)
            x0 = self.scaler(truth[:, 0], truth[:, 1:3], self.reference_location(histories))

            def denoise(x_k, k):
                return self.denoiser(x_k.to(cond.dtype), torch.tensor(k, device=x_k.device), ctx)

            return [variational_bound(self.schedule, denoise, x0, x0_mse, generator) for _ in range(repeats)]
        finally:
            self.train(was_training)

    def nll_bound(self, histories: Batch, truth: torch.Tensor, repeats: int = 4, x0_mse: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> "NLLBound":
        """Upper bound on the next-event negative log-likelihood of ``truth`` (H, 3) = (dt, x, y) after each of
        the H histories, in model units (see :func:`variational_bound`; ``repeats`` independent draws are
        averaged). ``x0_mse`` (K, 3) from :meth:`reverse_variance_fit` on validation data tightens it."""
        draws = self._bound_draws(histories, truth, repeats, x0_mse, generator)
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
    """DSTPP's next-event distribution: samples from ``model.sampler`` (the probability-flow ODE by default, else
    DDIM), the **exact** NLL of the ODE's density (kind "exact-ode": the density of the ODE sampler, and of DDIM
    only as far as DDIM approximates that ODE) and, beside it, the full variational **upper bound** (reverse
    variances fitted by :meth:`DSTPP.calibrate` when it was called, DDPM's fixed ones otherwise)."""

    kind = "exact-ode"
    #: events the solver error (tolerance halved) is measured on: a second and third solve, so not all of them
    error_events = 200

    def __init__(self, model: DSTPP, batch: Batch, seed: int = 0):
        self.model, self.batch, self.seed = model, batch, seed

    @torch.no_grad()
    def sample(self, n: int, rng: np.random.Generator) -> Samples:
        model = self.model
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        was_training = model.training
        model.eval()
        try:
            cond = model.last_states(self.batch)
            sampler = model.flow() if model.sampler == "ode" else model.ddim
            draws = model.sample_from_condition_with(cond, n, sampler, gen, model.reference_location(self.batch))
        finally:
            model.train(was_training)
        marks = {}
        if model.mark_names:  # magnitudes are not diffused: Gutenberg-Richter above Mc, as ETAS samples them
            cfg = model.cfg
            marks["magnitude"] = cfg.mark_mc + rng.exponential(1 / (cfg.mark_b * math.log(10)), draws.shape[:2])
        return Samples(draws.double().cpu().numpy(), marks)

    def nll(self, truth: np.ndarray) -> NLL:
        """The exact joint NLL by the ODE (no split into time and space: the ODE gives the joint density only),
        with the solver's function evaluations and error; beside it the bound in model units, split into the
        waiting-time and location coordinates' terms (a split of one bound, not a marginal and a conditional), and
        the paper's protocol: the fixed-variance bound in the scaled space, spatial = the mean over x and y."""
        model, gen = self.model, torch.Generator().manual_seed(self.seed)
        truth = torch.as_tensor(np.asarray(truth, float))
        exact, info = model.exact_nll(self.batch, truth, error_events=self.error_events)
        exact = exact.cpu().numpy()
        bound = model.nll_bound(self.batch, truth, repeats=model.bound_repeats, x0_mse=model.x0_mse, generator=gen)
        per_event = bound.per_event.cpu().numpy()
        paper = model.nll_bound(self.batch, truth, repeats=1, generator=gen).scaled[0].cpu().numpy()
        nan = np.full(len(exact), np.nan)
        return NLL(np.column_stack([nan, nan]), self.kind,
                   {"nll_bound": float(per_event.sum(1).mean()), "nll_bound_dt": float(per_event[:, 0].mean()),
                    "nll_bound_xy": float(per_event[:, 1:].sum(1).mean()),
                    "nll_bound_kind": "bound" if model.x0_mse is not None else "bound (fixed variances)",
                    "nll_mc_se": bound.mc_se, "nll_ode_nfe": info["nfe"], "nll_ode_solver_error": info["solver_error"],
                    "nll_ode_tolerance": model.ode_tolerance, "sampler": model.describe(),
                    "paper_nll_dt_scaled": float(paper[:, 0].mean()),
                    "paper_nll_xy_scaled": float(paper[:, 1:].mean())}, joint=exact)
