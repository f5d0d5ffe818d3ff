"""The data plate of the model contract (:mod:`pyro_vae.contract`), in one place: every per-datapoint site of
a model and its guide sits in ``data_plate(x, num_data)``::

    with data_plate(x, num_data):          # = pyro.plate("data", num_data or len(x), subsample=arange(len(x)))
        z = pyro.sample("z", ...)

The batch *is* the plate's subsample, so Pyro scales every log-density inside it by N / B (``num_data`` = N,
the full data set's size; ``None``: the batch is all the data, and the plate is a plain one of B points).
"""
import functools

import pyro
import torch


@functools.lru_cache(maxsize=16)
def _arange(batch: int, device: str) -> torch.Tensor:
    return torch.arange(batch, device=device)


def data_plate(x: torch.Tensor, num_data=None, name: str = "data", dim=None) -> pyro.plate:
    """The plate of the batch ``x: [B, ...]`` out of ``num_data`` points (a ``ValueError`` if fewer than B)."""
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate(name, batch, dim=dim)
    if num_data < batch:
        raise ValueError(f"num_data={num_data} is smaller than the batch ({batch} points)")
    return pyro.plate(name, size=num_data, subsample=_arange(batch, str(x.device)), dim=dim)
