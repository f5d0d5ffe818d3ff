"""Evaluation of trained models on held-out data.

Every estimate here is per datapoint, in nats, and *higher is better* (log-likelihoods and their lower
bounds); nothing here optimises anything.

Shape legend: ``N`` data points, ``D`` data dimension.
"""
from typing import Callable

import torch
from pyro.infer import ELBO


@torch.no_grad()
def mean_bound(objective: ELBO, model: Callable, guide: Callable, x: torch.Tensor,
               batch_size: int = 1000) -> float:
    """Average per-datapoint bound ``-(1/N) sum_batches objective.loss(model, guide, x_batch)``.

    ``x: [N, D]``.  Each batch is passed without ``num_data``, so the data plate applies no scaling
    and the losses of the batches add up to minus the bound summed over all N points.  With
    ``Trace_ELBO`` this is the ELBO (higher is better, <= log p(x) in expectation).
    """
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"need at least one data point, got x of shape {tuple(x.shape)}")
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        total += float(objective.loss(model, guide, x[start:start + batch_size]))
    return -total / x.shape[0]
