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
  ``y`` (class labels, ``[B]`` integers) to both programs when ``model`` has a ``y`` parameter, and slices it
  with ``x`` everywhere (training batches, validation, ``log_likelihood``: :func:`slice_data` slices every
  tensor keyword argument whose first dimension is the number of data points).
* Parameters live in the module (``nn.Parameter`` / ``PyroParam``): checkpoints store its ``state_dict``
  and rebuild it from its class (``--model`` refuses ``pyro.param``s outside the module).  Optional methods used by the CLI when present: ``sample(num_samples, **data) -> [num_samples, D]``,
  ``reconstruct(x, **data) -> [B, D]``, ``check_input(x)``.

:func:`check_model` enforces the plate part on a small batch and raises :class:`ModelGuideContractError`
naming the offending site; :func:`build_user_model` turns ``"package.module:Class"`` into a model.
"""
import contextlib
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .importance import ModelGuideContractError
from .specs import record_arguments
from .wording import cli_message, usage_error

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


def side_inputs(module: Any, data: Any, split: str, device: torch.device) -> Dict[str, torch.Tensor]:
    """The keyword arguments the programs take besides ``x`` for a whole split of a
    :class:`~pyro_vae.data.Dataset`, on ``device``: ``{"y": labels [N]}`` for a model that takes labels, else
    ``{}``."""
    return {LABELS: data.labels(split).to(device)} if uses_labels(module) else {}


def slice_data(kwargs: Dict[str, Any], num_points: int, start: int, stop: int) -> Dict[str, Any]:
    """Side inputs for the points ``start:stop``: tensors whose first dimension is ``num_points`` (labels,
    conditions) are sliced with ``x``; everything else is passed as is."""
    return {k: (v[start:stop] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == num_points else v)
            for k, v in kwargs.items()}


@contextlib.contextmanager
def state_preserved(module: Any, device: torch.device) -> Iterator[List[Tuple[torch.Tensor, torch.Tensor]]]:
    """Run trial computations on ``module`` without side effects: random draws come from a forked stream
    and the module's buffers (batch-norm statistics) are restored on exit.  Yields ``(buffer, saved copy)``
    pairs, so the caller can see which buffers its computation changed before they are restored."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()] if isinstance(module, torch.nn.Module) else []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield buffers
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def modules_of(*programs: Any) -> List[torch.nn.Module]:
    """The ``nn.Module``s behind programs: a bound method's instance (``vae.model``), or a module itself."""
    found: Dict[int, torch.nn.Module] = {}
    for program in programs:
        for obj in (program, getattr(program, "__self__", None)):
            if isinstance(obj, torch.nn.Module):
                found[id(obj)] = obj
    return list(found.values())


PER_CALL_CHECKS = ("register_params", "validate_inputs")


@contextlib.contextmanager
def checked_once(*programs: Any) -> Iterator[None]:
    """Run many calls of the programs (or modules) on inputs the caller checked once: a trainer checks every
    split before the first step, an evaluator or AIS its ``x``, and owns the parameters (a torch optimiser, or
    none).  A module's ``register_params`` / ``validate_inputs`` flags, where it has them (:class:`~pyro_vae.VAE`:
    ``pyro.module`` registration and the batch's support check, ~0.7 ms a call), are off inside and restored
    after.  (Reading the data in every call would also stop a step from being recorded:
    :mod:`pyro_vae.compiled`.)"""
    saved = []
    for module in modules_of(*programs):
        attributes = vars(module)      # plain instance attributes: nn.Module.__setattr__ costs ~30 Python calls
        flags = {name: attributes[name] for name in PER_CALL_CHECKS if name in attributes}
        attributes.update(dict.fromkeys(flags, False))
        saved.append((attributes, flags))
    try:
        yield
    finally:
        for attributes, flags in saved:
            attributes.update(flags)


@contextlib.contextmanager
def eval_mode(*programs: Any) -> Iterator[None]:
    """Run with the programs' modules in eval mode (no dropout, batch norm on its running statistics), and
    restore every submodule's own mode afterwards: evaluation never changes how a model trains."""
    modules = modules_of(*programs)
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _site_shapes(module: Any, x: torch.Tensor, num_data: Optional[int], plate: str, **data) -> Dict[tuple, Dict]:
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
    """Check the contract on small batches of ``x`` (``[N, D]``, N >= 3); raise
    :class:`ModelGuideContractError` naming the problem.

    Checked: ``model`` and ``guide`` exist and accept ``num_data`` (and ``y`` both, if the model takes
    labels); they run on a batch with ``num_data`` given and with ``num_data=None``; every site whose shape
    follows the batch size (observed or latent) sits in the plate ``plate``, whose subsample is the batch
    and whose size is ``num_data`` (or the batch's, without it); something is observed in that plate.
    Sites whose shape does not depend on the batch (global latents, ``pyro.factor`` penalties,
    ``pyro.deterministic`` records) may sit outside it.
    """
    for program in ("model", "guide"):
        fn = getattr(module, program, None)
        if not callable(fn):
            raise ModelGuideContractError(f"{type(module).__name__} has no {program}(x, num_data=None) method")
        if not accepts(fn, "num_data"):
            raise ModelGuideContractError(
                f"{type(module).__name__}.{program} must accept num_data (the full data-set size, for the data "
                f"plate: pyro.plate({plate!r}, num_data or len(x), subsample=...))")
    if uses_labels(module) and not accepts(module.guide, LABELS):
        raise ModelGuideContractError(f"{type(module).__name__}.model takes labels y, so the guide is called with "
                                      f"them too: give guide a y parameter (it may ignore it)")
    if x.shape[0] < 3:
        raise ValueError(f"check_model needs at least 3 data points, got {x.shape[0]}")
    full = num_data or x.shape[0]
    advice = (f"put it inside `with pyro.plate({plate!r}, num_data or len(x), subsample=torch.arange(len(x))):` "
              f"in both the model and the guide (see docs/declaring_models.md)")

    def shapes(n: int, given: Optional[int]) -> Dict:
        try:
            return _site_shapes(module, x[:n], given, plate, **slice_data(data, x.shape[0], 0, n))
        except ModelGuideContractError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's program failed: say where, keep the cause
            what = (f"running {type(module).__name__}'s guide and model on a batch of {n} points with num_data="
                    f"{given} failed: {type(e).__name__}: ")
            hint = (f" (the data plate must work with num_data=None too: pyro.plate({plate!r}, num_data or len(x), "
                    f"subsample=torch.arange(len(x))))")
            raise usage_error(ModelGuideContractError, f"{what}{e}{hint}", f"{what}{cli_message(e)}{hint}") from e

    # without side effects, so a trainer that checks before its first step trains exactly as one that does not
    with state_preserved(module, x.device), torch.no_grad(), poutine.block(hide_types=["param"]):
        small, large, unscaled = shapes(2, full), shapes(3, full), shapes(3, None)
    for key, site in large.items():
        program, name = key
        per_datapoint = small.get(key, {}).get("shape") != site["shape"]
        if site["frame"] is None and per_datapoint:
            what = "the observed site" if site["observed"] else "the per-datapoint site"
            raise ModelGuideContractError(f"{what} {name!r} of the {program} is not inside the data plate "
                                          f"{plate!r}: {advice}")
    for given, sites in ((full, large), (3, unscaled)):
        for (program, name), site in sites.items():
            frame = site["frame"]
            if frame is not None and (frame.size != 3 or (frame.full_size or frame.size) != given):
                raise ModelGuideContractError(
                    f"site {name!r} of the {program}: the data plate {plate!r} has size "
                    f"{frame.full_size or frame.size} and subsample {frame.size}, but the batch has 3 points out "
                    f"of num_data={given}; declare it as pyro.plate({plate!r}, num_data or len(x), "
                    f"subsample=torch.arange(len(x)))")
    if not any(site["observed"] and site["frame"] is not None for site in large.values()):
        raise ModelGuideContractError(f"the model observes nothing in the data plate {plate!r}: score the data "
                                      f"with pyro.sample(..., obs=x) inside it")


def import_object(spec: str) -> Any:
    """``"package.module:Name"`` -> the object; the current folder is importable while importing (as with
    ``python -m``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise usage_error(ValueError, f"a model class is named as 'package.module:Name', got {spec!r}",
                          f"--model must look like package.module:Name, got {spec!r}")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise usage_error(ValueError, f"cannot import {module_name!r} for the model class {spec!r}: {e}",
                          f"cannot import {module_name!r} for --model {spec}: {e}") from e
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise usage_error(ValueError, f"{module_name!r} has no attribute {attr!r} (model class {spec!r})",
                          f"{module_name!r} has no attribute {attr!r} (--model {spec})") from None
    return obj


def build_user_model(spec: str, offered: Dict[str, Any], model_args: Dict[str, Any]) -> tuple:
    """Instantiate the ``nn.Module`` subclass ``spec`` with the ``offered`` settings its signature names
    (``data_dim``, ``latent_dim``, ``hidden``, ``num_classes``, ...) and every ``model_args`` entry.

    Only classes that subclass ``torch.nn.Module`` are accepted: a checkpoint names its model's class, and
    loading a checkpoint must not be able to call an arbitrary function (``os:system``).
    Returns ``(model, kwargs)``; ``kwargs`` rebuilds the same model from a checkpoint."""
    factory = import_object(spec)
    if not (inspect.isclass(factory) and issubclass(factory, torch.nn.Module)):
        raise ValueError(f"{spec!r} must name a torch.nn.Module subclass (a class with model() and guide() "
                         f"methods), got {type(factory).__name__} {factory!r}")
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
        what = f"calling it with {sorted(kwargs)} failed: {e}"
        raise usage_error(ValueError, f"the model class {spec!r}: {what}", f"--model {spec}: {what}") from e
    if "_init_args" not in model.__dict__:
        record_arguments(model, kwargs)       # pyro_vae.save can write it down
    return model, kwargs
