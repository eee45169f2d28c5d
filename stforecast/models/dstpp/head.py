"""The magnitude head: p(m | h), a mixture of exponentials above Mc (Gutenberg-Richter is one exponential)."""

from __future__ import annotations

import math

import torch
from torch import nn

from stforecast.models.dstpp.config import ModelConfig


class MagnitudeHead(nn.Module):
    """p(m | h): the next event's magnitude above ``lo`` = Mc − 0.05 (half a 0.1 reporting bin) as a mixture of
    ``J`` exponentials whose weights and rates the history state sets. One exponential with the catalog's b is
    Gutenberg-Richter (ETAS's magnitude law); the mixture can put more weight on large magnitudes after a large
    shock, or less in a quiet spell. Rates start at b ln 10 (the Aki b of the train split). Mc and b are the
    train split's (the model's scaler holds them, :class:`~stforecast.models.dstpp.scaler.Statistics`): every
    method takes them."""

    def __init__(self, d_state: int, cfg: ModelConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_state, 64), nn.GELU(), nn.Linear(64, 2 * cfg.mark_components))
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():  # rates spread around G-R's at start (0.7x, 1x, 1.4x)
            self.net[-1].bias.zero_()
            self.net[-1].bias[cfg.mark_components:] = torch.linspace(-0.35, 0.35, cfg.mark_components)

    def params(self, cond: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``cond`` (..., 3 d) → log mixture weights and log rates (..., J), rates around b ln 10."""
        logits, log_rate = self.net(cond.float()).chunk(2, -1)
        return torch.log_softmax(logits, -1), log_rate.clamp(-5, 5) + math.log(b * math.log(10))

    def log_prob(self, cond: torch.Tensor, m: torch.Tensor, mc: float, b: float) -> torch.Tensor:
        """log p(m | h) (...) in nats per magnitude unit, above completeness ``mc`` (magnitudes below it are scored
        at it) with Gutenberg-Richter ``b`` setting the rates' scale."""
        log_w, log_rate = self.params(cond, b)
        excess = (m.float() - (mc - 0.05)).clamp(min=0).unsqueeze(-1)
        return torch.logsumexp(log_w + log_rate - log_rate.exp() * excess, -1)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, n: int, mc: float, b: float, generator: torch.Generator | None = None,
               m_max: float = 9.5) -> torch.Tensor:
        """``cond`` (B, 3 d) → (B, n) magnitudes (capped at ``m_max``)."""
        log_w, log_rate = self.params(cond, b)
        j = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)  # (B, n)
        rate = torch.gather(log_rate.exp(), 1, j)
        u = torch.rand(rate.shape, generator=generator, device=rate.device)
        return ((mc - 0.05) - torch.log1p(-u) / rate).clamp(max=m_max)
