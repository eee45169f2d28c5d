"""Issue 22: DSTPP as a mixture over candidate parents, the way ETAS puts a kernel on every recent event.

    p(dt, x | h) = π₀(h) p_bg(dt, x | h) + Σ_{j ∈ J(h)} π_j(h) p_θ(dt, x | h, j)

* ``J(h)``: the history's ``cfg.parents`` most relevant events. ``parent_choice = "omori"`` ranks them by the
  Omori–magnitude score ln 10 · m_j − 1.1 ln(t − t_j + c) (a large shock days ago outranks a small one minutes
  ago); ``"newest"`` takes the newest ones (the only choice without magnitudes). The candidates are drawn from the
  history the encoder reads (a catalog's window, or a forecast's newest ``context`` events), not the whole past.
* ``p_θ(· | h, j)``: the diffusion model itself, conditioned on the history state plus an embedding of the parent's
  features (elapsed time, magnitude, position), its location the bounded displacement from parent j. Each
  component's density is its probability-flow ODE's, so the mixture's likelihood stays exact (a logsumexp).
* ``p_bg``: the background, absolute in space: a mixture of log-normals for the waiting time (read from the history
  state) times a fine kernel estimate of the training events' places (the catalog's smoothed activity), taken in the
  bounded location's logit coordinates so its mass is all on the region; closed form.
* ``π(h)``: a softmax over the candidates' scores (a small network of the history state and each candidate's
  features) and the background's.

**Training** (stochastic declustering by a teacher). Each target's responsibilities are those of a closed-form
ETAS-like teacher that shares π and the background: a triggered component is a log-normal waiting time times a
power-law kernel around the parent whose scale grows with its magnitude, σ² = D² e^{γ m̃}. The teacher mixture's
NLL trains π, the background and the teacher's few parameters; one component per target is drawn from the
teacher's responsibilities and the diffusion learns that component's event with its denoising loss (so a training
step costs one denoiser pass per target, as before). The teacher reads the background's places from a grid
(:meth:`ParentMixture.place_grid`: the exact sum over every kernel point cost most of a step); likelihoods and
samples use the exact kernel estimate. Sampling picks a component first.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stforecast.batch import Batch
from stforecast.models.dstpp.config import EDGE, ModelConfig

#: the features describing a candidate parent (see :meth:`ParentMixture.features`)
FEATURES = 6
#: bandwidths (logit units) tried for the background's kernel estimate, the best on the newest fifth of the
#: training events kept (``choose_bandwidth``)
BANDWIDTHS = np.geomspace(0.003, 0.3, 13)
#: log of a log-normal's spread, in units of a quarter of the train split's log-waiting-time range: at most e^0.5
#: of it (wider ones, allowed at first, put W-maze waiting times decades beyond anything seen: CRPS 2.9 s vs 0.07)
LOG_SPREAD = (-5.0, 0.5)


class WaitingTimeHead(nn.Module):
    """p(dt | h) for the background: a mixture of ``k`` log-normals whose weights, medians and spreads the history
    state sets (medians around the train split's typical log waiting time)."""

    def __init__(self, d_state: int, k: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_state, 64), nn.GELU(), nn.Linear(64, 3 * k))
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            self.net[-1].bias.zero_()
            self.net[-1].bias[k:2 * k] = torch.linspace(-1.5, 1.5, k)

    def params(self, cond: torch.Tensor, center: float, scale: float):
        logits, mu, log_s = self.net(cond.float()).chunk(3, -1)
        return torch.log_softmax(logits, -1), center + scale * mu, log_s.clamp(*LOG_SPREAD) + math.log(scale)

    def log_prob(self, cond: torch.Tensor, dt: torch.Tensor, center: float, scale: float, dt_min: float):
        """log p(dt | h) (...) per model time unit; ties (dt below ``dt_min``) are scored at ``dt_min``."""
        log_w, mu, log_s = self.params(cond, center, scale)
        u = torch.log(dt.float().clamp(min=dt_min)).unsqueeze(-1)
        z = (u - mu) / log_s.exp()
        return torch.logsumexp(log_w - 0.5 * z**2 - log_s - 0.5 * math.log(2 * math.pi), -1) - u.squeeze(-1)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, center: float, scale: float, generator=None) -> torch.Tensor:
        """``cond`` (N, 3 d) → (N,) waiting times."""
        log_w, mu, log_s = self.params(cond, center, scale)
        j = torch.multinomial(log_w.exp(), 1, generator=generator)[:, 0]
        eps = torch.randn(len(j), generator=generator, device=cond.device)
        row = torch.arange(len(j), device=cond.device)
        return torch.exp(mu[row, j] + log_s[row, j].exp() * eps)


class ParentMixture(nn.Module):
    """The candidate parents, the mixture weights, the parent embedding, the background and the teacher (see the
    module's docstring). Shapes: H histories, J = ``cfg.parents`` candidates, 3 d the history state's width.

    The background's kernel points are buffers of a fixed size (``cfg.background_events``) with weights (zeros
    where a catalog has fewer training events), so the configuration alone gives every shape."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d3 = 3 * cfg.d_model
        self.parents, self.choice, self.use_background = cfg.parents, cfg.parent_choice, cfg.background
        self.embed = nn.Sequential(nn.Linear(FEATURES, d3), nn.GELU(), nn.Linear(d3, d3))
        self.score = nn.Sequential(nn.Linear(d3 + FEATURES, 64), nn.GELU(), nn.Linear(64, 1))
        self.background_score = nn.Linear(d3, 1)
        self.wait = WaitingTimeHead(d3)
        # the teacher's kernel: log D (a share of the region's width), γ, log(q − 1), log-normal wait (μ, log s)
        self.teacher = nn.Parameter(torch.tensor([math.log(0.01), 1.0, 0.0, 0.0, 0.0]))
        n = cfg.background_events
        self.register_buffer("bg_points", torch.zeros(n, 2))  # kernel centres, logit coordinates of the box
        self.register_buffer("bg_weight", torch.zeros(n))  # their weights (sum 1; 0: padding)
        self.register_buffer("bg_bandwidth", torch.tensor(0.05))  # logit units

    # ------------------------------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit_background(self, scaler, xy: np.ndarray) -> float:
        """Keep the newest ``background_events`` training locations ``xy`` (N, 2), oldest first, as the
        background's kernel points, with the bandwidth that scores the newest fifth of them best from the rest.
        Returns that bandwidth."""
        xy = torch.as_tensor(np.asarray(xy, float)[-len(self.bg_weight):], dtype=torch.float32)
        z = scaler._to_line(xy.to(scaler.box_lo.device))
        bandwidth = choose_bandwidth(z.double())
        self.bg_points.zero_()
        self.bg_weight.zero_()
        self.bg_points[:len(z)] = z
        self.bg_weight[:len(z)] = 1.0 / len(z)
        self.bg_bandwidth.fill_(bandwidth)
        return bandwidth

    # ------------------------------------------------------------------------------------------ candidates
    def candidates(self, batch: Batch, b: torch.Tensor, rows: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
        """For N histories (sequence ``b`` (N,) of ``batch``, ending at row ``rows`` (N,)): the indices (N, J) of
        their candidate parents (rows ≤ the end) and (N, J) True where a candidate exists (short histories have
        fewer than J)."""
        L = batch.time.shape[1]
        cols = torch.arange(L, device=batch.time.device)
        lag = (batch.time[b, rows].unsqueeze(1) - batch.time[b]).clamp(min=0)  # (N, L)
        if self.choice == "omori" and batch.mark is not None:
            score = math.log(10) * batch.mark[b] - 1.1 * torch.log(lag + model.scaler.statistics.parent_c)
        else:  # the newest first (ties in time: the later row)
            score = -lag - 1e-6 * (L - cols).unsqueeze(0)
        score = score.masked_fill(cols.unsqueeze(0) > rows.unsqueeze(1), -math.inf)
        k = min(self.parents, L)
        top, index = score.topk(k, dim=-1)
        valid = torch.isfinite(top)
        if k < self.parents:
            index = F.pad(index, (0, self.parents - k))
            valid = F.pad(valid, (0, self.parents - k), value=False)
        return index, valid

    def features(self, batch: Batch, b: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, model) -> torch.Tensor:
        """(N, J, FEATURES) for the N histories (sequence ``b`` (N,), ending at row ``rows`` (N,)) and their
        candidates ``index`` (N, J): scaled log elapsed time, standardised magnitude (0 without), the candidate's
        scaled position and its offset from the newest event's."""
        sc, fit = model.scaler, model.scaler.statistics
        bb = b.unsqueeze(1)
        t_c, t_end = batch.time[bb, index], batch.time[b, rows].unsqueeze(1)
        log_lag = torch.log((t_end - t_c).clamp(min=0) + fit.parent_c)
        pos_c = sc.position(batch.xy[bb, index])
        pos_new = sc.position(batch.xy[b, rows]).unsqueeze(1)
        mag = (torch.zeros_like(t_c) if batch.mark is None or not model.cfg.mark_inputs
               else (batch.mark[bb, index] - fit.mark_center) / fit.mark_scale)
        lag_feature = (log_lag - time_center(sc)) / time_scale(sc)
        return torch.cat([lag_feature.unsqueeze(-1), mag.unsqueeze(-1), pos_c, pos_c - pos_new], -1)

    def components(self, batch: Batch, cond: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, model) -> dict:
        """The mixture after N histories (sequence ``b`` (N,) of ``batch`` ending at row ``rows`` (N,), history
        state ``cond`` (N, 3 d)): ``cond`` (N, J, 3 d) each component's condition, ``ref`` (N, J, 2) its parent's
        location, ``log_pi`` (N, J + 1) the log weights (the background's last; −inf for missing candidates, and
        for the background when it is off), ``mark`` (N, J) the parents' standardised magnitudes (0 without)."""
        index, valid = self.candidates(batch, b, rows, model)
        feats = self.features(batch, b, rows, index, model).to(cond.dtype)  # (N, J, F)
        state = cond.unsqueeze(1).expand(-1, self.parents, -1)
        logits = self.score(torch.cat([state, feats], -1))[..., 0].masked_fill(~valid, -math.inf)
        bg = self.background_score(cond)
        if not self.use_background:
            bg = torch.full_like(bg, -math.inf)
        return {"cond": state + self.embed(feats), "ref": batch.xy[b.unsqueeze(1), index],
                "log_pi": torch.log_softmax(torch.cat([logits, bg], -1).float(), -1), "mark": feats[..., 1]}

    # ------------------------------------------------------------------------------------------ background
    def background_log_prob(self, cond: torch.Tensor, truth: torch.Tensor, scaler,
                            tabulated: bool = False) -> torch.Tensor:
        """log p_bg(dt, x | h) (N,) in model units for ``truth`` (N, 3) = (dt, x, y) after states ``cond`` (N, 3 d)
        (``tabulated``: the places' density read from its grid, for the teacher)."""
        dt_min = math.exp(float(scaler.lo[0])) if bool(scaler.log_time) else 1e-12
        log_wait = self.wait.log_prob(cond, truth[:, 0], time_center(scaler), time_scale(scaler), dt_min)
        place = self.place_log_prob_tabulated if tabulated else self.place_log_prob
        return log_wait.double() + place(truth[:, 1:3], scaler)

    def place_log_prob(self, xy: torch.Tensor, scaler) -> torch.Tensor:
        """log density (N,) of the background's places at ``xy`` (N, 2), model units: a Gaussian kernel estimate
        in the box's logit coordinates, times |dz/dx| (−inf outside the box)."""
        xy = xy.double()
        return self._kernel_log_density(scaler._to_line(xy.float())) + scaler.line_log_jacobian(xy).sum(-1)

    @torch.no_grad()
    def place_grid(self, scaler) -> tuple:
        """The background's log density in logit coordinates tabulated on a grid of cells at most a third of the
        bandwidth wide (at most 1024 a side) over its points' range: (origin (2,), cell (2,), table (n, n)). Made
        on first use and kept (not in the state dict: the points and bandwidth define it)."""
        key = (float(self.bg_bandwidth), float(self.bg_points.sum()), str(self.bg_points.device))
        if getattr(self, "_grid", None) is None or self._grid[0] != key:
            h = float(self.bg_bandwidth)
            used = self.bg_points[self.bg_weight > 0].double()
            lo, hi = used.min(0).values - 4 * h, used.max(0).values + 4 * h
            n = int(min(1024, max(16, math.ceil(float((hi - lo).max()) / (h / 3)))))
            cell = (hi - lo) / (n - 1)
            # the fast kernel estimate: the points' weights binned onto the grid (linearly), then a separable
            # Gaussian blur of the bandwidth (the binning's error is small at cells of a third of it)
            u = (used - lo) / cell
            i = u.floor().long().clamp(0, n - 2)
            f = u - i
            w = self.bg_weight[self.bg_weight > 0].double()
            mass = torch.zeros(n * n, dtype=torch.float64, device=used.device)
            for dx, wx in ((0, 1 - f[:, 0]), (1, f[:, 0])):
                for dy, wy in ((0, 1 - f[:, 1]), (1, f[:, 1])):
                    mass.index_add_(0, (i[:, 0] + dx) * n + i[:, 1] + dy, w * wx * wy)
            mass = mass.view(1, 1, n, n)
            for axis in (0, 1):
                sd = h / float(cell[axis])
                r = int(math.ceil(4 * sd))
                x = torch.arange(-r, r + 1, dtype=torch.float64, device=used.device)
                k = torch.exp(-0.5 * (x / sd) ** 2) / (math.sqrt(2 * math.pi) * h)
                shape = (1, 1, 2 * r + 1, 1) if axis == 0 else (1, 1, 1, 2 * r + 1)
                pad = (r, 0) if axis == 0 else (0, r)
                mass = F.conv2d(mass, k.view(shape), padding=pad)
            table = torch.log(mass[0, 0].clamp(min=1e-300))
            self._grid = (key, (lo, cell, table.float()))
        return self._grid[1]

    def _kernel_log_density(self, z: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Exact log density (N,) of the Gaussian kernel estimate at ``z`` (N, 2), logit coordinates."""
        pts, log_w, h = self.bg_points.double(), torch.log(self.bg_weight.double()), float(self.bg_bandwidth)
        out = [torch.logsumexp(log_w - ((part.unsqueeze(1) - pts.unsqueeze(0)) ** 2).sum(-1) / (2 * h * h), -1)
               for part in z.double().split(chunk)]
        return torch.cat(out) - math.log(2 * math.pi * h * h)

    def place_log_prob_tabulated(self, xy: torch.Tensor, scaler) -> torch.Tensor:
        """:meth:`place_log_prob` read from the grid by bilinear interpolation (the teacher's, in training: the exact
        sum over every point costs most of a step); clamped to the grid's edge outside it."""
        origin, cell, table = self.place_grid(scaler)
        z = scaler._to_line(xy.float()).double()
        n = table.shape[0]
        u = ((z - origin) / cell).clamp(0, n - 1 - 1e-6)
        i = u.floor().long()
        f = (u - i).float()
        i0, i1 = i[:, 0], i[:, 1]
        v00, v01, v10, v11 = table[i0, i1], table[i0, i1 + 1], table[i0 + 1, i1], table[i0 + 1, i1 + 1]
        fx, fy = f[:, 0], f[:, 1]
        log_z = (v00 * (1 - fx) * (1 - fy) + v01 * (1 - fx) * fy + v10 * fx * (1 - fy) + v11 * fx * fy).double()
        return log_z + scaler.line_log_jacobian(xy).sum(-1)

    @torch.no_grad()
    def sample_background(self, cond: torch.Tensor, scaler, generator=None) -> torch.Tensor:
        """One background event (N, 3) = (dt, x, y) after each state ``cond`` (N, 3 d)."""
        dt = self.wait.sample(cond, time_center(scaler), time_scale(scaler), generator)
        i = torch.multinomial(self.bg_weight, len(cond), replacement=True, generator=generator)
        eps = torch.randn((len(cond), 2), generator=generator, device=cond.device)
        z = self.bg_points[i] + float(self.bg_bandwidth) * eps
        share = torch.sigmoid(z).clamp(EDGE, 1 - EDGE)
        xy = scaler.box_lo + (scaler.box_hi - scaler.box_lo) * share
        return torch.cat([dt.unsqueeze(-1).to(xy.dtype), xy], -1)

    # ------------------------------------------------------------------------------------------ teacher
    def teacher_log_prob(self, comps: dict, cond: torch.Tensor, truth: torch.Tensor, scaler) -> torch.Tensor:
        """(N, J + 1) log π_c + log q_c(truth) of the closed-form teacher for ``truth`` (N, 3) (module docstring)."""
        log_d, gamma, log_q1, mu, log_s = self.teacher
        width = float((scaler.xy_hi - scaler.xy_lo).max())
        sigma2 = (width * log_d.exp()) ** 2 * torch.exp(gamma * comps["mark"].float())  # (N, J)
        q = 1 + log_q1.clamp(-5, 3).exp()
        r2 = ((truth[:, 1:3].unsqueeze(1).float() - comps["ref"].float()) ** 2).sum(-1)
        log_space = torch.log(q - 1) - math.log(math.pi) - torch.log(sigma2) - q * torch.log1p(r2 / sigma2)
        dt_min = math.exp(float(scaler.lo[0])) if bool(scaler.log_time) else 1e-12
        u = torch.log(truth[:, 0].float().clamp(min=dt_min))
        center, scale = time_center(scaler), time_scale(scaler)
        s = scale * log_s.clamp(*LOG_SPREAD).exp()
        log_time = -0.5 * ((u - center - scale * mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi) - u
        triggered = log_space + log_time.unsqueeze(1)
        bg = self.background_log_prob(cond, truth, scaler, tabulated=True).float().unsqueeze(1)
        return comps["log_pi"] + torch.cat([triggered, bg], -1)


def time_center(scaler) -> float:
    """The middle of the train split's log waiting times (the scaler's range), 0 for raw waiting times."""
    return float(scaler.lo[0] + scaler.hi[0]) / 2 if bool(scaler.log_time) else 0.0


def time_scale(scaler) -> float:
    """A quarter of the train split's log-waiting-time range (1 for raw waiting times)."""
    return max(float(scaler.hi[0] - scaler.lo[0]) / 4, 1e-3) if bool(scaler.log_time) else 1.0


def choose_bandwidth(z: torch.Tensor, held: float = 0.2, max_fit: int = 20000) -> float:
    """The bandwidth of :data:`BANDWIDTHS` whose Gaussian kernel estimate from the older points of ``z`` (N, 2)
    scores the newest ``held`` share best (mean log density): the activity the forecasts will meet is later."""
    n_held = max(1, int(len(z) * held))
    fit, test = z[:-n_held][-max_fit:], z[-n_held:][-4000:]
    if len(fit) < 2:
        return float(BANDWIDTHS[len(BANDWIDTHS) // 2])
    totals = torch.zeros(len(BANDWIDTHS), dtype=torch.float64)
    for part in test.split(256):  # (256, N) distances at a time: bounded memory
        d2 = ((part.unsqueeze(1) - fit.unsqueeze(0)) ** 2).sum(-1)
        for i, h in enumerate(BANDWIDTHS):
            totals[i] += float((torch.logsumexp(-d2 / (2 * h * h), -1) - math.log(len(fit) * 2 * math.pi * h * h)).sum())
    scores = totals.numpy()
    return float(BANDWIDTHS[int(np.argmax(scores))])
