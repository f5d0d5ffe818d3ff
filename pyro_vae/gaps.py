"""The inference-gap decomposition (Cremer, Li, Duvenaud 2018) for a model/guide pair with a diagonal-Gaussian
guide: how much of log p(x) - ELBO is the guide family's fault, and how much the encoder's.

For each data point x_n, with q the amortized guide (the encoder's output) and q* the best member of the same
family for x_n alone (its own mean and scale, fitted by Adam on the ELBO, started at the encoder's output)::

    log p(x_n) - ELBO[q](x_n)  =  [log p(x_n) - ELBO[q*](x_n)]  +  [ELBO[q*](x_n) - ELBO[q](x_n)]
         inference gap               approximation gap                 amortization gap

    ELBO[q](x_n) = E_q[log p(x_n, z) - log q(z | x_n)]       (S_elbo draws; per point, nats, higher is better)

log p(x_n) is the AIS estimate (:func:`pyro_vae.ais_log_likelihood`); IWAE_S with the amortized guide is
reported beside it.  Each gap is >= 0 in expectation (up to the Monte-Carlo error of each term and how well
q* converged: the report states the Adam steps run and whether the ELBO had stopped rising).  The table
follows Cremer et al.'s Table 2 (rows: log p(x), ELBO[q*], ELBO[q], then the approximation, amortization
and inference gaps).

q* is defined here for guides whose every latent site is a diagonal Gaussian (``DiagonalNormal``,
``Normal``, ``Normal(...).to_event(k)``) whose parameters depend on x alone, the family of the VAE's
guide.  Other guides are refused with the reason: a hierarchical guide q(z1 | x) q(z2 | z1) has no
per-point parameters of "the same family" (its z2 part is a function of z1, not a free Gaussian), and a
flow or full-covariance guide would need its own per-point parameterisation.

Shape legend: ``N`` data points, ``B`` a batch of them, ``K`` particles per Adam step, ``S`` draws for an ELBO.

Reference: C. Cremer, X. Li, D. Duvenaud, "Inference Suboptimality in Variational Autoencoders", ICML 2018.
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Tuple

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from .ais import ais_log_likelihood
from .contract import eval_mode, slice_data
from .distributions import DiagonalNormal
from .evaluation import _check_x, _set_size, log_likelihood
from .importance import importance_weights, latent_sites, program_structure, with_values
from .signals import bar_settings


def _diagonal_normal(fn) -> Optional[Tuple[torch.Tensor, torch.Tensor, int]]:
    """``(loc, scale, event_dim)`` of a diagonal-Gaussian distribution, else None."""
    if isinstance(fn, DiagonalNormal):
        return fn.loc, fn.scale, 1
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc, fn.scale, 0
    if isinstance(fn, torch.distributions.Independent):
        inner = _diagonal_normal(fn.base_dist)
        if inner is not None:
            return inner[0], inner[1], inner[2] + fn.reinterpreted_batch_ndims
    return None


class _PerPoint(Messenger):
    """Replaces each named guide site's distribution by a diagonal Gaussian with free per-point parameters
    ``loc, log_scale`` (shaped as the un-vectorized site: batch and event dims), broadcast to the site's plates."""

    def __init__(self, params: Dict[str, Tuple[torch.Tensor, torch.Tensor, int]]):
        super().__init__()
        self.params = params

    def _pyro_sample(self, msg):
        if msg["name"] in self.params and not msg["is_observed"]:
            loc, log_scale, event_dim = self.params[msg["name"]]
            fn = dist.Normal(loc, log_scale.exp())
            fn = fn.to_event(event_dim) if event_dim else fn
            msg["fn"] = fn.expand(msg["fn"].batch_shape)


@torch.no_grad()
def amortized_parameters(guide: Callable, x: torch.Tensor, *args, **kwargs) -> Dict[str, Tuple[torch.Tensor,
                                                                                                  torch.Tensor, int]]:
    """The guide's ``(loc, scale, event_dim)`` per latent site on the batch ``x``, or a ``ValueError`` saying why the
    guide has no per-point family of free diagonal Gaussians (module docstring)."""
    with poutine.block(), torch.random.fork_rng():
        trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        sites = latent_sites(prune_subsample_sites(trace))
        params = {}
        for name, site in sites:
            found = _diagonal_normal(site["fn"])
            if found is None:
                raise ValueError(
                    f"the guide's site {name!r} is a {type(site['fn']).__name__}: q*, the per-point optimum of the guide's "
                    f"family, is built here for diagonal-Gaussian guides (DiagonalNormal, Normal, Normal(...).to_event), "
                    f"the VAE's family; a flow or full-covariance guide needs its own per-point parameters")
            params[name] = tuple(t.detach().clone() for t in found[:2]) + (found[2],)
        if len(sites) > 1:      # does any site's Gaussian move when the other latents move? then it is hierarchical
            shifted = with_values(trace, {name: site["value"] + 1.0 for name, site in sites})
            again = poutine.trace(poutine.replay(guide, trace=shifted)).get_trace(x, *args, **kwargs)
            for name, _ in sites:
                loc, scale, _ = _diagonal_normal(again.nodes[name]["fn"])
                if not (torch.allclose(loc, params[name][0]) and torch.allclose(scale, params[name][1])):
                    others = [other for other, _ in sites if other != name]
                    raise ValueError(
                        f"the guide's site {name!r} depends on its other latent site(s) {others} (a hierarchical guide): "
                        f"its family has no free per-point Gaussian to optimise, so q* and the amortization gap are "
                        f"not defined here (Cremer et al. decompose the gap for factorised Gaussian guides); "
                        f"ais_log_likelihood and log_likelihood still work for this guide")
    return params


@dataclasses.dataclass
class OptimalGuide:
    """q*: per-point Gaussians fitted to one batch.  ``params`` maps each site to ``(loc, log_scale, event_dim)``;
    ``steps`` Adam steps were run; ``converged`` says whether the batch's mean ELBO rose by less than the
    tolerance over the last check window; ``history`` holds the mean ELBO estimate of each check window."""
    params: Dict[str, Tuple[torch.Tensor, torch.Tensor, int]]
    steps: int
    converged: bool
    history: List[float]

    def guide(self, guide: Callable) -> Callable:
        """The guide program with its sites drawn from q*."""
        return _PerPoint(self.params)(guide)


def fit_optimal_guide(model: Callable, guide: Callable, x: torch.Tensor, *args, max_steps: int = 500,
                      lr: float = 0.02, num_particles: int = 10, check_every: int = 50, tol: float = 0.01,
                      decays: int = 2, plate: str = "data", max_plate_nesting: Optional[int] = None,
                      **kwargs) -> OptimalGuide:
    """Fit q* on the batch ``x: [B, ...]``: every point's own Gaussian parameters, started at the encoder's
    output, by Adam (``lr``) on the sum over points of their ELBOs (each point's parameters reach only its own
    ELBO, so this is B separate optimisations), ``num_particles`` reparameterised draws per step.

    Convergence check: every ``check_every`` steps, the mean ELBO over the window is compared with the previous
    window's.  At a plateau (it rose by less than ``tol`` nats per point) the learning rate is divided by 10, up
    to ``decays`` times (a constant rate leaves Adam jittering around the optimum, a few hundredths of a nat
    below it with 10 particles); the plateau after the last decay is convergence.  At most ``max_steps``."""
    if max_steps < 0 or check_every < 1 or num_particles < 1:
        raise ValueError(f"max_steps must be >= 0 and check_every, num_particles >= 1, got {max_steps}, "
                         f"{check_every}, {num_particles}")
    start = amortized_parameters(guide, x, *args, **kwargs)
    params = {name: (loc.clone().requires_grad_(True), scale.log().clone().requires_grad_(True), event_dim)
              for name, (loc, scale, event_dim) in start.items()}
    leaves = [t for loc, log_scale, _ in params.values() for t in (loc, log_scale)]
    optim = torch.optim.Adam(leaves, lr=lr)
    program = _PerPoint(params)(guide)
    window, history, converged, step, decays_left = [], [], False, 0, decays
    while step < max_steps and not converged:
        with torch.enable_grad():
            log_w = importance_weights(model, program, x, *args, num_particles=num_particles, plate=plate,
                                       max_plate_nesting=max_plate_nesting, **kwargs).log_w             # [K, B]
            elbo = log_w.mean(0)                                                                         # [B]
            grads = torch.autograd.grad(-elbo.sum(), leaves)      # only q*'s parameters: the model is untouched
        for leaf, grad in zip(leaves, grads):
            leaf.grad = grad
        optim.step()
        step += 1
        window.append(float(elbo.detach().mean()))
        if len(window) == check_every:
            history.append(sum(window) / len(window))
            window = []
            if len(history) > 1 and history[-1] - history[-2] < tol:      # a plateau: at this rate, or at all
                if decays_left:
                    decays_left -= 1
                    for group in optim.param_groups:
                        group["lr"] *= 0.1
                else:
                    converged = True
    fitted = {name: (loc.detach(), log_scale.detach(), event_dim) for name, (loc, log_scale, event_dim) in params.items()}
    return OptimalGuide(fitted, step, converged, history)


@torch.no_grad()
def _elbo(model, guide, x, *args, num_samples, chunk=100, plate, nesting, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-point ELBO ``[B]`` from ``num_samples`` single-particle weights, and its Monte-Carlo standard error."""
    total, total_sq, done = 0.0, 0.0, 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        log_w = importance_weights(model, guide, x, *args, num_particles=k, plate=plate, max_plate_nesting=nesting,
                                   **kwargs).log_w.double()                                            # [k, B]
        total, total_sq, done = total + log_w.sum(0), total_sq + log_w.pow(2).sum(0), done + k
    mean = total / done
    var = (total_sq / done - mean.pow(2)).clamp(min=0) * done / max(done - 1, 1)
    return mean, (var / done).sqrt()


ROWS = ("log_px", "iwae", "elbo_optimal", "elbo", "approximation_gap", "amortization_gap", "inference_gap")


@dataclasses.dataclass
class InferenceGaps:
    """Per-point bounds and gaps (nats), their means and standard errors over points (paired differences).

    Attributes:
        log_px: ``[N]`` AIS log p(x) (``ais_steps`` steps x ``num_chains`` chains).
        iwae: ``[N]`` IWAE_S with the amortized guide.
        elbo_optimal, elbo: ``[N]`` ELBO[q*] and ELBO[q] (``elbo_samples`` draws each).
        approximation_gap, amortization_gap, inference_gap: ``[N]``: ``log_px - elbo_optimal``,
            ``elbo_optimal - elbo`` and ``log_px - elbo``.
        means, stderrs: ``{row: float}`` over points for every row in :data:`ROWS`.
        mc_stderrs: ``{row: float}`` Monte-Carlo standard error of each mean (the estimators' own noise).
        optimal_steps: Adam steps run per batch; converged: whether every batch's fit passed the check.
    """
    log_px: torch.Tensor
    iwae: torch.Tensor
    elbo_optimal: torch.Tensor
    elbo: torch.Tensor
    approximation_gap: torch.Tensor
    amortization_gap: torch.Tensor
    inference_gap: torch.Tensor
    means: Dict[str, float]
    stderrs: Dict[str, float]
    mc_stderrs: Dict[str, float]
    optimal_steps: List[int]
    converged: bool
    settings: Dict

    LABELS = {"log_px": "log p(x) (AIS)", "iwae": "IWAE_S (amortized q)", "elbo_optimal": "ELBO[q*] (optimal q)",
              "elbo": "ELBO[q] (amortized q)", "approximation_gap": "approximation gap: log p(x) - ELBO[q*]",
              "amortization_gap": "amortization gap: ELBO[q*] - ELBO[q]",
              "inference_gap": "inference gap: log p(x) - ELBO[q]"}

    def label(self, row: str) -> str:
        s = self.settings
        text = self.LABELS[row]
        return (text.replace("(AIS)", f"(AIS, {s['ais_steps']} steps x {s['num_chains']} chains)")
                .replace("IWAE_S", f"IWAE_{s['num_samples']}"))

    def headline(self) -> str:
        m = self.means
        return (f"inference gap {m['inference_gap']:.2f} nats = approximation {m['approximation_gap']:.2f} + "
                f"amortization {m['amortization_gap']:.2f} (log p(x) = {m['log_px']:.2f} by AIS, ELBO = "
                f"{m['elbo']:.2f})")

    def table(self, name: str = "model") -> str:
        """Markdown in the layout of Cremer et al.'s Table 2: the bounds, then the gaps (mean ± SE over points)."""
        return gaps_table({name: self})

    def to_dict(self) -> Dict:
        out = {}
        for key, value in dataclasses.asdict(self).items():
            out[key] = value.tolist() if torch.is_tensor(value) else value
        return out


def gaps_table(results: Dict[str, InferenceGaps]) -> str:
    """One column per model (Cremer et al.'s Table 2 has one per data set and model), one row per bound or gap."""
    first = next(iter(results.values()))
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for row in ROWS:
        cells = [f"{r.means[row]:.2f} ± {r.stderrs[row]:.2f}" for r in results.values()]
        lines.append(f"| {first.label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stderr(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


def inference_gaps(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 5000,
                   elbo_samples: int = 1000, ais_steps: int = 1000, num_chains: int = 16, leapfrog_steps: int = 10,
                   optimal_steps: int = 1000, optimal_lr: float = 0.02, optimal_particles: int = 10,
                   check_every: int = 50, tol: float = 0.01, batch_size: int = 100, plate: str = "data",
                   progress: bool = False, **kwargs) -> InferenceGaps:
    """The inference-gap decomposition of every point of ``x: [N, ...]`` (module docstring).

    Args:
        num_samples: S of IWAE_S.
        elbo_samples: draws for each ELBO (ELBO[q] and ELBO[q*]).
        ais_steps, num_chains, leapfrog_steps: the AIS estimate of log p(x) (:func:`pyro_vae.ais_log_likelihood`,
            started from the guide).
        optimal_steps, optimal_lr, optimal_particles, check_every, tol: the fit of q*
            (:func:`fit_optimal_guide`): at most ``optimal_steps`` Adam steps.

    Returns:
        :class:`InferenceGaps`; ``.table()`` prints it in Cremer et al.'s layout.
    """
    _check_x(x)
    passed = _set_size(model, guide, x, kwargs)
    n = x.shape[0]
    elbo, elbo_se, elbo_opt, elbo_opt_se, steps, converged = [], [], [], [], [], True
    with eval_mode(model, guide):
        nesting, names = program_structure(model, guide, x[:1], *args, plate=plate, **passed,
                                           **slice_data(kwargs, n, 0, 1))
        if names:
            raise ValueError(f"the model's latent site(s) {list(names)} are global (outside the data plate {plate!r}): "
                             f"per-point gaps are not defined; condition on them first "
                             f"(pyro_vae.global_latents.condition_on)")
        amortized_parameters(guide, x[:1], *args, **passed, **slice_data(kwargs, n, 0, 1))     # refuse early
        batches = range(0, n, batch_size)
        for start in tqdm(batches, desc="q* and ELBOs", unit="batch", disable=not progress, dynamic_ncols=True,
                          **bar_settings()):
            xb = x[start:start + batch_size]
            data = dict(passed, **slice_data(kwargs, n, start, start + batch_size))
            e, se = _elbo(model, guide, xb, *args, num_samples=elbo_samples, plate=plate, nesting=nesting, **data)
            fit = fit_optimal_guide(model, guide, xb, *args, max_steps=optimal_steps, lr=optimal_lr,
                                    num_particles=optimal_particles, check_every=check_every, tol=tol, plate=plate,
                                    max_plate_nesting=nesting, **data)
            eo, eo_se = _elbo(model, fit.guide(guide), xb, *args, num_samples=elbo_samples, plate=plate,
                              nesting=nesting, **data)
            elbo.append(e)
            elbo_se.append(se)
            elbo_opt.append(eo)
            elbo_opt_se.append(eo_se)
            steps.append(fit.steps)
            converged = converged and fit.converged
    iwae = log_likelihood(model, guide, x, *args, num_samples=num_samples, batch_size=batch_size,
                          particle_chunk=min(num_samples, 500), plate=plate, progress=progress, **passed, **kwargs)
    ais = ais_log_likelihood(model, guide, x, *args, num_chains=num_chains, num_steps=ais_steps,
                             leapfrog_steps=leapfrog_steps, batch_size=batch_size, plate=plate, progress=progress,
                             **passed, **kwargs)
    elbo, elbo_opt = torch.cat(elbo), torch.cat(elbo_opt)
    rows = {"log_px": ais.log_likelihood, "iwae": iwae, "elbo_optimal": elbo_opt, "elbo": elbo,
            "approximation_gap": ais.log_likelihood - elbo_opt, "amortization_gap": elbo_opt - elbo,
            "inference_gap": ais.log_likelihood - elbo}
    mc = {"log_px": ais.stderr_mc_per_point, "elbo_optimal": torch.cat(elbo_opt_se), "elbo": torch.cat(elbo_se)}
    mc["approximation_gap"] = (mc["log_px"].pow(2) + mc["elbo_optimal"].pow(2)).sqrt()
    mc["amortization_gap"] = (mc["elbo_optimal"].pow(2) + mc["elbo"].pow(2)).sqrt()
    mc["inference_gap"] = (mc["log_px"].pow(2) + mc["elbo"].pow(2)).sqrt()
    return InferenceGaps(
        **rows, means={k: float(v.mean()) for k, v in rows.items()}, stderrs={k: _stderr(v) for k, v in rows.items()},
        mc_stderrs={k: float(v.pow(2).sum().sqrt() / n) for k, v in mc.items()}, optimal_steps=steps,
        converged=converged,
        settings=dict(num_samples=num_samples, elbo_samples=elbo_samples, ais_steps=ais_steps, num_chains=num_chains,
                      leapfrog_steps=leapfrog_steps, optimal_steps=optimal_steps, optimal_lr=optimal_lr,
                      optimal_particles=optimal_particles, check_every=check_every, tol=tol))
