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

Shape legend: ``N`` data points, ``D`` data dimension, ``S`` importance samples, ``C`` a chunk of
samples, ``B`` a batch of data points, ``Z`` latent dimension.
"""
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from pyro import poutine
from pyro.infer import ELBO
from tqdm.auto import tqdm

from .contract import slice_data
from .importance import guess_max_plate_nesting, log_weights


@torch.no_grad()
def mean_bound(objective: ELBO, model: Callable, guide: Callable, x: torch.Tensor,
               batch_size: int = 1000, **data) -> float:
    """Average per-datapoint bound ``-(1/N) sum_batches objective.loss(model, guide, x_batch)``.

    ``x: [N, D]``.  Each batch is passed without ``num_data``, so the data plate applies no scaling
    and the losses of the batches add up to minus the bound summed over all N points.  With
    ``Trace_ELBO`` this is the ELBO (higher is better, <= log p(x) in expectation).  ``**data`` are side
    inputs (e.g. labels ``y: [N]``), sliced with ``x``.
    """
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"need at least one data point, got x of shape {tuple(x.shape)}")
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        total += float(objective.loss(model, guide, x[start:stop], **slice_data(data, x.shape[0], start, stop)))
    return -total / x.shape[0]


def iwae_ks(num_samples: int) -> List[int]:
    """k in {1, 5, 50, 500, ...} up to S, plus S itself: the points of the IWAE_k curve."""
    ks, k = [1], 5
    while k < num_samples:
        ks.append(k)
        k *= 10
    return sorted(set(ks + [num_samples]))


class _RunningEstimates:
    """Accumulates, over particle chunks ``log_w: [C, B]`` of one data batch, in float64:
    log sum_s w_s and log sum_s w_s^2 (for log p(x) and the effective sample size), and for each k
    the sum over complete groups of k consecutive samples of ``logsumexp_group - log k`` (IWAE_k)."""

    def __init__(self, batch: int, ks: Sequence[int], device):
        full = lambda: torch.full((batch,), -math.inf, dtype=torch.float64, device=device)   # noqa: E731
        self.lse, self.lse_sq, self.count = full(), full(), 0
        self.ks = list(ks)
        self.group_lse = {k: full() for k in self.ks}           # the group being filled
        self.group_fill = {k: 0 for k in self.ks}
        self.group_sum = {k: torch.zeros(batch, dtype=torch.float64, device=device) for k in self.ks}
        self.group_count = {k: 0 for k in self.ks}

    def add(self, log_w: torch.Tensor) -> None:
        log_w = log_w.double()                                                   # [C, B]
        self.lse = torch.logaddexp(self.lse, torch.logsumexp(log_w, 0))
        self.lse_sq = torch.logaddexp(self.lse_sq, torch.logsumexp(2 * log_w, 0))
        self.count += log_w.shape[0]
        for k in self.ks:
            rest = log_w
            if self.group_fill[k]:                               # finish the group started in a previous chunk
                n = min(k - self.group_fill[k], rest.shape[0])
                self.group_lse[k] = torch.logaddexp(self.group_lse[k], torch.logsumexp(rest[:n], 0))
                self.group_fill[k] += n
                rest = rest[n:]
                if self.group_fill[k] == k:
                    self._close_group(k)
            whole = (rest.shape[0] // k) * k                     # complete groups inside this chunk
            if whole:
                groups = rest[:whole].reshape(whole // k, k, -1)                  # [G, k, B]
                self.group_sum[k] += (torch.logsumexp(groups, 1) - math.log(k)).sum(0)
                self.group_count[k] += whole // k
            if whole < rest.shape[0]:                            # start a group that the next chunk finishes
                self.group_lse[k] = torch.logsumexp(rest[whole:], 0)
                self.group_fill[k] = rest.shape[0] - whole

    def _close_group(self, k: int) -> None:
        self.group_sum[k] += self.group_lse[k] - math.log(k)
        self.group_count[k] += 1
        self.group_lse[k] = torch.full_like(self.group_lse[k], -math.inf)
        self.group_fill[k] = 0

    def log_likelihood(self) -> torch.Tensor:
        return self.lse - math.log(self.count)                                   # [B]

    def effective_sample_size(self) -> torch.Tensor:
        return torch.exp(2 * self.lse - self.lse_sq)                             # (sum w)^2 / sum w^2, [B]

    def iwae_curve(self) -> Dict[int, torch.Tensor]:
        return {k: self.group_sum[k] / self.group_count[k] for k in self.ks if self.group_count[k]}


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

    def headline(self) -> str:
        return f"log p(x) = {self.mean:.2f} ± {self.stderr:.2f} nats"

    def to_dict(self) -> Dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if torch.is_tensor(value):
                out[key] = value.tolist()
        out["iwae_curve"] = {str(k): v for k, v in self.iwae_curve.items()}
        return out


@torch.no_grad()
def _importance_sample(model, guide, x, *args, num_samples, particle_chunk, batch_size, plate, ks,
                       progress, desc="log p(x)", **kwargs) -> List[_RunningEstimates]:
    if num_samples < 1 or particle_chunk < 1 or batch_size < 1:
        raise ValueError(f"num_samples, particle_chunk and batch_size must be >= 1, got "
                         f"{num_samples}, {particle_chunk}, {batch_size}")
    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor with at least one data point in dim 0, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    nesting = guess_max_plate_nesting(model, guide, x[:1], *args, **slice_data(kwargs, x.shape[0], 0, 1))
    chunks = [min(particle_chunk, num_samples - s) for s in range(0, num_samples, particle_chunk)]
    batches = range(0, x.shape[0], batch_size)
    results = []
    with tqdm(total=len(batches) * len(chunks), desc=desc, unit="chunk", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in batches:
            xb = x[start:start + batch_size]                                        # [B, D]
            running = _RunningEstimates(xb.shape[0], ks, xb.device)
            for c in chunks:
                running.add(log_weights(model, guide, xb, *args, num_particles=c, plate=plate,
                                        max_plate_nesting=nesting,
                                        **slice_data(kwargs, x.shape[0], start, start + batch_size)))  # [C, B]
                bar.update(1)
            results.append(running)
    return results


def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 5000,
                   particle_chunk: int = 500, batch_size: int = 100, plate: str = "data",
                   progress: bool = False, **kwargs) -> torch.Tensor:
    """Importance-sampled ``log p(x_n)`` for each datapoint, ``x: [N, ...] -> [N]`` float64 (higher is better).

    ``log p(x_n) ~= log (1/S) sum_s p(x_n, z_ns) / q(z_ns | x_n)`` with S = ``num_samples`` draws from the
    guide, taken ``particle_chunk`` at a time for ``batch_size`` datapoints at a time (memory grows with
    ``particle_chunk * batch_size``, not with S or N).  Works for any model/guide pair whose
    per-datapoint sites sit in ``pyro.plate(plate, ...)``; ``*args, **kwargs`` are passed to both, and
    tensor keyword arguments with one row per data point (labels ``y: [N]``) are batched with ``x``.
    The estimate is a stochastic lower bound (IWAE_S) that converges to log p(x) as S grows.
    """
    runs = _importance_sample(model, guide, x, *args, num_samples=num_samples, particle_chunk=particle_chunk,
                              batch_size=batch_size, plate=plate, ks=[], progress=progress, **kwargs)
    return torch.cat([r.log_likelihood() for r in runs])


@torch.no_grad()
def latent_means(guide: Callable, x: torch.Tensor, *args, batch_size: int = 1000, plate: str = "data",
                 **kwargs) -> torch.Tensor:
    """E_q[z | x_n] of every latent site in the data plate, concatenated: ``[N, sum of site event sizes]``,
    read from the guide's distributions in a trace (any guide whose sites report a ``mean``)."""
    parts = []
    for start in range(0, x.shape[0], batch_size):
        trace = poutine.trace(guide).get_trace(x[start:start + batch_size], *args,
                                               **slice_data(kwargs, x.shape[0], start, start + batch_size))
        means = []
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"] and \
                    any(f.name == plate for f in site["cond_indep_stack"]):
                mean = site["fn"].mean
                means.append(mean.reshape(mean.shape[0], -1))                        # [B, event size]
        if not means:
            raise ValueError(f"the guide has no latent sample site in plate {plate!r}")
        parts.append(torch.cat(means, -1))
    return torch.cat(parts)


def active_units(means: torch.Tensor, threshold: float = 0.01):
    """Burda et al. (2016): unit d is active if Cov_x(E_q[z_d | x]) > threshold.
    ``means: [N, Z] -> (count, variances [Z])``."""
    if means.shape[0] < 2:
        raise ValueError("active units need the encoder means of at least 2 data points")
    variances = means.double().var(0, unbiased=True)
    return int((variances > threshold).sum()), variances


def evaluate(model: Callable, guide: Callable, x: torch.Tensor, *args, num_samples: int = 5000,
             particle_chunk: int = 500, batch_size: int = 100, plate: str = "data", progress: bool = False,
             au_threshold: float = 0.01, **kwargs) -> LogLikelihoodSummary:
    """:func:`log_likelihood` plus its standard error, effective sample sizes, the IWAE_k curve
    (k in {1, 5, 50, ..., S}), the ELBO, the inference gap and active units, all from one set of samples."""
    ks = iwae_ks(num_samples)
    runs = _importance_sample(model, guide, x, *args, num_samples=num_samples, particle_chunk=particle_chunk,
                              batch_size=batch_size, plate=plate, ks=ks, progress=progress, **kwargs)
    log_px = torch.cat([r.log_likelihood() for r in runs])                              # [N]
    n = log_px.shape[0]
    curve = {}
    for k in ks:
        per_point = [r.iwae_curve().get(k) for r in runs]
        if all(p is not None for p in per_point):
            curve[k] = float(torch.cat(per_point).mean())
    try:
        au, variances = active_units(latent_means(guide, x, *args, plate=plate, **kwargs), au_threshold)
    except (ValueError, NotImplementedError, AttributeError):   # a guide without reportable means
        au, variances = None, None
    mean = float(log_px.mean())
    ess = torch.cat([r.effective_sample_size() for r in runs])
    stderr_mc = (1 / ess - 1 / num_samples).clamp(min=0).sqrt()
    return LogLikelihoodSummary(
        log_likelihood=log_px, mean=mean,
        stderr=float(log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan"),
        effective_sample_size=ess, stderr_mc_per_point=stderr_mc,
        stderr_mc=float(stderr_mc.pow(2).sum().sqrt() / n),
        iwae_curve=curve, elbo=curve[1], inference_gap=mean - curve[1],
        active_units=au, latent_variances=variances, num_samples=num_samples)
