"""The VAE as Pyro programs: shapes, likelihood densities and errors, estimator agreement, minibatch scaling.

Shape legend: K particles, N data, B minibatch, D data dim, Z latent dim.
"""
import math

import pytest
import torch
import torch.nn as nn
import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import (VAE, BernoulliLikelihood, ContinuousBernoulliLikelihood, ConvDecoder, ConvEncoder,
                      GaussianLikelihood, LikelihoodError, MLPDecoder, MLPEncoder, Prior, build_vae)
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.priors import build_prior
from pyro_vae.objectives import build_objective


def binary(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.4).float()


# -- networks: batch and particle dims ------------------------------------------------------------

@pytest.mark.parametrize("batch", [(7,), (3, 7)])
def test_mlp_shapes(batch):
    enc, dec = MLPEncoder(10, 4, (16, 8)), MLPDecoder(4, 10, (8, 16))
    loc, scale = enc(torch.randn(*batch, 10))
    assert loc.shape == scale.shape == (*batch, 4)
    assert (scale > 0).all()
    assert dec(loc).shape == (*batch, 10)


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 28, 28), (3, 7, 5), (9, 9)])
@pytest.mark.parametrize("batch", [(6,), (2, 6)])
def test_conv_shapes_round_trip(image_shape, batch):
    enc, dec = ConvEncoder(image_shape, 3, (4, 8)), ConvDecoder(3, image_shape, (4, 8))
    d = math.prod(image_shape)
    loc, scale = enc(torch.rand(*batch, d))
    assert loc.shape == scale.shape == (*batch, 3)
    assert dec(loc).shape == (*batch, d)


def test_networks_reject_wrong_last_dim():
    with pytest.raises(ValueError, match=r"encoder input x must have shape \[\.\.\., 10\]"):
        MLPEncoder(10, 4)(torch.randn(5, 11))
    with pytest.raises(ValueError, match=r"decoder input z must have shape \[\.\.\., 4\]"):
        MLPDecoder(4, 10)(torch.randn(5, 3))
    with pytest.raises(ValueError, match="image_shape"):
        ConvEncoder((8,), 2)


# -- the model and guide as Pyro programs --------------------------------------------------------

def traces(vae, x, num_data=None, particles=None):
    def run(fn):
        if particles is None:
            return fn(x, num_data)
        with pyro.plate("particles", particles, dim=-2):
            return fn(x, num_data)
    guide_trace = poutine.trace(lambda: run(vae.guide)).get_trace()
    model_trace = poutine.trace(poutine.replay(lambda: run(vae.model), trace=guide_trace)).get_trace()
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def test_model_guide_sites_and_shapes():
    vae = build_vae(12, latent_dim=3, hidden=(8,))
    x = binary(5, 12)
    model_trace, guide_trace = traces(vae, x)
    assert model_trace.nodes["z"]["value"].shape == (5, 3)
    assert model_trace.nodes["z"]["fn"].event_shape == (3,)
    assert model_trace.nodes["x"]["is_observed"] and model_trace.nodes["x"]["fn"].event_shape == (12,)
    assert model_trace.nodes["x"]["log_prob"].shape == (5,)
    assert guide_trace.nodes["z"]["log_prob"].shape == (5,)
    # the per-datapoint sites sit in the "data" plate
    for trace in (model_trace, guide_trace):
        frames = {f.name for f in trace.nodes["z"]["cond_indep_stack"]}
        assert frames == {"data"}


def test_vectorized_particles_shapes():
    vae = build_vae(12, latent_dim=3, hidden=(8,))
    model_trace, guide_trace = traces(vae, binary(5, 12), particles=4)
    assert guide_trace.nodes["z"]["value"].shape == (4, 5, 3)
    assert model_trace.nodes["x"]["log_prob"].shape == (4, 5)
    assert model_trace.nodes["z"]["log_prob"].shape == (4, 5)


def test_plate_scales_minibatch_by_num_data_over_batch():
    vae = build_vae(12, latent_dim=3, hidden=(8,))
    model_trace, guide_trace = traces(vae, binary(5, 12), num_data=40)
    assert model_trace.nodes["x"]["scale"] == pytest.approx(8.0)
    assert guide_trace.nodes["z"]["scale"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="num_data=3 is smaller than the batch"):
        vae.model(binary(5, 12), num_data=3)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(5, 13), r"x must have shape \[N, 12\]"),
    (torch.zeros(12), r"x must have shape \[N, 12\]"),
    (torch.zeros(2, 5, 12), r"x must have shape \[N, 12\]"),
])
def test_model_rejects_wrong_shapes(bad, message):
    vae = build_vae(12, latent_dim=3, hidden=(8,))
    for program in (vae.model, vae.guide):
        with pytest.raises(ValueError, match=message):
            program(bad)


def test_model_rejects_non_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        build_vae(4, latent_dim=2, hidden=(4,)).model([[0, 1, 0, 1]])


def test_parts_are_swappable_and_checked():
    class ShiftedPrior(Prior):
        def forward(self):
            return dist.Normal(torch.full((self.latent_dim,), 3.0), 1.0).to_event(1)

    vae = VAE(MLPEncoder(6, 2, (5,)), MLPDecoder(2, 6, (5,)), GaussianLikelihood(0.5), ShiftedPrior(2))
    model_trace, _ = traces(vae, torch.randn(4, 6))
    assert torch.allclose(model_trace.nodes["z"]["fn"].mean, torch.full((4, 2), 3.0))
    assert torch.allclose(model_trace.nodes["x"]["fn"].base_dist.scale, torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"latent_dim mismatch: the VAE uses 2, but \{'MLPEncoder': 3\}"):
        VAE(MLPEncoder(6, 3), MLPDecoder(2, 6), BernoulliLikelihood())
    with pytest.raises(ValueError, match=r"latent_dim mismatch.*StandardNormalPrior': 3"):
        VAE(MLPEncoder(6, 2), MLPDecoder(2, 6), BernoulliLikelihood(), build_prior("standard", 3))


def test_any_module_with_the_right_shapes_plugs_in():
    """Plain nn.Modules without latent_dim/data_dim attributes work when the sizes are passed."""
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(6, 4)

        def forward(self, x):
            loc, raw = self.net(x).chunk(2, -1)
            return loc, nn.functional.softplus(raw) + 1e-3

    decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 6))
    with pytest.raises(ValueError, match="pass latent_dim=..."):
        VAE(Encoder(), decoder, BernoulliLikelihood())
    vae = VAE(Encoder(), decoder, BernoulliLikelihood(), latent_dim=2, data_dim=6)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary(5, 6))
    assert torch.isfinite(loss)


def test_prior_with_wrong_shapes_is_refused_at_construction():
    class BatchedPrior(Prior):          # forgot .to_event(1): batch_shape (2,), event_shape ()
        def forward(self):
            return dist.Normal(torch.zeros(self.latent_dim), 1.0)

    with pytest.raises(ValueError, match=r"event_shape \(2,\) \(use .to_event\(1\)\)"):
        VAE(MLPEncoder(6, 2), MLPDecoder(2, 6), BernoulliLikelihood(), BatchedPrior(2))


def test_build_vae_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        build_vae(4, likelihood="poisson")
    with pytest.raises(ValueError, match="unknown prior 'flow'"):
        build_vae(4, prior="flow")
    with pytest.raises(ValueError, match="unknown network 'rnn'"):
        build_vae(4, network="rnn")
    with pytest.raises(ValueError, match="needs image data"):
        build_vae(4, network="conv")
    with pytest.raises(ValueError, match="unknown activation"):
        build_vae(4, activation="swish")


def test_conv_vae_trains_a_step():
    vae = build_vae(64, latent_dim=2, network="conv", image_shape=(1, 8, 8), channels=(4, 8))
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary(6, 64))
    loss.backward()
    assert all(p.grad is not None for p in vae.parameters())


# -- likelihoods: densities in float64 and clear errors ------------------------------------------

def test_likelihood_log_densities_match_formulas():
    torch.manual_seed(0)
    f = torch.randn(3, 5, dtype=torch.float64)
    x01 = binary(3, 5).double()
    lam = torch.sigmoid(f)
    expected = (x01 * lam.log() + (1 - x01) * (1 - lam).log()).sum(-1)
    assert torch.allclose(BernoulliLikelihood()(f).log_prob(x01), expected, atol=1e-12)

    xc = torch.rand(3, 5, dtype=torch.float64)
    log_norm = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))   # C(lambda), lambda != 1/2
    expected = (log_norm + xc * lam.log() + (1 - xc) * (1 - lam).log()).sum(-1)
    assert torch.allclose(ContinuousBernoulliLikelihood()(f).log_prob(xc), expected, atol=1e-9)

    xg = torch.randn(3, 5, dtype=torch.float64)
    like = GaussianLikelihood(sigma=0.3).double()
    expected = (-0.5 * ((xg - f) / 0.3) ** 2 - math.log(0.3) - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(like(f).log_prob(xg), expected, atol=1e-9)
    assert like(f).batch_shape == (3,) and like(f).event_shape == (5,)


@pytest.mark.parametrize("learn, shape", [("global", ()), ("pixel", (5,))])
def test_learned_gaussian_sigma(learn, shape):
    like = GaussianLikelihood(sigma=0.2, learn=learn, data_dim=5)
    assert like.sigma.shape == shape
    assert torch.allclose(like.sigma, torch.tensor(0.2))
    like(torch.zeros(2, 5)).log_prob(torch.randn(2, 5)).sum().backward()
    assert like.raw_sigma.grad is not None and like.raw_sigma.grad.abs().sum() > 0
    with torch.no_grad():
        like.raw_sigma.fill_(-100.0)
    assert (like.sigma >= like.min_sigma).all()


def test_gaussian_sigma_arguments():
    with pytest.raises(ValueError, match="sigma > "):
        GaussianLikelihood(sigma=0.0)
    with pytest.raises(ValueError, match="needs data_dim"):
        GaussianLikelihood(learn="pixel")
    with pytest.raises(ValueError, match="unknown sigma mode"):
        GaussianLikelihood(learn="sometimes")


@pytest.mark.parametrize("likelihood, x, message", [
    ("bernoulli", torch.full((2, 3), 0.5), r"binary data \(exactly 0 or 1\).*binarize='static' or 'dynamic'"),
    ("bernoulli", torch.tensor([[0.0, 1.3, 1.0]]), r"outside \[0, 1\]"),
    ("bernoulli", torch.tensor([[0.0, float("nan"), 1.0]]), "non-finite"),
    ("bernoulli", torch.tensor([[0, 1, 1]]), "floating-point"),
    ("continuous-bernoulli", torch.tensor([[0.2, -0.1, 0.5]]), r"needs data in \[0, 1\]"),
    ("gaussian", torch.tensor([[0.2, float("inf"), 0.5]]), "non-finite"),
])
def test_likelihoods_reject_data_they_cannot_model(likelihood, x, message):
    like = build_likelihood(likelihood, data_dim=3)
    with pytest.raises(LikelihoodError, match=message):
        like.validate(x)
    vae = build_vae(3, latent_dim=2, hidden=(4,), likelihood=likelihood)
    with pytest.raises(LikelihoodError, match=message):
        vae.model(x)


def test_likelihoods_accept_valid_data():
    build_likelihood("bernoulli", 3).validate(torch.tensor([[0.0, 1.0, 1.0]]))
    build_likelihood("continuous-bernoulli", 3).validate(torch.tensor([[0.0, 0.5, 1.0]]))
    build_likelihood("gaussian", 3).validate(torch.tensor([[-4.0, 0.5, 9.0]]))


# -- estimators: closed-form ELBO of a linear-Gaussian VAE ---------------------------------------

class LinearDecoder(nn.Linear):
    def __init__(self, latent_dim, data_dim):
        super().__init__(latent_dim, data_dim)
        self.latent_dim, self.data_dim = latent_dim, data_dim


def linear_gaussian_vae(data_dim=6, latent_dim=2, sigma=0.7, seed=0):
    torch.manual_seed(seed)
    vae = VAE(MLPEncoder(data_dim, latent_dim, (8,)), LinearDecoder(latent_dim, data_dim),
              GaussianLikelihood(sigma)).double()
    return vae


def exact_elbo(vae, x):
    """Per-datapoint ELBO of p(z)=N(0,I), p(x|z)=N(Wz+b, s^2 I), q=N(mu, diag s_q^2), in closed form."""
    with torch.no_grad():
        mu, s_q = vae.encoder(x)                                     # [N, Z]
        W, b, s = vae.decoder.weight, vae.decoder.bias, vae.likelihood.sigma
        d = x.shape[1]
        resid = x - mu @ W.T - b                                      # [N, D]
        expected_sq = (resid ** 2).sum(-1) + (s_q ** 2 @ (W ** 2).sum(0))   # E_q ||x - Wz - b||^2
        rec = -0.5 * d * math.log(2 * math.pi) - d * torch.log(s) - expected_sq / (2 * s ** 2)
        kl = 0.5 * (mu ** 2 + s_q ** 2 - 1 - 2 * torch.log(s_q)).sum(-1)
        return rec - kl                                               # [N]


@pytest.mark.parametrize("loss", ["elbo", "meanfield"])
def test_estimators_agree_with_closed_form_elbo(loss):
    """Trace_ELBO (Monte-Carlo KL) and TraceMeanField_ELBO (analytic KL) are both unbiased for the
    exact ELBO: their means over many particles agree with it within 4 standard errors."""
    vae = linear_gaussian_vae()
    x = torch.randn(8, 6, dtype=torch.float64)
    exact = -exact_elbo(vae, x).sum().item()
    objective = build_objective(loss, num_particles=500)
    pyro.set_rng_seed(1)
    estimates = torch.tensor([objective.loss(vae.model, vae.guide, x) for _ in range(20)])
    se = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean().item() - exact) < 4 * se + 1e-9, (estimates.mean(), exact, se)
    assert se < 0.05 * abs(exact)   # the comparison is informative, not swamped by noise


def test_meanfield_uses_the_analytic_kl():
    """With a decoder that ignores z, the reconstruction term is deterministic, so the analytic-KL
    estimator has no randomness left: it equals the closed-form ELBO exactly, every time."""
    vae = linear_gaussian_vae()
    with torch.no_grad():
        vae.decoder.weight.zero_()
    x = torch.randn(8, 6, dtype=torch.float64)
    exact = -exact_elbo(vae, x).sum().item()
    pyro.set_rng_seed(2)
    for _ in range(3):
        assert TraceMeanField_ELBO().loss(vae.model, vae.guide, x) == pytest.approx(exact, rel=1e-12)
    mc = torch.tensor([Trace_ELBO().loss(vae.model, vae.guide, x) for _ in range(3)])
    assert mc.std() > 1e-3   # the Monte-Carlo KL path is random


def test_minibatch_loss_is_exactly_scaled():
    vae = linear_gaussian_vae()
    x = torch.randn(5, 6, dtype=torch.float64)
    pyro.set_rng_seed(3)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=40)
    pyro.set_rng_seed(3)
    unscaled = Trace_ELBO().loss(vae.model, vae.guide, x)
    assert scaled == pytest.approx(8 * unscaled, rel=1e-12)


def test_subsampled_minibatch_loss_is_unbiased_for_full_data_loss():
    """E over random minibatches (and over z) of loss(x_batch, num_data=N) = -sum_n ELBO_n."""
    vae = linear_gaussian_vae()
    n, b, draws = 20, 5, 1500
    x = torch.randn(n, 6, dtype=torch.float64) * 1.5
    exact = -exact_elbo(vae, x).sum().item()
    g = torch.Generator().manual_seed(4)
    pyro.set_rng_seed(4)
    objective = Trace_ELBO()
    losses = torch.tensor([objective.loss(vae.model, vae.guide, x[torch.randperm(n, generator=g)[:b]], num_data=n)
                           for _ in range(draws)])
    se = losses.std() / math.sqrt(draws)
    assert abs(losses.mean().item() - exact) < 4 * se, (losses.mean(), exact, se)
    # a wrong scale (e.g. forgetting N/B = 4) would be off by far more than the error bar
    assert abs(losses.mean().item() / 4 - exact) > 10 * se


def test_vectorized_particles_match_closed_form_too():
    vae = linear_gaussian_vae()
    x = torch.randn(4, 6, dtype=torch.float64)
    pyro.set_rng_seed(5)
    objective = build_objective("elbo", num_particles=20000)
    assert objective.vectorize_particles
    est = objective.loss(vae.model, vae.guide, x)
    assert est == pytest.approx(-exact_elbo(vae, x).sum().item(), rel=2e-3)


def test_bernoulli_vector_equals_independent_bernoulli():
    from pyro_vae.distributions import BernoulliVector
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, dtype=torch.float64) * 3
    x = binary(4, 6).double()
    fast, reference = BernoulliVector(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert fast.batch_shape == reference.batch_shape == (3, 4) and fast.event_shape == (6,)
    assert torch.allclose(fast.log_prob(x), reference.log_prob(x), atol=1e-12)
    assert torch.allclose(fast.mean, reference.mean)
    expanded = BernoulliVector(logits[0]).expand((5, 4))                    # what a plate's broadcast does
    assert isinstance(expanded, BernoulliVector) and expanded.batch_shape == (5, 4)
    assert torch.allclose(expanded.log_prob(x), reference.log_prob(x)[0].expand(5, 4))
    assert fast.sample((2,)).shape == (2, 3, 4, 6)
    assert set(fast.sample().unique().tolist()) <= {0.0, 1.0}


def test_diagonal_normal_equals_independent_normal_and_keeps_the_closed_form_kl():
    from torch.distributions import kl_divergence
    from pyro_vae.distributions import DiagonalNormal
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64) + 0.2
    fast, reference = DiagonalNormal(loc, scale), dist.Normal(loc, scale).to_event(1)
    z = torch.randn(2, 3, 4, dtype=torch.float64)
    assert fast.batch_shape == (3,) and fast.event_shape == (4,) and fast.has_rsample
    assert torch.allclose(fast.log_prob(z), reference.log_prob(z), atol=1e-12)
    assert torch.allclose(fast.entropy(), reference.entropy())
    assert isinstance(fast.expand((5, 3)), DiagonalNormal) and fast.expand((5, 3)).batch_shape == (5, 3)
    p_loc, p_scale = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    expected = kl_divergence(reference, dist.Normal(p_loc, p_scale).to_event(1))
    for prior in (DiagonalNormal(p_loc, p_scale), dist.Normal(p_loc, p_scale).to_event(1)):
        assert torch.allclose(kl_divergence(fast, prior), expected)
    assert torch.allclose(kl_divergence(reference, DiagonalNormal(p_loc, p_scale)), expected)
    torch.manual_seed(1)
    draws = fast.rsample((20000,))
    assert torch.allclose(draws.mean(0), loc, atol=0.03) and torch.allclose(draws.std(0), scale, atol=0.03)
    # no closed form registered (here: a Normal over two reinterpreted dims): NotImplementedError, on which
    # TraceMeanField_ELBO falls back to the Monte-Carlo term rather than using a wrong formula
    with pytest.raises(NotImplementedError):
        kl_divergence(fast, dist.Independent(dist.Normal(torch.zeros(3, 4, dtype=torch.float64), 1.0), 2))


def test_standard_normal_prior_distribution_matches_normal_0_1():
    from pyro_vae.distributions import StandardNormal
    prior = build_prior("standard", 3).double()()
    assert isinstance(prior, StandardNormal) and prior.event_shape == (3,) and prior.batch_shape == ()
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    expected = dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1).log_prob(z)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-12)
    assert torch.allclose(prior.expand((4, 5)).log_prob(z), expected, atol=1e-12)
    assert isinstance(prior.expand((4, 5)), StandardNormal)
