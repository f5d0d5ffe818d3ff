"""Importance weights, IWAE-family objectives and the importance-sampled log-likelihood, checked in float64
on probabilistic PCA, a linear-Gaussian latent model (not our VAE class) whose log p(x) is exact:

    z ~ N(0, I_Z),  x | z ~ N(W z + b, s^2 I_D)   =>   x ~ N(b, W W^T + s^2 I),
    p(z | x) = N(C W^T (x - b) / s^2, C),  C = (I + W^T W / s^2)^-1.

Shape legend: K particles, N data, D data dim, Z latent dim.
"""
import math

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import SVI, RenyiELBO, Trace_ELBO

from pyro_vae.evaluation import evaluate, iwae_ks, log_likelihood
from pyro_vae.sampling import RunningEstimates
from pyro_vae.importance import ModelGuideContractError, importance_weights, log_weights
from pyro_vae.objectives import CIWAE_ELBO, IWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO, build_objective

D, Z = 5, 2
F64 = torch.float64


class PPCA(torch.nn.Module):
    """Probabilistic PCA as a plain model/guide pair; the guide is the exact posterior shifted by
    ``shift`` and with its scale multiplied by ``widen`` (shift=0, widen=1: exact).  The guide reads W and
    b without gradient, so its own parameters are only ``shift`` and ``log_widen``."""

    def __init__(self, seed=0, shift=0.0, widen=1.0, s=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(D, Z, generator=g, dtype=F64))
        self.b = torch.nn.Parameter(torch.randn(D, generator=g, dtype=F64))
        self.s = s
        self.shift = torch.nn.Parameter(torch.full((Z,), float(shift), dtype=F64))
        self.log_widen = torch.nn.Parameter(torch.tensor(math.log(widen), dtype=F64))

    def posterior(self, x):
        W, b = self.W.detach(), self.b.detach()
        cov = torch.linalg.inv(torch.eye(Z, dtype=F64) + W.T @ W / self.s ** 2)
        return (x - b) @ W @ cov.T / self.s ** 2, cov

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z, dtype=F64), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        mean, cov = self.posterior(x)
        scale_tril = torch.linalg.cholesky(cov) * self.log_widen.exp()
        with pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0])):
            pyro.sample("z", dist.MultivariateNormal(mean + self.shift, scale_tril=scale_tril))

    def exact_log_px(self, x):
        with torch.no_grad():
            cov = self.W @ self.W.T + self.s ** 2 * torch.eye(D, dtype=F64)
            return dist.MultivariateNormal(self.b, cov).log_prob(x)


@pytest.fixture
def x():
    return torch.randn(7, D, generator=torch.Generator().manual_seed(1), dtype=F64) * 2


# -- log_weights ---------------------------------------------------------------------------------------

def test_log_weights_shape_and_exact_posterior_weights(x):
    ppca = PPCA()
    lw = log_weights(ppca.model, ppca.guide, x, num_particles=11)
    assert lw.shape == (11, 7) and lw.dtype == F64
    # with the exact posterior every weight equals p(x): log w = log p(x) for all k
    assert torch.allclose(lw, ppca.exact_log_px(x).expand(11, 7), atol=1e-9)


def test_weights_are_unscaled_and_the_scale_is_returned(x):
    ppca = PPCA(shift=0.3)
    pyro.set_rng_seed(0)
    full = importance_weights(ppca.model, ppca.guide, x, num_particles=4)
    pyro.set_rng_seed(0)
    sub = importance_weights(ppca.model, ppca.guide, x, num_particles=4, num_data=70)
    assert full.scale == 1.0 and sub.scale == pytest.approx(10.0)
    assert torch.allclose(full.log_w, sub.log_w)               # the N/B scale is not inside the weights


def test_nested_plates_are_summed_within_each_datapoint():
    """A pixel plate inside the data plate: each datapoint's weight sums its pixels."""
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 1, dtype=F64), 1.0))        # [.., N, 1]
            with pyro.plate("pixels", x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 0.7))

    x = torch.randn(4, 3, dtype=F64)
    pyro.set_rng_seed(0)
    iw = importance_weights(model, guide, x, num_particles=6)
    z = iw.guide_trace.nodes["z"]["value"]                                              # [6, 4, 1]
    expected = (dist.Normal(0.0, 1.0).log_prob(z).squeeze(-1) + dist.Normal(z, 1.0).log_prob(x).sum(-1)
                - dist.Normal(x.mean(-1, keepdim=True), 0.7).log_prob(z).squeeze(-1))
    assert iw.log_w.shape == (6, 4) and iw.max_plate_nesting == 2
    assert torch.allclose(iw.log_w, expected)


def test_contract_error_when_no_site_is_in_the_data_plate(x):
    def model(x):
        pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(2), obs=x)

    def guide(x):
        pass

    with pytest.raises(ModelGuideContractError, match=r"pyro.plate\('data', \.\.\.\)"):
        log_weights(model, guide, x, num_particles=2)


def test_global_latents_get_a_one_over_n_share_so_k1_is_the_elbo(x):
    """A global site outside the plate: with K = 1 the scaled sum of weights is the Trace_ELBO estimate."""
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(D, dtype=F64), 1.0).to_event(1))
        with pyro.plate("data", 70, subsample=torch.arange(x.shape[0])):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.full((D,), 0.2, dtype=F64), 0.5).to_event(1))

    pyro.set_rng_seed(3)
    iw = importance_weights(model, guide, x, num_particles=1)
    pyro.set_rng_seed(3)
    elbo_loss = Trace_ELBO().loss(model, guide, x)
    assert -iw.scale * iw.log_w.sum().item() == pytest.approx(elbo_loss, rel=1e-10)


# -- IWAE objectives ------------------------------------------------------------------------------------

def test_iwae_loss_on_a_subsampled_plate_is_scaled_after_the_logsumexp(x):
    """The case Pyro's RenyiELBO gets wrong: loss = -(N/B) sum_n IWAE_K(x_n)."""
    ppca = PPCA(shift=0.1, widen=1.2)
    K, N = 10, 1000
    pyro.set_rng_seed(4)
    lw = log_weights(ppca.model, ppca.guide, x, num_particles=K, num_data=N)
    expected = -(N / x.shape[0]) * (torch.logsumexp(lw, 0) - math.log(K)).sum().item()
    pyro.set_rng_seed(4)
    assert IWAE_ELBO(K).loss(ppca.model, ppca.guide, x, num_data=N) == pytest.approx(expected, rel=1e-12)
    # and it is a lower bound on the scaled exact log-likelihood (on average, within 3 standard errors)
    exact = -(N / x.shape[0]) * ppca.exact_log_px(x).sum().item()
    losses = torch.tensor([IWAE_ELBO(K).loss(ppca.model, ppca.guide, x, num_data=N) for _ in range(20)])
    assert losses.mean() > exact - 3 * losses.std() / math.sqrt(20)
    # Pyro's RenyiELBO(alpha=0) applies N/B inside the log-sum-exp: on the same subsampled plate its
    # "bound" overshoots the exact log-likelihood by several nats per batch, so it is no bound at all
    renyi = RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    renyi_losses = [renyi.loss(ppca.model, ppca.guide, x, num_data=N) for _ in range(20)]
    assert sum(renyi_losses) / 20 < exact - 2 * (N / x.shape[0])


def test_bounds_are_ordered_elbo_iwae_k_log_px(x):
    """ELBO <= IWAE_5 <= IWAE_50 <= log p(x), on average over datapoints and draws."""
    ppca = PPCA(shift=0.8, widen=1.3)
    pyro.set_rng_seed(5)
    summary = evaluate(ppca.model, ppca.guide, x, num_samples=5000, particle_chunk=1000)
    curve = summary.iwae_curve
    exact = ppca.exact_log_px(x).mean().item()
    assert list(curve) == iwae_ks(5000) == [1, 5, 50, 500, 5000]
    assert curve[1] < curve[5] < curve[50] < curve[500] <= curve[5000] + 1e-3
    assert curve[5000] <= exact + 3 * summary.stderr_mc
    assert summary.elbo == curve[1] and summary.inference_gap == pytest.approx(summary.mean - curve[1])
    pyro.set_rng_seed(6)
    elbo = -Trace_ELBO(num_particles=5000, vectorize_particles=True).loss(ppca.model, ppca.guide, x) / 7
    assert elbo == pytest.approx(curve[1], abs=0.05)


def test_iwae_with_one_particle_is_the_elbo(x):
    ppca = PPCA(shift=0.5)
    pyro.set_rng_seed(7)
    iwae = IWAE_ELBO(1).loss(ppca.model, ppca.guide, x, num_data=70)
    pyro.set_rng_seed(7)
    assert iwae == pytest.approx(Trace_ELBO().loss(ppca.model, ppca.guide, x, num_data=70), rel=1e-10)


def test_miwae_and_ciwae_special_cases(x):
    ppca = PPCA(shift=0.5)
    pyro.set_rng_seed(8)
    lw = log_weights(ppca.model, ppca.guide, x, num_particles=12)
    iwae = torch.logsumexp(lw, 0) - math.log(12)
    assert torch.allclose(MIWAE_ELBO(12, 1).per_datapoint_bound(lw), iwae)
    assert torch.allclose(MIWAE_ELBO(1, 12).per_datapoint_bound(lw), lw.mean(0))         # K=1: the ELBO
    groups = lw.reshape(3, 4, 7)
    assert torch.allclose(MIWAE_ELBO(4, 3).per_datapoint_bound(lw),
                          (torch.logsumexp(groups, 1) - math.log(4)).mean(0))
    assert torch.allclose(CIWAE_ELBO(12, beta=1.0).per_datapoint_bound(lw), lw.mean(0))
    assert torch.allclose(CIWAE_ELBO(12, beta=0.0).per_datapoint_bound(lw), iwae)
    assert torch.allclose(CIWAE_ELBO(12, beta=0.25).per_datapoint_bound(lw), 0.25 * lw.mean(0) + 0.75 * iwae)


def _grads(objective, ppca, x, seed):
    pyro.set_rng_seed(seed)
    ppca.zero_grad()
    objective.differentiable_loss(ppca.model, ppca.guide, x, num_data=70).backward()
    model = torch.cat([ppca.W.grad.flatten(), ppca.b.grad])
    guide = torch.cat([ppca.shift.grad, ppca.log_widen.grad.reshape(1)])
    return model, guide


def test_gradient_estimators_share_the_model_gradient_and_dreg_is_unbiased_with_lower_variance(x):
    """For the model's parameters all three estimators are the same function of the same draws.
    For the guide's: DReG is unbiased for the standard IWAE gradient with lower variance; STL has lower
    variance too (but is biased for K > 1, which is why DReG exists)."""
    ppca, K, R = PPCA(shift=0.6, widen=1.4), 8, 300
    runs = {g: [_grads(IWAE_ELBO(K, gradient=g), ppca, x, seed) for seed in range(R)]
            for g in ("standard", "stl", "dreg")}
    for seed in range(5):
        assert torch.allclose(runs["stl"][seed][0], runs["standard"][seed][0])
        assert torch.allclose(runs["dreg"][seed][0], runs["standard"][seed][0])
    guide = {g: torch.stack([r[1] for r in rs]) for g, rs in runs.items()}              # [R, 3]
    mean, var = {g: v.mean(0) for g, v in guide.items()}, {g: v.var(0) for g, v in guide.items()}
    # total variance over the guide's parameters (per parameter it can go either way: here DReG cuts the
    # variance of the shift gradients 2-4x and raises that of the scale gradient by ~35%)
    assert var["dreg"].sum() < 0.75 * var["standard"].sum(), var
    assert var["stl"].sum() < 0.75 * var["standard"].sum(), var
    se = ((var["dreg"] + var["standard"]) / R).sqrt()
    assert ((mean["dreg"] - mean["standard"]).abs() < 4 * se).all(), (mean, se)


def test_piwae_gradients_are_iwae_for_the_model_and_miwae_for_the_guide(x):
    ppca = PPCA(shift=0.6, widen=1.4)
    piwae_model, piwae_guide = _grads(PIWAE_ELBO(4, 3), ppca, x, seed=9)
    iwae_model, _ = _grads(IWAE_ELBO(12), ppca, x, seed=9)
    _, miwae_guide = _grads(MIWAE_ELBO(4, 3), ppca, x, seed=9)
    assert torch.allclose(piwae_model, iwae_model)
    assert torch.allclose(piwae_guide, miwae_guide)


def test_iwae_trains_in_a_plain_svi_loop(x):
    """pyro.infer.SVI with pyro.optim: the objective is a drop-in ELBO (loss_and_grads + param store)."""
    pyro.clear_param_store()
    ppca = PPCA(shift=1.5, widen=2.0)

    def model(x):
        pyro.module("ppca", ppca)
        ppca.model(x)

    def guide(x):
        pyro.module("ppca", ppca)
        ppca.guide(x)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), IWAE_ELBO(5, gradient="dreg"))
    pyro.set_rng_seed(10)
    first = sum(svi.step(x) for _ in range(10)) / 10
    for _ in range(150):
        svi.step(x)
    last = sum(svi.step(x) for _ in range(10)) / 10
    assert last < first - 1.0
    assert last > -ppca.exact_log_px(x).sum().item() - 1.0            # still (about) a bound


def test_discrete_latents_are_refused_with_a_pointer_to_trace_elbo(x):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(torch.tensor(0.5, dtype=F64)))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1), 1.0).expand(c.shape + (D,)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(torch.tensor(0.3, dtype=F64)))

    with pytest.raises(ModelGuideContractError, match="'c' .*no rsample.*Trace_ELBO"):
        IWAE_ELBO(3).differentiable_loss(model, guide, x)


def test_importance_weighted_objectives_and_dreg_refuse_global_latents(x):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(D, dtype=F64), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = torch.zeros(D, dtype=F64, requires_grad=True)
        pyro.sample("mu", dist.Normal(loc, 1.0).to_event(1))

    # several particles: no per-point bound exists (tests/test_global_latents.py); one: DReG still weights per point
    for gradient in ("standard", "dreg"):
        with pytest.raises(ModelGuideContractError, match=r"\['mu'\] sit outside the data plate"):
            IWAE_ELBO(3, gradient=gradient).differentiable_loss(model, guide, x)
    with pytest.raises(ModelGuideContractError, match="'mu' is outside the 'data' plate.*standard"):
        IWAE_ELBO(1, gradient="dreg").differentiable_loss(model, guide, x)
    assert torch.isfinite(IWAE_ELBO(1).differentiable_loss(model, guide, x))


def test_build_objective_names_and_argument_errors():
    assert isinstance(build_objective("iwae", 5, gradient="dreg"), IWAE_ELBO)
    assert build_objective("miwae", 5, num_outer=2).num_particles == 10
    with pytest.raises(ValueError, match="gradient='dreg' applies to the iwae and miwae"):
        build_objective("elbo", 5, gradient="dreg")
    with pytest.raises(ValueError, match="unknown gradient estimator"):
        IWAE_ELBO(5, gradient="reinforce")
    with pytest.raises(ValueError, match="beta in"):
        CIWAE_ELBO(5, beta=1.5)


# -- the importance-sampled log-likelihood ------------------------------------------------------------

def test_log_likelihood_is_exact_with_the_exact_posterior(x):
    ppca = PPCA()
    est = log_likelihood(ppca.model, ppca.guide, x, num_samples=50, particle_chunk=7, batch_size=3)
    assert est.shape == (7,) and est.dtype == F64
    assert torch.allclose(est, ppca.exact_log_px(x), atol=1e-6)


def test_log_likelihood_converges_with_a_mismatched_guide(x):
    ppca = PPCA(shift=0.3, widen=1.5)
    exact = ppca.exact_log_px(x)
    pyro.set_rng_seed(11)
    small = evaluate(ppca.model, ppca.guide, x, num_samples=10, particle_chunk=10)
    large = evaluate(ppca.model, ppca.guide, x, num_samples=20000, particle_chunk=4000, batch_size=4)
    err_small = (small.log_likelihood - exact).abs().mean()
    err_large = (large.log_likelihood - exact).abs()
    assert err_large.mean() < err_small / 5
    # within 3 Monte-Carlo standard errors for every datapoint (delta method: sqrt(1/ESS - 1/S))
    assert (err_large < 3 * large.stderr_mc_per_point + 1e-3).all(), (err_large, large.stderr_mc_per_point)
    assert ((large.effective_sample_size >= 1) & (large.effective_sample_size <= 20000)).all()


@pytest.mark.parametrize("chunks", [[7], [3, 4], [1, 1, 5], [2, 2, 2, 1]])
def test_running_estimates_do_not_depend_on_chunking(chunks):
    """Feeding the same 7 weights per datapoint in different chunks gives the same estimates."""
    lw = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    running = RunningEstimates(3, [1, 2, 3, 7], "cpu")
    start = 0
    for c in chunks:
        running.add(lw[start:start + c])
        start += c
    assert torch.allclose(running.log_likelihood(), torch.logsumexp(lw, 0) - math.log(7))
    w = torch.softmax(lw, 0)
    assert torch.allclose(running.effective_sample_size(), 1 / (w ** 2).sum(0))
    curve = running.iwae_curve()
    assert torch.allclose(curve[1], lw.mean(0))
    for k in (2, 3):                                    # complete groups only: 3 groups of 2, 2 groups of 3
        g = 7 // k
        expected = (torch.logsumexp(lw[: g * k].reshape(g, k, 3), 1) - math.log(k)).mean(0)
        assert torch.allclose(curve[k], expected)
    assert torch.allclose(curve[7], running.log_likelihood())


def test_active_units_count_dimensions_the_guide_uses(x):
    ppca = PPCA()
    summary = evaluate(ppca.model, ppca.guide, torch.randn(200, D, dtype=F64) * 2, num_samples=10)
    assert summary.active_units == Z and summary.latent_variances.shape == (Z,)

    def collapsed_guide(x):      # ignores x: no information in E_q[z | x]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(Z, dtype=F64), 1.0).to_event(1))

    summary = evaluate(ppca.model, collapsed_guide, x, num_samples=10)
    assert summary.active_units == 0


# -- review findings: tempered weights (KL warm-up), path-gradient limits, masks, missing guide sites --

def _guide_grad(objective, ppca, x, seed, beta=1.0):
    from pyro_vae.warmup import LatentScaleMessenger
    pyro.set_rng_seed(seed)
    ppca.zero_grad()
    model, guide = ppca.model, ppca.guide
    if beta != 1.0:
        model, guide = LatentScaleMessenger(beta)(model), LatentScaleMessenger(beta)(guide)
    objective.differentiable_loss(model, guide, x).backward()
    return torch.cat([ppca.shift.grad, ppca.log_widen.grad.reshape(1)]) / x.shape[0]


@pytest.mark.parametrize("beta", [0.5, 0.0])
def test_dreg_stays_unbiased_under_kl_warmup(beta):
    """20,000 copies of one point average 20,000 independent gradient estimates in one call; without the
    tempered-weight correction DReG's guide gradient was 20-40% too small here."""
    ppca = PPCA(shift=0.6, widen=1.4)
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(2), dtype=F64).expand(20000, D)
    standard = _guide_grad(IWAE_ELBO(8), ppca, x, seed=0, beta=beta)
    dreg = _guide_grad(IWAE_ELBO(8, "dreg"), ppca, x, seed=1, beta=beta)
    assert torch.allclose(dreg, standard, rtol=0.03, atol=0.02), (dreg, standard)


def test_piwae_guide_gradient_is_miwae_under_kl_warmup(x):
    ppca = PPCA(shift=0.6, widen=1.4)
    assert torch.allclose(_guide_grad(PIWAE_ELBO(4, 3), ppca, x, seed=3, beta=0.5),
                          _guide_grad(MIWAE_ELBO(4, 3), ppca, x, seed=3, beta=0.5))


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_path_gradients_vanish_at_the_exact_posterior(gradient, x):
    """With q = p(z|x) every weight is p(x): STL and DReG give exactly zero guide gradient."""
    ppca = PPCA()
    grad = _guide_grad(IWAE_ELBO(4, gradient), ppca, x, seed=4)
    assert grad.abs().max() < 1e-10, grad


def test_masked_sites_and_missing_guide_sites(x):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D, dtype=F64), 1.0).to_event(1))
            with pyro.poutine.mask(mask=False):      # an impossible observation, masked out
                pyro.sample("x", dist.Uniform(torch.zeros(D, dtype=F64), 1e-3, validate_args=False).to_event(1),
                            obs=x + 5)
            pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, 1.0).to_event(1))

    assert torch.isfinite(log_weights(model, guide, x, num_particles=3)).all()

    def guide_without_z(x):
        pass

    with pytest.raises(ModelGuideContractError, match="latent site 'z' of the model is not sampled by the guide"):
        log_weights(model, guide_without_z, x, num_particles=2)
