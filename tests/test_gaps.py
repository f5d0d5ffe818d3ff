"""The inference-gap decomposition (Cremer et al. 2018), checked in float64 on probabilistic PCA, where every row
has a closed form: the posterior is N(m(x), Sigma) with precision Lambda = Sigma^-1, so

    ELBO[q]  = log p(x) - KL(q || p(z | x))                      (the guide: shifted, too narrow)
    ELBO[q*] = log p(x) - KL(q* || p(z | x)),   q* = N(m(x), diag(1 / Lambda_ii))   (the best diagonal Gaussian)
    approximation gap = KL(q* || p(z|x)) = (sum_i log Lambda_ii - log det Lambda) / 2

plus the refusals for guides without a per-point Gaussian family, and the experiment's smoke budget end to end.
"""
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import inference_gaps
from pyro_vae.gaps import fit_optimal_guide
from test_ais import PPCA

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def kl_to_posterior(mean_q, var_q, mean_p, cov_p):
    """KL(N(mean_q, diag var_q) || N(mean_p, cov_p)) per row: ``[N, Z], [N, Z], [N, Z], [Z, Z] -> [N]``."""
    precision = torch.linalg.inv(cov_p)
    diff = mean_p - mean_q
    return 0.5 * ((precision.diagonal() * var_q).sum(-1) + ((diff @ precision) * diff).sum(-1) - cov_p.shape[0]
                  + torch.logdet(cov_p) - var_q.log().sum(-1))


def test_inference_gaps_match_their_closed_forms_on_ppca():
    m = PPCA(shift=0.3, narrow=0.6)
    x = m.simulate(12, seed=7)
    exact = m.exact_log_px(x)
    mean, cov = m.posterior(x)
    precision = torch.linalg.inv(cov)
    elbo_q = exact - kl_to_posterior(mean + m.shift, (cov.diagonal() * m.narrow ** 2).expand_as(mean), mean, cov)
    approximation = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    torch.manual_seed(0)
    gaps = inference_gaps(m.model, m.guide, x, num_samples=2000, elbo_samples=2000, ais_steps=200, num_chains=16,
                          leapfrog_steps=3, optimal_steps=1000, optimal_lr=0.05, check_every=50, tol=0.002)
    assert gaps.converged and gaps.optimal_steps[0] < 1000
    assert abs(gaps.means["log_px"] - float(exact.mean())) < 3 * gaps.mc_stderrs["log_px"] + 0.02
    assert abs(gaps.means["elbo"] - float(elbo_q.mean())) < 3 * gaps.mc_stderrs["elbo"]
    assert abs(gaps.means["elbo_optimal"] - float((exact - approximation).mean())) < 0.03
    assert abs(gaps.means["approximation_gap"] - float(approximation)) < 0.05 + 3 * gaps.mc_stderrs["log_px"]
    assert gaps.means["amortization_gap"] > 1.0                          # the shifted, narrow encoder costs nats
    assert math.isclose(gaps.means["inference_gap"],
                        gaps.means["approximation_gap"] + gaps.means["amortization_gap"], rel_tol=1e-9)
    assert gaps.means["elbo"] < gaps.means["iwae"] < gaps.means["log_px"] + 3 * gaps.mc_stderrs["log_px"]
    table = gaps.table("PPCA")
    lines = table.splitlines()
    assert lines[0] == "| | PPCA |" and len(lines) == 2 + 7
    assert "approximation gap" in lines[-3] and "amortization gap" in lines[-2] and "inference gap" in lines[-1]
    assert json.loads(json.dumps(gaps.to_dict()))["settings"]["ais_steps"] == 200


def test_optimal_guide_starts_at_the_encoder_and_stops_when_converged():
    m = PPCA(shift=0.0, narrow=1.0)
    x = m.simulate(5, seed=8)
    mean, cov = m.posterior(x)
    torch.manual_seed(1)
    fit = fit_optimal_guide(m.model, m.guide, x, max_steps=0)
    loc, log_scale, event_dim = fit.params["z"]
    assert event_dim == 1 and torch.allclose(loc, mean) and fit.steps == 0 and not fit.converged
    fit = fit_optimal_guide(m.model, m.guide, x, max_steps=2000, lr=0.05, check_every=50, tol=0.002)
    assert fit.converged and fit.steps < 2000 and len(fit.history) == fit.steps // 50
    loc, log_scale, _ = fit.params["z"]
    # the reverse-KL optimum of a diagonal Gaussian: the posterior mean, variances 1 / Lambda_ii
    assert torch.allclose(loc, mean, atol=0.05)
    assert torch.allclose((2 * log_scale).exp(), (1 / torch.linalg.inv(cov).diagonal()).expand_as(loc), rtol=0.15)


def test_guides_without_a_per_point_gaussian_family_are_refused_with_the_reason():
    from pyro_vae.examples.two_layer import TwoLayerVAE
    vae = TwoLayerVAE(16, latent_dim=2, hidden=(8,), latent1_dim=3, hidden2=(4,))
    x = (torch.rand(4, 16) < 0.5).float()
    with pytest.raises(ValueError, match="depends on its other latent site.*hierarchical"):
        inference_gaps(vae.model, vae.guide, x, ais_steps=2)

    def model(x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, s), obs=x)

    def guide(x, num_data=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.LogNormal(torch.zeros(x.shape[0]), 1.0))

    with pytest.raises(ValueError, match="'s' is a LogNormal.*diagonal-Gaussian"):
        inference_gaps(model, guide, torch.randn(3), ais_steps=2)


def test_gaps_experiment_smoke_budget(tmp_path):
    from experiments.__main__ import main
    out = tmp_path / "gaps"
    assert main(["run", "gaps", "--budget", "smoke", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["name"] for r in metrics["runs"]} == {"VAE", "IWAE k=5"}
    for run in metrics["runs"]:
        assert run["elbo"] <= run["iwae"] + 0.05 and run["bdmc_gap"] >= -0.5
        assert math.isclose(run["inference_gap"], run["approximation_gap"] + run["amortization_gap"], abs_tol=1e-6)
    table = (out / "table.md").read_text()
    assert "|  | VAE | IWAE k=5 |" in table                    # Cremer et al.'s layout: models are the columns
    assert "| amortization gap |" in table and "| BDMC gap at 30 steps" in table
    assert (out / "gaps.png").stat().st_size > 1000
