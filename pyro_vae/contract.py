"""The contract a user's latent variable model meets to get training, checkpoints, every objective and the
evaluation summary for free (``docs/declaring_models.md`` is the user-facing version).

A model is an ``nn.Module`` (or any object) with two Pyro programs::

    model(x, num_data=None, **data)     # p(x, z): prior, likelihood with obs=x
    guide(x, num_data=None, **data)     # q(z | x)

* ``x: [B, D]`` is a batch; ``num_data`` is the full data-set size N (``None``: the batch is all the data).
* Every per-datapoint sample site, observed or latent, sits inside the *data plate*
  ``pyro.plate("data", num_data or B, subsample=...)``, whose subsample is the batch, so Pyro scales the
  batch's log-densities by N / B.  Sites outside it are global (their shape must not depend on B).
* ``**data`` are optional per-datapoint side inputs named by the model's signature; the library passes
  ``y`` (class labels, ``[B]`` integers) to programs whose signature has a ``y`` parameter, and slices it
  with ``x`` everywhere (training batches, validation, ``log_likelihood``).
* Parameters live in the module (``nn.Module`` / ``PyroModule``) or in ``pyro.param``; checkpoints store
  both.  Optional methods used by the CLI when present: ``sample(num_samples, **data) -> [num_samples, D]``,
  ``reconstruct(x, **data) -> [B, D]``, ``check_input(x)``.

:func:`check_model` enforces the plate part on a small batch and raises :class:`ModelGuideContractError`
naming the offending site; :func:`build_user_model` turns ``"package.module:Factory"`` into a model.
"""
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, Optional

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .importance import ModelGuideContractError

LABELS = "y"


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn``'s signature has a parameter called ``name`` (or takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def uses_labels(module: Any) -> bool:
    """Whether the model asks for class labels: its ``model`` names a ``y`` parameter."""
    model = getattr(module, "model", None)
    try:
        return model is not None and LABELS in inspect.signature(model).parameters
    except (TypeError, ValueError):
        return False


def slice_data(kwargs: Dict[str, Any], num_points: int, start: int, stop: int) -> Dict[str, Any]:
    """Side inputs for the points ``start:stop``: tensors whose first dimension is ``num_points`` (labels,
    conditions) are sliced with ``x``; everything else is passed as is."""
    return {k: (v[start:stop] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == num_points else v)
            for k, v in kwargs.items()}


def _site_shapes(module: Any, x: torch.Tensor, num_data: int, plate: str, **data) -> Dict[str, Dict]:
    """For each sample site of guide and model on batch ``x``: value shape and whether it is in the plate."""
    guide_trace = poutine.trace(module.guide).get_trace(x, num_data=num_data, **data)
    model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
        x, num_data=num_data, **data)
    sites = {}
    for program, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in prune_subsample_sites(trace).nodes.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name == plate]
            sites[(program, name)] = {"shape": tuple(site["value"].shape), "observed": site["is_observed"],
                                      "frame": frames[0] if frames else None}
    return sites


def check_model(module: Any, x: torch.Tensor, num_data: Optional[int] = None, plate: str = "data", **data) -> None:
    """Check the contract on two small batches of ``x`` (``[N, D]``, N >= 3); raise
    :class:`ModelGuideContractError` naming the problem.

    Checked: ``model`` and ``guide`` exist and accept ``num_data``; the observed site(s) and every site whose
    shape depends on the batch size sit in the plate ``plate``; that plate's subsample is the batch and its
    size is ``num_data``.
    """
    for program in ("model", "guide"):
        fn = getattr(module, program, None)
        if not callable(fn):
            raise ModelGuideContractError(f"{type(module).__name__} has no {program}(x, num_data=None) method")
        if not accepts(fn, "num_data"):
            raise ModelGuideContractError(
                f"{type(module).__name__}.{program} must accept num_data (the full data-set size, for the data "
                f"plate: pyro.plate({plate!r}, num_data, subsample=...))")
    if x.shape[0] < 3:
        raise ValueError(f"check_model needs at least 3 data points, got {x.shape[0]}")
    num_data = num_data or x.shape[0]
    # its draws come from a forked stream: checking must not shift the caller's random numbers (a trainer
    # that checks before its first step trains exactly as one that does not)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block(hide_types=["param"]):
        small = _site_shapes(module, x[:2], num_data, plate, **slice_data(data, x.shape[0], 0, 2))
        large = _site_shapes(module, x[:3], num_data, plate, **slice_data(data, x.shape[0], 0, 3))
    advice = (f"put it inside `with pyro.plate({plate!r}, num_data, subsample=torch.arange(len(x))):` in both "
              f"the model and the guide (see docs/declaring_models.md)")
    for key, site in large.items():
        program, name = key
        per_datapoint = site["observed"] or small.get(key, {}).get("shape") != site["shape"]
        if site["frame"] is None and per_datapoint:
            what = "the observed site" if site["observed"] else "the per-datapoint site"
            raise ModelGuideContractError(f"{what} {name!r} of the {program} is not inside the data plate "
                                          f"{plate!r}: {advice}")
        frame = site["frame"]
        if frame is not None:
            full = frame.full_size or frame.size
            if frame.size != 3 or full != num_data:
                raise ModelGuideContractError(
                    f"site {name!r} of the {program}: the data plate {plate!r} has size {full} and subsample "
                    f"{frame.size}, but the batch has 3 points out of num_data={num_data}; declare it as "
                    f"pyro.plate({plate!r}, num_data or len(x), subsample=torch.arange(len(x)))")
    if not any(site["observed"] for site in large.values()):
        raise ModelGuideContractError("the model observes nothing: score the data with pyro.sample(..., obs=x) "
                                      "inside the data plate")


def import_object(spec: str) -> Any:
    """``"package.module:Name"`` -> the object; the current folder is importable (as with ``python -m``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like package.module:Name, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name!r} for --model {spec}: {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (--model {spec})") from None
    if not callable(obj):
        raise ValueError(f"--model {spec} is not a class or function")
    return obj


def build_user_model(spec: str, offered: Dict[str, Any], model_args: Dict[str, Any]) -> tuple:
    """Call the factory ``spec`` with the ``offered`` settings its signature names (``data_dim``,
    ``latent_dim``, ``hidden``, ``num_classes``, ...) and every ``model_args`` entry.

    Returns ``(model, kwargs)``; ``kwargs`` rebuilds the same model from a checkpoint."""
    factory = import_object(spec)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in offered.items() if k in parameters or takes_any}
    kwargs.update(model_args)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"--model {spec}: calling it with {sorted(kwargs)} failed: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {spec} returned a {type(model).__name__}; it must return a torch.nn.Module "
                         f"(or PyroModule) holding the parameters, with model() and guide() methods")
    return model, kwargs
