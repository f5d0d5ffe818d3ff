"""Importance sampling of held-out data in chunks, for ANY model/guide pair: the loop behind
:func:`pyro_vae.log_likelihood` and :func:`pyro_vae.evaluate`.

For each batch of B data points, S samples of z ~ q(z | x) are drawn C at a time (memory grows with C * B, not
with S or N), their log weights ``log_w: [C, B]`` (:func:`pyro_vae.importance.log_weights`) folded into running
float64 estimates::

    log p(x_n) ~= logsumexp_s log_w[s, n] - log S               (IWAE_S, higher is better)
    ESS_n      =  (sum_s w_sn)^2 / sum_s w_sn^2
    IWAE_k     =  mean over complete groups of k samples of (logsumexp_group log_w - log k),  k in 1, 5, 50, ...

The log weights of each (batch, chunk) shape are recorded once and replayed (:mod:`pyro_vae.compiled`) where a
shape repeats.  Shape legend: ``N`` data points, ``S`` samples, ``C`` a chunk of samples, ``B`` a batch.
"""
import math
from typing import Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from .compiled import EVAL_MODES, CompiledFunction
from .contract import checked_once, modules_of, slice_data
from .importance import log_weights, program_structure
from .signals import bar_settings


def check_x(x) -> None:
    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a tensor with at least one data point in dim 0, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")


def iwae_ks(num_samples: int) -> List[int]:
    """k in {1, 5, 50, 500, ...} up to S, plus S itself: the points of the IWAE_k curve."""
    ks, k = [1], 5
    while k < num_samples:
        ks.append(k)
        k *= 10
    return sorted(set(ks + [num_samples]))


class RunningEstimates:
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


@torch.no_grad()
def importance_sample(model, guide, x, *args, num_samples, particle_chunk, batch_size, plate, ks,
                       progress, passed, desc="log p(x)", compile="auto", **kwargs) -> List[RunningEstimates]:
    """Running estimates per batch of ``x``; ``passed``: ``{"num_data": N}`` where the programs take it.  The
    log weights of each (batch, chunk) shape are recorded once and replayed (:mod:`pyro_vae.compiled`) where a
    shape repeats, unless ``compile="off"`` (``"fused"``: also compiled by inductor, :mod:`pyro_vae.compiled`)."""
    if compile not in EVAL_MODES:
        raise ValueError(f"compile must be one of {EVAL_MODES}, got {compile!r}")
    if num_samples < 1 or particle_chunk < 1 or batch_size < 1:
        raise ValueError(f"num_samples, particle_chunk and batch_size must be >= 1, got "
                         f"{num_samples}, {particle_chunk}, {batch_size}")
    check_x(x)
    nesting, _ = program_structure(model, guide, x[:1], *args, plate=plate, **passed,
                                   **slice_data(kwargs, x.shape[0], 0, 1))
    chunks = [min(particle_chunk, num_samples - s) for s in range(0, num_samples, particle_chunk)]
    batches = range(0, x.shape[0], batch_size)
    tensors = sorted(k for k, v in kwargs.items() if torch.is_tensor(v))    # side inputs passed to the recording

    def weights(xb, *values, c):                                            # -> ([C, B],)
        return (log_weights(model, guide, xb, *args, num_particles=c, plate=plate, max_plate_nesting=nesting,
                            **passed, **{k: v for k, v in kwargs.items() if k not in tensors},
                            **dict(zip(tensors, values))),)
    results = []
    with tqdm(total=len(batches) * len(chunks), desc=desc, unit="chunk", disable=not progress,
              dynamic_ncols=True, **bar_settings()) as bar:
        note = bar.write if progress else (lambda line: None)
        modules = modules_of(model, guide)
        for module in modules:                   # x checked once here, so not in every chunk's programs
            if hasattr(module, "check_input"):
                module.check_input(x)
        # recording costs about one chunk's time: worth it where a (batch, chunk) shape repeats
        if compile == "on" or (compile in ("auto", "fused") and len(batches) * len(chunks) > 4):
            weights = CompiledFunction(weights, compile, note, "the log weights")
        for start in batches:
            xb = x[start:start + batch_size]                                        # [B, D]
            running = RunningEstimates(xb.shape[0], ks, xb.device)
            side = slice_data({k: kwargs[k] for k in tensors}, x.shape[0], start, start + batch_size)
            for c in chunks:
                with checked_once(model, guide):
                    running.add(weights(xb, *[side[k] for k in tensors], c=c)[0])  # [C, B]
                bar.update(1)
            results.append(running)
    return results
