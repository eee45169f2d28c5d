"""Issue 23: DSTPP's exact likelihood with the denoiser's own divergence (one forward pass carrying tangents)
against the reference solve (D vector-Jacobian products per evaluation), on a trained toy model."""

from __future__ import annotations

import numpy as np
import torch

from stforecast.models.dstpp import DSTPP, ModelConfig, Scaler

from tests.test_parents import STATS, REGION, toy_set


def test_the_denoiser_divergence_is_the_trace_of_its_jacobian():
    torch.manual_seed(0)
    model = DSTPP(ModelConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16, rnn_hidden=8, denoiser_width=16, steps=20),
                  Scaler.from_stats(STATS))
    den = model.denoiser
    ctx = den.prepare(torch.randn(40, 24))
    x = torch.randn(40, 3, requires_grad=True)
    for k in (torch.tensor(3.7), torch.rand(40) * 19):
        eps = den(x, k, ctx)
        trace = sum(torch.autograd.grad(eps[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(3))
        fast_eps, fast_trace = den.divergence(x.detach(), k, ctx)
        torch.testing.assert_close(fast_eps, eps.detach())
        torch.testing.assert_close(fast_trace, trace, atol=1e-6, rtol=1e-5)
        assert trace.abs().mean() > 1e-3  # not a vacuous comparison


def test_fast_exact_nll_is_the_reference_solve_on_a_trained_toy_model():
    torch.manual_seed(1)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, rnn_hidden=16, denoiser_width=32, steps=40,
                      dropout=0.0)
    model = DSTPP(cfg, Scaler.from_stats(STATS, cfg.time_transform, cfg.range_margin, cfg.location,
                                         cfg.location_scale, REGION))
    data = toy_set(n_seq=24, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    first = None
    for step in range(150):  # trained, so the field is far from the initial network's
        loss = model.loss(data.collate(rng.choice(len(data), 8, replace=False)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    assert float(loss) < first
    model.eval()
    seq = np.repeat(np.arange(len(data)), 3)
    cut = np.concatenate([[1, 2, 3] for _ in range(len(data))])  # toy sequences have ≥ 4 rows
    histories, truth = data.prefixes(seq, cut)
    hist = histories.collate(np.arange(len(histories)))
    target = torch.as_tensor(truth, dtype=torch.float64)
    flow = model.flow(1e-4)
    fast, info = model.exact_nll(hist, target)
    flow.trace = "autograd"
    try:
        reference, ref_info = model.exact_nll(hist, target)
    finally:
        flow.trace = "auto"
    diff = (fast - reference).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.01, (float(diff.mean()), float(diff.max()))
    assert np.isfinite(fast.numpy()).all() and info["nfe"] > 20
