"""Evaluation of trained models on held-out data, for ANY Pyro model/guide pair.

Every estimate here is per datapoint, in nats, and *higher is better* (log-likelihoods and their lower
bounds); nothing here optimises anything.

The held-out log-likelihood is estimated by importance sampling with the guide as proposal, as in the
IWAE and VampPrior papers (Burda et al. 2016, Sec. 5; Tomczak & Welling 2018)::

    log p(x_n) ~= log (1/S) sum_{s=1}^{S} p(x_n, z_ns) / q(z_ns | x_n),     z_ns ~ q(z | x_n)

which is the IWAE_S bound: a lower bound in expectation that tightens as S grows and is consistent
as S -> infinity.  The weights come from :func:`pyro_vae.importance.log_weights`; S is split into
particle chunks (and the data into batches) so memory stays bounded, and the log-sum-exp is
accumulated in float64.

Every batch is passed with ``num_data = N``, the size of the evaluated set (where the programs take it, as
the contract asks), so a global latent's log-density is shared as 1/N per point and every K = 1 figure
(the ELBO) is exact whatever the batch size.  A model with global latents has no per-point log p(x_n):
with S > 1 the evaluators refuse it unless ``globals="condition"`` or ``"joint"`` says what to estimate
(:mod:`pyro_vae.global_latents`).  The programs' modules run in eval mode (no dropout), restored after.

Shape legend: ``N`` data points, ``D`` data dimension, ``S`` importance samples, ``C`` a chunk of
samples, ``B`` a batch of data points, ``Z`` latent dimension, ``J`` outer draws of the global latents.
"""
import dataclasses
import inspect
import math
from typing import Callable, Dict, Optional, Tuple

import torch
from pyro.infer import ELBO
from tqdm.auto import tqdm

from .active_units import active_units, latent_means
from .contract import eval_mode, slice_data
from .global_latents import GLOBALS_OPTIONS, condition_on, draw_globals, guide_means, nested_log_marginal, refusal
from .importance import program_structure
from .sampling import check_x as _check_x, importance_sample as _importance_sample, iwae_ks
from .signals import bar_settings


def _names_num_data(fn: Callable) -> bool:
    try:
        return "num_data" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def num_data_kwargs(model: Callable, guide: Callable, num_data: int) -> Dict[str, int]:
    """``{"num_data": N}`` where both programs name a ``num_data`` parameter (the contract), else ``{}`` (a
    program that only takes ``**kwargs`` may not size its plate by it, and scaling its batches would be wrong)."""
    return {"num_data": num_data} if _names_num_data(model) and _names_num_data(guide) else {}


def _set_size(model: Callable, guide: Callable, x: torch.Tensor, kwargs: Dict) -> Dict[str, int]:
    """``{"num_data": ...}`` for the evaluated points: the size of the set they belong to, ``kwargs``'s own
    ``num_data`` (popped: a shard of a larger set) or else ``len(x)``."""
    return num_data_kwargs(model, guide, kwargs.pop("num_data", None) or x.shape[0])


def _refuse_unshared_globals(names, passed, x, batch_size) -> None:
    if names and not passed and x.shape[0] > batch_size:
        raise ValueError(f"the model has global latent site(s) {list(names)} but its programs take no num_data, so "
                         f"batches of {batch_size} would each count them once: give model and guide a num_data=None "
                         f"parameter (docs/declaring_models.md), or evaluate all {x.shape[0]} points in one batch")


@torch.no_grad()
def total_bound(objective: ELBO, model: Callable, guide: Callable, x: torch.Tensor, batch_size: int = 1000,
                num_data: Optional[int] = None, plate: str = "data", **data) -> float:
    """The objective's per-datapoint bound summed over the points of ``x: [N, D]``.

    Each batch of B points is passed with ``num_data`` (default N; a shard of a larger set passes the set's
    size), so its loss is ``-(num_data / B) sum_batch bound_n - (global terms)``, and contributes
    ``-B / num_data`` times that: the global latents are counted once over ``num_data`` points, whatever the
    batch size.  ``**data`` are side inputs (labels ``y: [N]``), sliced with ``x``.  Modules in eval mode.
    """
    _check_x(x)
    num_data = num_data or x.shape[0]
    passed = num_data_kwargs(model, guide, num_data)
    total = 0.0
    with eval_mode(model, guide):
        if not passed and x.shape[0] > batch_size:
            _refuse_unshared_globals(program_structure(model, guide, x[:batch_size], plate=plate,
                                                       **slice_data(data, x.shape[0], 0, batch_size))[1],
                                     passed, x, batch_size)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size]
            loss = objective.loss(model, guide, xb, **passed, **slice_data(data, x.shape[0], start, start + batch_size))
            total -= float(loss) * (xb.shape[0] / num_data if passed else 1.0)
    return total


def mean_bound(objective: ELBO, model: Callable, guide: Callable, x: torch.Tensor,
               batch_size: int = 1000, **data) -> float:
    """Average per-datapoint bound ``(1/N) sum_n bound(x_n)`` of the objective on ``x: [N, D]`` (see
    :func:`total_bound`).  With ``Trace_ELBO`` this is the ELBO (higher is better, <= log p(x) in
    expectation); with ``IWAE_ELBO(K)`` the IWAE_K bound (name it with
    :func:`pyro_vae.objectives.bound_name`)."""
    _check_x(x)
    return total_bound(objective, model, guide, x, batch_size, **data) / x.shape[0]


@dataclasses.dataclass
class LogLikelihoodSummary:
    """Importance-sampled held-out log-likelihood with its error bar and diagnostics (nats, higher is better).

    Attributes:
        log_likelihood: ``[N]`` per-datapoint estimates log (1/S) sum_s w_s.
        mean, stderr: their mean and standard error over datapoints (std / sqrt(N)).
        effective_sample_size: ``[N]`` (sum w)^2 / sum w^2 per datapoint, in [1, S]; a value near 1 means
            one sample dominates and the estimate is unreliable for that point.
        stderr_mc_per_point: ``[N]`` Monte-Carlo standard error of each estimate, sqrt(1/ESS - 1/S)
            (delta method for the log of a mean of weights; itself estimated, so optimistic when ESS is tiny).
        stderr_mc: Monte-Carlo standard error of ``mean``, sqrt(sum_n stderr_mc_n^2) / N; ``stderr`` is
            instead the spread over datapoints (the error bar for comparing models on a test set).
        iwae_curve: ``{k: mean over datapoints of IWAE_k}`` for k in {1, 5, 50, ..., S}, from the same
            samples (S/k disjoint groups of k per datapoint); k = 1 is the ELBO.
        elbo: the mean ELBO (= iwae_curve[1]); ``inference_gap = mean - elbo`` >= 0 is how much the
            guide loses against log p(x) (the amortization plus approximation gap).
        active_units: number of latent dimensions with Cov_x(E_q[z_d | x]) > threshold (Burda et al. 2016);
            ``latent_variances`` holds Cov_x(E_q[z_d | x]) per dimension.
        num_samples: S.
        quantity: what ``log_likelihood`` estimates: ``"log p(x)"``, or ``"log p(x | g)"`` for a model with
            global latents g evaluated with ``globals="condition"`` (then ``global_values`` holds g, and the
            ELBO and IWAE_k curve are conditional on it too).
    """
    log_likelihood: torch.Tensor
    mean: float
    stderr: float
    effective_sample_size: torch.Tensor
    stderr_mc_per_point: torch.Tensor
    stderr_mc: float
    iwae_curve: Dict[int, float]
    elbo: float
    inference_gap: float
    active_units: Optional[int]
    latent_variances: Optional[torch.Tensor]
    num_samples: int
    quantity: str = "log p(x)"
    global_values: Optional[Dict[str, list]] = None

    def headline(self) -> str:
        return f"{self.quantity} = {self.mean:.2f} ± {self.stderr:.2f} nats"

    def to_dict(self) -> Dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if torch.is_tensor(value):
                out[key] = value.tolist()
        out["iwae_curve"] = {str(k): v for k, v in self.iwae_curve.items()}
        return out


@dataclasses.dataclass
class JointLogLikelihood:
    """log p(X) of a whole evaluated set X under a model with global latents, by nested importance sampling
    (:mod:`pyro_vae.global_latents`), per point (nats, higher is better).

    Attributes:
        mean: log p^(X) / N; ``total`` is log p^(X).  A stochastic lower bound, consistent as S and J grow.
        stderr_mc: Monte-Carlo standard error of ``mean`` (delta method over the J outer weights).
        effective_sample_size: of the J outer weights, in [1, J].
        elbo: the ELBO of the whole set per point (one particle per point and per outer draw, averaged over
            the J draws); ``inference_gap = mean - elbo``.
        num_points, num_samples, num_global_samples: N, S (inner, per point and outer draw) and J.
        global_latents: the global sites' names.
    """
    mean: float
    total: float
    stderr_mc: float
    effective_sample_size: float
    elbo: float
    inference_gap: float
    num_points: int
    num_samples: int
    num_global_samples: int
    global_latents: Tuple[str, ...]
    quantity: str = "log p(X)/N"

    def headline(self) -> str:
        return (f"{self.quantity} = {self.mean:.2f} ± {self.stderr_mc:.2f} nats per point (joint over "
                f"{self.num_points} points; Monte-Carlo standard error; effective sample size "
                f"{self.effective_sample_size:.1f} of J = {self.num_global_samples} draws of the global latents)")

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def _with_globals(model, guide, x, args, kwargs, *, plate, num_samples, batch_size, globals, global_values,
                  passed):
    """The programs to sample per point and the name of what they estimate: the given ones (no global
    latents), the ones conditioned on fixed globals (``globals="condition"``), or a clear refusal."""
    if globals not in (None,) + GLOBALS_OPTIONS:
        raise ValueError(f"globals must be None, 'condition' or 'joint', got {globals!r}")
    _check_x(x)
    first = dict(passed, **slice_data(kwargs, x.shape[0], 0, min(batch_size, x.shape[0])))
    names = program_structure(model, guide, x[:batch_size], *args, plate=plate, **first)[1]
    _refuse_unshared_globals(names, passed, x, batch_size)
    if not names:
        if global_values:
            raise ValueError(f"global_values {sorted(global_values)} given, but the model has no global latent sites")
        return model, guide, "log p(x)", None
    if globals is None:
        if num_samples > 1:
            raise refusal(names, plate, num_samples)
        return model, guide, f"ELBO per point (S = 1; global latents {', '.join(names)} shared as 1/N)", None
    if globals == "joint":
        raise ValueError("globals='joint' estimates log p(X) of the whole set, which has no per-point values: "
                         "use evaluate(..., globals='joint') or joint_log_likelihood(...)")
    if global_values is None:
        global_values = guide_means(guide, names, x[:batch_size], *args, **first)
    elif set(global_values) != set(names):
        raise ValueError(f"global_values must give exactly the global sites {sorted(names)}, got {sorted(global_values)}")
    model, guide = condition_on(model, guide, dict(global_values))
    return model, guide, f"log p(x | {', '.join(names)})", {k: torch.as_tensor(v).tolist()
                                                          for k, v in global_values.items()}


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 5000,
                   particle_chunk: int = 500, batch_size: int = 100, plate: str = "data",
                   progress: bool = False, globals: Optional[str] = None,
                   global_values: Optional[Dict[str, torch.Tensor]] = None, compile: str = "auto",
                   **kwargs) -> torch.Tensor:
    """Importance-sampled ``log p(x_n)`` for each datapoint, ``x: [N, ...] -> [N]`` float64 (higher is better).

    ``log p(x_n) ~= log (1/S) sum_s p(x_n, z_ns) / q(z_ns | x_n)`` with S = ``num_samples`` draws from the
    guide, taken ``particle_chunk`` at a time for ``batch_size`` datapoints at a time (memory grows with
    ``particle_chunk * batch_size``, not with S or N).  Works for any model/guide pair whose
    per-datapoint sites sit in ``pyro.plate(plate, ...)``; ``*args, **kwargs`` are passed to both, and
    tensor keyword arguments with one row per data point (labels ``y: [N]``) are batched with ``x``.
    The estimate is a stochastic lower bound (IWAE_S) that converges to log p(x) as S grows.  ``compile``:
    record the log weights of each (batch, chunk) shape once and replay them (``"auto"``; the same numbers,
    checked) or not (``"off"``); ``"on"`` makes a program that cannot be recorded an error; ``"fused"`` also
    compiles each recording with inductor (CPU: fused C++ kernels, 30-40 % less time for an MLP decoder, equal to
    float rounding, not bit for bit; needs a C++ compiler and tens of seconds per shape; :mod:`pyro_vae.compiled`).

    A model with global latents (sites outside the plate) is refused for S > 1 unless ``globals="condition"``:
    then the result is ``log p(x_n | g)`` at ``global_values`` (default: the guide's mean of g); see
    :mod:`pyro_vae.global_latents`, and :func:`joint_log_likelihood` for log p(X).
    """
    _check_x(x)
    passed = _set_size(model, guide, x, kwargs)
    with eval_mode(model, guide):
        model, guide, _, _ = _with_globals(model, guide, x, args, kwargs, plate=plate, num_samples=num_samples,
                                           batch_size=batch_size, globals=globals, global_values=global_values,
                                           passed=passed)
        runs = _importance_sample(model, guide, x, *args, num_samples=num_samples, particle_chunk=particle_chunk,
                                  batch_size=batch_size, plate=plate, ks=[], progress=progress, passed=passed,
                                  compile=compile, **kwargs)
    return torch.cat([r.log_likelihood() for r in runs])


def joint_log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 1000,
                         num_global_samples: int = 100, particle_chunk: int = 500, batch_size: int = 100,
                         plate: str = "data", progress: bool = False, **kwargs) -> JointLogLikelihood:
    """log p(X) of the whole set ``x: [N, ...]`` under a model with global latents, by nested importance
    sampling: J = ``num_global_samples`` draws g_j ~ q(g) (the guide run on the first batch), each with S =
    ``num_samples`` draws per point of the local latents given g_j (:mod:`pyro_vae.global_latents`).  Costs
    J * S model evaluations per point.  Reported per point, as log p(X)/N with its Monte-Carlo standard error."""
    if num_global_samples < 1:
        raise ValueError(f"num_global_samples must be >= 1, got {num_global_samples}")
    _check_x(x)
    passed = _set_size(model, guide, x, kwargs)
    first = dict(passed, **slice_data(kwargs, x.shape[0], 0, min(batch_size, x.shape[0])))
    with eval_mode(model, guide):
        names = program_structure(model, guide, x[:batch_size], *args, plate=plate, **first)[1]
        if not names:
            raise ValueError("the model has no global latent sites: log p(x) is per point, use log_likelihood or "
                             "evaluate")
        if not passed and x.shape[0] > batch_size:
            raise ValueError("a joint estimate over batches needs programs that take num_data (the contract)")
        outer, inner, elbos = [], [], []
        for _ in tqdm(range(num_global_samples), desc="log p(X)", unit="draw", disable=not progress,
                      dynamic_ncols=True, **bar_settings()):
            values, log_ratio = draw_globals(model, guide, names, x[:batch_size], *args, **first)
            local_model, local_guide = condition_on(model, guide, values)
            runs = _importance_sample(local_model, local_guide, x, *args, num_samples=num_samples,
                                      particle_chunk=particle_chunk, batch_size=batch_size, plate=plate, ks=[1],
                                      progress=False, passed=passed, **kwargs)
            outer.append(log_ratio)
            inner.append(torch.cat([r.log_likelihood() for r in runs]))                     # [N]
            elbos.append(log_ratio + float(torch.cat([r.iwae_curve()[1] for r in runs]).sum()))
    total, stderr, ess = nested_log_marginal(torch.tensor(outer, dtype=torch.float64), torch.stack(inner))
    n = x.shape[0]
    elbo = sum(elbos) / len(elbos) / n
    return JointLogLikelihood(mean=total / n, total=total, stderr_mc=stderr / n, effective_sample_size=ess,
                              elbo=elbo, inference_gap=total / n - elbo, num_points=n, num_samples=num_samples,
                              num_global_samples=num_global_samples, global_latents=tuple(names))


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 5000,
             particle_chunk: int = 500, batch_size: int = 100, plate: str = "data", progress: bool = False,
             au_threshold: float = 0.01, au_samples: int = 500, globals: Optional[str] = None,
             global_values: Optional[Dict[str, torch.Tensor]] = None, num_global_samples: int = 100,
             compile: str = "auto", **kwargs):
    """:func:`log_likelihood` plus its standard error, effective sample sizes, the IWAE_k curve
    (k in {1, 5, 50, ..., S}), the ELBO, the inference gap and active units, all from one set of samples
    (active units: ``au_samples`` draws of upstream latents for a hierarchical guide); ``compile`` as for
    :func:`log_likelihood`.

    Returns a :class:`LogLikelihoodSummary`; with ``globals="joint"`` (a model with global latents) the
    :class:`JointLogLikelihood` of :func:`joint_log_likelihood` instead.
    """
    if globals == "joint":
        return joint_log_likelihood(model, guide, x, *args, num_samples=num_samples,
                                    num_global_samples=num_global_samples, particle_chunk=particle_chunk,
                                    batch_size=batch_size, plate=plate, progress=progress, **kwargs)
    ks = iwae_ks(num_samples)
    _check_x(x)
    passed = _set_size(model, guide, x, kwargs)
    with eval_mode(model, guide):
        model, guide, quantity, used = _with_globals(model, guide, x, args, kwargs, plate=plate,
                                                     num_samples=num_samples, batch_size=batch_size,
                                                     globals=globals, global_values=global_values, passed=passed)
        runs = _importance_sample(model, guide, x, *args, num_samples=num_samples, particle_chunk=particle_chunk,
                                  batch_size=batch_size, plate=plate, ks=ks, progress=progress, passed=passed,
                                  compile=compile, **kwargs)
        try:
            au, variances = active_units(latent_means(guide, x, *args, num_samples=au_samples, plate=plate,
                                                      batch_size=batch_size, **passed, **kwargs), au_threshold)
        except (ValueError, NotImplementedError, AttributeError):   # a guide without reportable means
            au, variances = None, None
    log_px = torch.cat([r.log_likelihood() for r in runs])                              # [N]
    n = log_px.shape[0]
    curve = {}
    for k in ks:
        per_point = [r.iwae_curve().get(k) for r in runs]
        if all(p is not None for p in per_point):
            curve[k] = float(torch.cat(per_point).mean())
    mean = float(log_px.mean())
    ess = torch.cat([r.effective_sample_size() for r in runs])
    stderr_mc = (1 / ess - 1 / num_samples).clamp(min=0).sqrt()
    return LogLikelihoodSummary(
        log_likelihood=log_px, mean=mean,
        stderr=float(log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
        effective_sample_size=ess, stderr_mc_per_point=stderr_mc,
        stderr_mc=float(stderr_mc.pow(2).sum().sqrt() / n),
        iwae_curve=curve, elbo=curve[1], inference_gap=mean - curve[1],
        active_units=au, latent_variances=variances, num_samples=num_samples, quantity=quantity,
        global_values=used)
