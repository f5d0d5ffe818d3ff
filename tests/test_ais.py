"""Annealed importance sampling, its HMC transition and BDMC, checked in float64 against closed forms (issue 13).

Models (none is our VAE class):

* probabilistic PCA, z ~ N(0, I_Z), x | z ~ N(W z + b, s^2 I_D): x ~ N(b, W W^T + s^2 I), exact log p(x); its
  guide is the exact posterior mean shifted by 0.5 in every latent dimension with a third of its scale
  (poor in all Z dimensions), so importance sampling with it is badly biased;
* a 1-D latent with a nonlinear likelihood, x_d | z ~ N(tanh(a_d z + c_d), 0.3^2): log p(x) by quadrature;
* a constrained latent, a precision tau ~ Gamma(2, 1) with x_d | tau ~ N(0, 1 / tau): log p(x) in closed form
  (a multivariate Student t), AIS in log tau through biject_to.

Shape legend: C chains, N data points, D data dim, Z latent dim.
"""
import math

import pytest
import pyro
import pyro.distributions as dist
import torch

from pyro_vae import ais_log_likelihood, bdmc, log_likelihood, log_weights
from pyro_vae.ais import annealing_schedule
from pyro_vae.hmc import HMCState, hmc_transition
from pyro_vae.importance import ModelGuideContractError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class PPCA(torch.nn.Module):
    D, Z, S = 8, 3, 0.5

    def __init__(self, seed=0, shift=0.5, narrow=1 / 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(self.D, self.Z, generator=g, dtype=F64))
        self.register_buffer("b", torch.randn(self.D, generator=g, dtype=F64))
        self.shift, self.narrow = shift, narrow

    def posterior(self, x):
        cov = torch.linalg.inv(torch.eye(self.Z, dtype=F64) + self.W.T @ self.W / self.S ** 2)
        return (x - self.b) @ self.W @ cov.T / self.S ** 2, cov

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.Z, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.S).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        mean, cov = self.posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(mean + self.shift, cov.diagonal().sqrt() * self.narrow).to_event(1))

    def simulate(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, self.Z, generator=g, dtype=F64) @ self.W.T + self.b + \
            self.S * torch.randn(n, self.D, generator=g, dtype=F64)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.S ** 2 * torch.eye(self.D, dtype=F64)
        return dist.MultivariateNormal(self.b, cov).log_prob(x)


class Tanh1D:
    """z ~ N(0, 1), x_d | z ~ N(tanh(a_d z + c_d), 0.3^2); a guide N(0.3, 0.5) that ignores x."""
    a = torch.tensor([1.5, -2.0, 0.7, 3.0, -1.0, 2.5], dtype=F64)
    c = torch.tensor([0.2, -0.5, 0.0, 1.0, 0.3, -1.2], dtype=F64)

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(torch.tanh(z.unsqueeze(-1) * self.a + self.c), 0.3).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full((x.shape[0],), 0.3, dtype=F64), 0.5))

    def exact_log_px(self, x):
        z = torch.linspace(-10, 10, 40001, dtype=F64)                                            # [G]
        log_joint = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(
            torch.tanh(z[:, None, None] * self.a + self.c), 0.3).log_prob(x).sum(-1).T           # [N, G]
        return torch.logsumexp(log_joint, -1) + math.log(float(z[1] - z[0]))

    def simulate(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 1, generator=g, dtype=F64)
        return torch.tanh(z * self.a + self.c) + 0.3 * torch.randn(n, 6, generator=g, dtype=F64)


class GammaPrecision:
    """tau ~ Gamma(2, 1), x | tau ~ N(0, I / tau) in D = 5; guide: a LogNormal around the wrong place."""
    A, B, D = 2.0, 1.0, 5

    def model(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            tau = pyro.sample("tau", dist.Gamma(torch.tensor(self.A, dtype=F64), self.B))
            pyro.sample("x", dist.Normal(torch.zeros((), dtype=F64), tau.rsqrt().unsqueeze(-1)).expand(
                tau.shape + (self.D,)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("tau", dist.LogNormal(torch.zeros(x.shape[0], dtype=F64), 0.3))

    def exact_log_px(self, x):
        a, b, d = self.A, self.B, self.D
        s = x.pow(2).sum(-1)
        return (math.lgamma(a + d / 2) - math.lgamma(a) + a * math.log(b) - (a + d / 2) * torch.log(b + s / 2)
                - d / 2 * math.log(2 * math.pi))

    def simulate(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        tau = torch.distributions.Gamma(torch.full((n, 1), self.A, dtype=F64), self.B).sample()
        return torch.randn(n, self.D, generator=g, dtype=F64) / tau.sqrt()


def within(summary, exact, k=3.0):
    """The mean AIS error over points and its Monte-Carlo standard error."""
    error = float((summary.log_likelihood - exact).mean())
    return error, abs(error) < k * summary.stderr_mc


# -- the estimator ---------------------------------------------------------------------------------------

def test_one_temperature_step_is_importance_sampling_with_the_guide():
    """b = [0, 1] is IWAE_C: the same draws, so the same numbers."""
    m = PPCA()
    x = m.simulate(7, seed=1)
    torch.manual_seed(3)
    summary = ais_log_likelihood(m.model, m.guide, x, num_chains=50, num_steps=1)
    torch.manual_seed(3)
    lw = log_weights(m.model, m.guide, x, num_particles=50)                              # [C, N]
    assert torch.equal(summary.log_weights, lw.double())
    assert torch.allclose(summary.log_likelihood, torch.logsumexp(lw, 0) - math.log(50))
    # and an explicit schedule [0, 1] is the same estimator
    torch.manual_seed(3)
    explicit = ais_log_likelihood(m.model, m.guide, x, num_chains=50, schedule=[0.0, 1.0])
    assert torch.equal(explicit.log_weights, summary.log_weights)


def test_ais_from_the_prior_is_exact_on_ppca_where_importance_sampling_with_the_guide_is_not():
    m = PPCA()
    x = m.simulate(30, seed=5)
    exact = m.exact_log_px(x)
    torch.manual_seed(0)
    chains, steps = 16, 300
    summary = ais_log_likelihood(m.model, m.guide, x, num_chains=chains, num_steps=steps, init="prior",
                                 leapfrog_steps=4)
    error, ok = within(summary, exact)
    assert ok, (error, summary.stderr_mc)
    assert 0.4 < float(summary.acceptance_rate.mean()) < 0.95
    # importance sampling with the (poor) guide and as many samples as AIS has chains x steps
    is_error = float((log_likelihood(m.model, m.guide, x, num_samples=chains * steps) - exact).mean())
    assert is_error < -5 and abs(is_error) > 10 * abs(error) + 3 * summary.stderr_mc, (is_error, error)


def test_ais_is_exact_on_a_1d_nonlinear_latent_by_quadrature():
    m = Tanh1D()
    x = m.simulate(20, seed=2)
    exact = m.exact_log_px(x)
    torch.manual_seed(1)
    summary = ais_log_likelihood(m.model, m.guide, x, num_chains=16, num_steps=150, init="prior", leapfrog_steps=4)
    error, ok = within(summary, exact)
    assert ok, (error, summary.stderr_mc)
    assert summary.stderr_mc < 0.1
    is_error = float((log_likelihood(m.model, m.guide, x, num_samples=16) - exact).mean())
    assert is_error < error - 3 * summary.stderr_mc          # the guide ignores x: 16 samples of it are poor


def test_ais_is_exact_on_a_constrained_latent_through_biject_to():
    """A Gamma precision, moved in log tau: a missing or wrong log-det-Jacobian would miss the closed form."""
    m = GammaPrecision()
    x = m.simulate(30, seed=4)
    exact = m.exact_log_px(x)
    for init in ("guide", "prior"):
        torch.manual_seed(2)
        summary = ais_log_likelihood(m.model, m.guide, x, num_chains=16, num_steps=100, init=init, leapfrog_steps=4)
        error, ok = within(summary, exact)
        assert ok, (init, error, summary.stderr_mc)
        assert summary.stderr_mc < 0.05


def test_bdmc_brackets_the_exact_log_likelihood_and_its_gap_falls_with_steps():
    m = PPCA()
    torch.manual_seed(4)
    result = bdmc(m.model, m.guide, 20, like=torch.zeros(1, PPCA.D, dtype=F64), num_steps=[4, 40, 200],
                  num_chains=8, init="prior", leapfrog_steps=3, num_samples=500)
    exact = m.exact_log_px(result.x)                               # the simulated points' exact log p(x)
    se = lambda d: float(d.std() / math.sqrt(d.numel()))                                     # noqa: E731
    gaps = []
    for b in result.bounds:
        below, above = b.lower - exact, b.upper - exact             # paired over the simulated points
        assert float(below.mean()) <= 3 * se(below), (b.num_steps, float(below.mean()), se(below))
        assert float(above.mean()) >= -3 * se(above), (b.num_steps, float(above.mean()), se(above))
        gaps.append(b.gap_mean)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1.0, gaps
    assert result.iwae_mean < result.bounds[-1].lower_mean      # the poor guide: IS falls below the sandwich
    assert "| 200 |" in result.table() and "IWAE_500" in result.table()


def test_ais_runs_on_a_two_layer_vae_and_refuses_discrete_latents():
    from pyro_vae.examples.two_layer import TwoLayerVAE
    torch.manual_seed(0)
    vae = TwoLayerVAE(16, latent_dim=2, hidden=(8,), latent1_dim=3, hidden2=(4,)).eval()
    x = (torch.rand(6, 16) < 0.4).float()
    summary = ais_log_likelihood(vae.model, vae.guide, x, num_chains=4, num_steps=20, leapfrog_steps=2,
                                 batch_size=4)                    # two batches
    assert summary.log_weights.shape == (4, 6) and torch.isfinite(summary.log_likelihood).all()
    assert 0 < float(summary.acceptance_rate.mean()) <= 1
    assert summary.to_dict()["num_steps"] == 20 and "log p(x) =" in summary.headline()

    def model(x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.tensor(0.5)))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.tensor(0.5)))

    with pytest.raises(ModelGuideContractError, match="discrete"):
        ais_log_likelihood(model, guide, torch.zeros(3), num_steps=3)


def test_schedules():
    s = annealing_schedule(10, "sigmoid")
    assert s.dtype == F64 and s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all()
    assert s.diff()[0] < s.diff()[5]                               # denser at the ends
    assert torch.allclose(annealing_schedule(4, "linear"), torch.tensor([0, .25, .5, .75, 1], dtype=F64))
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        annealing_schedule(2, [0.0, 0.7, 0.5])


# -- the HMC transition leaves its target invariant ------------------------------------------------------

def run_chains(log_density, start, step_size, num_leapfrog, transitions):
    state = HMCState.at(start, log_density)
    accept = []
    for _ in range(transitions):
        state, prob = hmc_transition(state, log_density, torch.tensor([step_size], dtype=F64), num_leapfrog)
        accept.append(float(prob.mean()))
    return state.position, sum(accept) / len(accept)


def gradient_target(log_f):
    def fn(u):
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            value = log_f(u)
            grad, = torch.autograd.grad(value.sum(), u)
        return value.detach(), grad, {}
    return fn


def test_hmc_leaves_a_correlated_gaussian_invariant():
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=F64)
    target = dist.MultivariateNormal(torch.zeros(2, dtype=F64), cov)
    start = target.sample((20000, 1))                                                   # [C, 1, 2] exact
    end, accept = run_chains(gradient_target(target.log_prob), start, 0.45, 5, 10)
    assert 0.4 < accept < 0.95                      # the Metropolis test matters at this step size
    flat = end.reshape(-1, 2)
    assert flat.mean(0).abs().max() < 0.04
    assert (torch.cov(flat.T) - cov).abs().max() < 0.05
    assert (end - start).abs().mean() > 0.3          # and the chains did move


def test_hmc_leaves_a_funnel_invariant():
    """v ~ N(0, 1), x_i | v ~ N(0, e^v), i = 1, 2: E[v] = 0, Var v = 1, E[x_i^2] = E[e^v] = e^(1/2)."""
    torch.manual_seed(1)

    def log_f(u):
        v, x = u[..., 0], u[..., 1:]
        return -0.5 * v.pow(2) - 0.5 * x.pow(2).sum(-1) * torch.exp(-v) - v

    v = torch.randn(20000, 1, 1, dtype=F64)
    start = torch.cat([v, torch.randn(20000, 1, 2, dtype=F64) * (v / 2).exp()], -1)
    end, accept = run_chains(gradient_target(log_f), start, 0.4, 5, 20)
    assert 0.4 < accept < 0.97
    v, x = end[..., 0].flatten(), end[..., 1:].flatten()
    assert abs(float(v.mean())) < 0.05 and abs(float(v.var()) - 1) < 0.06
    assert abs(float(x.pow(2).mean()) - math.exp(0.5)) < 0.15


# -- a trained VAE: ELBO <= IWAE_5000 <= AIS ------------------------------------------------------------

@pytest.mark.slow
def test_trained_vae_on_digits_orders_elbo_iwae_and_ais():
    from pyro.infer import Trace_ELBO
    from pyro_vae import build_vae, evaluate
    from pyro_vae.data import load_dataset
    torch.manual_seed(0)
    data = load_dataset("digits", binarize="static")
    vae = build_vae(64, 16, (32,))
    optim = torch.optim.Adam(vae.parameters(), lr=3e-3)
    x = data.train
    for _ in range(4):                                            # a short training: 4 epochs
        for batch in torch.randperm(len(x)).split(100):
            loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x[batch], num_data=len(x)) / len(x)
            optim.zero_grad()
            loss.backward()
            optim.step()
    vae.eval()
    test = data.test[:12]
    summary = evaluate(vae.model, vae.guide, test, num_samples=5000)
    with torch.no_grad():
        elbo = log_weights(vae.model, vae.guide, test, num_particles=2000).double().mean(0)     # [N]
    ais = ais_log_likelihood(vae.model, vae.guide, test, num_chains=16, num_steps=1000, leapfrog_steps=2)
    iwae = summary.log_likelihood
    se = lambda d: float(d.std() / math.sqrt(d.numel()))                                     # noqa: E731
    # ELBO < IWAE_5000: a real gap, many standard errors wide
    assert float((iwae - elbo).mean()) > 5 * se(iwae - elbo)
    # IWAE_5000 <= AIS in expectation: here (digits, 16 latents) IWAE_5000 is nearly exact, so the gap is
    # small; AIS must not fall below it by more than the errors, and it must be close
    gap = ais.log_likelihood - iwae
    assert float(gap.mean()) > -3 * math.hypot(se(gap), ais.stderr_mc), (float(gap.mean()), se(gap))
    assert abs(float(gap.mean())) < 0.2
    assert 0.5 < float(ais.acceptance_rate.mean()) < 0.85
