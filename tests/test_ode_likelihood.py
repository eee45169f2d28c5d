"""The probability-flow ODE: its log-density is exact for denoisers whose ε is known in closed form, and it is the
density of its own sampler for a denoiser that is not (a fixed random network)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, multivariate_normal, norm
from torch import nn

from stforecast.diffusion.ode import ProbabilityFlow, clamp_steps, solver_error
from stforecast.diffusion.schedule import NoiseSchedule

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
STD = torch.tensor([0.2, 0.5, 0.1], dtype=F64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small (≤ 4000 × 32): intra-op threads gain nothing, and on a busy 2-core machine their
    hand-offs made each network call 50× slower (40 ms instead of 0.7 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_eps(flow: ProbabilityFlow, mu: torch.Tensor, std: torch.Tensor):
    """E[ε | x_s] when x0 ~ N(mu, diag std²), at the flow's own continuous ᾱ(s). Also checks the documented call
    contract: x float64, s a 0-dim float64 tensor inside [−1, K−1]."""
    def eps(x, s):
        assert x.dtype == F64 and s.dim() == 0 and s.dtype == F64 and -1 <= s.item() <= flow.steps - 1
        ab = flow.alpha_bar_at(s)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * std**2 + 1 - ab)
    return eps


def gaussian_data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + STD * torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


def max_error_vs_gaussian(flow: ProbabilityFlow, eps, x0: torch.Tensor, prior_correction: bool = False) -> float:
    """max |ODE log p − analytic log N(x0; MU, STD²)| over events (nats). ``prior_correction``: compare instead with
    the exact density of the flow, whose prior is N(0, I) rather than the true marginal N(sqrt(ᾱ_T) MU, ᾱ_T STD² +
    1 − ᾱ_T) at s = K−1 (the flow map is the exact one here, so the two densities differ by the priors' log-ratio
    at the latent): under the linear schedule ᾱ_T = 3e-5 and that ratio alone reaches 0.005 nats."""
    with torch.no_grad():  # log_prob must work under an outer no_grad
        out = flow.log_prob(eps, x0)
    ref = norm.logpdf(x0.numpy(), MU.numpy(), STD.numpy()).sum(-1)
    if prior_correction:
        ab = flow.alpha_bar_at(flow.steps - 1).item()
        z = out.latent.numpy()
        ref += norm.logpdf(z).sum(-1) - norm.logpdf(z, math.sqrt(ab) * MU.numpy(),
                                                    np.sqrt(ab * STD.numpy() ** 2 + 1 - ab)).sum(-1)
    return float(np.abs(out.log_prob.numpy() - ref).max())


def test_schedule_is_reproduced_at_integer_steps():
    for kind in ("cosine", "linear"):
        sched = NoiseSchedule(200, kind)
        flow = ProbabilityFlow(sched)
        ab = flow.alpha_bar_at(torch.arange(-1, 200, dtype=F64))
        assert ab[0] == 1
        torch.testing.assert_close(ab[1:], sched.alpha_bar.double(), rtol=1e-6, atol=0)
        fine = flow.alpha_bar_at(torch.linspace(-1, 199, 20001, dtype=F64))
        assert (fine.diff() < 0).all()  # monotone in between: the path never turns back


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_gaussian_log_density_is_exact(kind):
    flow = ProbabilityFlow(NoiseSchedule(200, kind))
    eps = gaussian_eps(flow, MU, STD)
    assert max_error_vs_gaussian(flow, eps, gaussian_data(200), prior_correction=kind == "linear") < 0.01


def test_gaussian_mixture_log_density_is_exact():
    w = torch.tensor([0.4, 0.6], dtype=F64)
    mu = torch.tensor([[-0.5, 0.3], [0.4, -0.2]], dtype=F64)
    std = torch.tensor([[0.15, 0.3], [0.3, 0.1]], dtype=F64)
    flow = ProbabilityFlow(NoiseSchedule(200, "cosine"))

    def eps(x, s):  # ε = −sqrt(1 − ᾱ) ∇ log p_s, p_s = Σ w_j N(sqrt(ᾱ) μ_j, ᾱ std_j² + 1 − ᾱ)
        ab = flow.alpha_bar_at(s)
        m, v = ab.sqrt() * mu, ab * std**2 + 1 - ab  # (2, D)
        d = x.unsqueeze(-2) - m  # (N, 2, D)
        logc = w.log() - 0.5 * (d**2 / v + v.log() + math.log(2 * math.pi)).sum(-1)  # (N, 2)
        r = torch.softmax(logc, -1).unsqueeze(-1)
        return (1 - ab).sqrt() * (r * d / v).sum(-2)

    g = torch.Generator().manual_seed(1)
    comp = torch.multinomial(w, 300, replacement=True, generator=g)
    x0 = mu[comp] + std[comp] * torch.randn(300, 2, generator=g, dtype=F64)
    ref = logsumexp([np.log(wj) + multivariate_normal(m.numpy(), np.diag(s.numpy() ** 2)).logpdf(x0.numpy())
                     for wj, m, s in zip(w.tolist(), mu, std)], axis=0)
    out = flow.log_prob(eps, x0)
    assert np.abs(out.log_prob.numpy() - ref).max() < 0.01


class RandomNet(nn.Module):
    """A fixed random network in place of a trained one: ε̂ = the exact ε of N(0, 0.5² I) data plus
    sqrt(ᾱ(1 − ᾱ)) × a tanh MLP of (x, s). The extra term vanishes at both ends (so sampling still starts from
    N(0, I) and ends at finite points) and bends the flow in between, so the distribution is far from Gaussian."""

    def __init__(self, flow: ProbabilityFlow, dim: int = 3, width: int = 32, gain: float = 4.0, seed: int = 0):
        super().__init__()
        self.flow = flow
        with torch.random.fork_rng():  # seeded weights, without touching the global generator
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                     nn.Linear(width, dim)).double()
        with torch.no_grad():  # steep inputs (tanh far from linear over the data's ±1) and a large output
            self.net[0].weight.mul_(3)
            self.net[-1].weight.mul_(gain)
        self.shapes = set()

    def forward(self, x, s):
        self.shapes.add(tuple(x.shape))
        ab = self.flow.alpha_bar_at(s)
        step = (s / self.flow.steps).expand(*x.shape[:-1], 1)
        base = (1 - ab).sqrt() * x / (0.25 * ab + 1 - ab)
        return base + (ab * (1 - ab)).sqrt() * self.net(torch.cat([x, step], -1))


def test_sampler_and_density_agree_for_a_random_network():
    """log_prob must be the density of what sample draws. The usual HDR coverage (truths and references both from
    the sampler, ranked by log p) cannot test that: for two sets from one distribution, ranking by *any* function
    gives the nominal coverage. So the mass that log_prob puts above a threshold is integrated by importance
    sampling, from a proposal q that log_prob does not see, and compared with the fraction of sampler draws
    above it: at the thresholds of the 50/80/95 % HDRs, and with no threshold (the density integrates to 1). The
    round trips check that log_prob follows the sampler's path; the masses, that its volume change is right.
    """
    flow = ProbabilityFlow(NoiseSchedule(200, "cosine"))
    net = RandomNet(flow)
    denoise = clamp_steps(net)  # as a network trained on integer steps 0..K−1 would be called
    n, m, n_kde = 2000, 4000, 1000

    z = torch.randn(4, (n + n_kde) // 4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    draws = flow.sample(denoise, z)
    assert draws.shape == z.shape and z.shape in net.shapes  # leading dims reach the network as they are
    z, draws = z.reshape(-1, 3), draws.reshape(-1, 3)
    truth, z = draws[:n], z[:n]
    with torch.no_grad():
        out = flow.log_prob(denoise, truth)
    assert (out.latent - z).abs().max() < 1e-3  # log_prob runs the sampler's path backwards...
    assert (flow.sample(denoise, out.latent[:500]) - truth[:500]).abs().max() < 1e-3  # ...and back again

    # far from Gaussian: KL(p ‖ Gaussian fit) = E_p[log p − log N_fit] is large
    mean, cov = truth.mean(0).numpy(), np.cov(truth.numpy().T)
    kl = out.log_prob.mean().item() - multivariate_normal(mean, cov).logpdf(truth.numpy()).mean()
    assert kl > 0.1

    # q: 80 % a KDE of other sampler draws (close to p: 75 % effective sample size, against 35 % for a Gaussian)
    # and 20 % a wide Gaussian, which keeps the weights p/q bounded in the tails, where the KDE falls off fast
    kde, wide = gaussian_kde(draws[n:].numpy().T), multivariate_normal(mean, 1.5**2 * cov)
    rng = np.random.default_rng(3)
    k = rng.binomial(m, 0.2)
    y = np.concatenate([kde.resample(m - k, seed=rng).T, wide.rvs(k, random_state=rng)])
    log_q = np.logaddexp(np.log(0.8) + kde.logpdf(y.T), np.log(0.2) + wide.logpdf(y))
    log_p_y = flow.log_prob(denoise, torch.as_tensor(y)).log_prob.numpy()
    w = np.exp(log_p_y - log_q)

    def check(shift: float = 0.0) -> list[bool]:
        """Does each mass agree within max(0.02, 3 SE)? SE: the importance-sampling error (from the weights) and,
        for the HDRs, the binomial error of the truths' quantile, sqrt(l (1 − l) / n) = 0.011 at l = 0.5 for
        n = 2000: at ±0.02 alone a correct density would fail one run in five. Tolerances come out at 0.03 for
        the total mass and 0.03–0.05 for the HDRs."""
        lw = w * np.exp(shift)
        ok = [abs(lw.mean() - 1) < max(0.02, 3 * lw.std() / math.sqrt(m))]
        for level in (0.5, 0.8, 0.95):
            above = lw * (log_p_y + shift >= np.quantile(out.log_prob.numpy() + shift, 1 - level))
            se = math.sqrt(above.var() / m + level * (1 - level) / n)
            ok.append(abs(above.mean() - level) < max(0.02, 3 * se))
        return ok

    assert all(check())
    assert not all(check(shift=0.1))  # a density off by 0.1 nats (10 % of the mass) fails


def test_halving_the_tolerance_changes_the_gaussian_nll_by_under_a_hundredth():
    flow = ProbabilityFlow(NoiseSchedule(200, "cosine"))
    change = solver_error(flow, gaussian_eps(flow, MU, STD), gaussian_data(200))
    assert 0 < change < 0.01


def test_the_gaussian_check_catches_a_wrong_density():
    """Negative controls: the check of the exact-Gaussian test fails for a denoiser of the wrong data spread and
    for a log-density without the divergence of ε̂ (same flow, same samples, wrong volume change)."""
    flow = ProbabilityFlow(NoiseSchedule(200, "cosine"))
    x0 = gaussian_data(200)
    assert max_error_vs_gaussian(flow, gaussian_eps(flow, MU, STD * 1.2), x0) > 0.05
    eps = gaussian_eps(flow, MU, STD)
    no_divergence = lambda x, s: eps(x.detach(), s) + 0 * x  # same field, zero Jacobian for the trace
    assert max_error_vs_gaussian(flow, no_divergence, x0) > 0.05


class GaussianWithDivergence:
    """The exact ε of N(MU, STD²) data (:func:`gaussian_eps`) with its divergence in closed form, the way DSTPP's
    denoiser supplies one (issue 23: the likelihood's trace without backward passes)."""

    def __init__(self, flow: ProbabilityFlow, wrong: float = 1.0):
        self.flow, self.eps, self.calls, self.wrong = flow, gaussian_eps(flow, MU, STD), 0, wrong

    def __call__(self, x, s):
        return self.eps(x, s)

    def divergence(self, x, s):
        self.calls += 1
        ab = self.flow.alpha_bar_at(s)
        trace = ((1 - ab).sqrt() / (ab * STD**2 + 1 - ab)).sum() * self.wrong
        return self.eps(x, s), trace.expand(x.shape[0])


def test_a_supplied_divergence_gives_the_exact_gaussian_density_and_the_reference_solve():
    """The fast trace (a denoiser's own ``divergence``) is used where there is one, gives the analytic density
    and the same answer as the reference (autograd) trace on the same solve; a wrong one is caught."""
    flow = ProbabilityFlow(NoiseSchedule(200, "cosine"))
    x0 = gaussian_data(200)
    fast = GaussianWithDivergence(flow)
    got = flow.log_prob(fast, x0)
    assert fast.calls == got.nfe > 0  # every evaluation took the fast trace
    ref = norm.logpdf(x0.numpy(), MU.numpy(), STD.numpy()).sum(-1)
    assert np.abs(got.log_prob.numpy() - ref).max() < 0.01
    flow.trace = "autograd"
    reference = flow.log_prob(fast, x0)
    assert fast.calls == got.nfe  # the reference never asked for it
    assert np.abs(got.log_prob.numpy() - reference.log_prob.numpy()).max() < 1e-6
    flow.trace = "auto"
    wrong = flow.log_prob(GaussianWithDivergence(flow, wrong=1.05), x0)
    assert np.abs(wrong.log_prob.numpy() - ref).max() > 0.05
