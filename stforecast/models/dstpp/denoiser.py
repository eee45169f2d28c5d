"""The co-attention denoiser of the 3-value event (waiting time, x, y): ε̂(x_k, k, h)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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

    def divergence(self, x_k: torch.Tensor, k: torch.Tensor, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """ε̂ (..., 3) as :meth:`forward`, and its divergence Σ_i ∂ε̂_i/∂x_i (...), exactly, in one forward pass
        carrying tangents: the waiting time's through the temporal branch, x's and y's through the spatial one (the
        attention weights do not depend on x_k). What the probability-flow ODE's likelihood needs at every
        evaluation, for about the cost of two forward passes instead of a forward and three backward ones."""
        e = self.step_embedding(k)
        alpha_s, alpha_t = (torch.softmax(rest(g + lin(e)), -1) for g, lin, rest in
                            zip(ctx["att_g"], self.att_e, self.att_rest))
        h_t, h_s = x_k[..., :1], x_k[..., 1:]
        tan_t = tan_s = None  # ∂h_t/∂dt (..., w) and ∂h_s/∂(x, y) (..., 2, w)
        for lin_t, lin_s, ct, cs in zip(self.w_t, self.w_s, ctx["ct"], ctx["cs"]):
            pre_t, pre_s = lin_t(h_t) + e + ct, lin_s(h_s) + e + cs
            tan_t = lin_t.weight[:, 0] if tan_t is None else tan_t @ lin_t.weight.T
            tan_s = lin_s.weight.T if tan_s is None else tan_s @ lin_s.weight.T
            tan_t, tan_s = tan_t * (pre_t > 0), tan_s * (pre_s > 0).unsqueeze(-2)
            h_t, h_s = F.relu(pre_t), F.relu(pre_s)
        h_t, h_s = self.out_t(h_t), self.out_s(h_s)
        tan_t, tan_s = tan_t @ self.out_t.weight.T, tan_s @ self.out_s.weight.T
        o_t = alpha_t[..., :1] * h_t + alpha_t[..., 1:] * h_s
        o_s = alpha_s[..., :1] * h_t + alpha_s[..., 1:] * h_s
        eps = torch.cat([self.head_t(o_t), self.head_s(o_s)], -1)
        # only the diagonal: dt reaches ε̂_t through o_t's h_t share; x, y reach ε̂_x, ε̂_y through o_s's h_s share
        d_t = self._head_tangent(self.head_t, o_t, alpha_t[..., :1] * tan_t)[..., 0]
        d_s = self._head_tangent(self.head_s, o_s, alpha_s[..., 1:].unsqueeze(-1) * tan_s)  # (..., 2, 2)
        return eps, d_t + d_s[..., 0, 0] + d_s[..., 1, 1]

    @staticmethod
    def _head_tangent(head: nn.Sequential, o: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
        """The tangent of ``head`` (Linear, ReLU, Linear) at ``o`` (..., w) along ``tangent`` (..., w) or
        (..., m, w): (..., out) or (..., m, out)."""
        first, _, last = head
        active = first(o) > 0
        if tangent.dim() > o.dim():
            active = active.unsqueeze(-2)
        return ((tangent @ first.weight.T) * active) @ last.weight.T


class ContinuousDenoiser:
    """The denoiser at continuous steps for the ODE: float64 in and out, the network in ``dtype``."""

    def __init__(self, denoiser, ctx: dict, dtype: torch.dtype):
        self.denoiser, self.ctx, self.dtype = denoiser, ctx, dtype

    def __call__(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x.to(self.dtype), s.to(self.dtype), self.ctx).double()

    def divergence(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, div = self.denoiser.divergence(x.to(self.dtype), s.to(self.dtype), self.ctx)
        return eps.double(), div.double()
