"""Swappable priors: mixture of Gaussians and VampPrior, checked against direct computations in float64,
closed-form marginals of a linear-Gaussian decoder, and with every objective.

Shape legend: C components, K pseudo-inputs, N data, D data dim, Z latent dim.
"""
import math

import pytest
import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, GaussianLikelihood, MLPEncoder, build_vae
from pyro_vae.evaluation import evaluate, log_likelihood
from pyro_vae.objectives import IWAE_ELBO
from pyro_vae.priors import MixtureOfGaussiansPrior, VampPrior, build_prior
from pyro_vae.launch import train
from pyro_vae.training import TrainConfig

F64 = torch.float64


def mog_with(means, scales, weights):
    prior = MixtureOfGaussiansPrior(means.shape[1], means.shape[0]).double()
    with torch.no_grad():
        prior.means.copy_(means)
        p = (scales - prior.min_scale) / (prior.max_scale - prior.min_scale)
        prior.raw_scales.copy_(torch.log(p / (1 - p)))
        prior.logits.copy_(weights.log())
    return prior


def test_mog_log_density_equals_a_direct_computation():
    torch.manual_seed(0)
    means, scales = torch.randn(3, 2, dtype=F64), torch.rand(3, 2, dtype=F64) + 0.3
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    prior = mog_with(means, scales, weights)
    assert torch.allclose(prior.scales, scales) and torch.allclose(prior.weights, weights)
    z = torch.randn(7, 2, dtype=F64) * 2
    components = [math.log(w) - 0.5 * (((z - m) / s) ** 2).sum(-1) - s.log().sum() - math.log(2 * math.pi)
                  for w, m, s in zip(weights.tolist(), means, scales)]
    direct = torch.logsumexp(torch.stack(components), 0)
    assert torch.allclose(prior().log_prob(z), direct, atol=1e-12)
    assert prior().batch_shape == () and prior().event_shape == (2,)


def test_mog_with_one_component_is_a_gaussian():
    prior = mog_with(torch.tensor([[0.5, -1.0]], dtype=F64), torch.tensor([[0.7, 1.3]], dtype=F64),
                     torch.ones(1, dtype=F64))
    z = torch.randn(5, 2, dtype=F64)
    expected = dist.Normal(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.7, 1.3], dtype=F64)).to_event(1)
    assert torch.allclose(prior().log_prob(z), expected.log_prob(z), atol=1e-12)


def test_mog_initialisation_and_guards():
    torch.manual_seed(0)
    prior = MixtureOfGaussiansPrior(4, 10)
    assert prior.means.std() > 0.5                               # spread, not all at the origin
    assert torch.allclose(prior.scales, torch.ones(10, 4)) and torch.allclose(prior.weights, torch.full((10,), 0.1))
    with torch.no_grad():
        prior.raw_scales.fill_(-1e4)
    assert (prior.scales >= prior.min_scale).all() and torch.isfinite(prior().log_prob(torch.zeros(4)))
    fixed = MixtureOfGaussiansPrior(4, 10, learn_weights=False)
    assert "logits" not in dict(fixed.named_parameters())
    with pytest.raises(ValueError, match="num_components"):
        MixtureOfGaussiansPrior(4, 0)


class LinearEncoder(nn.Module):
    """A linear Gaussian encoder whose scales are at least ``min_scale``: wide enough to be a light-tailed
    importance proposal for the posteriors below, so the estimator's error is its Monte-Carlo error."""

    def __init__(self, data_dim, latent_dim, min_scale=0.1):
        super().__init__()
        self.net = nn.Linear(data_dim, 2 * latent_dim).double()
        self.data_dim, self.latent_dim, self.min_scale = data_dim, latent_dim, min_scale

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return 0.3 * loc, nn.functional.softplus(raw) + self.min_scale


def test_vampprior_is_the_average_of_the_encoder_gaussians_on_its_pseudo_inputs():
    torch.manual_seed(0)
    encoder = LinearEncoder(6, 2)
    prior = VampPrior(encoder, data_dim=6, latent_dim=2, num_pseudo_inputs=4).double()
    with torch.no_grad():
        prior.pseudo_inputs.copy_(torch.rand(4, 6, dtype=F64) * 1.4 - 0.2)   # some outside [0, 1]
    u = prior.pseudo_inputs.clamp(0, 1)
    loc, scale = encoder(u)
    z = torch.randn(9, 2, dtype=F64)
    per_component = dist.Normal(loc, scale).to_event(1).log_prob(z.unsqueeze(-2))          # [9, K]
    expected = torch.logsumexp(per_component, -1) - math.log(4)
    assert torch.allclose(prior().log_prob(z), expected, atol=1e-12)
    assert "_encoder" not in dict(prior.named_modules())                                   # shared, not owned
    data = torch.rand(10, 6, dtype=F64)
    prior.init_from_data(data, torch.Generator().manual_seed(0))
    assert all(any(torch.equal(row, d) for d in data) for row in prior.pseudo_inputs)


class LinearDecoder(nn.Linear):
    def __init__(self, latent_dim, data_dim):
        super().__init__(latent_dim, data_dim)
        self.latent_dim, self.data_dim = latent_dim, data_dim


def linear_gaussian_vae(prior_name, latent_dim, data_dim=3, seed=0):
    torch.manual_seed(seed)
    encoder = LinearEncoder(data_dim, latent_dim, min_scale=1.0)
    prior = build_prior(prior_name, latent_dim, num_components=3, encoder=encoder, data_dim=data_dim)
    return VAE(encoder, LinearDecoder(latent_dim, data_dim), GaussianLikelihood(0.4), prior).double()


def exact_marginal(vae, x):
    """p(x) for p(z) = sum_c pi_c N(mu_c, S_c), p(x|z) = N(Wz + b, s^2 I): sum_c pi_c N(W mu_c + b, W S_c W^T + s^2 I)."""
    with torch.no_grad():
        p_z = vae.prior()
        if isinstance(p_z, dist.MixtureSameFamily):
            log_pi = p_z.mixture_distribution.logits.log_softmax(-1)
            comp = p_z.component_distribution
            means, variances = comp.loc, comp.scale ** 2                                     # [C, Z]
        else:
            log_pi = torch.zeros(1, dtype=F64)
            means, variances = torch.zeros(1, vae.latent_dim, dtype=F64), torch.ones(1, vae.latent_dim, dtype=F64)
        W, b, s = vae.decoder.weight, vae.decoder.bias, vae.likelihood.sigma
        eye = torch.eye(W.shape[0], dtype=F64)
        terms = [lp + dist.MultivariateNormal(W @ m + b, W @ torch.diag(v) @ W.T + s ** 2 * eye).log_prob(x)
                 for lp, m, v in zip(log_pi, means, variances)]
        return torch.logsumexp(torch.stack(terms), 0)


def numerical_marginal_1d(vae, x):
    """p(x) by quadrature over a fine grid of the 1-D latent."""
    with torch.no_grad():
        z = torch.linspace(-12, 12, 24001, dtype=F64).unsqueeze(-1)                          # [G, 1]
        log_pz = vae.prior().log_prob(z)                                                     # [G]
        log_px_z = vae.likelihood(vae.decoder(z.unsqueeze(1))).log_prob(x)                  # [G, N]
        return torch.logsumexp(log_pz.unsqueeze(-1) + log_px_z, 0) + math.log(24 / 24000)


@pytest.mark.parametrize("prior_name", ["standard", "mog", "vamp"])
def test_log_likelihood_with_each_prior_matches_the_closed_form(prior_name):
    x = torch.randn(6, 3, dtype=F64)
    vae1 = linear_gaussian_vae(prior_name, latent_dim=1)
    exact1 = exact_marginal(vae1, x)
    assert torch.allclose(numerical_marginal_1d(vae1, x), exact1, atol=1e-6)    # the closed form is right
    vae2 = linear_gaussian_vae(prior_name, latent_dim=2)
    for vae in (vae1, vae2):
        pyro.set_rng_seed(0)
        summary = evaluate(vae.model, vae.guide, x, num_samples=20000, particle_chunk=5000)
        err = (summary.log_likelihood - exact_marginal(vae, x)).abs()
        assert (err < 3 * summary.stderr_mc_per_point + 2e-3).all(), (prior_name, err, summary.stderr_mc_per_point)


@pytest.mark.parametrize("prior_name", ["mog", "vamp"])
def test_meanfield_falls_back_to_monte_carlo_and_agrees_with_trace_elbo(prior_name):
    vae = linear_gaussian_vae(prior_name, latent_dim=2)
    x = torch.randn(5, 3, dtype=F64)
    pyro.set_rng_seed(1)
    mf = torch.tensor([TraceMeanField_ELBO(num_particles=200, vectorize_particles=True).loss(vae.model, vae.guide, x)
                       for _ in range(20)])
    tr = torch.tensor([Trace_ELBO(num_particles=200, vectorize_particles=True).loss(vae.model, vae.guide, x)
                       for _ in range(20)])
    se = ((mf.var() + tr.var()) / 20).sqrt()
    assert abs(mf.mean() - tr.mean()) < 4 * se + 1e-9, (mf.mean(), tr.mean(), se)


@pytest.mark.parametrize("prior_name", ["mog", "vamp"])
@pytest.mark.parametrize("objective", [Trace_ELBO(), TraceMeanField_ELBO(), IWAE_ELBO(4), IWAE_ELBO(4, "dreg")])
def test_every_objective_gives_the_prior_nonzero_gradients(prior_name, objective):
    vae = build_vae(64, latent_dim=2, hidden=(16,), prior=prior_name, prior_components=5)
    x = (torch.rand(8, 64, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    objective.differentiable_loss(vae.model, vae.guide, x).backward()
    grads = [p.grad for p in vae.prior.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("prior_name", ["mog", "vamp"])
def test_training_on_digits_moves_the_prior_and_resumes_exactly(prior_name, tmp_path):
    base = dict(prior=prior_name, prior_components=5, hidden=(32,), latent_dim=2, epochs=2, patience=0,
                warmup_epochs=1)
    after_first_step = {}

    def snapshot(trainer, epoch, step, loss):
        if not after_first_step:
            after_first_step.update({k: v.clone() for k, v in trainer.module.prior.state_dict().items()})

    run = train(TrainConfig(out=str(tmp_path / "a"), **base), progress=False, figures=False, on_step=snapshot)
    final = {k: v for k, v in run.model.state_dict().items() if k.startswith("prior.")}
    moved = [(final["prior." + k] - v).abs().max().item() for k, v in after_first_step.items()]
    assert moved and min(moved) > 1e-3, moved                       # every prior tensor was trained
    train(TrainConfig(out=str(tmp_path / "b"), **{**base, "epochs": 1}), progress=False, figures=False)
    resumed = train(TrainConfig(out=str(tmp_path / "b"), **base), resume=True, progress=False, figures=False)
    for name, value in resumed.model.state_dict().items():
        if name.startswith("prior."):
            assert torch.equal(value, final[name]), name             # the prior resumes exactly


@pytest.mark.parametrize("prior_name, figure", [("mog", "prior_components.png"), ("vamp", "pseudo_inputs.png")])
def test_cli_trains_samples_and_draws_each_prior(prior_name, figure, tmp_path):
    import numpy as np
    from pyro_vae.cli import main
    out = tmp_path / prior_name
    assert main(["train", "--prior", prior_name, "--prior-components", "12", "--latent-dim", "2", "--hidden", "16",
                 "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    for name in (figure, "prior_density.png", "samples.png"):
        assert (out / name).stat().st_size > 1000, name
    config = __import__("json").loads((out / "config.json").read_text())
    assert (config["prior"], config["prior_components"]) == (prior_name, 12)
    assert main(["sample", str(out), "--num", "9", "--out", str(tmp_path / "s")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (9, 64) and ((samples >= 0) & (samples <= 1)).all()


def test_prior_density_plot_needs_a_2d_latent(tmp_path):
    from pyro_vae.latent_plots import plot_prior_density
    with pytest.raises(ValueError, match=r"2-D latent codes \[N, 2\]"):
        plot_prior_density(lambda g: g.sum(-1), torch.zeros(5, 3), None, tmp_path / "x.png")


def reference_mixture(logits, loc, scale):
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))


@pytest.mark.parametrize("min_scale", [0.3, 0.01])
def test_matrix_product_mixture_density_equals_mixture_same_family(min_scale):
    """The [..., 2Z] x [2Z, C] form of the mixture log-density against torch's broadcast [..., C, Z] form:
    values and gradients in float64, at sample, batch and event dims [S=4, B=3, Z=5], with the plate's
    expand to batch [3]; scales down to 0.01 where the expansion cancels most."""
    from pyro_vae.distributions import DiagonalNormalMixture
    torch.manual_seed(1)
    logits = torch.randn(7, dtype=F64, requires_grad=True)
    loc = (2 * torch.randn(7, 5, dtype=F64)).requires_grad_()
    scale = (min_scale + torch.rand(7, 5, dtype=F64)).requires_grad_()
    z = (loc[torch.randint(7, (4, 3))] + 0.05 * torch.randn(4, 3, 5, dtype=F64)).detach().requires_grad_()
    fast = DiagonalNormalMixture(logits, loc, scale).expand([3])
    slow = reference_mixture(logits, loc, scale).expand([3])
    assert fast.batch_shape == slow.batch_shape == (3,) and fast.event_shape == (5,)
    lp_fast, lp_slow = fast.log_prob(z), slow.log_prob(z)
    assert lp_fast.shape == lp_slow.shape == (4, 3)
    assert torch.allclose(lp_fast, lp_slow, rtol=0, atol=1e-10)
    g_fast = torch.autograd.grad(lp_fast.sum(), (z, logits, loc, scale))
    g_slow = torch.autograd.grad(lp_slow.sum(), (z, logits, loc, scale))
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-8)
    assert fast.log_prob(z[0, 0]).shape == (3,)                       # an unbatched value broadcasts
    assert fast.sample((2,)).shape == (2, 3, 5)


def test_matrix_product_mixture_density_keeps_float32_accurate():
    """In float32 the expansion would lose ~0.1 nats at scale 0.01 and |z| ~ 3; computed in float64
    inside and returned in float32 it matches the float64 reference to float32 rounding."""
    from pyro_vae.distributions import DiagonalNormalMixture
    torch.manual_seed(2)
    logits, loc = torch.randn(50, dtype=F64), 3 + torch.randn(50, 40, dtype=F64)
    scale = 0.01 + 0.01 * torch.rand(50, 40, dtype=F64)
    z = loc[torch.randint(50, (200,))] + 0.01 * torch.randn(200, 40, dtype=F64)
    exact = reference_mixture(logits, loc, scale).log_prob(z)
    fast32 = DiagonalNormalMixture(logits.float(), loc.float(), scale.float()).log_prob(z.float())
    assert fast32.dtype == torch.float32
    ref32 = reference_mixture(logits.float(), loc.float(), scale.float()).log_prob(z.float())
    assert (fast32.double() - exact).abs().max() <= 2 * (ref32.double() - exact).abs().max() + 1e-3


def test_mixture_density_rejects_mismatched_parameters():
    from pyro_vae.distributions import DiagonalNormalMixture
    with pytest.raises(ValueError, match="logits \\[C\\], loc and scale \\[C, Z\\]"):
        DiagonalNormalMixture(torch.zeros(3), torch.zeros(4, 2), torch.ones(4, 2))
