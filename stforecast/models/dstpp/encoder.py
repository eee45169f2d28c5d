"""The history encoder: three self-attention streams (temporal, spatial, joint) with recurrent heads, and the
key/value cache that carries a simulation's state forward one row at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stforecast.models.dstpp.config import DISPLACEMENTS, ModelConfig


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
        # scores against the shared prefix and each sequence's own rows
        scores = [_shared_matmul(q, key.transpose(-1, -2)) * scale for key in cache.keys()]
        w = torch.softmax(torch.cat(scores, -1), -1).split([sc.shape[-1] for sc in scores], -1)
        a = sum(_shared_matmul(wi, vi) for wi, vi in zip(w, cache.values()))
        return self._finish(x, a)


def _shared_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` (B, heads, 1, m) @ ``b`` (1 or B, heads, m, n) → (B, heads, 1, n). A ``b`` shared by all B sequences (the
    observed history's keys and values) is one (heads, B, m) @ (heads, m, n) product: broadcast over B, matmul
    would expand it to B copies first (80 MB per layer and step for 5,000 simulations of a 128-event history)."""
    if b.shape[0] == 1 and a.shape[0] > 1:
        return (a[:, :, 0].transpose(0, 1) @ b[0]).transpose(0, 1).unsqueeze(2)
    return a @ b


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
            # the filled rows into a buffer of the same capacity: sliced to n, the next append would grow (copy) it
            # again at once, two copies of every live sequence's rows at each step where one retires
            kept = []
            for t in self.own:
                fresh = t.new_empty((len(index),) + t.shape[1:])
                fresh[:, :, :self.n] = t[index, :, :self.n]
                kept.append(fresh)
            self.own = tuple(kept)

    def expand(self, batch: int) -> "LayerCache":
        """A fresh cache for ``batch`` sequences that all start from this one's prefix (nothing of their own)."""
        assert self.n == 0, "expand a cache before any sequence has rows of its own"
        return LayerCache(self.prefix)


@dataclass
class EncoderCache:
    """What :meth:`HistoryEncoder.advance` needs to add a row to B sequences: per stream, each attention layer's
    :class:`LayerCache` and the recurrent head's (h, c) (each (1, B', hidden)); and ``state`` (B, 3 d), the encoder
    state after the newest row.

    Retired sequences leave lazily: ``live`` (B,) the buffer rows of the B live sequences (None: all B' = B of
    them). The buffers are compacted only once a quarter of their rows are retired; until then the retired rows ride
    along (a step computes them too), instead of every live sequence's keys and values being copied at every step
    where one retires."""

    layers: list  # [stream][layer] -> LayerCache
    rnn: list  # [stream] -> (h, c) or None
    state: torch.Tensor
    live: torch.Tensor | None = None
    buffer_rows: int = 0  # B' while ``live`` is set

    def select(self, index: torch.Tensor) -> None:
        if self.live is None:
            self.buffer_rows = self.state.shape[0]
        self.live = index if self.live is None else self.live[index]
        self.state = self.state[index]
        if len(self.live) < 0.75 * self.buffer_rows:
            for stream in self.layers:
                for cache in stream:
                    cache.select(self.live)
            self.rnn = [None if hc is None else tuple(t[:, self.live] for t in hc) for hc in self.rnn]
            self.live = None

    def to_buffer(self, v: torch.Tensor | None) -> torch.Tensor | None:
        """A live sequences' input (B, ...) placed at their buffer rows (B', ...), zeros at the retired ones."""
        if v is None or self.live is None:
            return v
        out = v.new_zeros((self.buffer_rows,) + v.shape[1:])
        out[self.live] = v
        return out

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
        add = (lambda v: None if v is None else cache.to_buffer(v).unsqueeze(1))
        e_t, e_s = self.embed(add(time), add(xy_scaled), add(wait), add(step), add(mark))
        out = []
        for i, (stream, x) in enumerate(zip(self.streams, (e_t, e_s, e_t + e_s))):
            y, cache.rnn[i] = stream.step(x, cache.layers[i], cache.rnn[i])
            out.append(y[:, 0])
        state = torch.cat(out, -1)
        cache.state = state if cache.live is None else state[cache.live]
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
