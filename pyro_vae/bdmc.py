"""Bidirectional Monte Carlo (BDMC): log p(x) sandwiched between two stochastic bounds, on data simulated
from the model, for ANY Pyro model/guide pair.

Simulate (z*_n, x_n) ~ p(z) p(x | z), n = 1..N.  Then z*_n is an exact sample of the posterior p(z | x_n),
and annealed importance sampling (:mod:`pyro_vae.ais`) can run both ways along the same path f_0 .. f_T
(f_0 = the guide or the prior, f_T = p(x_n, z)) with the same transitions::

    forward:  z_0 ~ f_0,  log w = sum_t log f_t(z_{t-1}) / f_{t-1}(z_{t-1}),    E[w] = p(x_n)
    reverse:  z_T = z*_n, log v = sum_t log f_{t-1}(z_t) / f_t(z_t),            E[v] = 1 / p(x_n)

    lower_n = log (1/C) sum_c w_c  <=  log p(x_n)  <=  -log (1/C) sum_c v_c = upper_n      (in expectation)

Both bounds tighten as T grows, and the gap upper - lower bounds the error of either estimate on data
like the model's own (Grosse, Ghahramani, Adams 2015; Wu et al. 2017 use it to validate AIS on decoder-based
models).  A small gap at T steps says that AIS with T steps is accurate for *this* model; it says nothing
about real data that the model fits poorly, where the posterior may be harder, so read it as a check of
the estimator, not of the model.  Importance sampling with the guide on the same simulated points
(IWAE_S) is reported beside the bounds, to show how far it falls below the sandwich.

The reverse chains use the forward run's step sizes, reversed (recorded per point and temperature), so
their kernels are fixed before they start and the upper bound is exact in expectation.

Shape legend: ``N`` simulated points, ``C`` chains, ``T`` annealing steps.

Reference: R. Grosse, Z. Ghahramani, R. Adams, "Sandwiching the marginal likelihood using bidirectional
Monte Carlo", arXiv:1511.02543 (2015).
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from .ais import AnnealingPath, anneal, annealing_schedule, log_mean_exp
from .contract import eval_mode, checked_once, slice_data
from .evaluation import log_likelihood
from .importance import _data_frame, latent_sites
from .signals import bar_settings


@torch.no_grad()
def simulate(model: Callable, like: torch.Tensor, num_points: int, *args, observed: Optional[str] = None,
             plate: str = "data", **kwargs) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict[str, int]]:
    """``(x: [N, ...], z*: {latent site: value}, {latent site: the axis of its value that indexes the points})``
    drawn from the model's joint p(z) p(x | z).

    The model is run on ``num_points`` copies of ``like[0]`` (its values are not used: its observed site is
    sampled instead, :func:`pyro.poutine.uncondition`).  The simulated x is the value of the observed site in
    the data plate (``observed`` names it when there are several), reshaped to ``like``'s point shape.
    """
    if not torch.is_tensor(like) or like.dim() < 1 or like.shape[0] < 1:
        raise ValueError("like must be a tensor of at least one data point (its shape, dtype and device are used)")
    template = like[:1].expand((num_points,) + like.shape[1:]).contiguous()
    trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(template, *args, **kwargs))
    # uncondition samples the observed sites and marks them infer["was_observed"]
    observed_sites = [name for name, site in trace.nodes.items()
                      if site["type"] == "sample" and site["infer"].get("was_observed")]
    candidates = [name for name in observed_sites if _data_frame(trace.nodes[name], plate) is not None
                  and trace.nodes[name]["value"].numel() == template.numel()]
    if observed is None:
        if len(candidates) != 1:
            raise ValueError(f"cannot tell which observed site is x among {observed_sites}: pass observed=NAME "
                             f"(the site scored with obs=x, one value of x's shape per point)")
        observed = candidates[0]
    elif observed not in candidates:
        raise ValueError(f"observed={observed!r} is not an observed site of the data plate {plate!r} with one "
                         f"value of x's shape per point; the model's observed sites are {observed_sites}")
    x = trace.nodes[observed]["value"].reshape(template.shape).to(like.dtype)
    latents = [(name, site) for name, site in latent_sites(trace) if not site["infer"].get("was_observed")]
    shared = [name for name, site in latents if _data_frame(site, plate) is None]
    if shared:
        raise ValueError(f"the model's latent site(s) {shared} sit outside the data plate {plate!r} (global latents): "
                         f"there is no per-point log p(x_n) to sandwich")
    axes = {name: site["value"].dim() - len(site["fn"].event_shape) + _data_frame(site, plate).dim
            for name, site in latents}
    return x, {name: site["value"] for name, site in latents}, axes


@dataclasses.dataclass
class BDMCBounds:
    """The sandwich at one number of annealing steps (nats, per simulated point).

    Attributes:
        num_steps: T.
        lower, upper: ``[N]`` forward (stochastic lower) and reverse (stochastic upper) bounds on log p(x_n).
        gap: ``[N]`` upper - lower (>= 0 in expectation; small means AIS at T steps is accurate here).
        lower_mean, upper_mean, gap_mean: their means over the points; ``*_stderr``: standard errors over them.
        acceptance_forward, acceptance_reverse: mean HMC acceptance probabilities.
    """
    num_steps: int
    lower: torch.Tensor
    upper: torch.Tensor
    gap: torch.Tensor
    lower_mean: float
    upper_mean: float
    gap_mean: float
    lower_stderr: float
    upper_stderr: float
    gap_stderr: float
    acceptance_forward: float
    acceptance_reverse: float


@dataclasses.dataclass
class BDMCSummary:
    """:func:`bdmc`'s result: one :class:`BDMCBounds` per step count, and IWAE_S of the same simulated points.

    Attributes:
        bounds: in increasing order of steps.
        iwae: ``[N]`` importance-sampled log p(x_n) with the guide, S = ``num_samples`` (a lower bound);
            ``iwae_mean``, ``iwae_stderr`` over points.
        x: ``[N, ...]`` the simulated points.
    """
    bounds: List[BDMCBounds]
    iwae: torch.Tensor
    iwae_mean: float
    iwae_stderr: float
    num_samples: int
    num_points: int
    num_chains: int
    leapfrog_steps: int
    init: str
    x: torch.Tensor

    def headline(self) -> str:
        b = self.bounds[-1]
        return (f"BDMC on {self.num_points} simulated points, {b.num_steps} steps: {b.lower_mean:.2f} <= log p(x) <= "
                f"{b.upper_mean:.2f} nats (gap {b.gap_mean:.3f} ± {b.gap_stderr:.3f})")

    def table(self) -> str:
        """Markdown: one row per step count, the bounds and their gap, with IWAE_S beside them."""
        rows = ["| AIS steps | lower bound (forward AIS) | upper bound (reverse AIS) | gap | acceptance |",
                "|---|---|---|---|---|"]
        for b in self.bounds:
            rows.append(f"| {b.num_steps} | {b.lower_mean:.3f} ± {b.lower_stderr:.3f} | {b.upper_mean:.3f} ± "
                        f"{b.upper_stderr:.3f} | {b.gap_mean:.3f} ± {b.gap_stderr:.3f} | "
                        f"{b.acceptance_forward:.2f} / {b.acceptance_reverse:.2f} |")
        rows.append(f"| IWAE_{self.num_samples} (guide) | {self.iwae_mean:.3f} ± {self.iwae_stderr:.3f} | | | |")
        return "\n".join(rows)

    def to_dict(self) -> Dict:
        def plain(value):
            return value.tolist() if torch.is_tensor(value) else value
        out = {k: plain(v) for k, v in dataclasses.asdict(self).items() if k not in ("bounds", "x")}
        out["bounds"] = [{k: plain(v) for k, v in dataclasses.asdict(b).items()} for b in self.bounds]
        return out


def _stderr(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


def bdmc(model: Callable, guide: Callable, num_points: int, *args, like: torch.Tensor,
         num_steps: Sequence[int] = (100, 1000), num_chains: int = 16, schedule: str = "sigmoid",
         leapfrog_steps: int = 10, target_accept: float = 0.65, init: str = "guide", batch_size: int = 100,
         step_size: float = 0.05, num_samples: int = 1000, observed: Optional[str] = None, plate: str = "data",
         progress: bool = False, **kwargs) -> BDMCSummary:
    """Sandwich log p(x) on ``num_points`` points simulated from the model (module docstring), at each number
    of annealing steps in ``num_steps``.

    Args:
        like: data points whose shape, dtype and device the simulated points take (e.g. ``x_test[:1]``).
        num_steps: the step counts T to compare (each runs forward and reverse chains).
        num_chains, schedule, leapfrog_steps, target_accept, init, batch_size, step_size: as in
            :func:`pyro_vae.ais_log_likelihood`.
        num_samples: S of the IWAE_S estimate beside the bounds (0: skip it).
        observed: the name of the observed site that is x, when the model has several.

    Returns:
        :class:`BDMCSummary`; every figure is in nats per point, higher is better for the bounds.
    """
    steps = sorted({int(t) for t in num_steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"num_steps must be positive step counts, got {list(num_steps)}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    with eval_mode(model, guide):
        x, latents, axes = simulate(model, like, num_points, *args, observed=observed, plate=plate, **kwargs)
        results = {t: ([], [], [], []) for t in steps}              # lower, upper, accept fwd, accept rev
        total = sum(2 * t for t in steps) * math.ceil(num_points / batch_size)
        with tqdm(total=total, desc="BDMC", unit="temperature", disable=not progress, dynamic_ncols=True,
                  **bar_settings()) as bar:
            for start in range(0, num_points, batch_size):
                xb = x[start:start + batch_size]
                stop = start + xb.shape[0]
                data = slice_data(kwargs, num_points, start, stop)
                exact = {name: value.narrow(axes[name], start, stop - start) for name, value in latents.items()}
                for t in steps:
                    betas = annealing_schedule(t, schedule)
                    path = AnnealingPath(model, guide, xb, *args, num_chains=num_chains, base=init, plate=plate,
                                         **data)
                    with checked_once(model, guide):
                        forward = anneal(path, betas, leapfrog_steps=leapfrog_steps, step_size=step_size,
                                         target_accept=target_accept, bar=bar)
                        reverse = anneal(path, betas.flip(0), leapfrog_steps=leapfrog_steps,
                                         step_sizes=forward.step_sizes.flip(0), start=path.flatten(exact), bar=bar)
                    lower, upper, fa, ra = results[t]
                    lower.append(log_mean_exp(forward.log_w)[0])
                    upper.append(-log_mean_exp(reverse.log_w)[0])
                    fa.append(forward.acceptance)
                    ra.append(reverse.acceptance)
        bounds = []
        for t in steps:
            lower, upper = torch.cat(results[t][0]), torch.cat(results[t][1])
            gap = upper - lower
            bounds.append(BDMCBounds(
                num_steps=t, lower=lower, upper=upper, gap=gap, lower_mean=float(lower.mean()),
                upper_mean=float(upper.mean()), gap_mean=float(gap.mean()), lower_stderr=_stderr(lower),
                upper_stderr=_stderr(upper), gap_stderr=_stderr(gap),
                acceptance_forward=float(torch.cat(results[t][2]).mean()),
                acceptance_reverse=float(torch.cat(results[t][3]).mean())))
        if num_samples:
            iwae = log_likelihood(model, guide, x, *args, num_samples=num_samples, batch_size=batch_size,
                                  particle_chunk=min(num_samples, 500), plate=plate, **kwargs)
        else:
            iwae = torch.full((num_points,), math.nan, dtype=torch.float64)
    return BDMCSummary(bounds=bounds, iwae=iwae, iwae_mean=float(iwae.mean()), iwae_stderr=_stderr(iwae),
                       num_samples=num_samples, num_points=num_points, num_chains=num_chains,
                       leapfrog_steps=leapfrog_steps, init=init, x=x)
