"""Guides beyond the stock shape: several latent sites (q(z1 | x) q(z2 | z1)), transformed distributions, dropout.

Review findings 3 (active units of a hierarchical guide) and 5 (STL, DReG and PIWAE refused such guides),
and evaluation in eval mode (issue 10).  Correctness is checked in float64 against closed forms (a linear-
Gaussian two-layer model whose exact posterior factorizes as the guide does) and against a hand-written
two-layer DReG (Tucker et al. 2019, eq. 8 for each level), independent of pyro_vae's machinery.

Shape legend: K particles, B data points, D data dim.
"""
import math

import pytest
import torch
import pyro
import pyro.distributions as dist
from pyro import poutine
from torch.func import functional_call

from pyro_vae.evaluation import evaluate, log_likelihood
from pyro_vae.examples.two_layer import TwoLayerVAE
from pyro_vae.objectives import IWAE_ELBO, MIWAE_ELBO, PIWAE_ELBO

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    from pyro_vae.data import load_dataset
    return load_dataset("digits", binarize="static")


def _active_units_means(guide, x, **kwargs):
    from pyro_vae import active_units as au      # (a module of its own since issue 10)
    return au.latent_means(guide, x, **kwargs)


# -- finding 3: active units of a hierarchical guide -----------------------------------------------------

def test_active_units_average_over_the_upstream_latent(digits):
    """z2's mean given ONE sampled z1 moves with x through the noise in z1; E_q[z2 | x] hardly does.  The
    review's untrained TwoLayerVAE(64, 5, (32,), 6, (16,)): single-draw Cov_x 0.032-0.057 for every z2 unit,
    0.0012-0.0020 when averaged over 2000 draws of z1 (here 0.029-0.057 and 0.0009-0.0014 on the test split)."""
    torch.manual_seed(0)
    vae = TwoLayerVAE(64, 5, (32,), 6, (16,))
    x = digits.test                                                                  # [360, 64] binary
    with torch.no_grad():
        trace = poutine.trace(vae.guide).get_trace(x)
        single = torch.cat([trace.nodes["z1"]["fn"].mean, trace.nodes["z2"]["fn"].mean], -1).var(0)
        loc1, _ = vae.q_z1(x)
        z1 = dist.Normal(loc1, vae.q_z1(x)[1]).sample((2000,))                        # [2000, 360, 6]
        by_hand = vae.q_z2(z1)[0].mean(0)                                              # E_q[z2 | x], [360, 5]
    assert (single[6:] > 0.02).all()                                                  # what was counted
    means = _active_units_means(vae.guide, x, num_samples=2000)                       # [360, 6 + 5]
    assert torch.equal(means[:, :6], loc1.double())                                   # z1: analytic
    assert torch.allclose(means[:, 6:], by_hand.double(), atol=0.04)      # two Monte-Carlo averages
    summary = evaluate(vae.model, vae.guide, x, num_samples=2)
    assert (summary.latent_variances[6:] < 0.003).all(), summary.latent_variances
    assert summary.active_units == int((summary.latent_variances[:6] > 0.01).sum())   # no z2 unit counts


# -- a linear-Gaussian two-layer model with the exact posterior as a hierarchical guide ----------------------

S2 = 0.3 ** 2     # noise variance of x | z2


class LinearTwoLayer(torch.nn.Module):
    """z1 ~ N(0, 1), z2 | z1 ~ N(z1, 1), x | z2 ~ N(z2, 0.3^2) per point; the guide q(z1 | x) q(z2 | z1, x)
    is the exact posterior's factorization, moved off it by ``shift`` (means) and ``widen`` (scales)."""

    def __init__(self, shift=0.0, widen=1.0):
        super().__init__()
        # joint precision of (z1, z2) given x: [[2, -1], [-1, 1 + 1/S2]]; posterior of z1 marginal and z2 | z1
        self.a2 = 1 + 1 / S2
        self.v1 = 1 / (2 - 1 / self.a2)                 # Var(z1 | x)
        self.shift = torch.nn.Parameter(torch.full((2,), float(shift), dtype=F64))
        self.log_widen = torch.nn.Parameter(torch.full((2,), math.log(widen), dtype=F64))

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(len(x), dtype=F64), 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 1.0))
            pyro.sample("x", dist.Normal(z2, S2 ** 0.5), obs=x)

    def guide(self, x, num_data=None):
        widen = self.log_widen.exp()
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            m1 = self.v1 * (x / S2) / self.a2           # E[z1 | x]
            z1 = pyro.sample("z1", dist.Normal(m1 + self.shift[0], widen[0] * self.v1 ** 0.5))
            m2 = (z1 + x / S2) / self.a2                # E[z2 | z1, x]
            pyro.sample("z2", dist.Normal(m2 + self.shift[1], widen[1] / self.a2 ** 0.5))

    def exact_log_px(self, x):
        return dist.Normal(torch.zeros_like(x), (2 + S2) ** 0.5).log_prob(x)


def _guide_grad(objective, module, x, seed):
    pyro.set_rng_seed(seed)
    module.zero_grad()
    objective.differentiable_loss(module.model, module.guide, x).backward()
    return torch.cat([module.shift.grad, module.log_widen.grad])


@pytest.fixture
def x():
    return torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.5


def test_exact_hierarchical_guide_gives_exact_log_px(x):
    module = LinearTwoLayer()
    assert torch.allclose(log_likelihood(module.model, module.guide, x, num_samples=7), module.exact_log_px(x),
                          atol=1e-10)


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_path_gradients_vanish_at_an_exact_hierarchical_posterior(gradient, x):
    """Every weight is p(x) whatever (z1, z2), so d log w / dz = 0 and the path-gradient estimators give exactly
    zero; had the re-scored q(z2 | z1) lost its dependence on z1 (parameters detached with it, as before), the
    gradient through z1 would not vanish."""
    grad = _guide_grad(IWAE_ELBO(4, gradient), LinearTwoLayer(), x, seed=3)
    assert grad.abs().max() < 1e-10, grad


def test_piwae_on_a_two_layer_vae_is_iwae_for_the_model_and_miwae_for_the_guide(digits):
    """The same draws (one seed): PIWAE_{M=3,K=2}'s gradient equals IWAE_6's for the model's networks and the
    standard MIWAE_{3,2} gradient for the guide's, through both levels of q(z1 | x) q(z2 | z1)."""
    torch.manual_seed(0)
    vae = TwoLayerVAE(64, 3, (16,), 5, (8,)).double()
    x = digits.train[:12].double()

    def grads(objective):
        pyro.set_rng_seed(5)
        vae.zero_grad()
        objective.differentiable_loss(vae.model, vae.guide, x).backward()
        return {k: p.grad.clone() for k, p in vae.named_parameters()}

    piwae, iwae, miwae = grads(PIWAE_ELBO(2, 3)), grads(IWAE_ELBO(6)), grads(MIWAE_ELBO(2, 3))
    for name, grad in piwae.items():
        reference = miwae[name] if name.startswith(("q_z1.", "q_z2.")) else iwae[name]
        assert torch.allclose(grad, reference, atol=1e-12, rtol=1e-9), name


def _compounding_hooks(iw, factor, plate):
    """The mistake the per-use hooks avoid: scaling the gradient at the raw samples, where z1's also carries
    what z2's sampling path passed on (already scaled once)."""
    from pyro_vae.objectives import _reshape_for_site
    for name in iw.values:
        site = iw.guide_trace.nodes[name]
        f = _reshape_for_site(factor(name), site, plate, iw.max_plate_nesting, len(site["fn"].event_shape))
        site["value"].register_hook(lambda grad, f=f: grad * f)


def test_dreg_is_unbiased_for_the_standard_iwae_gradient_on_a_hierarchical_guide(x, monkeypatch):
    """Monte Carlo: 40 seeded batches of 500 copies of each point, each a mean of independent estimates.  The
    two estimators' means agree within 4 standard errors in every coordinate, DReG with lower total variance;
    STL (biased for K > 1) and a DReG that scales z1's gradient twice (the hooks on the raw samples the old
    code would have compounded) are caught by the same test."""
    module = LinearTwoLayer(shift=0.4, widen=1.3)
    copies = x.repeat(500)                                                             # [3000]
    runs = {name: torch.stack([_guide_grad(objective, module, copies, seed) / len(copies) for seed in range(40)])
            for name, objective in (("standard", IWAE_ELBO(5)), ("dreg", IWAE_ELBO(5, "dreg")),
                                    ("stl", IWAE_ELBO(5, "stl")))}
    mean = {k: v.mean(0) for k, v in runs.items()}
    se = {k: v.std(0) / math.sqrt(len(v)) for k, v in runs.items()}
    z = (mean["dreg"] - mean["standard"]).abs() / (se["dreg"] ** 2 + se["standard"] ** 2).sqrt()
    assert (z < 4).all(), z
    assert runs["dreg"].var(0).sum() < runs["standard"].var(0).sum()
    z_stl = (mean["stl"] - mean["standard"]).abs() / (se["stl"] ** 2 + se["standard"] ** 2).sqrt()
    assert (z_stl > 6).any(), z_stl
    monkeypatch.setattr("pyro_vae.objectives._scale_use_gradients", _compounding_hooks)
    wrong = torch.stack([_guide_grad(IWAE_ELBO(5, "dreg"), module, copies, seed) / len(copies) for seed in range(40)])
    z_wrong = (wrong.mean(0) - mean["standard"]).abs() / (wrong.var(0) / 40 + se["standard"] ** 2).sqrt()
    assert (z_wrong > 6).any(), z_wrong


# -- a hand-written two-layer DReG (independent of pyro_vae's estimator code) --------------------------------

def _hand_written_dreg(vae, x, eps1, eps2):
    """Tucker et al. (2019) eq. 8 at each level of q(z1 | x) q(z2 | z1), written out: z1 = mu1(x) + s1(x) eps1,
    z2 = mu2(z1) + s2(z1) eps2 with every parameter live; log q with the guide's parameters stopped (copies
    through functional_call) but its inputs live.  Returns (model grads, guide grads) of the surrogate whose
    gradient is sum_k [w~_k d log w_k / d theta, w~_k^2 d log w_k / dz dz/dphi], summed over points."""
    guide_params = {k: v for k, v in vae.named_parameters() if k.startswith(("q_z1.", "q_z2."))}
    model_params = {k: v for k, v in vae.named_parameters() if k.startswith(("p_z1.", "p_x."))}
    stopped = {k: v.detach() for k, v in guide_params.items()}
    loc1, scale1 = vae.q_z1(x)                                                         # [B, Z1]
    z1 = loc1 + scale1 * eps1                                                          # [K, B, Z1]
    loc2, scale2 = vae.q_z2(z1)
    z2 = loc2 + scale2 * eps2                                                          # [K, B, Z2]
    sloc1, sscale1 = functional_call(vae.q_z1, {k[5:]: v for k, v in stopped.items() if k.startswith("q_z1.")}, (x,))
    sloc2, sscale2 = functional_call(vae.q_z2, {k[5:]: v for k, v in stopped.items() if k.startswith("q_z2.")}, (z1,))
    normal = lambda loc, scale, v: torch.distributions.Normal(loc, scale).log_prob(v).sum(-1)   # noqa: E731
    ploc1, pscale1 = vae.p_z1(z2)
    log_w = (normal(torch.zeros_like(z2), torch.ones_like(z2), z2) + normal(ploc1, pscale1, z1)
             + torch.distributions.Bernoulli(logits=vae.p_x(z1)).log_prob(x).sum(-1)
             - normal(sloc1, sscale1, z1) - normal(sloc2, sscale2, z2))             # [K, B]
    w = torch.softmax(log_w, 0).detach()
    model_grads = torch.autograd.grad((w * log_w).sum(), list(model_params.values()), retain_graph=True)
    guide_grads = torch.autograd.grad((w ** 2 * log_w).sum(), list(guide_params.values()))
    return model_grads, guide_grads, list(model_params), list(guide_params)


def test_dreg_equals_a_hand_written_two_layer_dreg_in_float64():
    torch.manual_seed(0)
    vae = TwoLayerVAE(12, 3, (8,), 4, (6,)).double()
    x = (torch.rand(5, 12, generator=torch.Generator().manual_seed(2)) < 0.5).double()  # [B, D]
    K = 6
    pyro.set_rng_seed(11)
    vae.zero_grad()
    IWAE_ELBO(K, "dreg").differentiable_loss(vae.model, vae.guide, x).backward()
    ours = {k: -p.grad.clone() for k, p in vae.named_parameters()}                    # loss = -bound
    pyro.set_rng_seed(11)                                                              # the same draws
    with torch.no_grad(), pyro.plate("_num_particles_vectorized", K, dim=-2):
        trace = poutine.trace(vae.guide).get_trace(x)
    with torch.no_grad():
        z1, z2 = trace.nodes["z1"]["value"], trace.nodes["z2"]["value"]
        loc1, scale1 = vae.q_z1(x)
        loc2, scale2 = vae.q_z2(z1)
        eps1, eps2 = (z1 - loc1) / scale1, (z2 - loc2) / scale2
    model_grads, guide_grads, model_names, guide_names = _hand_written_dreg(vae, x, eps1, eps2)
    for name, grad in zip(model_names + guide_names, model_grads + guide_grads):
        assert torch.allclose(ours[name], grad, atol=1e-10, rtol=0), (name, (ours[name] - grad).abs().max())


# -- transformed distributions and user modules -----------------------------------------------------------

class AffinePosterior(torch.nn.Module):
    """z ~ N(0, 1), x | z ~ N(z, 0.5^2) per point; the guide is the exact posterior written as a transformed
    standard normal, AffineTransform(mean + shift, sd * widen), so its parameters sit inside a transform."""

    def __init__(self, shift=0.0, widen=1.0):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor(float(shift), dtype=F64))
        self.log_widen = torch.nn.Parameter(torch.tensor(math.log(widen), dtype=F64))

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), dtype=F64), 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    def guide(self, x, num_data=None):
        base = dist.Normal(torch.zeros(len(x), dtype=F64), 1.0)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            transform = dist.transforms.AffineTransform(0.8 * x + self.shift, 0.2 ** 0.5 * self.log_widen.exp())
            pyro.sample("z", dist.TransformedDistribution(base, [transform]))


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_path_gradients_of_a_transformed_guide(gradient, x):
    exact = AffinePosterior()
    pyro.set_rng_seed(0)
    exact.zero_grad()
    IWAE_ELBO(4, gradient).differentiable_loss(exact.model, exact.guide, x).backward()
    assert max(exact.shift.grad.abs(), exact.log_widen.grad.abs()) < 1e-10
    off = AffinePosterior(shift=0.5, widen=1.5)
    pyro.set_rng_seed(0)
    IWAE_ELBO(4, gradient).differentiable_loss(off.model, off.guide, x).backward()
    assert off.shift.grad.abs() > 1e-3                  # it does train the guide


def test_two_layer_vae_trains_with_every_path_gradient_estimator(digits):
    torch.manual_seed(0)
    vae = TwoLayerVAE(64, 4, (32,), 8, (16,))
    x = digits.train[:20]
    for objective in (IWAE_ELBO(3, "stl"), IWAE_ELBO(3, "dreg"), PIWAE_ELBO(2, 2), MIWAE_ELBO(2, 2, "dreg")):
        vae.zero_grad()
        loss = objective.differentiable_loss(vae.model, vae.guide, x, num_data=1000)
        loss.backward()
        grads = [p.grad for p in vae.q_z2.parameters()]
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_a_hierarchical_guide_with_dropout_in_training_mode_is_named_by_the_path_gradient_check(x):
    """Re-scoring a guide that draws randomness besides its samples (dropout) would score z under another q:
    the check that runs while Pyro's validation is on (the trainer's first step) says so.  (A guide with one
    latent site is re-scored from the very distribution that drew z, so dropout there is consistent.)"""
    class DropoutGuide(LinearTwoLayer):
        def __init__(self):
            super().__init__(shift=0.3)
            self.drop = torch.nn.Dropout(0.5)

        def guide(self, x, num_data=None):
            with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
                z1 = pyro.sample("z1", dist.Normal(self.drop(x) + self.shift[0], 1.0))
                pyro.sample("z2", dist.Normal(z1, 0.5))

    module = DropoutGuide()
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="deterministic function.*dropout"):
        IWAE_ELBO(3, "dreg").differentiable_loss(module.model, module.guide, x)
    module.eval()
    assert torch.isfinite(IWAE_ELBO(3, "dreg").differentiable_loss(module.model, module.guide, x))


# -- evaluation runs modules in eval mode ----------------------------------------------------------------

class DropoutDecoderVAE(torch.nn.Module):
    def __init__(self, dropout: bool):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Linear(64, 8)
        self.decoder = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Dropout(0.5) if dropout else
                                           torch.nn.Identity(), torch.nn.Linear(32, 64))

    def model(self, x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 4), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, num_data=None):
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_evaluation_runs_in_eval_mode_and_restores_the_mode(digits):
    from pyro.infer import Trace_ELBO
    from pyro_vae.evaluation import mean_bound
    with_dropout, without = DropoutDecoderVAE(True), DropoutDecoderVAE(False)
    x = digits.test[:30]
    for estimate in (lambda m: log_likelihood(m.model, m.guide, x, num_samples=20),
                     lambda m: torch.tensor(mean_bound(Trace_ELBO(), m.model, m.guide, x)),
                     lambda m: evaluate(m.model, m.guide, x, num_samples=20).log_likelihood):
        torch.manual_seed(1)
        a = estimate(with_dropout)
        torch.manual_seed(1)
        b = estimate(without)
        assert torch.allclose(a, b, atol=1e-12)
        assert with_dropout.training and with_dropout.decoder[1].training     # restored


# -- review findings on the change itself (each failed before its fix) --------------------------------------

class MeanField(torch.nn.Module):
    """z ~ N(0, 1), x | z ~ N(z, 0.05) per point, q(z) = N(loc, exp(log_s)); ``subsample_size`` subsamples
    the plate at random (the model and guide must then see the same points); ``dropout`` in the guide."""

    def __init__(self, dtype=F64, n=3, subsample_size=None, dropout=False):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
        self.log_s = torch.nn.Parameter(torch.zeros(n, dtype=dtype))
        self.dtype, self.n, self.subsample_size = dtype, n, subsample_size
        self.drop = torch.nn.Dropout(0.5) if dropout else torch.nn.Identity()
        self.x = torch.linspace(0.5, 2.0, n, dtype=dtype)

    def model(self):
        with pyro.plate("data", self.n, subsample_size=self.subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), dtype=self.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 0.05), obs=self.x[idx])

    def guide(self):
        with pyro.plate("data", self.n, subsample_size=self.subsample_size) as idx:
            pyro.sample("z", dist.Normal(self.drop(self.loc)[idx], self.log_s.exp()[idx]))


@pytest.mark.parametrize("module", [MeanField(torch.float32), MeanField(F64), MeanField(n=20, subsample_size=5),
                                    MeanField(dropout=True)], ids=["spread-f32", "spread-f64", "subsample", "dropout"])
def test_piwae_guide_gradient_is_miwae_in_the_hard_cases(module):
    """Weights hundreds of nats apart (a ratio of normalized weights over/underflowed to NaN), a randomly
    subsampled plate (the score term was re-run on other points) and dropout in a one-site guide (the score
    term drew another mask): PIWAE's guide gradient is still MIWAE's, and finite."""
    grads = []
    for objective in (PIWAE_ELBO(2, 4), MIWAE_ELBO(2, 4)):
        pyro.set_rng_seed(1)
        torch.manual_seed(1)
        module.zero_grad()
        objective.differentiable_loss(module.model, module.guide).backward()
        grads.append(torch.cat([module.loc.grad, module.log_s.grad]))
    assert torch.isfinite(grads[0]).all() and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5), grads


class WeightedTwoLayer(LinearTwoLayer):
    """LinearTwoLayer with E[z2 | z1, x] written through a 1x1 parameter matrix W = [[1]] read as ``W.T`` (an
    attribute view) or through a custom autograd Function (which no TorchFunctionMode sees)."""

    def __init__(self, how):
        super().__init__()
        self.W, self.how = torch.nn.Parameter(torch.ones(1, 1, dtype=F64)), how

    def guide(self, x, num_data=None):
        widen = self.log_widen.exp()
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z1 = pyro.sample("z1", dist.Normal(self.v1 * (x / S2) / self.a2 + self.shift[0], widen[0] * self.v1 ** 0.5))
            scaled = (z1.unsqueeze(-1) @ self.W.T).squeeze(-1) if self.how == "T" else _Times.apply(z1, self.W)
            pyro.sample("z2", dist.Normal((scaled + x / S2) / self.a2 + self.shift[1], widen[1] / self.a2 ** 0.5))


class _Times(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, w):
        ctx.save_for_backward(z, w)
        return z * w.reshape(())

    @staticmethod
    def backward(ctx, grad):
        z, w = ctx.saved_tensors
        return grad * w.reshape(()), (grad * z).sum().reshape(1, 1)


def test_stopped_parameters_stop_attribute_views_and_name_what_they_cannot_see(x):
    module = WeightedTwoLayer("T")                       # at the exact posterior: every path gradient is 0
    for gradient in ("stl", "dreg"):
        pyro.set_rng_seed(2)
        module.zero_grad()
        IWAE_ELBO(4, gradient).differentiable_loss(module.model, module.guide, x).backward()
        assert module.W.grad.abs().max() < 1e-10, module.W.grad      # W.T leaked: -2.41
    hidden = WeightedTwoLayer("function")
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="still reaches a parameter.*autograd.Function"):
        IWAE_ELBO(4, "dreg").differentiable_loss(hidden.model, hidden.guide, x)


class _Flow(dist.TorchDistribution):
    """A distribution that keeps its parameters in a transform, as flow libraries do (z = T(eps))."""
    arg_constraints, support, has_rsample = {}, dist.constraints.real, True

    def __init__(self, transform, base):
        self.transform, self.base = transform, base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return _Flow(self.transform, self.base.expand(batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self.transform(self.base.rsample(sample_shape))

    def log_prob(self, z):
        eps = self.transform.inv(z)
        return self.base.log_prob(eps) - self.transform.log_abs_det_jacobian(eps, z)


@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_a_one_site_guide_of_a_foreign_distribution_is_run_again(gradient, x):
    """Detaching a distribution's tensors stops a flow's parameters only if it holds them as tensors: a
    distribution from outside torch/Pyro/pyro_vae is re-scored by running the guide again."""
    class FlowPosterior(AffinePosterior):
        def guide(self, x, num_data=None):
            with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
                t = dist.transforms.AffineTransform(0.8 * x + self.shift, 0.2 ** 0.5 * self.log_widen.exp())
                pyro.sample("z", _Flow(t, dist.Normal(torch.zeros(len(x), dtype=F64), 1.0)))

    module = FlowPosterior()
    pyro.set_rng_seed(0)
    IWAE_ELBO(4, gradient).differentiable_loss(module.model, module.guide, x).backward()
    assert max(module.shift.grad.abs(), module.log_widen.grad.abs()) < 1e-10       # was (-4.63, 0.48)


def test_dreg_refuses_different_factors_on_dependent_guide_sites(x):
    """A per-site KL weight (z1 at 1, z2 at 0.2) breaks DReG's identity along z2 = f(z1): it was biased
    (z-scores 56 and 8 against the standard gradient), so it is refused."""
    module = LinearTwoLayer(shift=0.4)
    scales = {"z1": 1.0, "z2": 0.2}

    class PerSite(pyro.poutine.messenger.Messenger):
        def _process_message(self, msg):
            if msg["name"] in scales:
                msg["scale"] = scales[msg["name"]] * msg["scale"]

    model, guide = PerSite()(module.model), PerSite()(module.guide)
    with pytest.raises(ValueError, match="DReG needs the same factor on every guide site"):
        IWAE_ELBO(4, "dreg").differentiable_loss(model, guide, x)
    assert torch.isfinite(IWAE_ELBO(4).differentiable_loss(model, guide, x))


def test_a_guide_latent_outside_the_plate_the_model_puts_it_in_is_refused(x):
    """Each point's weight would carry 1/N of every point's log q: an "IWAE_100 bound" above log p(x)."""
    module = AffinePosterior()

    def unplated_guide(x, num_data=None):
        pyro.sample("z", dist.Normal(0.8 * x, 0.2 ** 0.5).to_event(1))

    with pytest.raises(ValueError, match="'z' is inside the data plate 'data' in the model only"):
        log_likelihood(module.model, unplated_guide, x, num_samples=10)


def test_programs_with_only_kwargs_are_not_scaled_and_a_shard_can_name_its_set():
    """A program taking **kwargs need not size its plate by num_data: mean_bound no longer scales its batches
    by B/N (batches of 10 gave a tenth of the bound).  And log_likelihood(..., num_data=) evaluates a shard."""
    from pyro.infer import Trace_ELBO
    from pyro_vae.evaluation import mean_bound
    module = AffinePosterior()
    x = torch.randn(100, generator=torch.Generator().manual_seed(3), dtype=F64)

    def model(x, **kwargs):
        module.model(x)

    def guide(x, **kwargs):
        module.guide(x)

    elbo = Trace_ELBO(num_particles=500, vectorize_particles=True)
    pyro.set_rng_seed(0)
    full = mean_bound(elbo, model, guide, x, batch_size=100)
    pyro.set_rng_seed(0)
    assert mean_bound(elbo, model, guide, x, batch_size=10) == pytest.approx(full, abs=0.01)
    shard = log_likelihood(module.model, module.guide, x[:10], num_samples=3, num_data=100)
    exact = dist.Normal(torch.zeros(10, dtype=F64), 1.25 ** 0.5).log_prob(x[:10])       # exact guide: exact
    assert torch.allclose(shard, exact, atol=1e-10)
