"""The two numbers a run reports for a data split, per datapoint and higher is better: the objective's own bound
(what early stopping compares: "ELBO", "IWAE_5", ...) and the ELBO.

    split_bounds(objective, module, x, seed, batch_size, parallel)  ->  (bound, elbo)      x: [N, D]

Each is evaluated with beta = 1 (the true bound, whatever the KL warm-up) on the fixed random stream ``seed``:
the same noise every epoch (common random numbers, so an epoch-to-epoch change is not Monte-Carlo noise), drawn
from a forked stream so training's own random numbers are untouched.  The ELBO is the objective's figure where
its bound is the ELBO, else ``Trace_ELBO`` with one particle.  In a data-parallel run each process evaluates its
contiguous share (stream ``seed + rank``) as part of the whole split (``num_data = N``, so global latents count
once) and the sums are reduced.
"""
from typing import Any, Tuple

import torch
from pyro.infer import ELBO, Trace_ELBO

from .contract import slice_data
from .evaluation import total_bound
from .objectives import bound_name


def split_bounds(objective: ELBO, module: Any, x: torch.Tensor, seed: int, batch_size: int, parallel: Any,
                 **data) -> Tuple[float, float]:
    """``(objective's bound, ELBO)`` per datapoint of ``module`` on ``x: [N, D]`` (``**data``: side inputs of
    the whole split, e.g. labels ``y: [N]``), in batches of ``batch_size``; ``parallel``: a
    :class:`~pyro_vae.parallel.SingleProcess` or this process's :class:`~pyro_vae.parallel.DDPGroup`."""
    num = x.shape[0]
    start, stop = parallel.shard_bounds(num)
    objectives = [objective] + ([] if bound_name(objective) == "ELBO" else [Trace_ELBO()])
    totals = [0.0] * len(objectives)
    if stop > start:
        for i, each in enumerate(objectives):
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seed + parallel.rank)
                totals[i] = total_bound(each, module.model, module.guide, x[start:stop], batch_size, num_data=num,
                                        **slice_data(data, num, start, stop))
    totals = parallel.all_reduce_sum(totals)
    return totals[0] / num, totals[-1] / num
